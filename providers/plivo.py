"""Plivo Message API: ``POST /v1/Account/{auth_id}/Message/``.

No machine-readable spec of this API is published (no Plivo OpenAPI was found);
the wire format is checked by running the official ``plivo`` SDK against
:class:`smsroute.testing.FakePlivo` (tests/test_plivo.py) and follows Plivo's
documentation (docs.plivo.com/docs/messaging/api/message/send-a-message and
.../messaging/api/response) and the SDK's source (plivo-python
``plivo/rest/client.py``, ``plivo/resources/messages.py``):

- ``POST {base}/v1/Account/{auth_id}/Message/`` (the trailing slash is part of
  the URL), HTTP Basic ``auth_id:auth_token``, JSON body with ``src`` (or
  ``powerpack_uuid``, never both), ``dst``, ``text``, ``type: "sms"``, and
  ``url`` + ``method: "POST"`` for delivery callbacks.
- Success: HTTP 202, ``{"api_id", "message": "message(s) queued",
  "message_uuid": ["<uuid>"]}``.  ``message_uuid`` is an **array**, one entry
  per destination; we send one destination, so it is the first entry.
- Errors: ``{"api_id", "error": "<text>"}``.  Plivo's API errors carry no
  codes: the HTTP status decides, refined by a few words of the text (below).

The SDK (plivo 4.63.0) has no base-URL option and resets ``client.base_uri``
before every messaging call; the tests point its module constant
``plivo.rest.client.PLIVO_API_BASE_URI`` at the fake instead.

Webhooks (delivery receipts at ``/{name}/status``, inbound at ``/{name}/inbound``):

- Message status callbacks go to the ``url`` sent with the message, as a form
  POST (``method: POST``; GET puts the same fields in the query): ``MessageUUID``,
  ``Status``, ``ErrorCode``, ``To``, ``From``, times...  (docs.plivo.com
  messaging/api/message/message-status-callbacks).  Plivo has no client
  reference, so the router correlates through ``?smsroute_id=`` in that URL.
- Inbound messages go to the Plivo application's ``message_url``: ``From``,
  ``To``, ``Text``, ``MessageUUID``, ``Type``... (docs.plivo.com
  messaging/api/message/handling-incoming); the answer is an empty Plivo XML
  ``<Response/>``: no automatic reply.
- Signatures, checked with ``auth_token`` (always configured, so always checked):

  * ``X-Plivo-Signature-V3`` (+ ``-Ma-V3``, ``-V3-Nonce``), which signs the URL,
    its query and every body parameter: base64 HMAC-SHA256(auth token,
    canonical + "." + nonce), the canonical form exactly as plivo-python
    ``plivo/utils/signature_v3.py`` (``validate_v3_signature``) builds it.  The
    header may hold several signatures separated by commas.  When V3 headers
    are present they decide.
  * Otherwise ``X-Plivo-Signature-V2`` (or ``-Ma-V2``) with
    ``X-Plivo-Signature-V2-Nonce``: base64 HMAC-SHA256(auth token, URL without
    query + nonce), as plivo-python ``plivo/utils/__init__.py``
    ``validate_signature`` and the messaging "Signature validation" page say.
    V2 does not cover the body or the query: a captured request's headers
    verify any body.  So a V2 nonce is remembered with the URL and body it came
    with (the last :data:`NONCE_MEMORY` nonces, per process): the same nonce
    with anything else is a forgery (403); the same request again is a retry.
  * The ``-Ma-`` headers are signed with the main account's token; either
    header verifies with the configured token.  Neither scheme has a timestamp:
    there is no staleness to check.  No signature at all: 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

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
    parse_retry_after,
    with_plus,
)

__all__ = [
    "NONCE_MEMORY",
    "PERMANENT_RECEIPT_ERRORS",
    "RECEIPT_OPT_OUT_CODES",
    "RECEIPT_STATUSES",
    "RETRYABLE_RECEIPT_ERRORS",
    "STATUS_OUTCOMES",
    "TEXT_OUTCOMES",
    "PlivoProvider",
    "signature_v2",
    "signature_v3",
]

# HTTP status -> outcome.  Sources: Plivo's "API response" page (status table:
# 400 "a parameter is missing or is invalid", 401 "authentication failed",
# 404, 405, 429 "too many requests", 500) and plivo-python
# ``rest/client.py process_response`` (403 on a POST to /Message/ is a
# GeoPermissionError: the account may not send to that country), as collected in
# shared/reference/providers-wire.md section 3.
STATUS_OUTCOMES: Mapping[int, Outcome] = {
    400: Outcome.REJECTED,  # e.g. "'<dst>' is not a valid phone number." (plivo-node issue 222)
    401: Outcome.AUTH,  # wrong auth_id or auth_token
    403: Outcome.UNROUTABLE,  # geo permissions: this destination country is not enabled
    404: Outcome.AUTH,  # no such account in the URL: misconfigured
    405: Outcome.AUTH,  # method not allowed: a wrong base_url
    429: Outcome.THROTTLED,  # REST rate limit
}

# For a 400, words in Plivo's error text that say the request could succeed
# elsewhere.  Plivo documents no error codes for the API, so the wording is all
# there is; the texts matched are the SDK's own messages for these cases
# ("Specify either powerpack_uuid or src ...", "destination number cannot be
# same as source number") and Plivo's parameter names.  Unconfirmed against
# live Plivo answers.
TEXT_OUTCOMES: tuple[tuple[re.Pattern[str], Outcome], ...] = (
    # The sender (src / Powerpack) is not usable on this account: another provider may be.
    (re.compile(r"\b(src|source|powerpack\w*|sender)\b", re.IGNORECASE), Outcome.UNROUTABLE),
    # Our callback URL is refused: config, every message would fail here.
    (re.compile(r"\burl\b", re.IGNORECASE), Outcome.UNROUTABLE),
    # Out of credit: the account is unusable until topped up.
    (re.compile(r"\b(insufficient|credit|balance)\b", re.IGNORECASE), Outcome.AUTH),
)


def _basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


# -- webhooks: tables and signatures -----------------------------------------------------

# Callback ``Status`` -> ours.  Source: docs.plivo.com message-status-callbacks and the
# SDK's message_state values (shared/reference/providers-wire.md section 3): "failed"
# is Plivo's own failure to hand the message over, "undelivered" the carrier's report;
# "rejected" is in older docs; "read" is WhatsApp's.
RECEIPT_STATUSES: Mapping[str, DeliveryStatus] = {
    "queued": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "rejected": "failed",
}

# ``ErrorCode`` that another provider might get past.  Source: Plivo's "SMS error
# codes" page (plivo.com/docs/messaging/troubleshooting/error-codes: 10-50 confirmed
# there, 420 in Plivo's FAQ; the rest as collected, unconfirmed, in
# shared/reference/providers-wire.md section 3): network error (20), carrier spam
# filter (30), our source number refused (40), destination temporarily unavailable
# (80), no route (90), failed to dispatch (300), expired in Plivo's queue (420),
# out of credit (900).
RETRYABLE_RECEIPT_ERRORS = frozenset({"20", "30", "40", "80", "90", "300", "420", "900"})
# ... and the number's: invalid destination (50), permanently unavailable (70),
# prohibited by the carrier (100), message too long (110), recipient sent STOP (200).
# 10 (invalid message), 60 (loop) and 1000 (unknown) say neither.
PERMANENT_RECEIPT_ERRORS = frozenset({"50", "70", "100", "110", "200"})
# ``ErrorCode`` that means "this recipient opted out": the router records the
# opt-out.  200: the destination replied STOP (or END, QUIT, ...) to the source
# number, and Plivo's DND feature blocks every later message from that number to it:
# such messages "will be marked failed with error code 200"
# (support.plivo.com/hc/en-us/articles/360041786171 "Can I reply to customers who
# have opted out?"; plivo.com/docs/messaging/concepts/dnd-service).
RECEIPT_OPT_OUT_CODES = frozenset({"200"})

#: How many V2 nonces (with the URL and body they signed) each provider remembers.
NONCE_MEMORY = 10_000

_EMPTY_XML = b'<?xml version="1.0" encoding="utf-8"?><Response></Response>'


def _hmac_b64(token: str, data: str) -> str:
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _base_url(url: str) -> str:
    """scheme://netloc/path: no query, no fragment (as the SDK's urlunparse does)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def signature_v2(token: str, url: str, nonce: str) -> str:
    """``X-Plivo-Signature-V2``: base64 HMAC-SHA256(token, URL without query + nonce)."""
    return _hmac_b64(token, _base_url(url) + nonce)


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


