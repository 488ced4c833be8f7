"""Bandwidth Messaging API v2: create one message.

Wire format (checked against Bandwidth's own OpenAPI description,
Bandwidth/python-sdk ``bandwidth.yml``, operation ``createMessage``, in
tests/test_bandwidth.py, and by running the official ``bandwidth-sdk``
against :class:`smsroute.testing.FakeBandwidth`):

- ``POST {base}/api/v2/users/{accountId}/messages``, HTTP Basic
  (API username : password), JSON ``{"applicationId", "to": [E.164], "from",
  "text"}`` and optionally ``"priority"``.
- Success: HTTP 202, the message object; its ``id`` is the message id.
- Failure: ``{"type", "description"}``, for 400 also ``"fieldErrors":
  [{"fieldName", "description"}]`` (spec: createMessageRequestError,
  messagingRequestError; dev.bandwidth.com/docs/messaging/errors).

Bandwidth has no per-message callback URL: receipts go to the callback URL of
the Application named by ``applicationId``, set in the Bandwidth App.  So a
status callback cannot be passed on; ``check_options`` says so when a
``status_callback`` is configured for a Bandwidth provider.  Only HTTP Basic
credentials are supported, not OAuth2 client credentials.

Webhooks (spec ``components.callbacks.statusCallback`` / ``inboundCallback``,
schemas ``statusCallback`` / ``inboundCallback``; dev.bandwidth.com/docs/messaging/webhooks):

- Set the Application's ``OutboundCallbackUrl`` to our status URL and its
  ``InboundCallbackUrl`` to our inbound URL.  Bandwidth POSTs JSON, a JSON
  **array** of events (the spec models one object: both are accepted).  Status
  events: ``message-sending``, ``message-sent``, ``message-delivered``,
  ``message-failed`` (with ``errorCode``), ``message-read`` (RBM only);
  inbound: ``message-received``.  Each carries the message, whose ``tag`` is
  the client reference: the adapter sends our message id there, and Bandwidth
  echoes it in every callback, so receipts correlate without a callback URL of
  their own.
- Messaging callbacks are not signed.  Their protection is HTTP Basic auth
  (RFC 7617): the Application's ``OutboundCallbackCreds`` / ``InboundCallbackCreds``
  (``UserId``, ``Password``; dev.bandwidth.com/docs/account/applications), which
  Bandwidth sends in ``Authorization``.  Give the same pair here as
  ``callback_username`` / ``callback_password``: then a request without them, or
  with others, is refused (403; compared in constant time).  Without them,
  callbacks are accepted unauthenticated.  There is no timestamp, so no
  staleness check; a replay of a genuine callback is a duplicate and is
  processed once.
- Bandwidth retries for 24 h until it gets a 2xx; the default 200 answers it.
  An event of the other kind (an inbound message at the status URL, as with an
  Application that has one callback URL for all events) is answered 200 and
  ignored.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any

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
    accepted,
    classify_status,
    iso_time,
    parse_retry_after,
)

# Bandwidth error ``type`` -> outcome.  Source: dev.bandwidth.com/docs/messaging/errors
# ("HTTP Errors when sending messages": request-validation, unauthorized, forbidden,
# unsupported-content-type) and dev.bandwidth.com/v2-messaging/errors/tooManyReq.html
# (max-message-queue-size-exceeded), as collected in shared/reference/providers-wire.md
# section 9 "Errors".  Carrier-side codes (4xxx/5xxx) arrive only in callbacks.
ERROR_OUTCOMES: Mapping[str, Outcome] = {
    # The message as written cannot be sent; refined by field below.
    "request-validation": Outcome.REJECTED,
    # "The specified user does not have access to the account" / "to the messaging API".
    "unauthorized": Outcome.AUTH,
    "forbidden": Outcome.AUTH,
    # Content-Type refused: no message gets through as written, not this message's fault.
    "unsupported-content-type": Outcome.TRANSIENT,
    # The account's SMS queue is full: slow down.
    "max-message-queue-size-exceeded": Outcome.THROTTLED,
}

# A request-validation error about one of these fields is about this account's
# setup (its sender or application), not the message: another provider may take it.
FIELD_OUTCOMES: Mapping[str, Outcome] = {
    "from": Outcome.UNROUTABLE,
    "applicationId": Outcome.UNROUTABLE,
}

PRIORITIES = ("default", "high")

# -- callbacks -------------------------------------------------------------------------------

# Status callback ``type`` -> ours.  Source: spec ``statusCallbackTypeEnum`` and the
# mapping in shared/reference/providers-wire.md section 9 "Delivery receipt";
# ``message-failed`` is refined by its errorCode (below).  ``message-read`` is RBM only.
RECEIPT_STATUSES: Mapping[str, DeliveryStatus] = {
    "message-sending": "queued",
    "message-sent": "sent",
    "message-delivered": "delivered",
    "message-read": "delivered",
    "message-failed": "failed",
}
#: Inbound callback types (spec ``inboundCallbackTypeEnum``); only message-received is an SMS.
INBOUND_TYPES = frozenset(
    {"message-received", "requested-location-response", "suggestion-response"}
)

# Delivery error codes (``errorCode`` of message-failed).  Source: Bandwidth's
# "Message Delivery Codes" (Bandwidth/bandwidth.github.io messaging/errors/codes.md,
# now dev.bandwidth.com/docs/messaging/errors): 4 digits; first 4 = client error
# ("repeating the request will produce the same result"), 5 = service failure, 9 =
# ambiguous; second digit 0-4 = detected by Bandwidth (never handed to a carrier),
# 7 = reported by the carrier, 1/2/5 = Bandwidth server, 6 = carrier service failure.
#
# Retryable: this account, sender or route is the problem, or the failure is
# temporary, so another provider might deliver.
RETRYABLE_RECEIPT_ERRORS = frozenset(
    {
        4001,  # service not allowed for this account
        4302,  # malformed From number
        4360,  # expired before Bandwidth could send it
        4401,  # Bandwidth cannot route the message
        4403,  # messaging forbidden on the From number
        4405,  # From number unallocated
        4407,  # From number not associated with the account
        4420,  # no route to the destination carrier (configuration)
        4421,  # account not permitted to send to this destination
        4431,  # account not provisioned for short codes
        4432,  # account not enabled for this country
        4433,  # account not enabled for toll-free
        4451,  # invalid user id
        4452,  # invalid application id
        4470,  # blocked downstream as spam
        4481,  # From number blacklisted
        4493,  # sender not authorized on the account
        4701,  # destination unreachable / SMS service unavailable (carrier)
        4702,  # subscriber unavailable: handset off, SIM full, barred (carrier)
        4730,  # no route to the destination carrier, or no roaming route
        4740,  # carrier rejected the source address
        4750,  # carrier rejected the message, no reason given
        4770,  # carrier rejected as spam
        4780,  # carrier P2P volume violation
        4790,  # short code restriction at the carrier
        4791,  # short code campaign not allowed
        4792,  # short code not provisioned at the carrier
        4793,  # short code expired at the carrier
        4795,  # toll-free number not verified
    }
)
# Permanent: the number's fault (or the recipient's wish): no provider will do better.
PERMANENT_RECEIPT_ERRORS = frozenset(
    {
        4303,  # malformed To number
        4350,  # malformed for destination: the To number is invalid
        4404,  # messaging forbidden on the To number
        4406,  # To number unallocated
        4408,  # To number not associated with an account
        4434,  # messaging to this toll-free number forbidden
        4482,  # To number blacklisted
        4492,  # emergency number
        4700,  # carrier: messaging not supported by the carrier or handset
        4720,  # carrier: invalid destination address (not in the numbering plan, a landline)
        4721,  # carrier: number on the deactivation list
        4775,  # carrier: the recipient opted out
    }
)
# Delivery error codes that mean "this recipient opted out": the router records the
# opt-out.  4775 destination-rejected-due-to-user-opt-out, "User has opted out of
# receiving messages from a particular sender. Remove the destination TN from
# subscriber list" (dev.bandwidth.com/docs/messaging/errors; Bandwidth/api-docs
# site/docs/messaging/errors.mdx).
RECEIPT_OPT_OUT_CODES = frozenset({4775})


def receipt_status(kind: str, error_code: int | None) -> DeliveryStatus:
    """Our status of a status callback: message-failed is ``failed`` when Bandwidth
    never handed the message to a carrier (4xxx with second digit 0-4, 51xx, 52xx)
    and ``undelivered`` when a carrier had it (47xx, 55xx, 56xx, 9xxx)."""
    status = RECEIPT_STATUSES.get(kind, "unknown")
    if status != "failed" or error_code is None:
        return status
    head, second = divmod(error_code // 100, 10)
    if (head == 4 and second <= 4) or (head == 5 and second in (1, 2)):
        return "failed"
    return "undelivered"


def receipt_retryable(error_code: int | None) -> bool | None:
    """Whether another provider might deliver where ``error_code`` failed (None: unknown)."""
    if error_code is None:
        return None
    if error_code in RETRYABLE_RECEIPT_ERRORS or 5000 <= error_code < 6000:
        return True  # 5xxx: service failures, "a retry may yield a different result"
    if error_code in PERMANENT_RECEIPT_ERRORS:
        return False
    return None  # 9902 (receipt timed out: may have been delivered), 9999, 4301, ...


def _events(request: WebhookRequest) -> list[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """(type, event, event.message) of each event in a callback body; 400 if malformed
    (every event is checked before any is used: one bad event fails the whole body)."""
    doc = request.json()
    events = doc if isinstance(doc, list) else [doc]  # an array; the spec shows one object
    parsed: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = []
    for event in events:
        if not isinstance(event, dict):
            raise WebhookError(400, "Bandwidth callback whose events are not JSON objects")
        kind = event.get("type")
        message = event.get("message")
        if not isinstance(kind, str) or not kind or not isinstance(message, dict):
            raise WebhookError(400, "Bandwidth callback event without type and message")
        message_id = message.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise WebhookError(400, "Bandwidth callback event without message.id")
        parsed.append((kind, event, message))
    return parsed


class BandwidthProvider(HttpProvider):
    """Bandwidth's Messaging API v2.

    Config (besides the common keys)::

        bandwidth-us:
          type: bandwidth
          account_id: "9900000"
          username: ${BANDWIDTH_USERNAME}
          password: ${BANDWIDTH_PASSWORD}
          application_id: 93de2206-9669-4e07-948d-329f4b722ee2
          from: "+19195551234"            # a number of that application, or a sender ID
          priority: high                  # optional: default or high

          callback_username: smsroute     # the Application's callback credentials:
          callback_password: ${BANDWIDTH_CALLBACK_PASSWORD}   # Basic auth on webhooks

    Delivery receipts go to the application's callback URL (set in the
    Bandwidth App), never to a per-message ``status_callback``.
    """

    type_name = "bandwidth"
    required_options = frozenset({"account_id", "username", "password", "application_id"})
    optional_options = frozenset({"priority", "callback_username", "callback_password"})
    secret_options = frozenset({"password", "callback_password"})
    default_base_url = "https://messaging.bandwidth.com"
    #: Our message id travels as the message's ``tag``, which every callback echoes.
    echoes_message_id = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.account_id = str(opts["account_id"])
        self.application_id = str(opts["application_id"])
        self.priority = opts.get("priority")
        self.url = f"{self.base_url}/api/v2/users/{self.account_id}/messages"
        credentials = f"{opts['username']}:{opts['password']}".encode()
        self._headers = {
            "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
            "Accept": "application/json",
        }
        user, password = opts.get("callback_username"), opts.get("callback_password")
        self._callback_credentials = (
            (str(user).encode(), str(password).encode())
            if user is not None and password is not None
            else None
        )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        priority = options.get("priority")
        if priority is not None and priority not in PRIORITIES:
            problems.append(("priority", "priority is 'default' or 'high'"))
        if options.get("status_callback") is not None:
            problems.append(
                (
                    "status_callback",
                    "Bandwidth sends receipts to the callback URL of the application "
                    "(application_id), set in the Bandwidth App; it cannot be given per "
                    "message, so remove status_callback here",
                )
            )
        user, password = options.get("callback_username"), options.get("callback_password")
        if (user is None) != (password is None):
            missing = "callback_password" if password is None else "callback_username"
            problems.append(
                (
                    missing,
                    "callback_username and callback_password go together: the Basic auth "
                    "credentials set on the Bandwidth Application for its callbacks",
                )
            )
        for key, value in (("callback_username", user), ("callback_password", password)):
            if value is not None and (not isinstance(value, str | int) or not str(value)):
                problems.append((key, f"{key} is a non-empty string"))
        if user is not None and ":" in str(user):
            problems.append(
                ("callback_username", "a Basic auth user id cannot contain ':' (RFC 7617)")
            )
        return problems

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        message: dict[str, Any] = {
            "applicationId": self.application_id,
            "to": [sms.to],
            "text": sms.text,
            "tag": sms.message_id,  # echoed in every callback of this message
        }
        if sms.sender:
            message["from"] = sms.sender
        if self.priority is not None:
            message["priority"] = self.priority
        return HttpRequest("POST", self.url, self._headers, json=message)

    # -- webhooks ------------------------------------------------------------------------

    webhook_methods = {"status": frozenset({"POST"}), "inbound": frozenset({"POST"})}

    @classmethod
    def unverified_webhooks(cls, options: Mapping[str, Any]) -> str | None:
        if options.get("callback_username") is not None and (
            options.get("callback_password") is not None
        ):
            return None
        return (
            "set callback_username and callback_password (the Application's callback credentials)"
        )

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        expected = self._callback_credentials
        if expected is None:
            return  # no callback credentials configured: accepted (see the module doc)
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "basic" or not token.strip():
            raise WebhookError(403, "missing Basic Authorization")
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            raise WebhookError(403, "Authorization is not Basic credentials") from None
        # Both compared, whatever the first gives: no early exit to time.
        user_ok = hmac.compare_digest(user, expected[0])
        password_ok = hmac.compare_digest(password, expected[1])
        if not (sep and user_ok and password_ok):
            raise WebhookError(403, "Basic credentials do not match callback_username/password")

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        receipts = []
        for kind, event, message in _events(request):
            if kind in INBOUND_TYPES:
                continue  # an inbound event at the status URL: not a receipt
            raw_code = event.get("errorCode")
            if isinstance(raw_code, str) and raw_code.isdigit():
                raw_code = int(raw_code)
            code = (
                raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
            )
            tag = message.get("tag")
            receipts.append(
                Receipt(
                    provider_message_id=message["id"],
                    status=receipt_status(kind, code),
                    error_code=str(code) if code is not None else None,
                    at=iso_time(event.get("eventTime")) or iso_time(event.get("time")),
                    retryable=receipt_retryable(code),
                    message_id=tag if isinstance(tag, str) and tag else None,
                    opted_out=kind == "message-failed" and code in RECEIPT_OPT_OUT_CODES,
                )
            )
        return receipts

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        messages = []
        for kind, event, message in _events(request):
            if kind != "message-received":
                continue  # a status event at the inbound URL, or an RBM-only response
            sender = message.get("from")
            # The event's "to" is our number that received it (one event per owned
            # recipient of a group message); message.to lists every recipient.
            recipient = event.get("to")
            if not isinstance(recipient, str) or not recipient:
                owners = message.get("to")
                recipient = owners[0] if isinstance(owners, list) and owners else None
            if not isinstance(sender, str) or not sender or not isinstance(recipient, str):
                raise WebhookError(400, "Bandwidth message-received without from and to")
            text = message.get("text")
            if text is not None and not isinstance(text, str):
                raise WebhookError(400, "Bandwidth message-received whose text is not a string")
            messages.append(
                Inbound(
                    sender=sender,
                    recipient=recipient,
                    text=text or "",  # an MMS may carry media and no text
                    provider_message_id=message["id"],
                    at=iso_time(event.get("time")),
                )
            )
        return messages

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            doc = None
        if 200 <= status < 300:
            return accepted(status, doc.get("id") if isinstance(doc, dict) else None, "message id")
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if not isinstance(doc, dict) or not isinstance(doc.get("type"), str) or not doc["type"]:
            # e.g. 404 answers a framework error page: {"timestamp", "status", "error", ...}
            return Reply(
                classify_status(status),
                status_code=status,
                detail=f"HTTP {status} without a Bandwidth error type",
                retry_after=retry_after,
            )
        kind: str = doc["type"]
        fields = _field_errors(doc.get("fieldErrors"))
        if status == 429 or status >= 500:
            outcome = classify_status(status)  # the status says more than any type could
        elif kind == "request-validation" and fields:
            outcome = _worst(FIELD_OUTCOMES.get(name, Outcome.REJECTED) for name, _ in fields)
        else:
            outcome = ERROR_OUTCOMES.get(kind) or classify_status(status)
        detail = f"Bandwidth {kind}"
        description = doc.get("description")
        if isinstance(description, str) and description:
            detail += f": {description}"
        if fields:
            detail += " (" + "; ".join(f"{name}: {text}" for name, text in fields) + ")"
        return Reply(
            outcome,
            status_code=status,
            error_code=kind,
            detail=scrub(detail[:300]),
            retry_after=retry_after,
        )


def _field_errors(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return []
    return [
        (str(item.get("fieldName") or "?"), str(item.get("description") or ""))
        for item in value
        if isinstance(item, dict)
    ]


def _worst(outcomes: Iterable[Outcome]) -> Outcome:
    """UNROUTABLE over REJECTED: a sender this account cannot use says nothing of the number."""
    found = set(outcomes)
    return Outcome.UNROUTABLE if Outcome.UNROUTABLE in found else Outcome.REJECTED
