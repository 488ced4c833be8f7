"""A fake Sinch SMS REST API (XMS) that answers as Sinch does.

It checks the bearer token against its service plan, reads the JSON batch,
validates it with Sinch's error codes (``syntax_*`` with HTTP 400,
``missing_callback_url`` with 403) and answers 201 with Sinch's batch object.
The official ``sinch`` SDK runs against it (tests/test_sinch.py).

Sources: developers.sinch.com "HTTP Status Codes for the SMS REST API" and the
Batches endpoint reference (mirrored in the vvscode/docs repository), the
``sinch`` SDK's request and response models.  Sinch documents error bodies for
400 and 403 only: the bodies this fake gives other statuses are unconfirmed.

Callbacks: delivery reports (``recipient_delivery_report_sms`` for
``per_recipient``/``per_recipient_final`` batches, ``delivery_report_sms`` for
``summary``/``full``) and inbound ``mo_text``, shaped as the SDK's
``RecipientDeliveryReport``, ``BatchDeliveryReport`` and ``MOTextMessage``
models, signed as Sinch signs when signing is enabled on the account
(:func:`smsroute.providers.sinch.sinch_signature`, the scheme of the SDK's
``validate_sinch_event_signature_with_nonce``).  The signature timestamp is in
Unix seconds and inbound ``from``/``to`` are MSISDNs without ``+`` [both
formats unconfirmed: Sinch documents neither].
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

import phonenumbers
from aiohttp import web

from smsroute.providers.sinch import sinch_signature
from smsroute.testing.fake import FakeProvider, Incoming, ReceivedMessage

#: Sinch's ``text`` for its documented codes, and for statuses without one.
ERROR_TEXTS: Mapping[str, str] = {
    "syntax_invalid_json": "The JSON in the request is invalid",
    "syntax_invalid_parameter_format": "The format of a field value is invalid",
    "syntax_constraint_violation": "The request body doesn't fulfill all of the constraints",
    "unknown_group": "A referenced group ID is unknown",
    "unknown_campaign": "The campaign ID does not match the specified originator",
    "missing_callback_url": "Callback has been requested but no URL is provided",
    "illegal_number_type": "Illegal phone number type of MSISDN for a chosen region",
    "blocked_account": "Your account has been blocked",
    # Not documented by Sinch as codes: the status table's descriptions, under a
    # code named after the status [unconfirmed: the real bodies are not published].
    "unauthorized": "Authentication token is invalid for this service plan",
    "not_found": "The path is invalid or no resource exists with the given ID",
    "unsupported_media_type": "The Content-Type header is missing or unsupported",
    "too_many_requests": "The user or path has too many outstanding requests",
    "internal_error": "An unexpected internal error occurred and the request was not processed",
    "service_unavailable": "The service is unable to perform the request at this point",
}
USUAL_CODES: Mapping[int, str] = {
    400: "syntax_constraint_violation",
    401: "unauthorized",
    403: "blocked_account",
    404: "not_found",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}
DELIVERY_REPORTS = ("none", "summary", "full", "per_recipient", "per_recipient_final")
#: Our receipt status -> (Sinch status, code) of the report the fake sends.
RECEIPTS: Mapping[str, tuple[str, int]] = {
    "queued": ("Queued", 400),
    "sent": ("Dispatched", 401),
    "delivered": ("Delivered", 0),
    "undelivered": ("Failed", 0),  # an SMPP error code; 0 is "no error/unknown error"
    "failed": ("Aborted", 402),  # message unroutable
}
#: Sinch REST codes (developers.sinch.com "Delivery report error codes") -> their status.
CODE_STATUSES: Mapping[int, str] = {
    400: "Queued",
    401: "Dispatched",
    402: "Aborted",
    403: "Aborted",
    404: "Aborted",
    405: "Aborted",
    406: "Aborted",
    407: "Cancelled",
    408: "Aborted",
    410: "Aborted",
    411: "Aborted",
    412: "Aborted",
}
MAX_BODY = 1600  # "Max 1600 chars for mt_text" (Batches endpoint reference)
MAX_RECIPIENTS = 1000
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Marks, in ``Incoming.fields``, a body that was not a JSON object.
_NOT_JSON = "__not_a_json_object__"


def _iso_ms(when: dt.datetime) -> str:
    """``2019-08-24T14:15:22.123Z``, as Sinch writes times."""
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeSinch(FakeProvider):
    """Sinch's ``POST /xms/v1/{service_plan_id}/batches`` on 127.0.0.1.

    >>> async with FakeSinch() as fake:
    ...     config = {"type": "sinch", "base_url": fake.url,
    ...               "service_plan_id": fake.service_plan_id, "api_token": fake.api_token}

    Without ``default_originator`` a batch needs ``from``; without
    ``default_callback_url`` a batch asking for a delivery report needs
    ``callback_url`` (403 ``missing_callback_url``), as on a service plan with
    neither configured.

    Callbacks are signed with ``webhook_secret`` (random unless given) unless
    ``sign_callbacks`` is False, as on an account where Sinch has not enabled
    signing.
    """

    def __init__(
        self,
        *,
        service_plan_id: str | None = None,
        api_token: str | None = None,
        default_originator: str | None = None,
        default_callback_url: str | None = None,
        webhook_secret: str | None = None,
        sign_callbacks: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.service_plan_id = service_plan_id or secrets.token_hex(16)
        self.api_token = api_token or secrets.token_hex(16)
        self.default_originator = default_originator
        self.default_callback_url = default_callback_url
        self.webhook_secret = webhook_secret or secrets.token_urlsafe(24)
        self.sign_callbacks = sign_callbacks

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/xms/v1/{service_plan_id}/batches", self.handle_send)

    def new_message_id(self) -> str:
        # Batch ids are ULIDs: 48-bit milliseconds then 80 random bits, Crockford base32.
        value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
        return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))

    async def read(self, request: web.Request) -> Incoming:
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return Incoming(fields={_NOT_JSON: raw.decode(errors="replace")}, to=None)
        to = doc.get("to")
        first = to[0] if isinstance(to, list) and to and isinstance(to[0], str) else None
        return Incoming(fields=doc, to=first)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return (
            scheme.lower() == "bearer"
            and hmac.compare_digest(token, self.api_token)
            and request.match_info["service_plan_id"] == self.service_plan_id
        )

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        if not self._authorized(request):
            return self.error_response(401, "unauthorized")
        if request.content_type != "application/json":
            return self.error_response(415, "unsupported_media_type")
        if _NOT_JSON in incoming.fields:
            return self.error_response(400, "syntax_invalid_json")
        f = incoming.fields
        to = f.get("to")
        if not isinstance(to, list) or not 1 <= len(to) <= MAX_RECIPIENTS:
            return self.error_response(400, "syntax_constraint_violation")
        for number in to:
            if not (isinstance(number, str) and _is_msisdn(number)):
                # Sinch quotes the offending value ("'foo' is not a valid identifier",
                # sinch-sdk-java error-response.json) [wording for numbers unconfirmed].
                return self._error(
                    400, "syntax_invalid_parameter_format", f"'{number}' is not a valid MSISDN"
                )
        body = f.get("body")
        if not isinstance(body, str) or not body or len(body) > MAX_BODY:
            return self.error_response(400, "syntax_constraint_violation")
        if f.get("type", "mt_text") != "mt_text":
            return self.error_response(400, "syntax_invalid_parameter_format")
        sender = f.get("from")
        if sender is None and self.default_originator is None:
            # "Required if Automatic Default Originator not configured" [code unconfirmed].
            return self.error_response(400, "syntax_constraint_violation")
        if sender is not None and (not isinstance(sender, str) or not sender):
            return self.error_response(400, "syntax_invalid_parameter_format")
        report = f.get("delivery_report", "none")
        if report not in DELIVERY_REPORTS:
            return self.error_response(400, "syntax_invalid_parameter_format")
        callback = f.get("callback_url")
        if callback is not None and not (
            isinstance(callback, str) and callback.startswith(("http://", "https://"))
        ):
            return self.error_response(400, "syntax_invalid_parameter_format")
        if report != "none" and callback is None and self.default_callback_url is None:
            return self.error_response(403, "missing_callback_url")
        return None

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        f = incoming.fields
        now = dt.datetime.now(dt.UTC)
        sender = f.get("from", self.default_originator)
        batch: dict[str, Any] = {
            "id": message_id,
            "to": list(f["to"]),
            "from": sender,
            "canceled": False,
            "body": f["body"],
            "type": "mt_text",
            "created_at": _iso_ms(now),
            "modified_at": _iso_ms(now),
            "delivery_report": f.get("delivery_report", "none"),
            "expire_at": _iso_ms(now + dt.timedelta(days=3)),  # default: 3 days after send_at
            "flash_message": bool(f.get("flash_message", False)),
        }
        for key in ("callback_url", "client_reference", "max_number_of_message_parts"):
            if key in f:
                batch[key] = f[key]
        record = ReceivedMessage(
            provider_message_id=message_id,
            to=f["to"][0],
            sender=sender,
            text=f["body"],
            fields=dict(f),
            received_at=self.now(),
            status_callback=f.get("callback_url"),
        )
        return web.json_response(batch, status=201), record

    # -- callbacks: delivery reports and inbound messages --------------------------------

    def signature_headers(
        self, body: bytes, *, timestamp: str | None = None, nonce: str | None = None
    ) -> dict[str, str]:
        """The ``x-sinch-webhook-signature*`` headers for ``body`` (now, a fresh nonce)."""
        timestamp = timestamp if timestamp is not None else str(int(time.time()))
        nonce = nonce if nonce is not None else uuid.uuid4().hex
        return {
            "x-sinch-webhook-signature-timestamp": timestamp,
            "x-sinch-webhook-signature-nonce": nonce,
            "x-sinch-webhook-signature-algorithm": "HmacSHA256",
            "x-sinch-webhook-signature": sinch_signature(
                self.webhook_secret, body, nonce, timestamp
            ),
        }

    def _callback(self, url: str, doc: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes]:
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.sign_callbacks:
            headers.update(self.signature_headers(body))
        return "POST", url, headers, body

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        """Sinch's delivery report for ``record``, shaped by the batch's ``delivery_report``.

        ``status`` is ours; the Sinch status and code come from :data:`RECEIPTS`
        (a Sinch REST code given as ``error_code`` brings its documented status,
        e.g. 404 Aborted).
        """
        url = record.status_callback or self.default_callback_url
        assert url is not None, "the batch has no callback URL"
        sinch_status, code = RECEIPTS[status]
        if error_code is not None:
            code = int(error_code)
            sinch_status = CODE_STATUSES.get(code, sinch_status)
        now = _iso_ms(dt.datetime.now(dt.UTC))
        reference = record.fields.get("client_reference")
        doc: dict[str, Any]
        if record.fields.get("delivery_report") in ("summary", "full"):
            entry: dict[str, Any] = {"code": code, "status": sinch_status, "count": 1}
            if record.fields.get("delivery_report") == "full":
                entry["recipients"] = [record.to]
            doc = {
                "type": "delivery_report_sms",
                "batch_id": record.provider_message_id,
                "total_message_count": 1,
                "statuses": [entry],
            }
        else:
            doc = {
                "type": "recipient_delivery_report_sms",
                "batch_id": record.provider_message_id,
                "recipient": record.to,
                "code": code,
                "status": sinch_status,
                "at": now,
            }
            if sinch_status not in ("Queued", "Dispatched"):
                doc["operator_status_at"] = now
        if isinstance(reference, str):
            doc["client_reference"] = reference
        return self._callback(url, doc)

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        """Sinch's ``mo_text`` callback for a message from ``sender`` to ``recipient``."""
        now = dt.datetime.now(dt.UTC)
        doc = {
            "type": "mo_text",
            "id": self.new_message_id(),
            "from": sender.removeprefix("+"),
            "to": recipient.removeprefix("+"),
            "body": text,
            "received_at": _iso_ms(now),
            "sent_at": _iso_ms(now),
            "operator_id": "26201",
        }
        return self._callback(url, doc)

    def error_response(self, status: int, code: Any) -> web.Response:
        if code is None:
            code = USUAL_CODES.get(
                status, "internal_error" if status >= 500 else "syntax_invalid_json"
            )
        return self._error(status, str(code))

    @staticmethod
    def _error(status: int, code: str, text: str | None = None) -> web.Response:
        body = {"code": code, "text": text or ERROR_TEXTS.get(code, code)}
        return web.json_response(body, status=status)


def _is_msisdn(number: str) -> bool:
    try:
        parsed = phonenumbers.parse(number if number.startswith("+") else "+" + number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)
