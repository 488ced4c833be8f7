"""A fake Telnyx Messaging API v2 that answers as Telnyx does.

It checks the ``Authorization: Bearer`` API key, reads the JSON body,
validates ``to``/``from``/``messaging_profile_id``/``text``/``webhook_url`` the
way Telnyx does (with Telnyx's error codes, in Telnyx's ``{"errors": [...]}``
body), and answers 200 with Telnyx's ``{"data": OutboundMessagePayload}``.
The official ``telnyx`` SDK runs against it (tests/test_telnyx.py).

Where Telnyx's docs give no HTTP status for an error code, the fake uses 400
for request errors (the SDK documents "returns 400" for its own encoding check).

Webhooks: delivery updates (``message.sent``, then ``message.finalized``) go to
the message's ``webhook_url`` and inbound messages (``message.received``) to the
URL a test names, each in Telnyx's v2 envelope and signed as Telnyx signs:
Ed25519 over ``"{timestamp}|{body}"`` with the fake's private key, in
``telnyx-signature-ed25519`` and ``telnyx-timestamp``.  The matching public key
(``fake.public_key``, base64) is what the adapter's ``public_key`` option takes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import phonenumbers
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from smsroute.encoding import analyze
from smsroute.testing.fake import FakeProvider, Incoming, ReceivedMessage, country_of

#: code -> (title, detail).  Titles and details as Telnyx documents them
#: (developers.telnyx.com api-errors and messaging error-codes pages).
ERRORS: dict[str, tuple[str, str]] = {
    "10002": ("Invalid phone number", "The phone number is invalid."),
    "10003": (
        "Invalid URL",
        "The URL provided was invalid, malformed, or too long. URLs can be a maximum of 2000 characters.",
    ),
    "10004": (
        "Missing required parameter",
        "A required parameter was missing. Consult the source field on the returned error to determine the missing field.",
    ),
    "10005": ("Resource not found", "The requested resource or URL could not be found."),
    "10006": ("Invalid ID", "The resource ID provided was invalid."),
    "10007": ("Unexpected error", "An unexpected error occured."),
    "10008": ("Request timeout", "The request timed out."),
    "10009": (
        "Authentication failed",
        "The required authentication headers were either invalid or not included in the request.",
    ),
    "10010": (
        "Authorization failed",
        "You do not have permission to perform the requested action on the specified resource or resources.",
    ),
    "10011": ("Too many requests", "You have exceeded the maximum number of allowed requests."),
    "10015": ("Bad Request", "The request failed because it was not well-formed."),
    "10016": (
        "Phone number must be in +E.164 format",
        "The specified phone number parameter must be in +E.164 format.",
    ),
    "40001": (
        "Not routable",
        "The destination number is either a landline or a non-routable wireless number.",
    ),
    "40006": (
        "Recipient server unavailable",
        "The recipient server is unavailable or not responding. This may be a temporary issue.",
    ),
    "40008": ("Undeliverable", "The message could not be delivered to the destination."),
    "40014": (
        "Message expired in queue",
        "The message expired in the queue. This error occured before Telnyx attempted to "
        "relay your message, and you were not billed.",
    ),
    "40300": (
        "Blocked due to STOP message",
        "Messages cannot be sent from {src} to {dst} due to an existing block rule.",
    ),
}

#: HTTP status -> the code Telnyx usually answers with.
USUAL_CODES = {
    400: "10015",
    401: "10009",
    403: "10010",
    404: "10005",
    408: "10008",
    409: "40300",
    422: "10015",
    429: "10011",
    500: "10007",
    503: "10007",
    504: "10008",
}

#: Marks, in ``Incoming.fields``, a body that was not a JSON object.
_NOT_JSON = "__not_a_json_object__"
_ALPHANUMERIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
_SHORT_CODE = re.compile(r"^\d{3,8}$")


def _iso_now(offset: dt.timedelta = dt.timedelta()) -> str:
    when = dt.datetime.now(dt.UTC) + offset
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Our receipt outcome -> (Telnyx event type, ``to[0].status``, usual error code).
#: ``sending_failed`` is what Telnyx marks a message it never relayed (valid_until's
#: description); 40014 is that case.  40006 is a retryable carrier-side failure.
RECEIPTS: Mapping[str, tuple[str, str, str | None]] = {
    "queued": ("message.sent", "queued", None),
    "sent": ("message.sent", "sent", None),
    "delivered": ("message.finalized", "delivered", None),
    "undelivered": ("message.finalized", "delivery_failed", "40006"),
    "failed": ("message.finalized", "sending_failed", "40014"),
}


def _e164_valid(number: str) -> bool:
    if not number.startswith("+"):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return False


class FakeTelnyx(FakeProvider):
    """Telnyx's ``POST /v2/messages`` on 127.0.0.1.

    >>> async with FakeTelnyx() as fake:
    ...     config = {"type": "telnyx", "base_url": fake.url, "api_key": fake.api_key,
    ...               "from": "+14155550100"}

    ``unroutable_countries`` answer 40008 (undeliverable: try another route), as
    an account whose messaging profile does not allow those destinations would.
    ``opted_out`` numbers answer 40300 (HTTP 409): the recipient sent STOP.
    Webhooks are signed with ``signing_key`` (a fresh Ed25519 key unless given);
    configure the adapter with ``public_key: fake.public_key``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        messaging_profile_id: str | None = None,
        unroutable_countries: Iterable[str] = (),
        opted_out: Iterable[str] = (),
        signing_key: Ed25519PrivateKey | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key or "KEY" + uuid.uuid4().hex.upper() + "_" + uuid.uuid4().hex[:22]
        self.messaging_profile_id = messaging_profile_id or str(uuid.uuid4())
        self.organization_id = str(uuid.uuid4())
        self.unroutable_countries = set(unroutable_countries)
        self.opted_out = set(opted_out)
        self.signing_key = signing_key or Ed25519PrivateKey.generate()
        raw = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        #: The public key as Telnyx's portal shows it: base64 of the 32 raw bytes.
        self.public_key = base64.b64encode(raw).decode("ascii")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/messages", self.handle_send)

    def new_message_id(self) -> str:
        return str(uuid.uuid4())

    async def read(self, request: web.Request) -> Incoming:
        raw = await request.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            # Keep what came (for check) without guessing a destination.
            return Incoming(fields={_NOT_JSON: raw.decode(errors="replace")}, to=None)
        to = doc.get("to")
        return Incoming(fields=doc, to=to if isinstance(to, str) else None)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and hmac.compare_digest(token.strip(), self.api_key)

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        if not self._authorized(request):
            return self.error_response(401, "10009")
        f = incoming.fields
        if _NOT_JSON in f:
            return self.error_response(400, "10015")
        to = f.get("to")
        if not isinstance(to, str) or not to:
            return self._param_error("10004", "/to")
        sender = f.get("from")
        profile = f.get("messaging_profile_id")
        if profile is not None and profile != self.messaging_profile_id:
            # Not a profile of this account (or not even an id).
            return self._param_error("10006", "/messaging_profile_id")
        if not sender and not profile:
            return self._param_error("10004", "/from")
        if isinstance(sender, str) and sender:
            if sender.startswith("+"):
                if not _e164_valid(sender):
                    return self._param_error("10002", "/from")
            elif _ALPHANUMERIC.match(sender):
                # An alphanumeric sender ID needs a messaging profile.
                if not profile:
                    return self._param_error("10004", "/messaging_profile_id")
            elif not _SHORT_CODE.match(sender):
                return self._param_error("10016", "/from")
        elif sender is not None:
            return self._param_error("10015", "/from")
        text = f.get("text")
        if f.get("type", "SMS") == "SMS" and (not isinstance(text, str) or not text):
            return self._param_error("10004", "/text")
        webhook = f.get("webhook_url")
        if webhook is not None and not (
            isinstance(webhook, str)
            and webhook.startswith(("http://", "https://"))
            and len(webhook) <= 2000
        ):
            return self._param_error("10003", "/webhook_url")
        if not to.startswith("+"):
            return self._param_error("10016", "/to")
        if not _e164_valid(to):
            return self._param_error("10002", "/to")
        if to in self.opted_out:
            return self.error_response(409, "40300", src=str(sender or profile), dst=to)
        if country_of(to) in self.unroutable_countries:
            return self.error_response(400, "40008")
        return None

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        f = incoming.fields
        sender = f.get("from")
        record = ReceivedMessage(
            provider_message_id=message_id,
            to=f["to"],
            sender=sender if isinstance(sender, str) else f.get("messaging_profile_id"),
            text=str(f.get("text") or ""),
            fields=dict(f),
            received_at=self.now(),
            status_callback=f.get("webhook_url"),
        )
        payload = self._outbound_payload(record, "queued", received_at=_iso_now())
        return web.json_response({"data": payload}, status=200), record

    def _outbound_payload(
        self,
        record: ReceivedMessage,
        status: str,
        *,
        received_at: str,
        sent_at: str | None = None,
        completed_at: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Telnyx's OutboundMessagePayload of ``record`` with recipient status ``status``."""
        f = record.fields
        text = record.text
        info = analyze(text) if text else None
        sender = f.get("from")
        queued = status == "queued"
        return {
            "record_type": "message",
            "direction": "outbound",
            "id": record.provider_message_id,
            "type": "SMS",
            "messaging_profile_id": f.get("messaging_profile_id") or self.messaging_profile_id,
            "organization_id": self.organization_id,
            "from": {"phone_number": sender, "carrier": "Telnyx", "line_type": "Wireless"},
            "to": [
                {
                    "phone_number": record.to,
                    "status": status,
                    "carrier": "" if queued else "T-MOBILE USA, INC.",
                    "line_type": "" if queued else "Wireless",
                }
            ],
            "cc": [],
            "text": text,
            "subject": None,
            "media": [],
            "webhook_url": f.get("webhook_url") or "",
            "webhook_failover_url": f.get("webhook_failover_url") or "",
            "encoding": info.encoding if info else "GSM-7",
            "parts": info.segments if info else 1,
            "tags": [],
            "cost": None,
            "cost_breakdown": None,
            "tcr_campaign_id": None,
            "tcr_campaign_billable": False,
            "tcr_campaign_registered": None,
            "received_at": received_at,
            "sent_at": sent_at,
            "completed_at": completed_at,
            "valid_until": _iso_now(dt.timedelta(hours=4)) if queued else None,
            "errors": errors or [],
        }

    # -- webhooks: Telnyx's v2 event envelope, signed with Ed25519 ---------------------------

    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The signature headers Telnyx sends with ``body``: Ed25519 over
        ``"{timestamp}|{body}"`` (``timestamp`` defaults to now, in Unix seconds)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.signing_key.sign(stamp.encode() + b"|" + body)
        return {
            "telnyx-signature-ed25519": base64.b64encode(signature).decode("ascii"),
            "telnyx-timestamp": stamp,
        }

    def _event(
        self, url: str, event_type: str, payload: Mapping[str, Any]
    ) -> tuple[str, str, dict[str, str], bytes]:
        envelope = {
            "data": {
                "record_type": "event",
                "id": str(uuid.uuid4()),
                "event_type": event_type,
                "occurred_at": _iso_now(),
                "payload": payload,
            },
            "meta": {"attempt": 1, "delivered_to": url},
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **self.sign(body)}
        return "POST", url, headers, body

    def opt_out_receipt(self) -> tuple[str, Any] | None:
        """The recipient opted out: a message.finalized event with errors[0].code 40300."""
        return "failed", "40300"

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        assert record.status_callback is not None
        event_type, telnyx_status, usual = RECEIPTS.get(status, ("message.finalized", status, None))
        code = str(error_code) if error_code is not None else usual
        errors = []
        if code is not None and event_type == "message.finalized" and telnyx_status != "delivered":
            title, detail = ERRORS.get(code, ("Error", "An error occurred."))
            errors.append({"code": code, "title": title, "detail": detail})
        now = _iso_now()
        payload = self._outbound_payload(
            record,
            telnyx_status,
            received_at=now,
            sent_at=None if telnyx_status in ("queued", "sending_failed") else now,
            completed_at=now if event_type == "message.finalized" else None,
            errors=errors,
        )
        return self._event(record.status_callback, event_type, payload)

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        info = analyze(text) if text else None
        payload = {
            "record_type": "message",
            "direction": "inbound",
            "id": str(uuid.uuid4()),
            "type": "SMS",
            "messaging_profile_id": self.messaging_profile_id,
            "organization_id": self.organization_id,
            "from": {
                "phone_number": sender,
                "carrier": "T-MOBILE USA, INC.",
                "line_type": "Wireless",
            },
            "to": [
                {
                    "phone_number": recipient,
                    "status": "webhook_delivered",
                    "carrier": "Telnyx",
                    "line_type": "Wireless",
                }
            ],
            "cc": [],
            "text": text,
            "subject": None,
            "media": [],
            "webhook_url": url,
            "webhook_failover_url": "",
            "encoding": info.encoding if info else "GSM-7",
            "parts": info.segments if info else 1,
            "tags": [],
            "cost": None,
            "received_at": _iso_now(),
            "sent_at": None,
            "completed_at": None,
            "valid_until": None,
            "errors": [],
        }
        return self._event(url, "message.received", payload)

    def _param_error(self, code: str, pointer: str, *, status: int = 400) -> web.Response:
        return self.error_response(status, code, pointer=pointer)

    def opt_out_response(self, incoming: Incoming) -> web.Response:
        """409 with code 40300, "Blocked due to STOP message"."""
        return self.error_response(409, "40300", dst=incoming.to or "the recipient")

    def error_response(
        self,
        status: int,
        code: Any,
        *,
        pointer: str | None = None,
        src: str = "the sender",
        dst: str = "the recipient",
    ) -> web.Response:
        if code is None:
            code = USUAL_CODES.get(status, "10007" if status >= 500 else "10015")
        code = str(code)
        title, detail = ERRORS.get(code, ("Error", "An error occurred."))
        error: dict[str, Any] = {
            "code": code,
            "title": title,
            "detail": detail.format(src=src, dst=dst),
            "meta": {"url": f"https://developers.telnyx.com/api/errors/{code}"},
        }
        if pointer is not None:
            error["source"] = {"pointer": pointer}
        return web.json_response({"errors": [error]}, status=status)
