"""Twilio Programmable Messaging: the Messages resource of API 2010-04-01.

Wire format (checked against twilio/twilio-oai ``spec/json/twilio_api_v2010.json``
in tests/test_twilio_conformance.py, and by running the official ``twilio`` SDK
against :class:`smsroute.testing.FakeTwilio`):

- ``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json``, HTTP Basic
  (Account SID : Auth Token, or API key SID : API key secret), form body with
  ``To``, ``From`` or ``MessagingServiceSid``, ``Body``, and optionally
  ``StatusCallback``, ``ValidityPeriod``, ``Attempt``.
- Success: HTTP 201, JSON message resource with ``sid`` (``SM...``).
- Failure: JSON ``{"code", "message", "more_info", "status"}``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from multidict import CIMultiDictProxy

from smsroute.config import ProviderConfig
from smsroute.message import DeliveryStatus, Outcome
from smsroute.numbers import scrub
from smsroute.providers.base import (
    HttpProvider,
    HttpRequest,
    Inbound,
    OutboundSMS,
    Receipt,
    Reply,
    WebhookError,
    WebhookRequest,
    classify_status,
    json_object,
    new_http_request,
    new_reply,
    parse_retry_after,
)

# Twilio error code -> outcome.  Sources: Twilio's error dictionary
# (https://www.twilio.com/docs/api/errors/<code>), as collected in
# shared/reference/providers-wire.md section 1 "Errors".
ERROR_OUTCOMES: Mapping[int, Outcome] = {
    # The request as written can never succeed: do not fail over.
    21211: Outcome.REJECTED,  # invalid 'To' phone number
    21214: Outcome.REJECTED,  # 'To' phone number cannot be reached
    21602: Outcome.REJECTED,  # message body is required
    21604: Outcome.REJECTED,  # 'To' phone number is required
    21610: Outcome.REJECTED,  # recipient replied STOP: opted out
    21614: Outcome.REJECTED,  # 'To' is not a mobile number
    21617: Outcome.REJECTED,  # body exceeds 1600 characters
    # This account cannot reach this destination; another provider may.
    21408: Outcome.UNROUTABLE,  # permission to send to this region is not enabled
    21612: Outcome.UNROUTABLE,  # this To/From pair cannot be routed
    21401: Outcome.UNROUTABLE,  # invalid 'From' phone number
    21601: Outcome.UNROUTABLE,  # 'From' is not a valid SMS-capable number
    21606: Outcome.UNROUTABLE,  # 'From' is not a valid, SMS-capable number for this account
    21608: Outcome.UNROUTABLE,  # trial accounts: unverified 'To'
    21609: Outcome.UNROUTABLE,  # invalid StatusCallback for 'From'
    21603: Outcome.UNROUTABLE,  # 'From' phone number is required (misconfigured sender)
    # Slow down.
    20429: Outcome.THROTTLED,  # too many requests
    21611: Outcome.THROTTLED,  # 'From' number's queue exceeds 10 hours of messages
    # The account is unusable as configured.
    20003: Outcome.AUTH,  # authentication failed
    20005: Outcome.AUTH,  # account not active
    20404: Outcome.AUTH,  # resource not found: wrong account SID in the URL
    30002: Outcome.AUTH,  # account suspended
    # Twilio's own trouble.
    20500: Outcome.TRANSIENT,  # internal server error
    20503: Outcome.TRANSIENT,  # service unavailable
}

# Error codes that mean "this recipient opted out": the router records the opt-out.
# 21610 "Attempt to send to unsubscribed recipient": the number replied STOP to this
# sender or Messaging Service (https://www.twilio.com/docs/api/errors/21610;
# shared/reference/providers-wire.md sections 1 and 12, "Opt-out").
OPT_OUT_CODES = frozenset({21610})


def _basic_auth(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic (RFC 7617, UTF-8).

    Built by hand: ``aiohttp.BasicAuth`` is deprecated in recent aiohttp (a
    DeprecationWarning per use), and its replacement ``aiohttp.encode_basic_auth``
    is missing from older releases that this package still supports.
    """
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


