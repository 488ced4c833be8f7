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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDictProxy

from smsroute.config import ProviderConfig
from smsroute.message import Outcome
from smsroute.numbers import scrub
from smsroute.providers.base import (
    HttpProvider,
    HttpRequest,
    OutboundSMS,
    Reply,
    classify_status,
    parse_retry_after,
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


def _malformed(status: int, why: str) -> Reply:
    return Reply(Outcome.TRANSIENT, status_code=status, detail=f"malformed reply: {why}")


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
    """

    type_name = "infobip"
    required_options = frozenset({"api_key"})
    optional_options = frozenset({"validity_period"})
    secret_options = frozenset({"api_key"})
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

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        key = options.get("api_key")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            problems.append(("api_key", "api_key is the Infobip API key, a non-empty string"))
        vp = options.get("validity_period")
        if vp is not None and (isinstance(vp, bool) or not isinstance(vp, int) or vp < 1):
            problems.append(("validity_period", "validity_period is whole seconds, at least 1"))
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

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if not isinstance(doc, dict):
            if status >= 500 or 200 <= status < 300:
                return _malformed(status, f"HTTP {status} without a JSON object")
            return Reply(
                classify_status(status),
                status_code=status,
                detail=f"HTTP {status} without a JSON body",
                retry_after=retry_after,
            )
        if 200 <= status < 300:
            return self._parse_messages(status, doc)
        return self._parse_error(status, doc, retry_after)

    def _parse_messages(self, status: int, doc: Mapping[str, Any]) -> Reply:
        messages = doc.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if not isinstance(first, dict):
            return _malformed(status, "200 without a messages list")
        state = first.get("status")
        if not isinstance(state, dict):
            return _malformed(status, "message without a status")
        group = state.get("groupName")
        if not isinstance(group, str):
            group_id = state.get("groupId")
            group = _GROUP_NAMES.get(group_id) if isinstance(group_id, int) else None
        if group is None:
            return _malformed(status, "status without a group")
        group = group.upper()
        message_id = first.get("messageId")
        message_id = message_id if isinstance(message_id, str) and message_id else None
        if group in TAKEN_GROUPS:
            if message_id is None:
                return _malformed(status, "accepted message without a messageId")
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
            return _malformed(status, f"unknown status group {group[:30]!r}")
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
        )

    @staticmethod
    def _parse_error(status: int, doc: Mapping[str, Any], retry_after: float | None) -> Reply:
        code: str | None = None
        description: str | None = None
        properties: list[str] = []
        if isinstance(doc.get("errorCode"), str):
            code = doc["errorCode"]
            description = doc.get("description")
            for v in doc.get("violations") or []:
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
