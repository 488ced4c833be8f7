"""A fake Bandwidth Messaging API v2 that answers as Bandwidth does.

It checks HTTP Basic credentials and the account in the path, requires a JSON
body, validates ``applicationId``/``to``/``from``/``text`` the way Bandwidth
does (400 ``request-validation`` with ``fieldErrors``) and answers 202 with
Bandwidth's message object.  Requests and answers are checked against
Bandwidth's OpenAPI description (Bandwidth/python-sdk ``bandwidth.yml``) and
the official ``bandwidth-sdk`` runs against it (tests/test_bandwidth.py).

Error bodies follow dev.bandwidth.com/docs/messaging/errors; the wording of
field errors other than those quoted from Bandwidth's docs is unconfirmed.

Callbacks: Bandwidth has no per-message callback URL, so the fake has the
Application's: ``callback_url`` (its OutboundCallbackUrl, None by default: no
receipts are sent until a test sets it) and ``callback_username`` /
``callback_password`` (its callback credentials, sent as HTTP Basic auth).
Receipts and inbound messages are JSON arrays of one event, shaped as the
spec's ``statusCallback`` / ``inboundCallback`` examples; the message's ``tag``
is echoed as Bandwidth echoes it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Mapping
from typing import Any

import phonenumbers
from aiohttp import web

from smsroute.encoding import analyze
from smsroute.testing.fake import FakeProvider, Incoming, ReceivedMessage

#: ``description`` per error ``type``.  Quoted from dev.bandwidth.com unless marked.
DESCRIPTIONS: Mapping[str, str] = {
    "request-validation": "Your request could not be accepted",
    "unauthorized": "Authentication Failed",
    "forbidden": "Access Denied",
    "unsupported-content-type": "Content-Type must be application/json",  # [unconfirmed]
    "max-message-queue-size-exceeded": (
        "The SMS queue for your account is full and cannot accept more messages right now. "
        "Your allowed rate is 60 messages per minute. The capacity of this queue is 900 "
        "messages (15 minutes). Reduce your message sending rate, or contact support to "
        "increase your allowed rate."
    ),
    "internal-server-error": "Internal Server Error",  # [unconfirmed]
    "service-unavailable": "Service Unavailable",  # [unconfirmed]
}
#: Our receipt outcome -> (callback type, description, usual errorCode).  Descriptions
#: as in the spec's callback examples and Bandwidth's error-code table.  4702
#: (subscriber unavailable) is a carrier-side, retryable failure; 4432 (account not
#: enabled for the country) a failure Bandwidth detects before any carrier.
RECEIPTS: Mapping[str, tuple[str, str, int | None]] = {
    "queued": ("message-sending", "Message is sending to carrier.", None),
    "sent": ("message-sent", "Message sent to carrier", None),
    "delivered": ("message-delivered", "Message delivered to handset.", None),
    "undelivered": ("message-failed", "destination-subscriber-unavailable", 4702),
    "failed": ("message-failed", "forbidden to country", 4432),
}
ERROR_DESCRIPTIONS: Mapping[int, str] = {
    4432: "forbidden to country",
    4702: "destination-subscriber-unavailable",
    4720: "invalid-destination-address",
    4775: "destination-rejected-due-to-user-opt-out",
    5600: "destination-carrier-queue-full",
}

USUAL_TYPES: Mapping[int, str] = {
    400: "request-validation",
    401: "unauthorized",
    403: "forbidden",
    415: "unsupported-content-type",
    429: "max-message-queue-size-exceeded",
    500: "internal-server-error",
    503: "service-unavailable",
}
MAX_TEXT = 2048  # messageText maxLength in the spec
_SENDER_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 \-+_&]{1,11}")  # the spec's rule for "from"
_E164 = re.compile(r"\+[1-9]\d{1,14}")
#: Marks, in ``Incoming.fields``, a body that was not a JSON object.
_NOT_JSON = "__not_a_json_object__"


def _e164_error(value: Any) -> str:
    # The spec's own example of a field error ("fieldError" schema).
    return f"'{value}' must be replaced with a valid E164 formatted telephone number"


class FakeBandwidth(FakeProvider):
    """Bandwidth's ``POST /api/v2/users/{accountId}/messages`` on 127.0.0.1.

    >>> async with FakeBandwidth() as fake:
    ...     config = {"type": "bandwidth", "base_url": fake.url,
    ...               "account_id": fake.account_id, "username": fake.username,
    ...               "password": fake.password, "application_id": fake.application_id}

    Like Bandwidth, it accepts any well-formed ``from``: a number not on the
    account fails later, in a ``message-failed`` callback (4403), not here.

    ``callback_url`` is the Application's callback URL for message status
    events; with ``callback_username``/``callback_password`` (fresh ones unless
    given; ``callback_auth=False`` for an Application without credentials)
    every callback carries ``Authorization: Basic``.
    """

    def __init__(
        self,
        *,
        account_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        application_id: str | None = None,
        callback_url: str | None = None,
        callback_username: str | None = None,
        callback_password: str | None = None,
        callback_auth: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.account_id = account_id or str(secrets.randbelow(9_000_000) + 1_000_000)
        self.username = username or "api-" + secrets.token_hex(6)
        self.password = password or secrets.token_urlsafe(18)
        self.application_id = application_id or str(uuid.uuid4())
        #: The Application's OutboundCallbackUrl: where status callbacks go.
        self.callback_url = callback_url
        self.callback_username: str | None = None
        self.callback_password: str | None = None
        if callback_auth:
            self.callback_username = callback_username or "cb-" + secrets.token_hex(4)
            self.callback_password = callback_password or secrets.token_urlsafe(12)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v2/users/{account_id}/messages", self.handle_send)

    def new_message_id(self) -> str:
        # As "1589228074636lm4k2je7j7jklbn2": epoch milliseconds, then 16 base-36 characters.
        tail = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(16))
        return f"{time.time_ns() // 1_000_000}{tail}"

    async def read(self, request: web.Request) -> Incoming:
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return Incoming(fields={_NOT_JSON: raw.decode(errors="replace")}, to=None)
        to = doc.get("to")
        if isinstance(to, list):
            to = to[0] if to else None
        return Incoming(fields=doc, to=to if isinstance(to, str) else None)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.username) and hmac.compare_digest(
            password, self.password
        )

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        # 401 also "when the specified user does not have access to the account".
        if not self._authorized(request) or request.match_info["account_id"] != self.account_id:
            return self.error_response(401, "unauthorized")
        if request.content_type != "application/json":
            return self.error_response(415, "unsupported-content-type")
        if _NOT_JSON in incoming.fields:
            return self.error_response(400, "request-validation")
        problems = self._field_errors(incoming.fields)
        if problems:
            body = {
                "type": "request-validation",
                "description": DESCRIPTIONS["request-validation"],
                "fieldErrors": [
                    {"fieldName": name, "description": text} for name, text in problems
                ],
            }
            return web.json_response(body, status=400)
        return None

    def _field_errors(self, f: Mapping[str, Any]) -> list[tuple[str, str]]:
        # Wording from Bandwidth's docs for to/from/text, from the spec's fieldError
        # example for malformed numbers; the other descriptions are ours [unconfirmed].
        problems: list[tuple[str, str]] = []
        app = f.get("applicationId")
        if not app:
            problems.append(("applicationId", "'applicationId' is required"))
        elif app != self.application_id:
            problems.append(("applicationId", f"'{app}' is not a valid application"))
        to = f.get("to")
        numbers = to if isinstance(to, list) else [to] if isinstance(to, str) else []
        if not numbers:
            problems.append(("to", "'to' must contain at least one telephone number"))
        problems += [("to", _e164_error(n)) for n in numbers if not _is_e164(n)]
        sender = f.get("from")
        if not sender:
            problems.append(("from", "'from' must contain exactly one telephone number"))
        elif not (_is_e164(sender) or (isinstance(sender, str) and _SENDER_ID.fullmatch(sender))):
            problems.append(("from", _e164_error(sender)))
        text = f.get("text")
        if not text and not f.get("media"):
            problems.append(("text", "'text' is required unless media is included"))
        elif isinstance(text, str) and len(text) > MAX_TEXT:
            problems.append(("text", f"'text' must be {MAX_TEXT} characters or less"))
        priority = f.get("priority")
        if priority is not None and priority not in ("default", "high"):
            problems.append(("priority", "'priority' must be one of default, high"))
        return problems

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        f = incoming.fields
        to = f["to"] if isinstance(f["to"], list) else [f["to"]]
        text = f.get("text") or ""
        now = dt.datetime.now(dt.UTC)
        message: dict[str, Any] = {
            "id": message_id,
            "owner": f["from"],
            "applicationId": f["applicationId"],
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "segmentCount": analyze(text).segments if text else 1,
            "direction": "out",
            "to": to,
            "from": f["from"],
            "text": text,
            "priority": f.get("priority", "default"),
        }
        for key in ("media", "tag", "expiration"):
            if key in f:
                message[key] = f[key]
        record = ReceivedMessage(
            provider_message_id=message_id,
            to=to[0],
            sender=f["from"],
            text=text,
            fields=dict(f),
            received_at=self.now(),
            status_callback=self.callback_url,  # the Application's, not the message's
        )
        return web.json_response(message, status=202), record

    # -- callbacks: JSON arrays, HTTP Basic auth with the Application's credentials ---------

    def callback_headers(self) -> dict[str, str]:
        """The headers of a callback: JSON, and Basic auth when the Application has credentials."""
        headers = {"Content-Type": "application/json"}
        if self.callback_username is not None and self.callback_password is not None:
            pair = f"{self.callback_username}:{self.callback_password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    def _callback(
        self, url: str, event: Mapping[str, Any]
    ) -> tuple[str, str, dict[str, str], bytes]:
        body = json.dumps([event], separators=(",", ":")).encode()
        return "POST", url, self.callback_headers(), body

    def opt_out_receipt(self) -> tuple[str, Any] | None:
        """The recipient opted out: a message-failed callback with errorCode 4775."""
        return "failed", 4775

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        assert record.status_callback is not None
        kind, description, usual = RECEIPTS.get(status, ("message-failed", status, 4702))
        f = record.fields
        now = _iso_now()
        to = f["to"] if isinstance(f.get("to"), list) else [record.to]
        message: dict[str, Any] = {
            "id": record.provider_message_id,
            "owner": record.sender,
            "applicationId": f.get("applicationId", self.application_id),
            "time": now,
            "segmentCount": analyze(record.text).segments if record.text else 1,
            "direction": "out",
            "to": to,
            "from": record.sender,
            "text": "",  # callbacks do not echo the content
        }
        for key in ("tag", "priority"):
            if key in f:
                message[key] = f[key]
        event: dict[str, Any] = {
            "time": now,
            "type": kind,
            "to": record.to,
            "description": description,
            "message": message,
        }
        if kind == "message-failed":
            code = int(error_code) if error_code is not None else usual
            event["errorCode"] = code
            if code is not None:
                event["description"] = ERROR_DESCRIPTIONS.get(code, description)
        return self._callback(record.status_callback, event)

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        now = _iso_now()
        event = {
            "time": now,
            "type": "message-received",
            "to": recipient,
            "description": "Incoming message received",
            "message": {
                "id": self.new_message_id(),
                "owner": recipient,
                "applicationId": self.application_id,
                "time": now,
                "segmentCount": analyze(text).segments if text else 1,
                "direction": "in",
                "to": [recipient],
                "from": sender,
                "text": text,
            },
        }
        return self._callback(url, event)

    def error_response(self, status: int, code: Any) -> web.Response:
        kind = code if code is not None else USUAL_TYPES.get(status)
        if kind is None and status == 404:
            # What Bandwidth's docs show for a path it does not know: the web
            # framework's error page, not {type, description} as the spec says.
            body: dict[str, Any] = {
                "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
                "status": 404,
                "error": "Not Found",
                "message": "Not Found",
                "path": f"/api/v2/users/{self.account_id}/messages",
            }
            return web.json_response(body, status=404)
        if kind is None:
            kind = "internal-server-error" if status >= 500 else "request-validation"
        kind = str(kind)
        body = {"type": kind, "description": DESCRIPTIONS.get(kind, kind)}
        return web.json_response(body, status=status)


def _iso_now() -> str:
    # As in the spec's callback examples: '2024-09-14T18:20:11.160744Z'.
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _is_e164(value: Any) -> bool:
    if not isinstance(value, str) or not _E164.fullmatch(value):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(value, None))
    except phonenumbers.NumberParseException:
        return False
