"""Infobip SMS API v3: ``POST /sms/3/messages``.

Wire format (checked against Infobip's published OpenAPI description of the SMS
API, version 3.210.0 as served at api.infobip.com/platform/1/openapi/sms, read
by hand, not in shared/specs; and by running the official SDK
``infobip-api-python-client`` 6.x, generated from that spec, against
:class:`smsroute.testing.infobip.FakeInfobip` in tests/test_infobip.py, with our
request validated by the SDK's ``SmsRequest`` model):

- ``POST {base}/sms/3/messages``; ``{base}`` is the account's own
  ``xxxxx.api.infobip.com`` (``api.infobip.com`` also answers).
  ``Authorization: App <API key>``.  JSON body ``{"messages": [{"sender",
  "destinations": [{"to": "41793026727"}], "content": {"text"}, "options":
  {"validityPeriod": {"amount", "timeUnit"}}, "webhooks": {"delivery": {"url"},
  "contentType", "callbackData"}}]}``; numbers in international format without ``+``.
- Answer: HTTP 200 ``{"bulkId", "messages": [{"messageId", "status": {"groupId",
  "groupName", "id", "name", "description"}, "destination", "details":
  {"messageCount"}}]}``.  **A 200 is not an acceptance by itself**: the
  destination's ``status.groupName`` is ``PENDING`` when Infobip took the
  message and ``REJECTED`` (with the reason in ``status.id``/``name``) when it
  did not.  An ``error`` object (``groupName``, ``permanent``) is used too when
  Infobip includes one (delivery reports always do; the v3 send schema does not).
- Request errors: HTTP 400/401/403/429/500 with ``{"errorCode": "E400",
  "description", "action", "violations": [{"property", "violation"}],
  "resources"}``; older endpoints answer ``{"requestError": {"serviceException":
  {"messageId", "text"}}}``, which is understood as well.

Webhooks (the SDK's ``SmsDeliveryResult``/``SmsDeliveryReport`` and
``SmsInboundMessageResult``/``SmsInboundMessage`` models; Infobip's "Receive
outbound SMS message report" and "Receive inbound SMS messages" webhooks):

- Delivery reports: POST JSON ``{"results": [{"bulkId", "messageId", "to",
  "sender", "sentAt", "doneAt", "messageCount", "mccMnc", "callbackData",
  "price", "status": {"groupId", "groupName", "id", "name", "description"},
  "error": {"groupId", "groupName", "id", "name", "description", "permanent"},
  "platform", "campaignReferenceId"}]}``, up to 100 results per request.
  ``callbackData`` is our message id (``echoes_message_id``).
- Inbound: POST JSON ``{"results": [{"messageId", "from", "to", "text",
  "cleanText", "keyword", "receivedAt", "smsCount", "price", "callbackData"}],
  "messageCount", "pendingMessageCount"}`` (format ``MO_JSON_2``).
- Authenticity: **Infobip signs neither webhook.**  The per-message webhook URL
  this adapter sends (``webhooks.delivery.url``) carries no credential at all.
  Infobip's Subscriptions Management can attach security settings to a
  notification profile: type ``BASIC`` (username and password, documented in
  the Subscriptions API "Create security settings"), ``HMAC`` and ``OAUTH``
  (whose wire format Infobip does not document where we could read it: not
  supported).  With ``callback_username`` and ``callback_password``
  configured, a request without that HTTP Basic ``Authorization`` gets 403; use
  them only with reports and inbound messages delivered through such a
  subscription.  Without them every request is accepted: protect the endpoint
  otherwise (a secret path in ``status_callback``, an IP allow-list, or
  Infobip's mutual TLS).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
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
    classify_status,
    iso_time,
    json_object,
    malformed,
    parse_retry_after,
    with_plus,
)

# Infobip message status (the destination's ``status.name``) -> outcome, for a
# destination that was not taken.  Source: Infobip's "Response status and error
# codes" page (infobip.com/docs/essentials/api-essentials/response-status-and-error-codes,
# read through its machine-readable mirror api-evangelist/infobip
# errors/infobip-error-codes.yml); status ids in the comments.
STATUS_OUTCOMES: Mapping[str, Outcome] = {
    # The request as written can never succeed: do not fail over.
    "REJECTED_PREFIX_MISSING": Outcome.REJECTED,  # 8: number not recognised (prefix/length)
    "REJECTED_DND": Outcome.REJECTED,  # 10: recipient subscribed to Do Not Disturb
    "REJECTED_DESTINATION_BLOCKLISTED": Outcome.REJECTED,  # 14: blocklisted by operator or account
    # 20: anti-flooding (by default 20 varied / 6 identical messages per hour per
    # number).  It protects the recipient, so another provider must not get round it.
    "REJECTED_FLOODING_FILTER": Outcome.REJECTED,
    "REJECTED_DUPLICATE_MESSAGE_ID": Outcome.REJECTED,  # 23: we never set messageId ourselves
    "REJECTED_INVALID_UDH": Outcome.REJECTED,  # 24: malformed concatenation header
    "REJECTED_MESSAGE_TOO_LONG": Outcome.REJECTED,  # 25: over 25 parts or 4000 bytes
    "MISSING_TO": Outcome.REJECTED,  # 51: no destination
    "REJECTED_DESTINATION": Outcome.REJECTED,  # 52: invalid destination number
    "SIGNALS_BLOCKED": Outcome.REJECTED,  # 87: anti-fraud rejected the message
    # This account cannot reach this destination or use this sender; another provider may.
    "REJECTED_NETWORK": Outcome.UNROUTABLE,  # 6: network out of coverage / not set up on the account
    "REJECTED_SOURCE": Outcome.UNROUTABLE,  # 11: sender ID not registered on the account
    "REJECTED_SENDER": Outcome.UNROUTABLE,  # 13: sender ID blocklisted on the account
    "REJECTED_DESTINATION_NOT_REGISTERED": Outcome.UNROUTABLE,  # 18: test account, one number only
    "REJECTED_ROUTE_NOT_AVAILABLE": Outcome.UNROUTABLE,  # 19: no route set up on the account
    "UNDELIVERABLE_REJECTED_OPERATOR": Outcome.UNROUTABLE,  # 4: operator refused this traffic
    # The account is unusable as configured: no credit.
    "REJECTED_NOT_ENOUGH_CREDITS": Outcome.AUTH,  # 12
    "REJECTED_PREPAID_PACKAGE_EXPIRED": Outcome.AUTH,  # 17
    # Infobip's own trouble.
    "REJECTED_SYSTEM_ERROR": Outcome.TRANSIENT,  # 21: "retry the submission"
    # 100: "invalid, malformed, or ... service temporarily unavailable": ambiguous,
    # and our request is schema-checked, so the platform is the likelier cause.
    "UNDELIVERABLE_REJECTED_PLATFORM": Outcome.TRANSIENT,
}

# Statuses that mean "this recipient opted out": the router records the opt-out.
# REJECTED_DESTINATION_BLOCKLISTED (14): the number is on the account's blocklist,
# which Infobip's "Blocklists" page describes as its Do Not Contact list of
# "destinations that have opted out of receiving communication", filled by STOP
# keywords and opt-out links (infobip.com/docs/blocklist).  REJECTED_DND (10), a
# national do-not-disturb registry, is left out: it concerns promotional traffic only.
OPT_OUT_STATUSES = frozenset({"REJECTED_DESTINATION_BLOCKLISTED"})

# Request error code (``errorCode`` of the v3 body, ``messageId`` of the legacy
# body) -> outcome.  Source: the SMS OpenAPI description above, responses
# ApiError401/403/429/500 and the 400 example, plus ApiException401/403/404/429/500.
ERROR_OUTCOMES: Mapping[str, Outcome] = {
    "E400": Outcome.REJECTED,
    "BAD_REQUEST": Outcome.REJECTED,
    "E401": Outcome.AUTH,
    "UNAUTHORIZED": Outcome.AUTH,
    "E403": Outcome.AUTH,
    "FORBIDDEN": Outcome.AUTH,
    "E404": Outcome.AUTH,  # wrong base_url or path
    "NOT_FOUND": Outcome.AUTH,
    "E429": Outcome.THROTTLED,
    "TOO_MANY_REQUESTS": Outcome.THROTTLED,
    "E500": Outcome.TRANSIENT,
    "GENERAL_ERROR": Outcome.TRANSIENT,
}

#: Status groups (``status.groupName``; ids in ``groupId``) that mean Infobip took the message.
TAKEN_GROUPS = frozenset({"ACCEPTED", "PENDING", "DELIVERED"})
_GROUP_NAMES = {0: "ACCEPTED", 1: "PENDING", 2: "UNDELIVERABLE", 3: "DELIVERED", 4: "EXPIRED",
                5: "REJECTED"}  # fmt: skip
#: A status group that was not taken and whose status name we do not know.
_GROUP_FALLBACK = {
    "REJECTED": Outcome.REJECTED,
    "UNDELIVERABLE": Outcome.UNROUTABLE,
    "EXPIRED": Outcome.TRANSIENT,
}


# Delivery report status group -> ours.  Source: Infobip's "Response status and error
# codes" (infobip.com/docs/essentials/api-essentials/response-status-and-error-codes):
# PENDING "processed and sent to the next instance, i.e. a mobile operator";
# UNDELIVERABLE "sent to the operator but failed to deliver" or rejected by it;
# EXPIRED "sent and expired" past its validity; REJECTED "rejected by Infobip or the
# operator before it could be sent".
RECEIPT_GROUPS: Mapping[str, DeliveryStatus] = {
    "ACCEPTED": "queued",
    "PENDING": "sent",
    "DELIVERED": "delivered",  # DELIVERED_TO_HANDSET, and DELIVERED_TO_OPERATOR where
    # the operator reports no further
    "UNDELIVERABLE": "undelivered",
    "EXPIRED": "undelivered",
    "REJECTED": "failed",
}
#: Status names more precise than their group: accepted but not yet handed over.
RECEIPT_NAMES: Mapping[str, DeliveryStatus] = {"PENDING_ACCEPTED": "queued"}


def _text(*parts: Any) -> str:
    return scrub(": ".join(p for p in parts if isinstance(p, str) and p)[:200])


def outcome_of_error(error: Mapping[str, Any]) -> Outcome | None:
    """The outcome an Infobip ``error`` object (delivery-error taxonomy) implies.

    Infobip's own ``permanent`` flag says whether a retry can ever succeed;
    its group says whose fault it is (the handset, the request, the operator).
    None when the object says nothing (no error, or no flag).
    """
    group = error.get("groupName")
    permanent = error.get("permanent")
    if not isinstance(group, str) or group.upper() == "OK" or not isinstance(permanent, bool):
        return None
    if not permanent:
        return Outcome.TRANSIENT
    if group.upper() == "OPERATOR_ERRORS":
        return Outcome.UNROUTABLE  # this provider's route refused it; another's may not
    return Outcome.REJECTED  # HANDSET_ERRORS, USER_ERRORS: about the recipient or the message


class InfobipProvider(HttpProvider):
    """Infobip's SMS API.

    Config (besides the common keys)::

        infobip:
          type: infobip
          base_url: https://xxxxx.api.infobip.com     # your account's own base URL
          api_key: ${INFOBIP_API_KEY}
          from: InfoSMS
          validity_period: 3600                       # optional, seconds
          callback_username: smsroute                 # optional: HTTP Basic credentials
          callback_password: ${INFOBIP_CALLBACK_PASSWORD}  # of a subscription's profile
    """

    type_name = "infobip"
    required_options = frozenset({"api_key"})
    optional_options = frozenset({"validity_period", "callback_username", "callback_password"})
    secret_options = frozenset({"api_key", "callback_password"})
    default_base_url = "https://api.infobip.com"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.url = f"{self.base_url}/sms/3/messages"
        self.validity_period = opts.get("validity_period")
        self._headers = {
            "Authorization": f"App {opts['api_key']}",
            "Accept": "application/json",
        }
        username, password = opts.get("callback_username"), opts.get("callback_password")
        self.callback_credentials = (
            (str(username), str(password)) if username and password else None
        )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        key = options.get("api_key")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            problems.append(("api_key", "api_key is the Infobip API key, a non-empty string"))
        vp = options.get("validity_period")
        if vp is not None and (isinstance(vp, bool) or not isinstance(vp, int) or vp < 1):
            problems.append(("validity_period", "validity_period is whole seconds, at least 1"))
        username, password = options.get("callback_username"), options.get("callback_password")
        for name, value in (("callback_username", username), ("callback_password", password)):
            if value is not None and (not isinstance(value, str) or not value):
                problems.append((name, f"{name} is a non-empty string"))
        if (username is None) != (password is None):
            missing = "callback_password" if password is None else "callback_username"
            problems.append((missing, "callback_username and callback_password are given together"))
        if isinstance(username, str) and ":" in username:
            problems.append(("callback_username", "an HTTP Basic username has no ':'"))
        return problems

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        message: dict[str, Any] = {
            "destinations": [{"to": sms.to.removeprefix("+")}],
            "content": {"text": sms.text},
        }
        if sms.sender:
            message["sender"] = sms.sender
        if self.validity_period is not None:
            message["options"] = {
                "validityPeriod": {"amount": int(self.validity_period), "timeUnit": "SECONDS"}
            }
        if sms.status_callback:
            message["webhooks"] = {
                "delivery": {"url": sms.status_callback},
                "contentType": "application/json",
                # Comes back in every delivery report: ties it to our message.
                "callbackData": sms.message_id,
            }
        return HttpRequest("POST", self.url, self._headers, json={"messages": [message]})

    # -- webhooks ------------------------------------------------------------------------

    webhook_methods = {"status": frozenset({"POST"}), "inbound": frozenset({"POST"})}
    echoes_message_id = True  # callbackData comes back in every delivery report

    @classmethod
    def unverified_webhooks(cls, options: Mapping[str, Any]) -> str | None:
        if options.get("callback_username") and options.get("callback_password"):
            return None
        return (
            "Infobip signs nothing: give callback_username and callback_password (a "
            "subscription with BASIC security), or protect the URLs another way (a secret "
            "path, an IP allow-list, mutual TLS)"
        )

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        credentials = self.callback_credentials
        if credentials is None:
            return  # Infobip signs nothing: without credentials, accept (see module)
        scheme, _, encoded = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            raise WebhookError(403, "missing HTTP Basic credentials")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            raise WebhookError(403, "HTTP Basic credentials are not base64 of UTF-8") from None
        username, _, password = decoded.partition(":")
        good_user = hmac.compare_digest(username.encode(), credentials[0].encode())
        good_password = hmac.compare_digest(password.encode(), credentials[1].encode())
        if not (good_user and good_password):
            raise WebhookError(403, "wrong HTTP Basic credentials")

    @staticmethod
    def _results(request: WebhookRequest) -> list[dict[str, Any]]:
        doc = request.json()
        results = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise WebhookError(400, "Infobip webhook without a results list")
        return results

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        return [_receipt(result) for result in self._results(request)]

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        messages = []
        for result in self._results(request):
            sender, recipient, text = result.get("from"), result.get("to"), result.get("text")
            if not isinstance(sender, str) or not sender or not isinstance(recipient, str):
                raise WebhookError(400, "Infobip inbound message without from and to")
            if not isinstance(text, str):
                raise WebhookError(400, "Infobip inbound message without text")
            message_id = result.get("messageId")
            messages.append(
                Inbound(
                    sender=with_plus(sender),
                    recipient=with_plus(recipient),
                    text=text,
                    provider_message_id=message_id if isinstance(message_id, str) else None,
                    at=iso_time(result.get("receivedAt")),
                )
            )
        return messages

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        doc = json_object(status, headers, body)
        if isinstance(doc, Reply):
            return doc
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if 200 <= status < 300:
            return self._parse_messages(status, doc)
        return self._parse_error(status, doc, retry_after)

    def _parse_messages(self, status: int, doc: Mapping[str, Any]) -> Reply:
        messages = doc.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if not isinstance(first, dict):
            return malformed(status, "200 without a messages list")
        state = first.get("status")
        if not isinstance(state, dict):
            return malformed(status, "message without a status")
        group = state.get("groupName")
        if not isinstance(group, str):
            group_id = state.get("groupId")
            group = _GROUP_NAMES.get(group_id) if isinstance(group_id, int) else None
        if group is None:
            return malformed(status, "status without a group")
        group = group.upper()
        message_id = first.get("messageId")
        message_id = message_id if isinstance(message_id, str) and message_id else None
        if group in TAKEN_GROUPS:
            if message_id is None:
                return malformed(status, "accepted message without a messageId")
            return Reply(Outcome.ACCEPTED, provider_message_id=message_id, status_code=status)
        # Not taken, though the answer is a 200.  Most specific first: the status
        # name, then Infobip's own permanent/transient flag, then the group.
        name = state.get("name")
        outcome = STATUS_OUTCOMES.get(name) if isinstance(name, str) else None
        error = first.get("error")
        if outcome is None and isinstance(error, dict):
            outcome = outcome_of_error(error)
        if outcome is None:
            outcome = _GROUP_FALLBACK.get(group)
        if outcome is None:
            return malformed(status, f"unknown status group {group[:30]!r}")
        code = name if isinstance(name, str) else None
        if code is None and isinstance(state.get("id"), int):
            code = str(state["id"])
        described = _text(state.get("description"))
        if isinstance(error, dict) and isinstance(error.get("name"), str):
            described = _text(described, error["name"], error.get("description"))
        detail = f"Infobip {group} {code or ''}".rstrip()
        if described:
            detail += f": {described}"
        return Reply(
            outcome,
            provider_message_id=message_id,
            status_code=status,
            error_code=code,
            detail=detail,
            opted_out=isinstance(name, str) and name in OPT_OUT_STATUSES,
        )

    @staticmethod
    def _parse_error(status: int, doc: Mapping[str, Any], retry_after: float | None) -> Reply:
        code: str | None = None
        description: str | None = None
        properties: list[str] = []
        if isinstance(doc.get("errorCode"), str):
            code = doc["errorCode"]
            description = doc.get("description")
            violations = doc.get("violations")
            for v in violations if isinstance(violations, list) else []:
                if isinstance(v, dict) and isinstance(v.get("property"), str):
                    properties.append(v["property"])
                    if description is not None and isinstance(v.get("violation"), str):
                        description = f"{description} {v['property']}: {v['violation']}"
        else:
            request_error = doc.get("requestError")
            exc = request_error.get("serviceException") if isinstance(request_error, dict) else None
            if isinstance(exc, dict):
                code = exc.get("messageId") if isinstance(exc.get("messageId"), str) else None
                description = exc.get("text")
                invalid = exc.get("validationErrors")
                if isinstance(invalid, dict):
                    properties.extend(k for k in invalid if isinstance(k, str))
        outcome = ERROR_OUTCOMES.get(code) if code is not None else None
        if outcome is None:
            outcome = classify_status(status)
        # A request refused for its sender is our configuration at this provider,
        # not the recipient: another provider may send it.
        if outcome is Outcome.REJECTED and any(
            p.rsplit(".", 1)[-1].startswith("sender") for p in properties
        ):
            outcome = Outcome.UNROUTABLE
        detail = f"Infobip {code}" if code else f"HTTP {status}"
        text = _text(description)
        if text:
            detail += f": {text}"
        return Reply(
            outcome,
            status_code=status,
            error_code=code,
            detail=detail,
            retry_after=retry_after,
        )


def _receipt(result: Mapping[str, Any]) -> Receipt:
    """One ``results[]`` entry of a delivery report."""
    message_id = result.get("messageId")
    state = result.get("status")
    if not isinstance(message_id, str) or not message_id or not isinstance(state, dict):
        raise WebhookError(400, "Infobip delivery report without messageId and status")
    group = state.get("groupName")
    if not isinstance(group, str):
        group_id = state.get("groupId")
        group = _GROUP_NAMES.get(group_id) if isinstance(group_id, int) else None
    raw_name = state.get("name")
    name = raw_name if isinstance(raw_name, str) else None
    status: DeliveryStatus = "unknown"
    if name is not None and name in RECEIPT_NAMES:
        status = RECEIPT_NAMES[name]
    elif group is not None:
        status = RECEIPT_GROUPS.get(group.upper(), "unknown")
    error = result.get("error")
    error = error if isinstance(error, dict) else {}
    error_group = error.get("groupName")
    has_error = isinstance(error_group, str) and error_group.upper() != "OK"
    error_code: str | None = None
    retryable: bool | None = None
    if status in ("undelivered", "failed", "unknown"):
        if has_error:
            error_name, error_id = error.get("name"), error.get("id")
            if isinstance(error_name, str) and error_name:
                error_code = error_name
            elif isinstance(error_id, int):
                error_code = str(error_id)
            permanent = error.get("permanent")
            if isinstance(permanent, bool):
                # Infobip's own flag: can a retry ever succeed?  A permanent operator
                # error is this provider's route, which another provider may not share.
                retryable = not permanent or str(error_group).upper() == "OPERATOR_ERRORS"
        if error_code is None and name is not None and status != "unknown":
            error_code = name
        if retryable is None and name is not None and name in STATUS_OUTCOMES:
            retryable = STATUS_OUTCOMES[name] is not Outcome.REJECTED
    reference = result.get("callbackData")
    return Receipt(
        provider_message_id=message_id,
        status=status,
        error_code=error_code,
        at=iso_time(result.get("doneAt")),
        retryable=retryable,
        message_id=reference if isinstance(reference, str) and reference else None,
        # The same status objects come in delivery reports as in send answers ("API
        # status codes appear in message send responses, delivery reports, and message
        # logs": infobip.com/docs/developer-resources/api-fundamentals/message-status-codes).
        opted_out=name in OPT_OUT_STATUSES,
    )
