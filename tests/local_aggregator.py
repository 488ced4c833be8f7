"""A local SMS aggregator for the generic ``http`` adapter: a real server on 127.0.0.1.

No vendor stands behind the ``http`` adapter, so the gateway it is tested against
is written here: a small SMS gateway as a user might run on their own network,
in the two dialects of config/http-aggregator.yaml (``LocalAggregator``): a JSON
API that answers with HTTP errors, and a legacy form gateway that answers HTTP
200 with a status inside.  It also calls back as such gateways do: delivery
receipts to the message's callback URL and inbound messages to a URL given,
authenticated as its ``webhook_auth`` says (an HMAC over timestamp and body, HTTP
Basic, a shared token in a header or the query, or nothing).

Imported as ``from local_aggregator import ...`` (pytest puts tests/ on sys.path)
by tests/test_http_adapter.py, tests/test_http_webhooks.py and
tests/test_webhook_fuzz.py.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from smsroute.testing import FakeProvider, Incoming, ReceivedMessage
from smsroute.testing.fake import country_of

JSON_PATH = "/api/v1/messages"
FORM_PATH = "/cgi-bin/sendsms"

#: How the JSON gateway signs its callbacks, as config/http-aggregator.yaml declares it.
HMAC_OPTIONS: Mapping[str, str] = {
    "header": "X-Aggregator-Signature",
    "algorithm": "sha256",
    "signed": "timestamp.body",
    "timestamp_header": "X-Aggregator-Timestamp",
    "encoding": "hex",
    "prefix": "sha256=",
}
#: Our delivery statuses in each dialect's receipts (the JSON gateway's SMPP-like
#: words; the form gateway's Kannel-like numbers).
JSON_STATUSES = {
    "sent": "ENROUTE",
    "delivered": "DELIVRD",
    "undelivered": "UNDELIV",
    "failed": "REJECTD",
}
FORM_STATUSES = {"sent": "8", "delivered": "1", "undelivered": "2", "failed": "16"}

# The form gateway's status codes (HTTP 200 for all of them).
FORM_TEXTS = {
    1: "Throttled",
    2: "Missing parameter",
    3: "Invalid to",
    4: "Bad credentials",
    5: "Internal error",
    6: "Unroutable",
}


class LocalAggregator(FakeProvider):
    """A tiny SMS gateway, in the ``json`` or the ``form`` dialect of the example config.

    ``auth`` is how it checks callers: ``basic`` (``username`` : ``token``),
    ``bearer``, ``header`` (``X-Api-Key``) or ``query`` (``?key=``).  Numbers
    in ``unroutable`` countries get NO_ROUTE (form: status 6).  Error messages
    quote the number back, and a refused credential is quoted too, as careless
    gateways do.
    """

    def __init__(
        self,
        variant: str = "json",
        auth: str = "bearer",
        unroutable: Iterable[str] = (),
        *,
        webhook_auth: str | None = None,
        hmac_options: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.auth = auth
        self.username = "acme"
        self.token = secrets.token_hex(12)
        self.unroutable = set(unroutable)
        #: How its callbacks are authenticated: hmac, basic, token-header, token-query or none.
        self.webhook_auth = webhook_auth or ("hmac" if variant == "json" else "basic")
        self.hmac_options = {**HMAC_OPTIONS, **(hmac_options or {})}
        self.webhook_secret = secrets.token_hex(16)
        self.callback_username = "smsroute"
        self.callback_password = secrets.token_hex(10)
        self.webhook_token = secrets.token_hex(12)
        self._inbound_counter = 0

    def auth_section(self, token: str | None = None) -> dict[str, str]:
        """The ``auth:`` a config needs to call this gateway."""
        value = token or self.token
        return {
            "basic": {"kind": "basic", "username": self.username, "password": value},
            "bearer": {"kind": "bearer", "token": value},
            "header": {"kind": "header", "name": "X-Api-Key", "value": value},
            "query": {"kind": "query", "name": "key", "value": value},
        }[self.auth]

    def add_routes(self, app: web.Application) -> None:
        path = JSON_PATH if self.variant == "json" else FORM_PATH
        app.router.add_post(path, self.handle_send)
        app.router.add_get(path, self.handle_send)

    def new_message_id(self) -> str:
        self._counter += 1
        return f"agg-{self._counter:06d}" if self.variant == "json" else secrets.token_hex(8)

    async def read(self, request: web.Request) -> Incoming:
        fields: dict[str, Any] = {k: v for k, v in request.query.items() if k != "key"}
        if request.method != "GET":
            if self.variant == "json":
                try:
                    doc = json.loads(await request.read())
                except ValueError:
                    doc = None
                if isinstance(doc, dict):
                    fields.update(doc)
            else:
                fields.update({k: str(v) for k, v in (await request.post()).items()})
        to = fields.get("to")
        if isinstance(to, str) and to.isdigit():
            to = "+" + to
        return Incoming(fields=fields, to=to if isinstance(to, str) else None)

    def _presented(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if self.auth == "basic" and header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return password if user == self.username else ""
        if self.auth == "bearer" and header.startswith("Bearer "):
            return header[7:]
        if self.auth == "header":
            return request.headers.get("X-Api-Key")
        if self.auth == "query":
            return request.query.get("key")
        return None

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        presented = self._presented(request)
        if presented is None or not hmac.compare_digest(presented, self.token):
            return self.refuse(401, "UNAUTHORIZED", f"invalid credential '{presented}'")
        f = incoming.fields
        for name in ("to", "text"):
            if not f.get(name):
                return self.refuse(400, "MISSING_FIELD", f"missing {name}")
        if country_of(incoming.to) is None:
            return self.refuse(400, "INVALID_NUMBER", f"number {incoming.to} is not valid")
        if country_of(incoming.to) in self.unroutable:
            return self.refuse(422, "NO_ROUTE", f"no route to {incoming.to}")
        return None

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        f = incoming.fields
        assert incoming.to is not None
        record = ReceivedMessage(
            provider_message_id=message_id,
            to=incoming.to,
            sender=f.get("from"),
            text=str(f["text"]),
            fields=dict(f),
            received_at=self.now(),
            status_callback=f.get("callback_url") or f.get("dlr-url"),
        )
        if self.variant == "json":
            data = {"messages": [{"id": message_id, "to": f["to"], "status": "queued"}]}
            return web.json_response({"data": data}, status=202), record
        part = {"status": "0", "message-id": message_id, "to": f["to"]}
        return web.json_response({"message-count": "1", "messages": [part]}), record

    def refuse(self, status: int, code: str, message: str) -> web.Response:
        """An error in this gateway's dialect."""
        if self.variant == "json":
            return web.json_response({"error": {"code": code, "message": message}}, status=status)
        number = {
            "UNAUTHORIZED": 4,
            "MISSING_FIELD": 2,
            "INVALID_NUMBER": 3,
            "NO_ROUTE": 6,
            "RATE_LIMITED": 1,
        }.get(code, 5)
        part = {"status": str(number), "error-text": f"{FORM_TEXTS[number]}: {message}"}
        return web.json_response({"message-count": "1", "messages": [part]})

    def error_response(self, status: int, code: Any) -> web.Response:
        if status >= 500 and code is None:
            return web.Response(status=status, text=f"<h1>{status}</h1>", content_type="text/html")
        if code is None:
            code = {401: "UNAUTHORIZED", 402: "NO_CREDIT", 422: "NO_ROUTE", 429: "RATE_LIMITED"}
            code = code.get(status, "BAD_REQUEST")
        if self.variant == "form" and str(code).isdigit():
            part = {"status": str(code), "error-text": FORM_TEXTS.get(int(code), "Error")}
            return web.json_response({"messages": [part]}, status=status)
        return self.refuse(status, str(code), "scripted failure")

    def throttle_response(self, retry_after: float | None) -> web.Response:
        resp = self.refuse(429, "RATE_LIMITED", "slow down")
        if retry_after is not None:
            resp.headers["Retry-After"] = f"{retry_after:g}"
        return resp

    # -- callbacks: delivery receipts and inbound messages --------------------------------

    def webhook_auth_section(self) -> Any:
        """The ``webhook_auth:`` a config needs to accept this gateway's callbacks."""
        if self.webhook_auth == "hmac":
            return {"hmac": {**self.hmac_options, "secret": self.webhook_secret}}
        if self.webhook_auth == "basic":
            return {
                "basic": {"username": self.callback_username, "password": self.callback_password}
            }
        if self.webhook_auth == "token-header":
            return {"token": {"header": "X-Webhook-Token", "value": self.webhook_token}}
        if self.webhook_auth == "token-query":
            return {"token": {"query": "token", "value": self.webhook_token}}
        return "none"

    def signed(
        self, method: str, url: str, body: bytes, content_type: str | None
    ) -> tuple[str, str, dict[str, str], bytes]:
        """A callback authenticated as ``webhook_auth`` says: (method, url, headers, body)."""
        headers = {"Content-Type": content_type} if content_type else {}
        if self.webhook_auth == "token-query":
            url += ("&" if "?" in url else "?") + urlencode({"token": self.webhook_token})
        elif self.webhook_auth == "token-header":
            headers["X-Webhook-Token"] = self.webhook_token
        elif self.webhook_auth == "basic":
            pair = f"{self.callback_username}:{self.callback_password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif self.webhook_auth == "hmac":
            o = self.hmac_options
            stamp = str(int(time.time()))
            if o["signed"] == "body":
                signed = body
            elif o["signed"] == "url+body":
                signed = url.encode() + body
            else:
                signed = stamp.encode() + b"." + body
                headers[o["timestamp_header"]] = stamp
            digest = hmac.new(
                self.webhook_secret.encode(), signed, getattr(hashlib, o["algorithm"])
            ).digest()
            text = digest.hex() if o["encoding"] == "hex" else base64.b64encode(digest).decode()
            headers[o["header"]] = o.get("prefix", "") + text
        return method, url, headers, body

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        """The JSON gateway posts ``{"results": [...]}``; the form gateway calls its
        ``dlr-url`` by GET with the receipt in the query."""
        assert record.status_callback is not None, "the message had no callback URL"
        url = record.status_callback
        if self.variant == "form":
            query = {"message-id": record.provider_message_id, "status": FORM_STATUSES[status]}
            if error_code is not None:
                query["err"] = str(error_code)
            url += ("&" if "?" in url else "?") + urlencode(query)
            return self.signed("GET", url, b"", None)
        result: dict[str, Any] = {
            "id": record.provider_message_id,
            "reference": record.fields.get("reference"),
            "status": JSON_STATUSES[status],
            "done_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        if error_code is not None:
            result["error"] = {"code": error_code}
        body = json.dumps({"results": [result]}).encode()
        return self.signed("POST", url, body, "application/json")

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        """A message to one of our numbers: JSON posted, or (form gateway) a GET query."""
        self._inbound_counter += 1
        message_id = f"mo-{self._inbound_counter:06d}-{secrets.token_hex(4)}"
        if self.variant == "form":
            query = {"id": message_id, "from": sender.lstrip("+"), "to": recipient, "text": text}
            url += ("&" if "?" in url else "?") + urlencode(query)
            return self.signed("GET", url, b"", None)
        doc = {
            "id": message_id,
            "from": sender,
            "to": recipient,
            "text": text,
            "received_at": int(time.time()),
        }
        return self.signed("POST", url, json.dumps(doc).encode(), "application/json")
