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

Callbacks: status reports are GET requests to the message's ``reportUrl`` with
MessageBird's query parameters (MessageBird reports only on messages with a
``reference``; the adapter always sets one, and the fake does not check);
inbound messages are GET requests as a virtual mobile number forwards them.
Both carry ``MessageBird-Signature-JWT``, an HS256 JWT signed
with ``signing_key`` whose ``url_hash`` is the SHA-256 of the exact URL called
(and ``payload_hash`` that of the body, when there is one), as the SDK's
``RequestValidator`` expects.  The token's ``nbf``..``exp`` window MessageBird
uses is not published: this fake signs for 5 minutes [unconfirmed].
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import jwt
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
#: Our receipt status -> (MessageBird status, statusReason, statusErrorCode) the fake reports.
RECEIPTS: Mapping[str, tuple[str, str, int | None]] = {
    "queued": ("scheduled", "scheduled", None),
    "sent": ("sent", "pending DLR", None),
    "delivered": ("delivered", "successfully delivered", None),
    "undelivered": ("delivery_failed", "absent subscriber", 27),  # [code unconfirmed]
    "failed": ("delivery_failed", "unknown subscriber", 1),  # [code unconfirmed]
}
#: Seconds between a token's ``nbf`` and ``exp`` [unconfirmed].
TOKEN_LIFETIME = 300


class FakeMessageBird(FakeProvider):
    """MessageBird's ``POST /messages`` on 127.0.0.1.

    >>> async with FakeMessageBird() as fake:
    ...     config = {"type": "messagebird", "base_url": fake.url, "access_key": fake.access_key}
    """

    def __init__(
        self,
        *,
        access_key: str | None = None,
        signing_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        alphabet = string.ascii_letters + string.digits
        self.access_key = access_key or "live_" + "".join(
            secrets.choice(alphabet) for _ in range(25)
        )
        #: The account's signing key (developer settings), not the access key.
        self.signing_key = signing_key or "".join(secrets.choice(alphabet) for _ in range(32))

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

    # -- callbacks: status reports and inbound messages ----------------------------------

    def signature(self, url: str, body: bytes = b"", *, now: float | None = None) -> str:
        """``MessageBird-Signature-JWT`` for a request to ``url`` with ``body``."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": "MessageBird",
            "nbf": issued,
            "exp": issued + TOKEN_LIFETIME,
            "jti": str(uuid.uuid4()),
            "url_hash": hashlib.sha256(url.encode()).hexdigest(),
        }
        if body:
            claims["payload_hash"] = hashlib.sha256(body).hexdigest()
        return jwt.encode(claims, self.signing_key, algorithm="HS256")

    def _signed_get(
        self, url: str, params: dict[str, str]
    ) -> tuple[str, str, dict[str, str], bytes]:
        target = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        headers = {"MessageBird-Signature-JWT": self.signature(target)}
        return "GET", target, headers, b""

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        """MessageBird's status report for ``record``: a signed GET to its ``reportUrl``."""
        assert record.status_callback is not None
        mb_status, reason, code = RECEIPTS[status]
        if error_code is not None:
            code = int(error_code)
        params = {
            "id": record.provider_message_id,
            "recipient": record.to.removeprefix("+"),
            "status": mb_status,
            "statusDatetime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "statusReason": reason,
            "mccmnc": "26201",
            "ported": "0",
            "messagePartCount": "1",
        }
        if record.fields.get("reference") is not None:
            params["reference"] = str(record.fields["reference"])
        if code is not None:
            params["statusErrorCode"] = str(code)
        return self._signed_get(record.status_callback, params)

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        """A message to a virtual mobile number, forwarded as MessageBird does: a signed GET."""
        params = {
            "id": self.new_message_id(),
            "recipient": recipient.removeprefix("+"),
            "originator": sender.removeprefix("+"),
            "body": text,
            "createdDatetime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        }
        return self._signed_get(url, params)

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
