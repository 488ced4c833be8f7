"""A fake MessageBird legacy SMS API (``POST /messages``) that answers as MessageBird does.

It checks the ``AccessKey`` header, reads JSON or form bodies (the SDKs send
both: recipients as a list or comma-separated), validates them with
MessageBird's error codes and lists every error found in one answer: 401 when
the key is wrong (code 2 first), else 422.  Success is 201 with MessageBird's
message object.  The official ``messagebird`` SDK runs against it
(tests/test_messagebird.py).

Sources: captured traffic in SURFnet/messagebird-api-client-bundle ``docs/api``
(bodies of 201, 401 and 422), messagebird/go-rest-api test data and
messagebird/python-rest-api.  Descriptions marked unconfirmed are ours.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import phonenumbers
from aiohttp import web

from smsroute.encoding import analyze
from smsroute.testing.fake import FakeProvider, Incoming, ReceivedMessage

#: (description, parameter) of the errors this fake gives for a code.
ERRORS: Mapping[int, tuple[str, str | None]] = {
    2: ("Request not allowed (incorrect access_key)", "access_key"),
    9: ("no (correct) recipients found", "recipient"),
    10: ("originator is invalid", "originator"),
    20: ("message not found", None),
    21: ("Bad request", None),  # [unconfirmed wording]
    25: ("Not enough balance", None),  # [unconfirmed wording]
    98: ("API not found", None),  # [unconfirmed wording]
    99: ("Internal error", None),  # [unconfirmed wording]
}
USUAL_CODES: Mapping[int, int] = {401: 2, 404: 20, 422: 9, 500: 99, 503: 99}
DATACODINGS = ("plain", "unicode", "auto")
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_NUMERIC = re.compile(r"\+?\d{1,17}")


class FakeMessageBird(FakeProvider):
    """MessageBird's ``POST /messages`` on 127.0.0.1.

    >>> async with FakeMessageBird() as fake:
    ...     config = {"type": "messagebird", "base_url": fake.url, "access_key": fake.access_key}
    """

    def __init__(
        self, *, access_key: str | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(host=host, port=port)
        alphabet = string.ascii_letters + string.digits
        self.access_key = access_key or "live_" + "".join(
            secrets.choice(alphabet) for _ in range(25)
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/messages", self.handle_send)

    def new_message_id(self) -> str:
        return secrets.token_hex(16)

    async def read(self, request: web.Request) -> Incoming:
        fields: dict[str, Any]
        if request.content_type == "application/json":
            try:
                doc = json.loads(await request.read())
            except ValueError:
                doc = None
            fields = doc if isinstance(doc, dict) else {}
        else:
            fields = {k: str(v) for k, v in (await request.post()).items()}
        recipients = _recipients(fields.get("recipients"))
        return Incoming(fields=fields, to="+" + recipients[0] if recipients else None)

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        errors = self._field_errors(incoming.fields)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "AccessKey" or not hmac.compare_digest(key.strip(), self.access_key):
            return self._errors(401, [(2, *ERRORS[2]), *errors])
        return self._errors(422, errors) if errors else None

    def _field_errors(self, f: Mapping[str, Any]) -> list[tuple[int, str, str | None]]:
        errors: list[tuple[int, str, str | None]] = []
        if not any(_is_msisdn(r) for r in _recipients(f.get("recipients"))):
            errors.append((9, *ERRORS[9]))
        originator = f.get("originator")
        if originator in (None, ""):
            errors.append((9, "originator is required", "originator"))  # [unconfirmed wording]
        elif not (
            isinstance(originator, str | int)
            and (_NUMERIC.fullmatch(str(originator)) or _ALPHANUMERIC.fullmatch(str(originator)))
        ):
            errors.append((10, *ERRORS[10]))
        if not f.get("body"):
            errors.append((9, "body is required", "body"))  # [unconfirmed wording]
        if f.get("datacoding", "plain") not in DATACODINGS:
            errors.append((10, "datacoding is invalid", "datacoding"))  # [unconfirmed wording]
        report_url = f.get("reportUrl")
        if report_url is not None and not str(report_url).startswith(("http://", "https://")):
            errors.append((10, "reportUrl is invalid", "reportUrl"))  # [unconfirmed wording]
        validity = f.get("validity")
        if validity is not None and not str(validity).isdigit():
            errors.append((10, "validity is invalid", "validity"))  # [unconfirmed wording]
        return errors

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        f = incoming.fields
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        body = str(f["body"])
        info = analyze(body)
        datacoding = f.get("datacoding", "plain")
        if datacoding == "auto":
            datacoding = "unicode" if info.encoding == "UCS-2" else "plain"
        recipients = [r for r in _recipients(f["recipients"]) if _is_msisdn(r)]
        validity = f.get("validity")
        message: dict[str, Any] = {
            "id": message_id,
            "href": f"{self.url}/messages/{message_id}",
            "direction": "mt",
            "type": "sms",
            "originator": str(f["originator"]),
            "body": body,
            "reference": f.get("reference"),
            "validity": int(validity) if validity is not None else None,
            "gateway": 10,
            "typeDetails": {},
            "datacoding": datacoding,
            "mclass": 1,
            "scheduledDatetime": None,
            "createdDatetime": now,
            "recipients": {
                "totalCount": len(recipients),
                "totalSentCount": len(recipients),
                "totalDeliveredCount": 0,
                "totalDeliveryFailedCount": 0,
                "items": [
                    {
                        "recipient": int(r),
                        "status": "sent",
                        "statusDatetime": now,
                        "messagePartCount": info.segments,
                    }
                    for r in recipients
                ],
            },
        }
        if f.get("reportUrl"):
            message["reportUrl"] = f["reportUrl"]
        record = ReceivedMessage(
            provider_message_id=message_id,
            to="+" + recipients[0],
            sender=str(f["originator"]),
            text=body,
            fields=dict(f),
            received_at=self.now(),
            status_callback=f.get("reportUrl"),
        )
        return web.json_response(message, status=201), record

    def error_response(self, status: int, code: Any) -> web.Response:
        if code is None:
            code = USUAL_CODES.get(status)
        if code is None:
            # No documented code for this status (429 among them): the same envelope,
            # no code, the HTTP reason as description [unconfirmed].
            return self._errors(status, [(None, HTTPStatus(status).phrase, None)])
        description, parameter = ERRORS.get(int(code), ("", None))
        return self._errors(status, [(int(code), description, parameter)])

    @staticmethod
    def _errors(status: int, errors: Sequence[tuple[int | None, str, str | None]]) -> web.Response:
        body = {
            "errors": [
                {"code": code, "description": description, "parameter": parameter}
                for code, description, parameter in errors
            ]
        }
        return web.json_response(body, status=status)


def _recipients(value: Any) -> list[str]:
    """MSISDNs as digits, from a list or a comma-separated string."""
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(item).strip().removeprefix("+") for item in items if str(item).strip()]


def _is_msisdn(digits: str) -> bool:
    if not digits.isdigit():
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse("+" + digits, None))
    except phonenumbers.NumberParseException:
        return False
