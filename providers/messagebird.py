"""MessageBird (now Bird) legacy SMS API: ``POST /messages`` on rest.messagebird.com.

Wire format.  MessageBird published no machine-readable spec of this API; the
adapter is checked by running the official ``messagebird`` SDK (2.2.0) against
:class:`smsroute.testing.FakeMessageBird` in tests/test_messagebird.py.  The
fake follows the SDKs (messagebird/python-rest-api ``client.py``,
``http_client.py``; messagebird/go-rest-api ``sms/message.go`` and its test
data) and captured traffic (SURFnet/messagebird-api-client-bundle ``docs/api``):

- ``POST {base}/messages`` with ``Authorization: AccessKey {access_key}`` and a
  JSON body ``{"originator", "recipients": [MSISDN], "body", "reference",
  "datacoding"}``, with a status callback also ``"reportUrl"``.
- Success: HTTP 201, the message object; its ``id`` (32 hex digits) is the
  message id.
- Failure: ``{"errors": [{"code": <int>, "description", "parameter"}]}``, with
  HTTP 401 (code 2) or 422 (codes 9, 10); every error found is listed.

MessageBird sends receipts only for messages that carry a ``reference``
(support.messagebird.com), so every message carries our message id as one.
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

# MessageBird error code -> outcome.  Codes: messagebird/go-rest-api test data (2, 20),
# captured API traffic in SURFnet/messagebird-api-client-bundle docs/api (2, 9, 10), and
# MessageBird's API reference "Errors" table as a third-party client lists it
# (2, 9, 10, 20, 21, 25, 98, 99); collected in shared/reference/providers-wire.md
# section 7 "Errors".  The HTTP status of 25, 98 and 99 is unconfirmed.
ERROR_OUTCOMES: Mapping[int, Outcome] = {
    2: Outcome.AUTH,  # request not allowed (incorrect access_key)
    9: Outcome.REJECTED,  # missing params, e.g. "no (correct) recipients found"
    10: Outcome.REJECTED,  # invalid params
    20: Outcome.AUTH,  # not found: the wrong endpoint for this account
    21: Outcome.REJECTED,  # bad request
    25: Outcome.AUTH,  # not enough balance: every message fails here until a top-up
    98: Outcome.AUTH,  # API not found: a wrong base_url
    99: Outcome.TRANSIENT,  # internal error
}

# A missing or invalid ``originator`` is this account's sender setup, not the
# message: another provider, with its own sender, may take it.
PARAMETER_OUTCOMES: Mapping[str, Outcome] = {"originator": Outcome.UNROUTABLE}

# When one answer lists several errors, the one naming the provider's own trouble
# decides: it would refuse any message, so its word on this one means little.
_PRECEDENCE = (
    Outcome.AUTH,
    Outcome.TRANSIENT,
    Outcome.THROTTLED,
    Outcome.UNROUTABLE,
    Outcome.REJECTED,
)


class MessageBirdProvider(HttpProvider):
    """MessageBird's legacy SMS API.

    Config (besides the common keys)::

        messagebird:
          type: messagebird
          access_key: ${MESSAGEBIRD_ACCESS_KEY}
          from: Acme                      # originator: a number or up to 11 characters
          validity: 3600                  # optional: seconds the message may wait for delivery
    """

    type_name = "messagebird"
    required_options = frozenset({"access_key"})
    optional_options = frozenset({"validity"})
    secret_options = frozenset({"access_key"})
    default_base_url = "https://rest.messagebird.com"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.url = f"{self.base_url}/messages"
        self.validity = opts.get("validity")
        self._headers = {
            "Authorization": f"AccessKey {opts['access_key']}",
            "Accept": "application/json",
        }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        validity = options.get("validity")
        if validity is not None and (
            isinstance(validity, bool) or not isinstance(validity, int) or validity < 1
        ):
            return [("validity", "validity is whole seconds, 1 or more")]
        return []

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        message: dict[str, Any] = {
            "recipients": [sms.to.removeprefix("+")],  # MSISDNs: digits only
            "body": sms.text,
            "reference": sms.message_id,
            # Our own encoding decision, so that MessageBird counts the segments we priced.
            "datacoding": "unicode" if sms.encoding == "UCS-2" else "plain",
        }
        if sms.sender:
            numeric = sms.sender.removeprefix("+")
            message["originator"] = numeric if numeric.isdigit() else sms.sender
        if sms.status_callback:
            message["reportUrl"] = sms.status_callback
        if self.validity is not None:
            message["validity"] = self.validity
        return HttpRequest("POST", self.url, self._headers, json=message)

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        errors = _errors(doc)
        if 200 <= status < 300 and not errors:
            message_id = doc.get("id") if isinstance(doc, dict) else None
            if not isinstance(message_id, str) or not message_id:
                return Reply(
                    Outcome.TRANSIENT,
                    status_code=status,
                    detail=f"malformed reply: HTTP {status} without a message id",
                )
            return Reply(Outcome.ACCEPTED, provider_message_id=message_id, status_code=status)
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if not errors:
            return Reply(
                Outcome.TRANSIENT if 200 <= status < 300 else classify_status(status),
                status_code=status,
                detail=f"HTTP {status} without MessageBird errors",
                retry_after=retry_after,
            )
        judged = [(_outcome(code, parameter, status), code) for code, _, parameter in errors]
        outcome, code = min(judged, key=lambda pair: _PRECEDENCE.index(pair[0]))
        detail = "MessageBird " + "; ".join(_describe(*error) for error in errors)
        return Reply(
            outcome,
            status_code=status,
            error_code=str(code) if code is not None else None,
            detail=scrub(detail[:300]),
            retry_after=retry_after,
        )


def _errors(doc: Any) -> list[tuple[int | None, str, str | None]]:
    """(code, description, parameter) of each entry of an ``errors`` list."""
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return []
    found: list[tuple[int | None, str, str | None]] = []
    for item in doc["errors"]:
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        parameter = item.get("parameter")
        found.append(
            (
                code if isinstance(code, int) and not isinstance(code, bool) else None,
                str(item.get("description") or ""),
                parameter if isinstance(parameter, str) and parameter else None,
            )
        )
    return found


def _describe(code: int | None, description: str, parameter: str | None) -> str:
    """``10 (originator): originator is invalid``"""
    label = "" if code is None else str(code)
    if parameter:
        label = f"{label} ({parameter})".strip()
    return f"{label}: {description}" if label and description else label or description


def _outcome(code: int | None, parameter: str | None, status: int) -> Outcome:
    if status == 429 or status >= 500 or status == 401:
        return classify_status(status)  # the status says more than any code could
    if parameter is not None and parameter in PARAMETER_OUTCOMES:
        return PARAMETER_OUTCOMES[parameter]
    if code is not None and code in ERROR_OUTCOMES:
        return ERROR_OUTCOMES[code]
    return classify_status(status) if status >= 300 else Outcome.TRANSIENT