def _sorted_query(params: Mapping[str, list[str]]) -> str:
    return "&".join(f"{key}={value}" for key in sorted(params) for value in sorted(params[key]))


def signature_v3(
    token: str, method: str, url: str, nonce: str, body_params: Iterable[tuple[str, str]] = ()
) -> str:
    """``X-Plivo-Signature-V3``: base64 HMAC-SHA256(token, canonical + "." + nonce).

    The canonical form is plivo-python's ``construct_get_url`` /
    ``construct_post_url``: GET is ``base?k=v&k=v`` over the sorted query (and
    any ``body_params``); POST is ``base?`` + the sorted query, a ``.`` when
    there are both query and body parameters, then every body parameter as
    ``keyvalue``, sorted by key (and value), with no separators.
    """
    query = _grouped(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    body = _grouped(body_params)
    base = _base_url(url)
    if method.upper() == "GET":
        qs = _sorted_query({**body, **query})  # the SDK puts the URL's query over the params
        canonical = f"{base}?{qs}" if qs else base
    else:
        qs = _sorted_query(query)
        canonical = base
        if qs or body:
            canonical += "?" + qs
        if qs and body:
            canonical += "."
        canonical += "".join(f"{key}{value}" for key in sorted(body) for value in sorted(body[key]))
    return _hmac_b64(token, f"{canonical}.{nonce}")


def _url_variants(url: str) -> list[str]:
    # Whether a default port is written in the URL Plivo signs depends on how it was
    # configured; try it with and without.
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = 443 if parts.scheme == "https" else 80
    bare = urlunsplit(
        parts._replace(netloc=host if parts.port in (None, default) else parts.netloc)
    )
    ported = urlunsplit(parts._replace(netloc=f"{host}:{parts.port or default}"))
    return list(dict.fromkeys([url, bare, ported]))


_TIME_FIELDS = {
    "queued": "QueuedTime",
    "sent": "SentTime",
    "delivered": "DeliveryReportTime",
    "undelivered": "DeliveryReportTime",
}


class PlivoProvider(HttpProvider):
    """Plivo's Message API.

    Config (besides the common keys)::

        plivo:
          type: plivo
          auth_id: ${PLIVO_AUTH_ID}           # MA... (main account) or SA... (subaccount)
          auth_token: ${PLIVO_AUTH_TOKEN}
          from: "+14155550100"                # or powerpack_uuid: ...

    ``auth_token`` also verifies webhooks (X-Plivo-Signature-V3 or -V2): a
    forged or unsigned one gets 403.
    """

    type_name = "plivo"
    required_options = frozenset({"auth_id", "auth_token"})
    optional_options = frozenset({"powerpack_uuid"})
    secret_options = frozenset({"auth_token"})
    default_base_url = "https://api.plivo.com"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.auth_id = str(opts["auth_id"])
        self._auth_token = str(opts["auth_token"])
        #: V2 nonce -> digest of the URL and body it arrived with (most recent last).
        self._nonces: OrderedDict[str, bytes] = OrderedDict()
        powerpack = opts.get("powerpack_uuid")
        self.powerpack_uuid = str(powerpack) if powerpack not in (None, "") else None
        self.url = f"{self.base_url}/v1/Account/{self.auth_id}/Message/"
        self._headers = {
            "Authorization": _basic_auth(self.auth_id, str(opts["auth_token"])),
            "Accept": "application/json",
        }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        auth_id = str(options.get("auth_id", ""))
        # The SDK's own check (plivo/utils is_valid_mainaccount / is_valid_subaccount).
        if auth_id and not (len(auth_id) == 20 and auth_id[:2] in ("MA", "SA")):
            problems.append(
                ("auth_id", "a Plivo Auth ID is 20 characters starting with 'MA' or 'SA'")
            )
        if options.get("powerpack_uuid") not in (None, "") and options.get("from") not in (
            None,
            "",
        ):
            problems.append(
                (
                    "powerpack_uuid",
                    "Plivo takes 'from' or 'powerpack_uuid', not both: remove one",
                )
            )
        return problems

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        body: dict[str, str] = {}
        if sms.sender:
            body["src"] = sms.sender
        elif self.powerpack_uuid:
            body["powerpack_uuid"] = self.powerpack_uuid
        body.update({"dst": sms.to, "text": sms.text, "type": "sms"})
        if sms.status_callback:
            body["url"] = sms.status_callback
            body["method"] = "POST"
        return HttpRequest("POST", self.url, self._headers, json=body)

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            doc = None
        if 200 <= status < 300:
            return self._success(status, doc)
        retry_after = parse_retry_after(headers.get("Retry-After"))
        error = doc.get("error") if isinstance(doc, dict) else None
        # Some errors carry an object of per-field messages rather than a string.
        text = error if isinstance(error, str) else json.dumps(error) if error else ""
        outcome = STATUS_OUTCOMES.get(status)
        if outcome is None:
            outcome = classify_status(status)
        if status == 400:
            outcome = next((o for pattern, o in TEXT_OUTCOMES if pattern.search(text)), outcome)
        detail = f"Plivo HTTP {status}"
        if text:
            detail += f": {scrub(text[:200])}"
        elif status >= 500:
            detail += " (no JSON error body)"
        return Reply(outcome, status_code=status, detail=detail, retry_after=retry_after)

    @staticmethod
    def _success(status: int, doc: Any) -> Reply:
        if not isinstance(doc, dict):
            return Reply(
                Outcome.TRANSIENT,
                status_code=status,
                detail=f"malformed reply: HTTP {status} without a JSON object",
            )
        uuids = doc.get("message_uuid")
        if isinstance(uuids, list) and uuids and isinstance(uuids[0], str) and uuids[0]:
            return Reply(Outcome.ACCEPTED, provider_message_id=uuids[0], status_code=status)
        invalid = doc.get("invalid_number")
        if isinstance(invalid, list) and invalid:
            # A bulk send lists the destinations Plivo refused under invalid_number
            # and still answers 202 (plivo/plivo-node pull request 215).  With one
            # destination Plivo answers 400 instead; this is defence in depth.
            return Reply(
                Outcome.REJECTED,
                status_code=status,
                detail="Plivo listed the destination under invalid_number",
            )
        return Reply(
            Outcome.TRANSIENT,
            status_code=status,
            detail="malformed reply: success without a message_uuid",
        )

    # -- webhooks ------------------------------------------------------------------------

    webhook_methods = {
        "status": frozenset({"GET", "POST"}),
        "inbound": frozenset({"GET", "POST"}),
    }

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        headers = request.headers
        v3 = headers.get("X-Plivo-Signature-V3") or headers.get("X-Plivo-Signature-Ma-V3")
        if v3 is not None or "X-Plivo-Signature-V3-Nonce" in headers:
            self._verify_v3(request)
            return
        v2 = [
            value
            for value in (
                request.header("X-Plivo-Signature-V2"),
                request.header("X-Plivo-Signature-Ma-V2"),
            )
            if value is not None
        ]
        nonce = request.header("X-Plivo-Signature-V2-Nonce")
        if not v2 or nonce is None:
            raise WebhookError(
                403, "unsigned: no X-Plivo-Signature-V3 or X-Plivo-Signature-V2 with its nonce"
            )
        for url in _url_variants(request.url):
            expected = signature_v2(self._auth_token, url, nonce).encode()
            if any(hmac.compare_digest(expected, given.encode()) for given in v2):
                self._remember(nonce, request)
                return
        raise WebhookError(403, "X-Plivo-Signature-V2 does not match")

    def _verify_v3(self, request: WebhookRequest) -> None:
        nonce = request.header("X-Plivo-Signature-V3-Nonce")
        given = [
            part.strip()
            for header in ("X-Plivo-Signature-V3", "X-Plivo-Signature-Ma-V3")
            for part in (request.header(header) or "").split(",")
            if part.strip()
        ]
        if nonce is None or not given:
            raise WebhookError(403, "X-Plivo-Signature-V3 without its nonce")
        body: list[tuple[str, str]] = []
        if request.method != "GET" and request.body:
            body = request.form_pairs()
        for url in _url_variants(request.url):
            expected = signature_v3(self._auth_token, request.method, url, nonce, body).encode()
            if any(hmac.compare_digest(expected, sig.encode()) for sig in given):
                return
        raise WebhookError(403, "X-Plivo-Signature-V3 does not match")

    def _remember(self, nonce: str, request: WebhookRequest) -> None:
        """Bind a V2 nonce to what it came with: V2 itself signs neither body nor query."""
        seen = hashlib.sha256(
            request.method.encode() + b"\0" + request.url.encode() + b"\0" + request.body
        ).digest()
        known = self._nonces.get(nonce)
        if known is not None and not hmac.compare_digest(known, seen):
            raise WebhookError(403, "X-Plivo-Signature-V2 nonce replayed with another request")
        self._nonces[nonce] = seen
        self._nonces.move_to_end(nonce)
        while len(self._nonces) > NONCE_MEMORY:
            self._nonces.popitem(last=False)

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        p = request.params()
        uuid, raw = p.get("MessageUUID"), p.get("Status")
        if not uuid or not raw:
            raise WebhookError(400, "status callback without MessageUUID and Status")
        status = RECEIPT_STATUSES.get(raw.lower(), "unknown")
        code = p.get("ErrorCode") or None
        if status == "delivered":
            code = None  # an ErrorCode on a delivered message says nothing
        retryable: bool | None = None
        if code in RETRYABLE_RECEIPT_ERRORS:
            retryable = True
        elif code in PERMANENT_RECEIPT_ERRORS:
            retryable = False
        field = _TIME_FIELDS.get(raw.lower())
        return [
            Receipt(
                provider_message_id=uuid,
                status=status,
                error_code=code,
                at=iso_time(p.get(field)) if field else None,
                retryable=retryable,
                opted_out=code in RECEIPT_OPT_OUT_CODES,
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        p = request.params()
        sender, recipient = p.get("From"), p.get("To")
        if not sender or not recipient:
            raise WebhookError(400, "inbound message without From and To")
        if "Text" not in p and "Body" not in p:
            raise WebhookError(400, "inbound message without Text")
        return [
            Inbound(
                sender=with_plus(sender),
                recipient=with_plus(recipient),
                text=p.get("Text", p.get("Body", "")),
                provider_message_id=p.get("MessageUUID") or None,
            )
        ]

    def webhook_response(self, kind: str) -> tuple[int, str, bytes]:
        if kind == "inbound":  # Plivo reads Message XML from the answer: empty, no reply
            return 200, "application/xml", _EMPTY_XML
        return 200, "text/plain", b""
