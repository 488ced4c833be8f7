"""Sinch SMS REST API (XMS): one batch of one recipient per message.

Wire format.  Sinch publishes no OpenAPI description of this API that we could
find; the adapter is checked by running the official ``sinch`` SDK (2.3.0)
against :class:`smsroute.testing.FakeSinch` in tests/test_sinch.py, and the
fake follows developers.sinch.com "HTTP Status Codes for the SMS REST API" and
the SDK's models (``sinch/domains/sms/models/v1/shared/text_request.py``):

- ``POST {base}/xms/v1/{service_plan_id}/batches`` with
  ``Authorization: Bearer {api_token}`` and a JSON body ``{"to": [E.164],
  "from", "body", "client_reference"}``; with a status callback also
  ``"delivery_report"`` and ``"callback_url"``.
- ``{base}`` is ``https://{region}.sms.api.sinch.com``, region ``us``, ``eu``,
  ``au``, ``br`` or ``ca`` (the SDK's ``SmsRegionEnum``).
- Success: HTTP 201, the batch object; its ``id`` is the batch id.
- Failure: 400 and 403 carry ``{"code": "<string>", "text": "..."}``; other
  statuses (401, 404, 415, 429, 5xx) are classified by status.

Only the service-plan + API-token credentials are supported, not the project +
OAuth2 variant (``zt.{region}.sms.api.sinch.com/xms/v1/{project_id}``).
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

#: Regions of the service-plan API: https://{region}.sms.api.sinch.com (sinch SDK, core/enums.py).
REGIONS = ("us", "eu", "au", "br", "ca")
#: ``delivery_report`` values (sinch SDK, models/v1/types/delivery_report_type.py).
DELIVERY_REPORTS = ("none", "summary", "full", "per_recipient", "per_recipient_final")

# Sinch error code -> outcome.  Sources: developers.sinch.com/docs/sms/api-reference/status-codes
# and community.sinch.com article 14163 "Common SMS HTTP Statuses and Codes Explained"
# (400 and 403 codes), the codes list of Sinch's Java XMS SDK (ApiError.java), as
# collected in shared/reference/providers-wire.md section 6 "Errors".
ERROR_OUTCOMES: Mapping[str, Outcome] = {
    # 400: the request as written can never succeed.
    "syntax_invalid_json": Outcome.REJECTED,
    "syntax_invalid_parameter_format": Outcome.REJECTED,  # e.g. an MSISDN not correctly formatted
    "syntax_constraint_violation": Outcome.REJECTED,  # e.g. a required field missing, body too long
    # 403: the request is valid but cannot be performed.
    # Number type not allowed in its region: "send to a different MSISDN".
    "illegal_number_type": Outcome.REJECTED,
    "unknown_group": Outcome.REJECTED,  # a group id in "to" (never sent by this adapter)
    # This account's setup, not the message: another provider may take it.
    "unknown_campaign": Outcome.UNROUTABLE,  # US campaign id does not match the sender
    "missing_callback_url": Outcome.UNROUTABLE,  # report asked for, no URL on the service plan
    "blocked_account": Outcome.AUTH,  # the account is blocked
}

# Statuses whose meaning differs from :func:`classify_status` here.
STATUS_OUTCOMES: Mapping[int, Outcome] = {
    # "The Content-Type header is missing or unsupported": no message can get
    # through as this adapter writes them; not this message's fault.
    415: Outcome.TRANSIENT,
}


class SinchProvider(HttpProvider):
    """Sinch's SMS REST API with a service plan and its API token.

    Config (besides the common keys)::

        sinch-eu:
          type: sinch
          service_plan_id: ${SINCH_SERVICE_PLAN_ID}
          api_token: ${SINCH_API_TOKEN}
          region: eu                     # us (default), eu, au, br, ca; ignored with base_url
          from: "+447700900123"          # may be left out with an automatic default originator
          delivery_report: per_recipient # optional, see below

    With a status callback the batch asks for ``delivery_report`` (default
    ``per_recipient``) to that URL.  Without one, ``delivery_report`` is sent
    only when configured, for receipts to the service plan's default callback URL.
    """

    type_name = "sinch"
    required_options = frozenset({"service_plan_id", "api_token"})
    optional_options = frozenset({"region", "delivery_report"})
    secret_options = frozenset({"api_token"})
    default_base_url = "https://us.sms.api.sinch.com"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        if not config.base_url:
            self.base_url = f"https://{opts.get('region') or 'us'}.sms.api.sinch.com"
        self.service_plan_id = str(opts["service_plan_id"])
        self.url = f"{self.base_url}/xms/v1/{self.service_plan_id}/batches"
        report = opts.get("delivery_report")
        self.delivery_report = str(report) if report is not None else None
        self._headers = {
            "Authorization": f"Bearer {opts['api_token']}",
            "Accept": "application/json",
        }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        region = options.get("region")
        if region is not None and region not in REGIONS:
            problems.append(("region", f"a Sinch SMS region is one of {', '.join(REGIONS)}"))
        report = options.get("delivery_report")
        if report is not None and report not in DELIVERY_REPORTS:
            problems.append(
                ("delivery_report", f"delivery_report is one of {', '.join(DELIVERY_REPORTS)}")
            )
        return problems

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        batch: dict[str, Any] = {"to": [sms.to], "body": sms.text}
        if sms.sender:
            batch["from"] = sms.sender
        # Echoed in every delivery report of the batch: ties receipts to our message.
        batch["client_reference"] = sms.message_id
        if sms.status_callback:
            batch["delivery_report"] = self.delivery_report or "per_recipient"
            batch["callback_url"] = sms.status_callback
        elif self.delivery_report is not None:
            batch["delivery_report"] = self.delivery_report
        return HttpRequest("POST", self.url, self._headers, json=batch)

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if 200 <= status < 300:
            batch_id = doc.get("id") if isinstance(doc, dict) else None
            if not isinstance(batch_id, str) or not batch_id:
                return Reply(
                    Outcome.TRANSIENT,
                    status_code=status,
                    detail=f"malformed reply: HTTP {status} without a batch id",
                )
            return Reply(Outcome.ACCEPTED, provider_message_id=batch_id, status_code=status)
        retry_after = parse_retry_after(headers.get("Retry-After"))
        error: dict[str, Any] = doc if isinstance(doc, dict) else {}
        code = error.get("code")
        by_status = STATUS_OUTCOMES.get(status) or classify_status(status)
        if not isinstance(code, str) or not code:
            return Reply(
                by_status,
                status_code=status,
                detail=f"HTTP {status} without a Sinch error code",
                retry_after=retry_after,
            )
        # For 429 and 5xx the status says more than any code could.
        outcome = (
            by_status if status == 429 or status >= 500 else ERROR_OUTCOMES.get(code, by_status)
        )
        detail = f"Sinch {code}"
        text = error.get("text")
        if isinstance(text, str) and text:
            detail += f": {scrub(text[:200])}"
        return Reply(
            outcome,
            status_code=status,
            error_code=code,
            detail=detail,
            retry_after=retry_after,
        )