# Receipt statuses (MessageStatus) -> ours.  Source: the spec's message_enum_status and
# Twilio's "Track the message status" guide (shared/reference/providers-wire.md §1).
RECEIPT_STATUSES: Mapping[str, DeliveryStatus] = {
    "accepted": "queued",
    "scheduled": "queued",
    "queued": "queued",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
    "partially_delivered": "undelivered",
}

# Asynchronous error codes (ErrorCode on a receipt) that another provider might get
# past; the rest are the number's or the content's.  Source: Twilio's error pages
# 30001-30036 as collected in shared/reference/providers-wire.md §1.
RETRYABLE_RECEIPT_ERRORS = frozenset(
    {"30001", "30003", "30007", "30008", "30009", "30017", "30034", "30036"}
)
PERMANENT_RECEIPT_ERRORS = frozenset({"30004", "30005", "30006", "21610", "30002", "30010"})
# ErrorCode values of a status callback that mean "this recipient opted out": the
# router records the opt-out.  21610 (above, OPT_OUT_CODES) also ends a message
# Twilio accepted first, e.g. one queued through a Messaging Service: it then comes
# as a failed status callback with ErrorCode 21610
# (https://www.twilio.com/docs/api/errors/21610).
RECEIPT_OPT_OUT_CODES = frozenset({"21610"})
_FAILED = ("failed", "undelivered")

_EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def twilio_signature(
    key: str, url: str, params: Iterable[tuple[str, str]], algorithm: str = "HMAC_SHA1"
) -> str:
    """Twilio's request signature: HMAC over the URL followed by every POST
    parameter name and value, sorted by name (then value), base64-encoded.

    ``algorithm`` is HMAC_SHA1 (the Auth Token scheme) or HMAC_SHA256 (the
    shared-key scheme announced by X-Twilio-Webhooks-Signature-Settings).
    """
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    data = url + "".join(
        name + value for name in sorted(grouped) for value in sorted(grouped[name])
    )
    digest = hashlib.sha256 if algorithm.upper() == "HMAC_SHA256" else hashlib.sha1
    return base64.b64encode(hmac.new(key.encode(), data.encode(), digest).digest()).decode()


def _raw_dlr_done(value: str | None) -> datetime.datetime | None:
    # RawDlrDoneDate is YYMMDDhhmm with no zone; Twilio documents it as UTC.
    if not value or len(value) != 10 or not value.isdigit():
        return None
    try:
        return datetime.datetime.strptime(value, "%y%m%d%H%M").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def _url_variants(url: str) -> list[str]:
    # Twilio signs the URL with or without the default port depending on the product.
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = 443 if parts.scheme == "https" else 80
    bare = urlunsplit(
        parts._replace(netloc=host if parts.port in (None, default) else parts.netloc)
    )
    ported = urlunsplit(parts._replace(netloc=f"{host}:{parts.port or default}"))
    return [url, bare, ported]


