"""A fake Twilio Messages API that answers as Twilio does.

It checks HTTP Basic auth against its account, reads the form body, validates
``To``/``From``/``Body`` the way Twilio does (with Twilio's error codes), and
answers 201 with Twilio's message resource.  Requests and answers are checked
against Twilio's OpenAPI spec, and the official ``twilio`` SDK runs against it.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hmac
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import phonenumbers
from aiohttp import web

from smsroute.encoding import analyze
from smsroute.providers.twilio import twilio_signature
from smsroute.testing.fake import FakeProvider, Incoming, ReceivedMessage, country_of

ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    20503: "Service unavailable",
    21211: "The 'To' number is not a valid phone number.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number is not currently reachable using the 'From' phone number via SMS.",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}
USUAL_CODES = {400: 21211, 401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}


def _rfc2822_now() -> str:
    return email.utils.formatdate(usegmt=True).replace("GMT", "+0000")


class FakeTwilio(FakeProvider):
    """Twilio's ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` on 127.0.0.1.

    >>> async with FakeTwilio() as fake:
    ...     config = {"type": "twilio", "base_url": fake.url,
    ...               "account_sid": fake.account_sid, "auth_token": fake.auth_token}

    ``unroutable_countries`` answer 21408 (region not enabled), as a Twilio
    account without geo-permissions for them would.
    """

    def __init__(
        self,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        unroutable_countries: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.unroutable_countries = set(unroutable_countries)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{account_sid}/Messages.json", self.handle_send)

    def new_message_id(self) -> str:
        return "SM" + secrets.token_hex(16)

    async def read(self, request: web.Request) -> Incoming:
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        return Incoming(fields=fields, to=fields.get("To"))

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(
            password, self.auth_token
        )

    def check(self, request: web.Request, incoming: Incoming) -> web.Response | None:
        if not self._authorized(request):
            return self.error_response(401, 20003)
        if request.match_info["account_sid"] != self.account_sid:
            return self.error_response(404, 20404)
        f = incoming.fields
        to = f.get("To")
        if not to:
            return self.error_response(400, 21604)
        if not f.get("From") and not f.get("MessagingServiceSid"):
            return self.error_response(400, 21603)
        body = f.get("Body")
        if not body and not f.get("MediaUrl") and not f.get("ContentSid"):
            return self.error_response(400, 21602)
        if body and len(body) > 1600:
            return self.error_response(400, 21617)
        try:
            valid = phonenumbers.is_valid_number(phonenumbers.parse(to, None))
        except phonenumbers.NumberParseException:
            valid = False
        if not valid:
            return self.error_response(400, 21211)
        if country_of(to) in self.unroutable_countries:
            return self.error_response(400, 21408)
        return None

    def accept(
        self, request: web.Request, incoming: Incoming, message_id: str
    ) -> tuple[web.Response, ReceivedMessage]:
        f = incoming.fields
        now = _rfc2822_now()
        body = f.get("Body", "")
        # Through a Messaging Service alone, Twilio has not picked a sender yet: the
        # message is "accepted", "from" is null and "num_segments" is "0" (spec, message resource).
        via_service = bool(f.get("MessagingServiceSid")) and not f.get("From")
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message_id}.json"
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": f.get("From"),
            "messaging_service_sid": f.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "0" if via_service else str(analyze(body).segments if body else 1),
            "price": None,
            "price_unit": "USD",
            "sid": message_id,
            "status": "accepted" if via_service else "queued",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": f["To"],
            "uri": uri,
        }
        record = ReceivedMessage(
            provider_message_id=message_id,
            to=f["To"],
            sender=f.get("From") or f.get("MessagingServiceSid"),
            text=body,
            fields=dict(f),
            received_at=self.now(),
            status_callback=f.get("StatusCallback"),
        )
        return web.json_response(resource, status=201), record

    # -- receipts and inbound: form posts signed with X-Twilio-Signature ------------------

    _STATUSES = {
        "delivered": "delivered",
        "undelivered": "undelivered",
        "failed": "failed",
        "sent": "sent",
        "queued": "queued",
    }

    def _signed_post(
        self, url: str, params: dict[str, str]
    ) -> tuple[str, str, dict[str, str], bytes]:
        signature = twilio_signature(self.auth_token, url, params.items())
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
            "User-Agent": "TwilioProxy/1.1",
        }
        return "POST", url, headers, urlencode(params).encode()

    def opt_out_receipt(self) -> tuple[str, Any] | None:
        """The recipient opted out: a failed status callback with ErrorCode 21610."""
        return "failed", 21610

    def receipt_request(
        self, record: ReceivedMessage, status: str, error_code: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        assert record.status_callback is not None
        twilio_status = self._STATUSES.get(status, status)
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "From": record.sender or "",
            "To": record.to,
            "MessageSid": record.provider_message_id,
            "SmsSid": record.provider_message_id,
            "MessageStatus": twilio_status,
            "SmsStatus": twilio_status,
        }
        if twilio_status in ("undelivered", "failed"):
            params["ErrorCode"] = str(error_code if error_code is not None else 30003)
        if twilio_status in ("delivered", "undelivered"):
            params["RawDlrDoneDate"] = datetime.datetime.now(datetime.UTC).strftime("%y%m%d%H%M")
        return self._signed_post(record.status_callback, params)

    def inbound_request(
        self, url: str, sender: str, recipient: str, text: str
    ) -> tuple[str, str, dict[str, str], bytes]:
        sid = self.new_message_id()
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "From": sender,
            "To": recipient,
            "Body": text,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsStatus": "received",
        }
        return self._signed_post(url, params)

    def opt_out_response(self, incoming: Incoming) -> web.Response:
        """400 with code 21610, "Attempt to send to unsubscribed recipient"."""
        return self.error_response(400, 21610)

    def error_response(self, status: int, code: Any) -> web.Response:
        code = (
            code if code is not None else USUAL_CODES.get(status, 20500 if status >= 500 else 21211)
        )
        body = {
            "code": code,
            "message": ERROR_MESSAGES.get(code, "Error"),
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return web.json_response(body, status=status)
