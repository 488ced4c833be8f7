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

Webhooks (developers.sinch.com "Delivery reports" and "Webhooks"; the SDK's
``sinch/domains/sms/models/v1`` models and ``sinch_events``):

- Delivery reports: POST JSON to the batch's ``callback_url``.  With
  ``per_recipient`` (what this adapter asks for) one
  ``{"type": "recipient_delivery_report_sms", "batch_id", "recipient", "code",
  "status", "at", "operator_status_at", "client_reference"}`` per change; with
  ``summary``/``full`` a ``{"type": "delivery_report_sms", "batch_id",
  "statuses": [{"code", "status", "count", "recipients"}], "client_reference"}``.
  ``client_reference`` is our message id (``echoes_message_id``).
- Inbound: POST JSON ``{"type": "mo_text", "id", "from", "to", "body",
  "received_at", ...}`` to the service plan's callback URL.  ``mo_binary`` and
  ``mo_media`` are answered 200 and not surfaced (no text to read).
- Signature: only when Sinch has enabled signed callbacks on the account (through
  the account manager; until then the headers "may be absent").  Headers
  ``x-sinch-webhook-signature`` = base64 HMAC-SHA256(secret, raw body + "." +
  nonce + "." + timestamp), ``x-sinch-webhook-signature-nonce``,
  ``x-sinch-webhook-signature-timestamp`` and
  ``x-sinch-webhook-signature-algorithm`` (``HmacSHA256``, the only value).
  Scheme as in the SDK's ``validate_sinch_event_signature_with_nonce``
  (sinch/domains/authentication/sinch_events/v1/authentication_validation.py)
  and Sinch .NET SDK ``HmacAuthenticationValidation``.  With
  ``webhook_secret`` configured, a request without these headers, with a wrong
  signature, or whose timestamp is more than :data:`SIGNATURE_TOLERANCE`
  seconds from now gets 403.  Sinch asks receivers to check that the timestamp
  is "within an acceptable time window" without naming one: 5 minutes is ours.
  Nonces are not remembered: a replay inside the window is absorbed by the
  receipt dedupe.  Without ``webhook_secret`` every callback is accepted (the
  account's default), so set it as soon as Sinch signs your callbacks.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import math
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
    accepted,
    classify_status,
    iso_time,
    parse_retry_after,
    with_plus,
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


# Delivery report status -> ours.  Source: developers.sinch.com "Delivery reports",
# section "Delivery report statuses" (the status's own description decides whether
# the message reached an SMSC: "failed" is never handed over, "undelivered" was).
RECEIPT_STATUSES: Mapping[str, DeliveryStatus] = {
    "queued": "queued",  # intermediate: queued within the REST API
    "dispatched": "sent",  # intermediate: accepted for delivery by the SMSC
    "delivered": "delivered",
    "failed": "undelivered",  # "failed to be delivered"
    "deleted": "undelivered",  # deleted by a remote SMSC: invalid MSISDN or opted out
    "aborted": "failed",  # "aborted before reaching the SMSC"
    "rejected": "failed",  # rejected by the SMSC
    "cancelled": "failed",  # cancelled by the user before reaching the SMSC
    "expired": "failed",  # "expired before delivery to the SMSC"
    "unknown": "unknown",  # reached the SMSC, no readable delivery receipt
}

# Delivery report codes (``code``) another provider might get past, and those that
# are the number's or the message's.  Source: developers.sinch.com "Delivery report
# error codes" (the REST API's own 4xx codes); SMPP codes are not classified.
RETRYABLE_RECEIPT_ERRORS = frozenset(
    {
        "403",  # internal error: Sinch's trouble
        "404",  # temporary delivery failure, "message can be retried"
        "406",  # internal expiry before reaching the SMSC
        "410",  # no default originator for this recipient: this account's setup
        "412",  # unprovisioned region: this account cannot reach it
    }
)
PERMANENT_RECEIPT_ERRORS = frozenset(
    {
        "402",  # message unroutable, "retrying is likely to cause the same error"
        "407",  # cancelled by the user
        "408",  # internal reject, "retrying is likely to cause the same error"
        "411",  # more parts than allowed
    }
)
#: Codes that are a status, not an error (400 Queued, 401 Dispatched; 0 with Delivered).
_STATUS_CODES = frozenset({"0", "400", "401"})
#: Tolerated distance, in seconds, between the signature timestamp and our clock.
SIGNATURE_TOLERANCE = 300.0
#: Report types for MMS: valid Sinch callbacks that carry nothing for us.
_IGNORED_TYPES = frozenset(
    {"delivery_report_mms", "recipient_delivery_report_mms", "mo_binary", "mo_media"}
)


def sinch_signature(secret: str, body: bytes, nonce: str, timestamp: str) -> str:
    """Sinch's callback signature: base64 HMAC-SHA256 of ``body.nonce.timestamp``."""
    signed = body + b"." + nonce.encode() + b"." + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


def _unix_time(value: str) -> float | None:
    """The signature timestamp as Unix seconds: epoch seconds (or milliseconds), or ISO 8601."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        when = iso_time(value)
        return when.timestamp() if when is not None else None
    if not math.isfinite(number):
        return None
    return number / 1000 if number > 1e11 else number


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise WebhookError(400, f"Sinch callback without {key}")
    return value


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
          webhook_secret: ${SINCH_CALLBACK_SECRET}  # optional: verify signed callbacks

    With a status callback the batch asks for ``delivery_report`` (default
    ``per_recipient``) to that URL.  Without one, ``delivery_report`` is sent
    only when configured, for receipts to the service plan's default callback URL.
    """

    type_name = "sinch"
    required_options = frozenset({"service_plan_id", "api_token"})
    optional_options = frozenset({"region", "delivery_report", "webhook_secret"})
    secret_options = frozenset({"api_token", "webhook_secret"})
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
        secret = opts.get("webhook_secret")
        self.webhook_secret = str(secret) if secret else None

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
        secret = options.get("webhook_secret")
        if secret is not None and (not isinstance(secret, str) or not secret.strip()):
            problems.append(
                ("webhook_secret", "webhook_secret is the callback secret Sinch signs with")
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

    # -- webhooks ------------------------------------------------------------------------

    webhook_methods = {"status": frozenset({"POST"}), "inbound": frozenset({"POST"})}
    echoes_message_id = True  # client_reference comes back in every delivery report

    @classmethod
    def unverified_webhooks(cls, options: Mapping[str, Any]) -> str | None:
        if options.get("webhook_secret") not in (None, ""):
            return None
        return "set webhook_secret (the callback secret Sinch signs with; ask Sinch for it)"

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        secret = self.webhook_secret
        if secret is None:
            return  # Sinch signs only when asked to: without a secret, accept (see module)
        signature = request.header("x-sinch-webhook-signature")
        nonce = request.header("x-sinch-webhook-signature-nonce")
        timestamp = request.header("x-sinch-webhook-signature-timestamp")
        if signature is None or nonce is None or timestamp is None:
            raise WebhookError(403, "missing x-sinch-webhook-signature headers")
        algorithm = request.header("x-sinch-webhook-signature-algorithm") or "HmacSHA256"
        if algorithm != "HmacSHA256":
            raise WebhookError(403, "unsupported x-sinch-webhook-signature-algorithm")
        expected = sinch_signature(secret, request.body, nonce, timestamp)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise WebhookError(403, "x-sinch-webhook-signature does not match")
        signed_at = _unix_time(timestamp)
        if signed_at is None:
            raise WebhookError(403, "unreadable x-sinch-webhook-signature-timestamp")
        if abs(now - signed_at) > SIGNATURE_TOLERANCE:
            raise WebhookError(403, "stale x-sinch-webhook-signature-timestamp")

    @staticmethod
    def _document(request: WebhookRequest) -> tuple[str, dict[str, Any]]:
        doc = request.json()
        if not isinstance(doc, dict):
            raise WebhookError(400, "Sinch callback body is not a JSON object")
        kind = doc.get("type")
        if not isinstance(kind, str) or not kind:
            raise WebhookError(400, "Sinch callback without a type")
        return kind, doc

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        kind, doc = self._document(request)
        if kind in _IGNORED_TYPES:
            return []
        batch_id = _text(doc, "batch_id")
        reference = doc.get("client_reference")
        message_id = reference if isinstance(reference, str) and reference else None
        if kind == "recipient_delivery_report_sms":
            at = iso_time(doc.get("operator_status_at")) or iso_time(doc.get("at"))
            return [_receipt(batch_id, doc, message_id, at)]
        if kind == "delivery_report_sms":
            statuses = doc.get("statuses")
            if not isinstance(statuses, list):
                raise WebhookError(400, "Sinch delivery report without statuses")
            receipts = []
            for entry in statuses:
                if not isinstance(entry, dict):
                    raise WebhookError(400, "Sinch delivery report status is not an object")
                if entry.get("count", 1) != 0:
                    receipts.append(_receipt(batch_id, entry, message_id, None))
            return receipts
        raise WebhookError(400, f"not a Sinch SMS delivery report (type {kind[:40]!r})")

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        kind, doc = self._document(request)
        if kind in _IGNORED_TYPES:
            return []
        if kind != "mo_text":
            raise WebhookError(400, f"not a Sinch inbound message (type {kind[:40]!r})")
        body = doc.get("body")
        if not isinstance(body, str):
            raise WebhookError(400, "Sinch callback without body")
        message_id = doc.get("id")
        return [
            Inbound(
                sender=with_plus(_text(doc, "from")),
                recipient=with_plus(_text(doc, "to")),
                text=body,
                provider_message_id=message_id if isinstance(message_id, str) else None,
                at=iso_time(doc.get("received_at")),
            )
        ]

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            doc = None
        if 200 <= status < 300:
            return accepted(status, doc.get("id") if isinstance(doc, dict) else None, "batch id")
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


def _receipt(
    batch_id: str, entry: Mapping[str, Any], message_id: str | None, at: datetime.datetime | None
) -> Receipt:
    """One receipt from a report (or one ``statuses`` entry): status, code, retryable."""
    raw = entry.get("status")
    if not isinstance(raw, str) or not raw:
        raise WebhookError(400, "Sinch delivery report without status")
    status = RECEIPT_STATUSES.get(raw.lower(), "unknown")
    code = entry.get("code")
    error_code = str(code) if isinstance(code, int) and not isinstance(code, bool) else None
    if error_code in _STATUS_CODES or status in ("queued", "sent", "delivered"):
        error_code = None
    retryable: bool | None = None
    if error_code in RETRYABLE_RECEIPT_ERRORS:
        retryable = True
    elif error_code in PERMANENT_RECEIPT_ERRORS:
        retryable = False
    return Receipt(
        provider_message_id=batch_id,
        status=status,
        error_code=error_code,
        at=at,
        retryable=retryable,
        message_id=message_id,
    )
