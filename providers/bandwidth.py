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
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
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

    Delivery receipts go to the application's callback URL (set in the
    Bandwidth App), never to a per-message ``status_callback``.
    """

    type_name = "bandwidth"
    required_options = frozenset({"account_id", "username", "password", "application_id"})
    optional_options = frozenset({"priority"})
    secret_options = frozenset({"password"})
    default_base_url = "https://messaging.bandwidth.com"

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
        return problems

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        message: dict[str, Any] = {
            "applicationId": self.application_id,
            "to": [sms.to],
            "text": sms.text,
        }
        if sms.sender:
            message["from"] = sms.sender
        if self.priority is not None:
            message["priority"] = self.priority
        return HttpRequest("POST", self.url, self._headers, json=message)

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if 200 <= status < 300:
            message_id = doc.get("id") if isinstance(doc, dict) else None
            if not isinstance(message_id, str) or not message_id:
                return Reply(
                    Outcome.TRANSIENT,
                    status_code=status,
                    detail=f"malformed reply: HTTP {status} without a message id",
                )
            return Reply(Outcome.ACCEPTED, provider_message_id=message_id, status_code=status)
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
