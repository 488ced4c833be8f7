"""A fake Vonage SMS API (``POST /sms/json``) that answers as Vonage does.

Vonage's quirk is kept: every answer of the API itself is **HTTP 200**, errors
included, with a per-part ``status`` (the spec's ``x-errors`` codes) and
``error-text``.  Only Vonage's edge answers otherwise (5xx).  So the fault
script maps onto what Vonage really sends:

- ``fail(200, code)`` answers 200 with that status; ``fail(400)``, ``fail(401)``,
  ``fail(402)``, ``fail(403)`` and ``fail(429)`` answer 200 with their in-band
  equivalents (3, 4, 9, 8, 1) unless a ``code`` is given; ``fail(5xx)``
  answers that HTTP status with an HTML page, as a load balancer would.
- ``throttle()`` answers 200 with status 1 ("Throttled"): Vonage sends no
  Retry-After, so ``retry_after`` is not expressed on the wire.

Auth is checked as Vonage does: ``api_key`` + ``api_secret`` in the form (the
spec's way) or as HTTP Basic (the v4 SDK's way), or ``api_key`` + ``timestamp``
+ ``sig`` signed with the account's signature secret.  Responses are checked
against Vonage's OpenAPI description in tests/test_vonage.py, and the official
``vonage`` SDK runs against this fake.

Webhooks (``receipts(...)``, ``send_receipt``, ``send_inbound``): the SMS API's
delivery receipt (spec ``DeliveryReceipt``: ``msisdn``, ``to``, ``network-code``,
``messageId``, ``price``, ``status``, ``scts``, ``err-code``, ``api-key``,
``client-ref``, ``message-timestamp``) and inbound message (spec
``InboundMessage``), sent the way the dashboard's ``webhook_method`` says:
``GET`` (query), ``POST`` (form) or ``POST-JSON``.  With a ``signature_secret``
they carry ``timestamp``, ``nonce`` and ``sig`` (``signature_method``), as
Vonage does once signed webhooks are enabled.  With ``webhook_api="messages"``
they are Messages API v1 webhooks instead: JSON with ``message_uuid``, and,
with a ``signature_secret``, ``Authorization: Bearer`` an HS256 JWT with
``iat``, ``jti``, ``iss``, ``payload_hash``, ``api_key`` and ``application_id``
(Nexmo/station ``messages/concepts/signed-webhooks.md``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import jwt
import phonenumbers
from aiohttp import web

from smsroute.encoding import analyze
from smsroute.testing.fake import FakeProvider, Incoming, ReceivedMessage, country_of

__all__ = ["FakeVonage"]

# error-text per status.  The meanings are the spec's x-errors (also
# developer.vonage.com/en/api-errors/sms).  The exact wording Vonage puts in
# error-text is confirmed only for status 1 (Vonage support article 205065817)
# and status 7 ("Number barred.", vonage-python-sdk's sms/tests/data); "Missing
# <name> param" for status 2 is from a third-party guide; the others are our
# wording (some recalled from real answers: "Bad Credentials", "... - rejected"),
# unconfirmed.  The adapter never depends on the wording, except for 'from' in
# a status 2 or 3 text.
ERROR_TEXTS = {
    1: "You have exceeded the submission capacity allowed on this account, please back-off and retry.",
    2: "Missing params",
    3: "Invalid params",
    4: "Bad Credentials",
    5: "Internal Error",
    6: "Unroutable message - rejected",
    7: "Number barred.",
    8: "Partner account barred.",
    9: "Partner quota exceeded.",
    10: "Too many existing binds.",
    11: "Account not enabled for HTTP.",
    12: "Message too long.",
    14: "Invalid Signature",
    15: "Illegal Sender Address - rejected",
    22: "Invalid network code.",
    23: "Invalid callback url",
    29: "Non White-listed Destination - rejected",
    32: "Signature and API secret both present.",
    33: "Number de-activated.",
}
# In-band status for an HTTP status given to fail(): what Vonage says instead.
IN_BAND = {200: 5, 400: 3, 401: 4, 402: 9, 403: 8, 404: 4, 429: 1}

# Vonage splits texts into parts; "up to 3200 characters" is our reading of its
# concatenation guidance (unconfirmed).  Longer texts get status 12.
MAX_TEXT = 3200
# The SDK's limit for ``callback`` (vonage_sms SmsMessage: max_length=100); the
# server's is unconfirmed.  Longer or non-http(s) URLs get status 23.
MAX_CALLBACK = 100
SIGNATURE_METHODS = ("md5hash", "md5", "sha1", "sha256", "sha512")
#: The dashboard's choices for how SMS API webhooks are sent.
WEBHOOK_METHODS = ("GET", "POST", "POST-JSON")
#: Our receipt outcome -> the SMS API's DLR ``status`` and default ``err-code``
#: (an outcome not listed here is sent as written, err-code "0").
DLR_STATUSES = {
    "delivered": ("delivered", "0"),
    "undelivered": ("failed", "2"),  # absent subscriber, temporary
    "failed": ("rejected", "11"),  # unroutable
    "sent": ("accepted", "0"),
    "queued": ("buffered", "0"),
    "expired": ("expired", "1"),
}
#: Our receipt outcome -> the Messages API's ``status``.
MESSAGES_STATUSES = {
    "delivered": "delivered",
    "undelivered": "rejected",
    "failed": "undeliverable",
    "sent": "submitted",
    "queued": "submitted",
}
TYPES = ("text", "unicode", "binary", "wappush", "vcal", "vcard")
_TO = re.compile(r"\d{7,15}")


def _envelope(parts: list[dict[str, str]]) -> dict[str, Any]:
    return {"message-count": str(len(parts)), "messages": parts}


class FakeVonage(FakeProvider):
    """Vonage's ``POST /sms/json`` on 127.0.0.1.

    >>> async with FakeVonage() as fake:
    ...     config = {"type": "vonage", "base_url": fake.url,
    ...               "api_key": fake.api_key, "api_secret": fake.api_secret}

    ``unroutable_countries`` answer status 6 ("Unroutable message"), as Vonage
    does for destinations it has no route to.  ``balance`` is the account's
    credit (EUR): every part costs ``price``, and a send the balance cannot
    cover gets status 9 (partner quota).  With ``signature_secret`` set, signed
    requests are verified with ``signature_method``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        signature_secret: str | None = None,
        signature_method: str = "md5hash",
        unroutable_countries: Iterable[str] = (),
        balance: float = 10.0,
        price: float = 0.0333,
        webhook_method: str = "POST-JSON",
        webhook_api: str = "sms",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        if signature_method not in SIGNATURE_METHODS:
            raise ValueError(f"signature_method is one of {', '.join(SIGNATURE_METHODS)}")
        if webhook_method not in WEBHOOK_METHODS:
            raise ValueError(f"webhook_method is one of {', '.join(WEBHOOK_METHODS)}")
        if webhook_api not in ("sms", "messages"):
            raise ValueError("webhook_api is 'sms' or 'messages'")
        #: How SMS API webhooks are sent (the dashboard's setting).
        self.webhook_method = webhook_method
        #: Which API's webhooks the account gets: "sms" (sig) or "messages" (JWT).
        self.webhook_api = webhook_api
        #: The Vonage application a Messages API webhook names in its JWT.
        self.application_id = str(uuid.uuid4())
        self.api_key = api_key or secrets.token_hex(4)  # 8 characters, as the spec says
        self.api_secret = api_secret or secrets.token_hex(8)
        self.signature_secret = signature_secret
        self.signature_method = signature_method
        self.unroutable_countries = set(unroutable_countries)
        self.balance = balance
        self.price = price
        #: Mobile network code reported for every destination.
        self.network = "23410"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/sms/json", self.handle_send)

    def new_message_id(self) -> str:
        # Today's ids are UUIDs (vonage-python-sdk test data); older ones were 16 hex digits.
        return str(uuid.uuid4())

    async def read(self, request: web.Request) -> Incoming:
        fields = {k: str(v) for k, v in request.query.items()}
        form = await request.post()
        fields.update({k: str(v) for k, v in form.items()})
        to = fields.get("to")
        return Incoming(fields=fields, to=f"+{to}" if to and to.isdigit() else to)

    # -- checks ------------------------------------------------------------------------

    def _basic(self, request: web.Request) -> tuple[str, str] | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user, password

    def _auth_problem(self, request: web.Request, f: dict[str, str]) -> web.Response | None:
        basic = self._basic(request)
        key = f.get("api_key") or (basic[0] if basic else None)
        if not key:
            return self.error(2, "Missing api_key")
        if not hmac.compare_digest(key, self.api_key):
            return self.error(4)
        if "sig" in f:
            if "api_secret" in f:
                return self.error(32)
            if self.signature_secret is None or "timestamp" not in f:
                return self.error(14)
            expected = _signature(f, self.signature_secret, self.signature_method)
            if not hmac.compare_digest(f["sig"].lower(), expected):
                return self.error(14)
            return None
        secret = f.get("api_secret") if "api_secret" in f else (basic[1] if basic else None)
        if secret is None:
            return self.error(2, "Missing api_secret")
        if not hmac.compare_digest(secret, self.api_secret):
            return self.error(4)
        return None

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        f = dict(incoming.fields)
        refusal = self._auth_problem(request, f)
        if refusal is not None:
            return refusal
        for name in ("from", "to"):
            if not f.get(name):
                return self.error(2, f"Missing {name} param")
        kind = f.get("type", "text")
        if kind not in TYPES:
            return self.error(3, "Invalid type param")
        text = f.get("text", "")
        if kind in ("text", "unicode") and not text:
            return self.error(2, "Missing text param")
        if len(text) > MAX_TEXT:
            return self.error(12)
        to = f["to"]
        if not _TO.fullmatch(to) or not _valid(to):
            return self.error(3, "Invalid to param")
        callback = f.get("callback")
        if callback is not None and (
            len(callback) > MAX_CALLBACK or not callback.startswith(("http://", "https://"))
        ):
            return self.error(23)
        if incoming.to and country_of(incoming.to) in self.unroutable_countries:
            return self.error(6)
        if self.balance < self.price * self._parts(f):
            return self.error(9)
        return None

    @staticmethod
    def _parts(f: dict[str, str]) -> int:
        return max(1, analyze(f.get("text", "")).segments)

    # -- answers ---------------------------------------------------------------------------

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        f = incoming.fields
        parts: list[dict[str, str]] = []
        for n in range(self._parts(dict(f))):
            self.balance -= self.price
            part = {
                "to": f["to"],
                "message-id": message_id if n == 0 else self.new_message_id(),
                "status": "0",
                "remaining-balance": f"{self.balance:.8f}",
                "message-price": f"{self.price:.8f}",
                "network": self.network,
            }
            if "client-ref" in f:
                part["client-ref"] = f["client-ref"]
            if "account-ref" in f:
                part["account-ref"] = f["account-ref"]
            parts.append(part)
        record = ReceivedMessage(
            provider_message_id=message_id,
            to=f"+{f['to']}",
            sender=f.get("from"),
            text=f.get("text", ""),
            fields=dict(f),
            received_at=self.now(),
            status_callback=f.get("callback"),
        )
        return web.json_response(_envelope(parts)), record

    def error(self, code: int, text: str | None = None) -> web.Response:
        """Vonage's in-band error: HTTP 200, one part with ``status`` ``code``."""
        part = {"status": str(code), "error-text": text or ERROR_TEXTS.get(code, "Error")}
        return web.json_response(_envelope([part]))

    def error_response(self, status: int, code: Any) -> web.Response:
        if status >= 500:
            return web.Response(
                status=status,
                text=f"<html><body><h1>{status} {_reason(status)}</h1></body></html>",
                content_type="text/html",
            )
        if code is None:
            code = IN_BAND.get(status, 3)
        return self.error(int(code))

    def throttle_response(self, retry_after: float | None) -> web.Response:
        return self.error(1)

    # -- webhooks: delivery receipts and inbound messages --------------------------------

    def opt_out_receipt(self) -> tuple[str, Any] | None:
        """The recipient opted out: an SMS API DLR, status rejected with err-code 9 (the
        Messages API's status webhook documents no such code: None there)."""
        return None if self.webhook_api == "messages" else ("failed", "9")

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        assert record.status_callback is not None
        now = datetime.datetime.now(datetime.UTC)
        ref = record.fields.get("client-ref")
        msisdn = record.to.removeprefix("+")
        if self.webhook_api == "messages":
            doc: dict[str, Any] = {
                "message_uuid": record.provider_message_id,
                "to": msisdn,
                "from": record.sender or "",
                "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "status": MESSAGES_STATUSES.get(status, status),
                "usage": {"currency": "EUR", "price": f"{self.price:.4f}"},
                "channel": "sms",
                "destination": {"network_code": self.network},
                "sms": {"count_total": "1"},
            }
            if ref:
                doc["client_ref"] = ref
            if doc["status"] in ("rejected", "undeliverable"):
                code = str(error_code if error_code is not None else 1320)
                doc["error"] = {
                    "type": f"https://developer.vonage.com/api-errors/messages#{code}",
                    "title": code,
                    "detail": "Message failed",
                    "instance": str(uuid.uuid4()),
                }
            return self.messages_webhook(record.status_callback, doc)
        dlr_status, default_code = DLR_STATUSES.get(status, (status, "0"))
        params = {
            "msisdn": msisdn,
            "to": record.sender or "",
            "network-code": self.network,
            "messageId": record.provider_message_id,
            "price": f"{self.price:.8f}",
            "status": dlr_status,
            "scts": now.strftime("%y%m%d%H%M"),
            "err-code": str(error_code if error_code is not None else default_code),
            "api-key": self.api_key,
            "message-timestamp": now.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if ref:
            params["client-ref"] = str(ref)
        return self.sms_webhook(record.status_callback, params)

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        now = datetime.datetime.now(datetime.UTC)
        words = text.split()
        keyword = words[0].upper() if words else ""
        if self.webhook_api == "messages":
            doc = {
                "channel": "sms",
                "message_uuid": str(uuid.uuid4()),
                "to": recipient.removeprefix("+"),
                "from": sender.removeprefix("+"),
                "timestamp": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
                "usage": {"price": "0.0057", "currency": "EUR"},
                "message_type": "text",
                "text": text,
                "sms": {"num_messages": "1", "keyword": keyword},
            }
            return self.messages_webhook(url, doc)
        params = {
            "msisdn": sender.removeprefix("+"),
            "to": recipient.removeprefix("+"),
            "messageId": self.new_message_id(),
            "text": text,
            "type": "text" if analyze(text).encoding == "GSM-7" else "unicode",
            "keyword": keyword,
            "api-key": self.api_key,
            "message-timestamp": now.strftime("%Y-%m-%d %H:%M:%S"),
        }
        return self.sms_webhook(url, params)

    def sms_webhook(
        self, url: str, params: Mapping[str, str], *, at: float | None = None
    ) -> tuple[str, str, dict[str, str], bytes]:
        """An SMS API webhook of ``params`` to ``url``, sent as ``webhook_method``
        says and signed (``timestamp`` = ``at`` or now) when a signature secret is set."""
        fields = dict(params)
        if self.signature_secret is not None:
            fields["timestamp"] = str(int(time.time() if at is None else at))
            fields["nonce"] = str(uuid.uuid4())
            fields["sig"] = _signature(fields, self.signature_secret, self.signature_method)
        if self.webhook_method == "GET":
            return "GET", f"{url}{'&' if '?' in url else '?'}{urlencode(fields)}", {}, b""
        if self.webhook_method == "POST":
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            return "POST", url, headers, urlencode(fields).encode()
        body = json.dumps(fields).encode()
        return "POST", url, {"Content-Type": "application/json"}, body

    def messages_webhook(
        self, url: str, doc: Mapping[str, Any], *, at: float | None = None
    ) -> tuple[str, str, dict[str, str], bytes]:
        """A Messages API webhook (JSON POST) of ``doc`` to ``url``, with a bearer JWT
        (``iat`` = ``at`` or now) when a signature secret is set."""
        body = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json"}
        if self.signature_secret is not None:
            claims = {
                "iat": int(time.time() if at is None else at),
                "jti": str(uuid.uuid4()),
                "iss": "Vonage",
                "payload_hash": hashlib.sha256(body).hexdigest(),
                "api_key": self.api_key,
                "application_id": self.application_id,
            }
            with warnings.catch_warnings():  # Vonage's secrets may be short: not our call
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                token = jwt.encode(claims, self.signature_secret, algorithm="HS256")
            headers["Authorization"] = f"Bearer {token}"
        return "POST", url, headers, body


def _valid(digits: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse("+" + digits, None))
    except phonenumbers.NumberParseException:
        return False


def _signature(params: dict[str, str], secret: str, method: str) -> str:
    # Written apart from the adapter's signer, so the two check each other
    # (and the official SDK checks both): see the adapter's ``sign`` for sources.
    payload = "".join(
        "&{}={}".format(k, re.sub("[&=]", "_", v)) for k, v in sorted(params.items()) if k != "sig"
    ).encode()
    if method == "md5hash":
        return hashlib.md5(payload + secret.encode(), usedforsecurity=False).hexdigest()
    return hmac.new(secret.encode(), payload, getattr(hashlib, method)).hexdigest()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
