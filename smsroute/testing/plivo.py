"""A fake Plivo Message API (``POST /v1/Account/{auth_id}/Message/``) that answers as Plivo does.

It checks HTTP Basic auth against its account, reads the JSON body, validates
``src``/``powerpack_uuid``/``dst``/``text`` the way Plivo documents them
(docs.plivo.com/docs/messaging/api/message/send-a-message: numbers are
sanitised of ``+ - . ( ) /`` and spaces and must then be at most 14 digits,
alphanumeric senders at most 11 characters, text at most 1600 GSM-7 or 737
UCS-2 characters), and answers 202 with Plivo's ``message(s) queued`` body
and its ``message_uuid`` **array**.  Errors are Plivo's ``{"api_id", "error"}``
with the documented HTTP statuses; a destination country the account may not
reach is a 403 (plivo-python treats a 403 on POST /Message/ as a
GeoPermissionError).  The official ``plivo`` SDK runs against it in
tests/test_plivo.py.

Plivo's API errors carry no codes, only text, so ``fail(status, code)`` takes
the error *text* as ``code`` (default: a text for that status).  Texts marked
below as the SDK's are what plivo-python itself says for the same mistake; the
others are ours: Plivo's exact wording for them is unconfirmed.  So is whether
Plivo's 429 carries ``Retry-After``: ``throttle(retry_after)`` sends one.

Webhooks (``receipts(...)``, ``send_receipt``, ``send_inbound``): the message
status callback goes to the message's ``url`` with its ``method`` (form POST or
GET query), with the fields of docs.plivo.com message-status-callbacks; an
inbound message is a form POST of ``From``, ``To``, ``Type``, ``Text``,
``MessageUUID``... (messaging/api/message/handling-incoming).  Every webhook is
signed with ``X-Plivo-Signature-V2`` / ``-Ma-V2`` / ``-V2-Nonce`` (the
messaging docs' scheme) and, when ``signature_versions`` includes ``"v3"``,
with ``X-Plivo-Signature-V3`` / ``-Ma-V3`` / ``-V3-Nonce`` as well.  The signers
are written apart from the adapter's; the tests check them with the official
SDK's validators.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import secrets
import string
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import phonenumbers
from aiohttp import web

from smsroute.encoding import analyze
from smsroute.testing.fake import FakeProvider, Incoming, ReceivedMessage, country_of

__all__ = ["FakePlivo"]

# Default error text per HTTP status (Plivo's "API response" page describes the
# statuses; the texts are ours).
STATUS_TEXTS = {
    400: "A parameter is missing or is invalid",
    401: "Authentication failed",
    403: "Message could not be sent: geo permissions for the destination country are not enabled",
    404: "not found",  # the example body on Plivo's "API response" page
    405: "HTTP method not allowed",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
}
# The SDK's own messages for these mistakes (plivo/resources/messages.py).
NO_SENDER = "Specify either powerpack_uuid or src in request params to send a message"
BOTH_SENDERS = (
    "Both powerpack_uuid and src cannot be specified. "
    "Specify either powerpack_uuid or src in request params to send a message."
)
SAME_NUMBER = "destination number cannot be same as source number"

MAX_GSM7, MAX_UCS2 = 1600, 737
_STRIPPED = re.compile(r"[/\-.+() \s]")


#: Our receipt outcome -> Plivo's callback ``Status`` and default ``ErrorCode``.
CALLBACK_STATUSES = {
    "delivered": ("delivered", None),
    "undelivered": ("undelivered", "80"),  # destination temporarily unavailable
    "failed": ("failed", "300"),  # failed to dispatch
    "sent": ("sent", None),
    "queued": ("queued", None),
}
#: Inbound texts Plivo flags in ``MessageIntent`` (its standard keywords).
INTENTS = {
    "STOP": "optout",
    "STOPALL": "optout",
    "UNSUBSCRIBE": "optout",
    "CANCEL": "optout",
    "END": "optout",
    "QUIT": "optout",
    "START": "optin",
    "UNSTOP": "optin",
    "HELP": "help",
    "INFO": "help",
}


def _sanitize(number: str) -> str:
    return _STRIPPED.sub("", number)


def _auth_id() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "MA" + "".join(secrets.choice(alphabet) for _ in range(18))


class FakePlivo(FakeProvider):
    """Plivo's ``POST /v1/Account/{auth_id}/Message/`` on 127.0.0.1.

    >>> async with FakePlivo() as fake:
    ...     config = {"type": "plivo", "base_url": fake.url,
    ...               "auth_id": fake.auth_id, "auth_token": fake.auth_token}

    ``unroutable_countries`` answer 403, as an account whose geo permissions
    leave those countries off does.  ``powerpack_uuids`` are the Powerpacks the
    account owns (a send through another one is refused).
    """

    def __init__(
        self,
        *,
        auth_id: str | None = None,
        auth_token: str | None = None,
        unroutable_countries: Iterable[str] = (),
        powerpack_uuids: Iterable[str] = (),
        signature_versions: Iterable[str] = ("v2",),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.auth_id = auth_id or _auth_id()
        self.auth_token = auth_token or secrets.token_urlsafe(30)[:40]
        self.unroutable_countries = set(unroutable_countries)
        self.powerpack_uuids = set(powerpack_uuids)
        #: The main account's token, which signs the ``-Ma-`` headers (this
        #: account's own unless it stands for a subaccount).
        self.main_auth_token = self.auth_token
        #: Which signature headers webhooks carry: "v2" (messaging's), "v3", or both.
        self.signature_versions = tuple(signature_versions)
        if not set(self.signature_versions) <= {"v2", "v3"}:
            raise ValueError("signature_versions holds 'v2' and/or 'v3'")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/Account/{auth_id}/Message/", self.handle_send)

    def new_message_id(self) -> str:
        return str(uuid.uuid4())

    async def read(self, request: web.Request) -> Incoming:
        raw = await request.read()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            # Not a JSON object: check() refuses it as Plivo would a missing dst.
            return Incoming(fields={}, to=None)
        dst = doc.get("dst")
        to = None
        if isinstance(dst, str) and dst:
            to = "+" + _sanitize(dst)
        return Incoming(fields=doc, to=to)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.auth_id) and hmac.compare_digest(
            password, self.auth_token
        )

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        if not self._authorized(request) or request.match_info["auth_id"] != self.auth_id:
            return self.error_response(401, None)
        f = incoming.fields
        src, powerpack = f.get("src"), f.get("powerpack_uuid")
        if src and powerpack:
            return self.error_response(400, BOTH_SENDERS)
        if not src and not powerpack:
            return self.error_response(400, NO_SENDER)
        dst = f.get("dst")
        if not isinstance(dst, str) or not dst:
            return self.error_response(400, "Missing mandatory parameter: dst")
        if f.get("type", "sms") not in ("sms", "mms", "whatsapp"):
            return self.error_response(400, "type must be one of sms, mms, whatsapp")
        text = f.get("text")
        if not isinstance(text, str) or not text:
            return self.error_response(400, "Missing mandatory parameter: text")
        info = analyze(text)
        if len(text) > (MAX_GSM7 if info.encoding == "GSM-7" else MAX_UCS2):
            return self.error_response(400, "text exceeds the maximum length for one message")
        if powerpack and powerpack not in self.powerpack_uuids:
            return self.error_response(400, "Invalid powerpack_uuid: no such Powerpack")
        if isinstance(src, str) and src:
            # "All characters other than A-Z, a-z, and 0-9 are stripped off" (Plivo docs).
            clean = re.sub(r"[^A-Za-z0-9]", "", src)
            limit = 14 if clean.isdigit() else 11
            if not clean or len(clean) > limit:
                return self.error_response(400, f"'{src}' is not a valid source address (src)")
        digits = _sanitize(dst)
        if not digits.isdigit() or len(digits) > 14 or not _valid(digits):
            # The shape Plivo answers with (plivo/plivo-node issue 222).
            return self.error_response(400, f"'{digits}' is not a valid phone number.")
        if isinstance(src, str) and re.sub(r"[^A-Za-z0-9]", "", src) == digits:
            return self.error_response(400, SAME_NUMBER)
        callback = f.get("url")
        if callback is not None and (
            not isinstance(callback, str) or not callback.startswith(("http://", "https://"))
        ):
            return self.error_response(400, "url must be a valid http or https URL")
        if f.get("method", "POST") not in ("GET", "POST"):
            return self.error_response(400, "method must be GET or POST")
        if country_of(incoming.to) in self.unroutable_countries:
            return self.error_response(403, None)
        return None

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        f = incoming.fields
        body = {
            "api_id": str(uuid.uuid4()),
            "message": "message(s) queued",
            "message_uuid": [message_id],
        }
        sender = f.get("src") or f.get("powerpack_uuid")
        record = ReceivedMessage(
            provider_message_id=message_id,
            to=incoming.to or "",
            sender=str(sender) if sender else None,
            text=str(f.get("text", "")),
            fields=dict(f),
            received_at=self.now(),
            status_callback=f.get("url"),
        )
        return web.json_response(body, status=202), record

    def error_response(self, status: int, code: Any) -> web.Response:
        text = code if code is not None else STATUS_TEXTS.get(status, "Error")
        return web.json_response({"api_id": str(uuid.uuid4()), "error": text}, status=status)

    # -- webhooks: status callbacks and inbound messages ---------------------------------

    def opt_out_receipt(self) -> tuple[str, Any] | None:
        """The recipient opted out: a failed status callback with ErrorCode 200."""
        return "failed", "200"

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        assert record.status_callback is not None
        plivo_status, default_code = CALLBACK_STATUSES.get(status, (status, None))
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        fields = {
            "MessageUUID": record.provider_message_id,
            "ParentMessageUUID": record.provider_message_id,
            "PartInfo": "1 of 1",
            "Sequence": "1",
            "To": record.to.removeprefix("+"),
            "From": (record.sender or "").removeprefix("+"),
            "Type": "sms",
            "Status": plivo_status,
            "Units": "1",
            "TotalRate": "0.00500",
            "TotalAmount": "0.00500",
            "MCC": "262",
            "MNC": "01",
            "MessageTime": now,
            "QueuedTime": now,
        }
        if plivo_status in ("sent", "delivered", "undelivered"):
            fields["SentTime"] = now
        if plivo_status in ("delivered", "undelivered"):
            fields["DeliveryReportTime"] = now
        code = error_code if error_code is not None else default_code
        if plivo_status in ("failed", "undelivered") and code is not None:
            fields["ErrorCode"] = str(code)
        method = str(record.fields.get("method") or "POST").upper()
        return self.signed_request(method, record.status_callback, fields)

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        fields = {
            "From": sender.removeprefix("+"),
            "To": recipient.removeprefix("+"),
            "Type": "sms",
            "Text": text,
            "MessageUUID": str(uuid.uuid4()),
            "Units": "1",
            "TotalRate": "0",
            "TotalAmount": "0",
            "MessageIntent": INTENTS.get(text.strip().upper(), ""),
        }
        return self.signed_request("POST", url, fields)

    def signed_request(
        self, method: str, url: str, fields: Mapping[str, str]
    ) -> tuple[str, str, dict[str, str], bytes]:
        """``fields`` sent to ``url`` as Plivo sends them (form POST, or GET query),
        with the signature headers of ``signature_versions``."""
        body = b""
        if method == "GET":
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(fields)}"
        else:
            body = urlencode(fields).encode()
        headers = {"User-Agent": "PlivoHTTP"}
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if "v2" in self.signature_versions:
            nonce = "".join(secrets.choice(string.digits) for _ in range(20))
            headers["X-Plivo-Signature-V2-Nonce"] = nonce
            headers["X-Plivo-Signature-V2"] = _v2(self.auth_token, url, nonce)
            headers["X-Plivo-Signature-Ma-V2"] = _v2(self.main_auth_token, url, nonce)
        if "v3" in self.signature_versions:
            nonce = "".join(secrets.choice(string.digits) for _ in range(20))
            params = dict(fields) if method != "GET" else {}
            headers["X-Plivo-Signature-V3-Nonce"] = nonce
            headers["X-Plivo-Signature-V3"] = _v3(self.auth_token, method, url, nonce, params)
            headers["X-Plivo-Signature-Ma-V3"] = _v3(
                self.main_auth_token, method, url, nonce, params
            )
        return method, url, headers, body


def _valid(digits: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse("+" + digits, None))
    except phonenumbers.NumberParseException:
        return False


# -- signers, written apart from the adapter's (sources there) ----------------------------


def _hmac(token: str, message: str) -> str:
    mac = hmac.new(token.encode(), message.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _v2(token: str, url: str, nonce: str) -> str:
    parts = urlsplit(url)
    return _hmac(token, f"{parts.scheme}://{parts.netloc}{parts.path}{nonce}")


def _v3(token: str, method: str, url: str, nonce: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = sorted(parse_qsl(parts.query, keep_blank_values=True))
    joined = "&".join(f"{k}={v}" for k, v in query)
    if method == "GET":
        message = f"{base}?{joined}" if joined else base
    else:
        message = base + (f"?{joined}" if joined or params else "")
        if joined and params:
            message += "."
        message += "".join(f"{k}{params[k]}" for k in sorted(params))
    return _hmac(token, f"{message}.{nonce}")
