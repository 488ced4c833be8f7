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

Webhooks:

- Status reports: **GET** to ``reportUrl`` (or the dashboard's status report
  URL) with query parameters ``id``, ``reference`` (our message id, so
  ``echoes_message_id``), ``recipient``, ``status`` (``scheduled``, ``sent``,
  ``buffered``, ``delivered``, ``expired``, ``delivery_failed``),
  ``statusDatetime`` and, when the downstream carrier gave them,
  ``statusReason`` and ``statusErrorCode`` (docs.bird.com "Receiving Delivery
  Reports" and "SMS errors & error codes"; MessageBird's Ruby SDK example of a
  signed status report).  No event id is sent.
- Inbound (virtual mobile numbers): GET (or POST form) with ``id``,
  ``recipient``, ``originator``, ``body``, ``createdDatetime``; shortcodes send
  ``mid``, ``shortcode``, ``keyword``, ``originator``, ``operator``, ``message``,
  ``receive_datetime`` (MessageBird's "receive a message" reference as mirrored
  in a third-party client's tests [unconfirmed against MessageBird itself]).
- Signature: header ``MessageBird-Signature-JWT``, a JWT signed with the
  account's *signing key* (not the access key), HS256/HS384/HS512, with claims
  ``iss`` = ``MessageBird``, ``nbf``, ``exp`` (required), ``url_hash`` = hex
  SHA-256 of the full URL as called, query string included, and
  ``payload_hash`` = hex SHA-256 of the raw body, present exactly when there is
  a body.  Checked as the official SDK's ``RequestValidator`` checks it
  (messagebird/python-rest-api ``messagebird/request_validator.py``): 1 second
  of leeway on ``nbf``/``exp``, and the token's own ``nbf``..``exp`` window is
  the tolerance.  ``jti`` (for replay checks) is not remembered: the receipt
  dedupe absorbs replays.  With ``signing_key`` configured, a request without
  the header, with a bad signature or hash, or outside its window gets 403;
  without it every request is accepted.  The deprecated ``MessageBird-Signature``
  + ``MessageBird-Request-Timestamp`` scheme is not supported.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jwt
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
    parse_retry_after,
    with_plus,
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


# Status report ``status`` -> ours.  Source: the recipient statuses of MessageBird's
# SDKs (e.g. messagebird/csharp-rest-api Recipient.RecipientStatus) and docs.bird.com.
RECEIPT_STATUSES: Mapping[str, DeliveryStatus] = {
    "scheduled": "queued",
    "sent": "sent",  # handed to the carrier, no report yet
    "buffered": "sent",  # held by the carrier for later delivery
    "delivered": "delivered",
    "expired": "undelivered",  # the carrier gave up within the validity
    "delivery_failed": "undelivered",
}

# ``statusReason`` values (lower case) that another provider might get past, and
# those that are the number's or the message's.  Source: docs.bird.com "SMS errors &
# error codes" names the status reason list without reproducing it; the wording
# below is MessageBird's dashboard wording as we know it [unconfirmed].
RETRYABLE_REASONS = frozenset(
    {"absent subscriber", "unavailable subscriber", "carrier rejected", "insufficient balance"}
)
PERMANENT_REASONS = frozenset({"unknown subscriber", "invalid destination"})
#: Algorithms MessageBird signs with (the SDK's ``RequestValidator.ALLOWED_ALGOS``).
JWT_ALGORITHMS = ("HS256", "HS384", "HS512")
#: Seconds of leeway on ``nbf`` and ``exp`` (the SDK's).
JWT_LEEWAY = 1.0


def _when(value: str | None) -> datetime.datetime | None:
    """``2019-01-11T09:17:11+00:00`` (or a shortcode's ``YYYYmmddHHMMSS``) as a time."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        try:
            when = datetime.datetime.strptime(value, "%Y%m%d%H%M%S")
        except ValueError:
            return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _seconds(value: Any) -> float | None:
    """A NumericDate claim as seconds, or None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not -1e15 < value < 1e15:  # NaN, infinities, integers too big for a float
        return None
    return float(value)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _url_variants(url: str) -> list[str]:
    """The URL as given, and with its query re-encoded the way HTTP clients encode it.

    MessageBird hashes the URL exactly as it called it; a receiver that hands us
    a decoded query string (as ``request.query_string`` of aiohttp does) would
    otherwise never match a query with ``+``, ``:`` or spaces in it.
    """
    parts = urlsplit(url)
    if not parts.query:
        return [url]
    encoded = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    variant = urlunsplit(parts._replace(query=encoded))
    return [url] if variant == url else [url, variant]


class MessageBirdProvider(HttpProvider):
    """MessageBird's legacy SMS API.

    Config (besides the common keys)::

        messagebird:
          type: messagebird
          access_key: ${MESSAGEBIRD_ACCESS_KEY}
          from: Acme                      # originator: a number or up to 11 characters
          validity: 3600                  # optional: seconds the message may wait for delivery
          signing_key: ${MESSAGEBIRD_SIGNING_KEY}  # optional: verify MessageBird-Signature-JWT
    """

    type_name = "messagebird"
    required_options = frozenset({"access_key"})
    optional_options = frozenset({"validity", "signing_key"})
    secret_options = frozenset({"access_key", "signing_key"})
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
        key = opts.get("signing_key")
        self.signing_key = str(key) if key else None

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        validity = options.get("validity")
        if validity is not None and (
            isinstance(validity, bool) or not isinstance(validity, int) or validity < 1
        ):
            problems.append(("validity", "validity is whole seconds, 1 or more"))
        key = options.get("signing_key")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            problems.append(
                (
                    "signing_key",
                    "signing_key is the signing key of MessageBird's developer settings",
                )
            )
        return problems

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

    # -- webhooks ------------------------------------------------------------------------

    webhook_methods = {"status": frozenset({"GET"}), "inbound": frozenset({"GET", "POST"})}
    echoes_message_id = True  # ``reference`` comes back in every status report

    @classmethod
    def unverified_webhooks(cls, options: Mapping[str, Any]) -> str | None:
        if options.get("signing_key") not in (None, ""):
            return None
        return "set signing_key (the signing key of the MessageBird dashboard)"

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        key = self.signing_key
        if key is None:
            return  # no signing key configured: accept (see module)
        token = request.header("MessageBird-Signature-JWT")
        if token is None:
            raise WebhookError(403, "missing MessageBird-Signature-JWT")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(JWT_ALGORITHMS),
                issuer="MessageBird",
                # Times are checked below against ``now``, with the SDK's leeway.
                options={
                    "require": ["iss", "nbf", "exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise WebhookError(
                403, f"MessageBird-Signature-JWT refused: {type(exc).__name__}"
            ) from None
        not_before, expires = _seconds(claims.get("nbf")), _seconds(claims.get("exp"))
        if not_before is None or expires is None:
            raise WebhookError(403, "MessageBird-Signature-JWT has non-numeric nbf or exp")
        if now > expires + JWT_LEEWAY:
            raise WebhookError(403, "MessageBird-Signature-JWT has expired")
        if now < not_before - JWT_LEEWAY:
            raise WebhookError(403, "MessageBird-Signature-JWT is not valid yet")
        url_hash = claims.get("url_hash")
        if (
            not isinstance(url_hash, str)
            or not url_hash.isascii()
            or not any(
                hmac.compare_digest(_sha256(url.encode()), url_hash)
                for url in _url_variants(request.url)
            )
        ):
            raise WebhookError(403, "MessageBird-Signature-JWT url_hash does not match")
        payload_hash = claims.get("payload_hash")
        if request.body:
            if (
                not isinstance(payload_hash, str)
                or not payload_hash.isascii()
                or not hmac.compare_digest(_sha256(request.body), payload_hash)
            ):
                raise WebhookError(403, "MessageBird-Signature-JWT payload_hash does not match")
        elif payload_hash:
            raise WebhookError(403, "MessageBird-Signature-JWT has a payload_hash but no body")

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        p = request.params()
        message_id, raw = p.get("id"), p.get("status")
        if not message_id or not raw:
            raise WebhookError(400, "status report without id and status")
        status = RECEIPT_STATUSES.get(raw.lower(), "unknown")
        reason = (p.get("statusReason") or "").strip().lower()
        failed = status in ("undelivered", "failed", "unknown")
        retryable: bool | None = None
        if failed and reason in RETRYABLE_REASONS:
            retryable = True
        elif failed and reason in PERMANENT_REASONS:
            retryable = False
        error_code = (p.get("statusErrorCode") or None) if failed else None
        return [
            Receipt(
                provider_message_id=message_id,
                status=status,
                error_code=error_code,
                at=_when(p.get("statusDatetime")),
                retryable=retryable,
                message_id=p.get("reference") or None,
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        p = request.params()
        originator = p.get("originator")
        if "body" in p:  # a virtual mobile number
            recipient, text, when = p.get("recipient"), p["body"], p.get("createdDatetime")
            provider_id = p.get("id")
        elif "message" in p:  # a shortcode
            recipient, text, when = p.get("shortcode"), p["message"], p.get("receive_datetime")
            provider_id = p.get("mid")
        else:
            raise WebhookError(400, "inbound message without body")
        if not originator or not recipient:
            raise WebhookError(400, "inbound message without originator and recipient")
        return [
            Inbound(
                sender=with_plus(originator),
                recipient=with_plus(recipient),
                text=text,
                provider_message_id=provider_id or None,
                at=_when(when),
            )
        ]

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
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