class TwilioProvider(HttpProvider):
    """Twilio's Messages API.

    Config (besides the common keys)::

        twilio-main:
          type: twilio
          account_sid: ${TWILIO_ACCOUNT_SID}
          auth_token: ${TWILIO_AUTH_TOKEN}
          from: "+15005550006"              # or messaging_service_sid: MG...

    Or sending with an API key (``SK...``) and its secret::

          account_sid: ${TWILIO_ACCOUNT_SID}
          api_key_sid: ${TWILIO_API_KEY_SID}
          api_key_secret: ${TWILIO_API_KEY_SECRET}
          auth_token: ${TWILIO_AUTH_TOKEN}  # verifies webhooks: Twilio signs them with it

    Twilio signs every webhook with the account's Auth Token, never with an
    API key's secret: with an API key, webhooks are verified only when
    ``auth_token`` (or ``webhook_secret``) is given too, and refused (403)
    otherwise.  A config that asks for receipts (``defaults.webhook_url`` or
    ``status_callback``) without it is a ConfigError.
    """

    type_name = "twilio"
    required_options = frozenset({"account_sid"})
    optional_options = frozenset(
        {
            "auth_token",
            "api_key_sid",
            "api_key_secret",
            "messaging_service_sid",
            "validity_period",
            "webhook_secret",
        }
    )
    secret_options = frozenset({"auth_token", "api_key_secret", "webhook_secret"})
    default_base_url = "https://api.twilio.com"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.account_sid = str(opts["account_sid"])
        key_sid = opts.get("api_key_sid")
        if key_sid:
            username, password = str(key_sid), str(opts.get("api_key_secret") or "")
        else:
            username, password = self.account_sid, str(opts.get("auth_token") or "")
        self.url = f"{self.base_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        self.messaging_service_sid = opts.get("messaging_service_sid")
        self.validity_period = opts.get("validity_period")
        self._headers = {
            "Authorization": _basic_auth(username, password),
            "Accept": "application/json",
        }
        #: What webhooks are verified with (None: nothing can verify them, all are refused).
        key = opts.get("webhook_secret") or opts.get("auth_token")
        self._webhook_key = str(key) if key else None

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        sid = str(options.get("account_sid", ""))
        if sid and not sid.startswith("AC"):
            problems.append(("account_sid", "a Twilio Account SID starts with 'AC'"))
        mss = options.get("messaging_service_sid")
        if mss is not None and not str(mss).startswith("MG"):
            problems.append(("messaging_service_sid", "a Messaging Service SID starts with 'MG'"))
        vp = options.get("validity_period")
        if vp is not None and (
            isinstance(vp, bool) or not isinstance(vp, int) or not 1 <= vp <= 36000
        ):
            problems.append(("validity_period", "validity_period is whole seconds from 1 to 36000"))
        key_sid, key_secret = options.get("api_key_sid"), options.get("api_key_secret")
        if key_sid and not str(key_sid).startswith("SK"):
            problems.append(("api_key_sid", "a Twilio API key SID starts with 'SK'"))
        if key_sid and not key_secret:
            problems.append(
                (
                    "api_key_secret",
                    "api_key_sid needs api_key_secret: the secret Twilio showed when the key "
                    "was made (auth_token is the account's Auth Token, not the key's secret)",
                )
            )
        if key_secret and not key_sid:
            problems.append(
                ("api_key_sid", "api_key_secret needs api_key_sid: the key's SID (SK...)")
            )
        if not key_sid and not options.get("auth_token"):
            problems.append(
                (
                    "auth_token",
                    "a twilio provider needs auth_token (the account's Auth Token), or "
                    "api_key_sid and api_key_secret",
                )
            )
        return problems

    @classmethod
    def check_webhook_options(
        cls, options: Mapping[str, Any], webhook_url: str | None
    ) -> list[tuple[str, str]]:
        if webhook_url is None or not options.get("api_key_sid"):
            return []
        if options.get("auth_token") or options.get("webhook_secret"):
            return []
        return [
            (
                "api_key_sid",
                "webhooks cannot be verified: Twilio signs them with the account's Auth "
                "Token, not with the API key's secret; add auth_token: ${TWILIO_AUTH_TOKEN} "
                "to this provider (or remove webhook_url and status_callback)",
            )
        ]

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        form = {"To": sms.to, "Body": sms.text}
        if self.messaging_service_sid and not sms.sender:
            form["MessagingServiceSid"] = str(self.messaging_service_sid)
        elif sms.sender:
            form["From"] = sms.sender
        if sms.status_callback:
            form["StatusCallback"] = sms.status_callback
        if self.validity_period is not None:
            form["ValidityPeriod"] = str(self.validity_period)
        form["Attempt"] = str(sms.attempt)
        return new_http_request("POST", self.url, self._headers, form)

    # -- webhooks ------------------------------------------------------------------------

    webhook_methods = {"status": frozenset({"POST"}), "inbound": frozenset({"POST", "GET"})}

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        key = self._webhook_key
        if key is None:
            raise WebhookError(
                403,
                f"cannot verify: Twilio signs webhooks with the account's Auth Token; "
                f"give provider {self.name} auth_token",
            )
        signature = request.header("X-Twilio-Signature")
        if signature is None:
            raise WebhookError(403, "missing X-Twilio-Signature")
        settings = request.header("X-Twilio-Webhooks-Signature-Settings") or ""
        algorithm = "HMAC_SHA1"
        for part in settings.split(","):
            name, _, value = part.partition("=")
            if name.strip() == "algorithm" and value.strip():
                algorithm = value.strip().upper()
        if algorithm not in ("HMAC_SHA1", "HMAC_SHA256"):
            raise WebhookError(
                403,
                "X-Twilio-Webhooks-Signature-Settings names an algorithm other than "
                "HMAC_SHA1 and HMAC_SHA256",
            )
        params = request.form_pairs() if request.method == "POST" else []
        for url in _url_variants(request.url):
            expected = twilio_signature(key, url, params, algorithm)
            if hmac.compare_digest(expected.encode(), signature.encode()):
                return
        raise WebhookError(403, "X-Twilio-Signature does not match")

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        p = request.params()
        sid = p.get("MessageSid") or p.get("SmsSid")
        raw = p.get("MessageStatus") or p.get("SmsStatus")
        if not sid or not raw:
            raise WebhookError(400, "status callback without MessageSid and MessageStatus")
        status = RECEIPT_STATUSES.get(raw, "unknown")
        code = p.get("ErrorCode") or None
        retryable: bool | None = None
        if code in RETRYABLE_RECEIPT_ERRORS:
            retryable = True
        elif code in PERMANENT_RECEIPT_ERRORS:
            retryable = False
        return [
            Receipt(
                provider_message_id=sid,
                status=status,
                error_code=code,
                at=_raw_dlr_done(p.get("RawDlrDoneDate")),
                retryable=retryable,
                opted_out=code in RECEIPT_OPT_OUT_CODES and status in _FAILED,
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        p = request.params()
        sender, recipient = p.get("From"), p.get("To")
        if not sender or not recipient or "Body" not in p:
            raise WebhookError(400, "inbound message without From, To and Body")
        return [
            Inbound(
                sender=sender,
                recipient=recipient,
                text=p["Body"],
                provider_message_id=p.get("MessageSid") or p.get("SmsMessageSid"),
            )
        ]

    def webhook_response(self, kind: str) -> tuple[int, str, bytes]:
        if kind == "inbound":  # Twilio reads TwiML from the answer: an empty one sends no reply
            return 200, "text/xml", _EMPTY_TWIML
        return 200, "text/plain", b""

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        doc = json_object(status, headers, body)
        if isinstance(doc, Reply):
            return doc
        if 200 <= status < 300:
            sid = doc.get("sid")
            if not isinstance(sid, str) or not sid:
                return Reply(
                    Outcome.TRANSIENT,
                    status_code=status,
                    detail="malformed reply: success without a message sid",
                )
            return new_reply(Outcome.ACCEPTED, sid, status)
        code = doc.get("code")
        outcome = ERROR_OUTCOMES.get(code) if isinstance(code, int) else None
        if outcome is None:
            outcome = classify_status(status)
        message = doc.get("message")
        detail = f"Twilio {code}" if code is not None else f"HTTP {status}"
        if isinstance(message, str) and message:
            detail += f": {scrub(message[:200])}"
        return Reply(
            outcome,
            status_code=status,
            error_code=str(code) if code is not None else None,
            detail=detail,
            retry_after=parse_retry_after(headers.get("Retry-After")),
            opted_out=isinstance(code, int) and code in OPT_OUT_CODES,
        )
