"""Vonage (Nexmo) legacy SMS API: ``POST /sms/json``.

Wire format, checked against Vonage's published OpenAPI description of the SMS
API (Nexmo/api-specification ``definitions/sms.yml`` v1.0.10, read from
``shared/specs/vonage_sms.yml`` by tests/test_vonage.py) and by running the
official ``vonage`` SDK (``vonage-sms``) against :class:`smsroute.testing.FakeVonage`:

- ``POST {base}/sms/json``, form body: ``api_key`` and ``api_secret`` (the
  spec's way; the SDK sends them as HTTP Basic instead, Vonage takes both), or
  ``api_key`` + ``timestamp`` + ``sig`` for a signed request (the secret never
  leaves the process); ``from``, ``to`` (E.164 without ``+``), ``text``,
  ``type`` (``unicode`` for UCS-2 text: this API does not detect it),
  ``callback`` (per-message delivery-receipt URL) and ``client-ref`` (our
  message id, so a receipt can be matched without Vonage's id).
- The answer is **HTTP 200 even for errors**: ``{"message-count": "N", "messages":
  [...]}`` with one entry per SMS part.  Each entry has ``status`` "0" and a
  ``message-id``, or a non-zero ``status`` and ``error-text``.  A long text is
  split by Vonage into parts, each with its own id; the first part's id is the
  message's :attr:`Reply.provider_message_id`, and all of them are its
  :attr:`Reply.part_ids` (each part gets a delivery receipt of its own).
- Non-200 answers come from Vonage's edge (5xx, or a 429 there): classified by
  HTTP status.

About the SDK (vonage 4.9.1 / vonage-sms 1.2.0): its host is an option
(``HttpClientOptions(rest_host=...)``) but its scheme is always https, so the
tests carry its requests to the fake over plain HTTP with a transport adapter.
Its signed send does not work: it signs every ``SmsMessage`` field, None ones
included, and ``requests`` leaves those out of the form, so the signature
covers fields never sent (its signer itself agrees with :func:`sign`).

Webhooks (delivery receipts at ``/{name}/status``, inbound at ``/{name}/inbound``):

- SMS API delivery receipts and inbound messages come as GET (query), POST
  (form) or POST-JSON, whichever the dashboard says; all three are read.  The
  receipt echoes ``client-ref`` (our message id), so the router needs no
  ``smsroute_id`` in the callback URL.  Receipt fields and statuses: the spec's
  ``DeliveryReceipt`` and ``InboundMessage`` (shared/specs/vonage_sms.yml);
  ``err-code`` values: Vonage support article 204014733.  Concatenated inbound
  messages arrive part by part (``concat-*`` fields) and are passed on part by
  part: reassembling them needs state shared by every replica.
- Messages API v1 webhooks (an account whose default SMS API is the Messages
  API sends inbound SMS that way): JSON with ``message_uuid``; both status and
  inbound shapes are read (developer.vonage.com "Messages API Status Callbacks").
- Signatures, when ``signature_secret`` is configured (and ``signed_webhooks``
  is not false):

  * SMS API: a ``sig`` parameter over every other parameter (``timestamp`` and
    ``nonce`` included), computed exactly as :func:`sign` does with the
    configured ``signature_method``; compared lowercase in constant time
    (the spec's example ``sig`` is uppercase hex).  Source: Vonage "Signing
    messages" guide (Nexmo/station ``concepts/guides/signing-messages.md``)
    and vonage-python-sdk ``vonage_http_client/auth.py`` ``check_signature``.
  * Messages API: ``Authorization: Bearer <JWT>``, HS256 with the signature
    secret (the dashboard's method does not apply: always SHA-256); its
    ``payload_hash`` claim must equal the hex SHA-256 of the raw body.  Source:
    Nexmo/station ``messages/concepts/signed-webhooks.md``; vonage-python-sdk
    ``vonage_jwt/verify_jwt.py`` verifies the same token.
  * Staleness: Vonage documents no tolerance; the ``timestamp`` parameter (or
    the JWT's ``iat``) must be within ``webhook_tolerance`` (default 300 s) of
    now.  Vonage retries a failed webhook for up to 24 h and the spec calls the
    timestamp the time it *started* pushing, so after a long outage of the
    receiver, raise ``webhook_tolerance`` to take the retries.
  * A request with neither ``sig`` nor a bearer token is refused (403).  SMS
    API webhooks are signed only once Vonage support has enabled it for the
    account: set ``signed_webhooks: false`` until then.  Without a signature
    secret every webhook is accepted unverified.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Mapping
from typing import Any

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
    iso_time,
    parse_retry_after,
    unix_seconds,
    with_plus,
    within,
)
from smsroute.units import parse_duration

__all__ = [
    "ERROR_OUTCOMES",
    "MESSAGES_STATUSES",
    "PERMANENT_RECEIPT_ERRORS",
    "RECEIPT_OPT_OUT_CODES",
    "RECEIPT_STATUSES",
    "RETRYABLE_RECEIPT_ERRORS",
    "SIGNATURE_METHODS",
    "WEBHOOK_TOLERANCE",
    "VonageProvider",
    "payload_hash",
    "sign",
]

# Vonage SMS API ``status`` -> outcome.  Sources: the spec's ``x-errors``
# (shared/specs/vonage_sms.yml), the same table at developer.vonage.com/en/api-errors/sms
# and "Troubleshooting SMS" (developer.vonage.com/en/messaging/sms/guides/troubleshooting-sms),
# and shared/reference/providers-wire.md section 2a / section 12.
ERROR_OUTCOMES: Mapping[int, Outcome] = {
    # Slow down.  "Throttled: you are sending SMS faster than the account limit"
    # (30 requests/s per API key by default, Vonage support article 203993598).
    1: Outcome.THROTTLED,
    # "Too many existing binds: back-off and retry" (concurrent connections).
    10: Outcome.THROTTLED,
    # The request as written can never succeed: do not fail over.  (A missing or
    # invalid *sender* is told apart in VonageProvider._outcome: that is UNROUTABLE.)
    2: Outcome.REJECTED,  # missing parameters
    3: Outcome.REJECTED,  # invalid parameters (e.g. the 'to' number)
    7: Outcome.REJECTED,  # number barred: the recipient is blacklisted
    12: Outcome.REJECTED,  # message too long
    22: Outcome.REJECTED,  # invalid network code (we never send one)
    33: Outcome.REJECTED,  # number de-activated
    # This account cannot reach this destination or use this sender; another may.
    # 6 "Invalid message: the platform was unable to process this message, for
    # example an unrecognised number prefix": the router has already checked the
    # number against libphonenumber's plan, so an unknown prefix here is a gap in
    # Vonage's routing, not a bad number.
    6: Outcome.UNROUTABLE,
    15: Outcome.UNROUTABLE,  # invalid sender address: 'from' not allowed here
    23: Outcome.UNROUTABLE,  # invalid callback URL (our config: every message would fail)
    29: Outcome.UNROUTABLE,  # non-whitelisted destination: demo (trial) account
    # The account is unusable as configured.
    4: Outcome.AUTH,  # invalid credentials
    8: Outcome.AUTH,  # partner account barred (suspended)
    9: Outcome.AUTH,  # partner quota violation: out of credit until topped up
    11: Outcome.AUTH,  # account not enabled for HTTP (SMPP only)
    14: Outcome.AUTH,  # invalid signature
    32: Outcome.AUTH,  # signature and api_secret both given
    # Vonage's own trouble.
    5: Outcome.TRANSIENT,  # internal error
}

# Status 1 and 10 carry no Retry-After; Vonage's limits are per second, so the
# account has room again in at most a second.
THROTTLE_PAUSE = 1.0

#: ``signature_method`` values: the dashboard's "MD5 hash" (md5hash, the
#: pre-v4 SDKs' default) or an HMAC digest.
SIGNATURE_METHODS = ("md5hash", "md5", "sha1", "sha256", "sha512")


def sign(params: Mapping[str, str], secret: str, method: str = "md5hash") -> str:
    """Vonage's request signature (``sig``) over ``params`` (which must hold ``timestamp``).

    Every parameter but ``sig``, in sorted order, as ``&key=value`` with ``&`` and
    ``=`` in values replaced by ``_``; then lowercase hex of MD5(string + secret)
    ("md5hash") or HMAC-<method>(secret, string).  Source: vonage-python-sdk
    ``vonage_http_client/auth.py`` ``sign_params``, and the pre-v4 SDK's
    ``signature()`` for md5hash (shared/reference/providers-wire.md section 2a).

    >>> sign({"api_key": "abcd1234", "timestamp": "1700000000", "to": "447700900000"}, "s3cr3t")
    '65308abe680ae1477e2eabfb0b28c973'
    """
    signed = "".join(
        f"&{key}={params[key].replace('&', '_').replace('=', '_')}"
        for key in sorted(params)
        if key != "sig"
    )
    if method == "md5hash":
        return hashlib.md5((signed + secret).encode(), usedforsecurity=False).hexdigest()
    return hmac.new(secret.encode(), signed.encode(), method).hexdigest()


def _basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


# -- webhooks: tables ----------------------------------------------------------------------

# SMS API delivery receipt ``status`` -> ours.  Source: the spec's DeliveryReceipt
# x-possible-values (shared/specs/vonage_sms.yml) with the meanings of
# shared/reference/providers-wire.md section 2a "Mapping": accepted/buffered are
# with the carrier, expired/failed reached it and were not delivered, rejected
# never left Vonage.
RECEIPT_STATUSES: Mapping[str, DeliveryStatus] = {
    "accepted": "sent",
    "buffered": "sent",
    "delivered": "delivered",
    "expired": "undelivered",
    "failed": "undelivered",
    "rejected": "failed",
    "unknown": "unknown",
}

# Messages API v1 ``status`` -> ours.  Source: developer.vonage.com "Messages API
# Status Callbacks": submitted = passed on to the messaging provider;
# undeliverable = Vonage could not connect to the provider (an outage: another
# provider may deliver); rejected = refused by the provider or TTL expired.
MESSAGES_STATUSES: Mapping[str, DeliveryStatus] = {
    "submitted": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "rejected": "undelivered",
    "undeliverable": "failed",
}

# DLR ``err-code`` (Vonage support article 204014733, "Vonage SMS Delivery Error
# Codes"; shared/reference/providers-wire.md section 2a) that another provider might
# get past: temporary absence (2), portability (5), carrier anti-spam (6),
# handset busy (7), network error (8), Vonage has no route (11).
RETRYABLE_RECEIPT_ERRORS = frozenset({"2", "5", "6", "7", "8", "11"})
# ... and those that are the number's: absent for good (3), barred by the user (4),
# opted out of the service (9), destination unreachable (12), age restriction (13),
# blocked by the carrier (14), prepaid without funds (15).  1/95 (unknown),
# 10 (illegal message) and 99 (general error) say neither.
PERMANENT_RECEIPT_ERRORS = frozenset({"3", "4", "9", "12", "13", "14", "15"})
# DLR ``err-code`` that means "this recipient opted out": the router records the
# opt-out.  9 "Illegal Number": the user "has requested not to receive messages
# from" the sending number; an SMS API message to an opted-out number is accepted
# (status 0), then its DLR says failed or rejected with err-code 9
# (developer.vonage.com/en/opt-out-assist/guides/messaging-opted-out-numbers;
# api.support.vonage.com article 204014733).  The Messages API's status webhook
# for the same case is not documented with a code we could confirm: not mapped.
RECEIPT_OPT_OUT_CODES = frozenset({"9"})

#: Default seconds a signed webhook's ``timestamp`` (or JWT ``iat``) may be from
#: now.  Vonage documents none; 300 s is what Telnyx and Sinch use.
WEBHOOK_TOLERANCE = 300.0

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def payload_hash(body: bytes) -> str:
    """The ``payload_hash`` claim of a Vonage signed webhook: hex SHA-256 of the raw body."""
    return hashlib.sha256(body).hexdigest()


def _flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _is_json(request: WebhookRequest) -> bool:
    ctype = request.headers.get("Content-Type", "").lower()
    return "json" in ctype or request.body.lstrip()[:1] in (b"{", b"[")


def _params(request: WebhookRequest) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The parameters Vonage sent (and signed), and the JSON object when the body is one.

    GET: the query.  POST: the body only (form or JSON); Vonage documents query
    and body together as unsupported, and signs what it sends in the body.
    """
    if request.method == "GET":
        return request.query, None
    if _is_json(request):
        doc = request.json()
        if not isinstance(doc, dict):
            raise WebhookError(400, "JSON body is not an object")
        return {str(k): _as_text(v) for k, v in doc.items() if v is not None}, doc
    return request.form(), None


def _scts(value: str | None) -> datetime.datetime | None:
    # YYMMDDHHMM, "2001011400 is at 2020-01-01 14:00" (spec); no zone given: UTC assumed.
    if not value or len(value) != 10 or not value.isdigit():
        return None
    try:
        return datetime.datetime.strptime(value, "%y%m%d%H%M").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def _retryable(code: str | None) -> bool | None:
    if code in RETRYABLE_RECEIPT_ERRORS:
        return True
    if code in PERMANENT_RECEIPT_ERRORS:
        return False
    return None


class VonageProvider(HttpProvider):
    """Vonage's legacy SMS API.

    Config (besides the common keys)::

        vonage:
          type: vonage
          api_key: ${VONAGE_API_KEY}
          api_secret: ${VONAGE_API_SECRET}      # or signature_secret (+ signature_method)
          from: Acme                            # alphanumeric or a number

    With ``signature_secret`` every request is signed and the secret is never
    sent; ``signature_method`` must match the dashboard's setting (md5hash,
    md5, sha1, sha256 or sha512; default md5hash).  The same secret verifies
    webhooks (``sig`` or a bearer JWT): forged, stale or unsigned ones get 403.
    ``signed_webhooks: false`` accepts them unverified (until Vonage support has
    turned signed SMS webhooks on); ``webhook_tolerance`` (default 300s) is how
    far a signed webhook's timestamp may be from now.
    """

    type_name = "vonage"
    required_options = frozenset({"api_key"})
    optional_options = frozenset(
        {
            "api_secret",
            "signature_secret",
            "signature_method",
            "signed_webhooks",
            "webhook_tolerance",
        }
    )
    secret_options = frozenset({"api_secret", "signature_secret"})
    default_base_url = "https://rest.nexmo.com"
    #: ``client-ref`` carries our message id and every receipt echoes it.
    echoes_message_id = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.api_key = str(opts["api_key"])
        secret = opts.get("api_secret")
        self._api_secret = str(secret) if secret not in (None, "") else None
        signature_secret = opts.get("signature_secret")
        self._signature_secret = (
            str(signature_secret) if signature_secret not in (None, "") else None
        )
        self.signature_method = str(opts.get("signature_method") or "md5hash")
        signed = _flag(opts.get("signed_webhooks"))
        #: The secret webhooks are verified with; None: accepted unverified.
        self._webhook_secret = self._signature_secret if signed is not False else None
        tolerance = opts.get("webhook_tolerance")
        self.webhook_tolerance = (
            parse_duration(tolerance) if tolerance is not None else WEBHOOK_TOLERANCE
        )
        self.url = f"{self.base_url}/sms/json"
        self._headers = {"Accept": "application/json"}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        has_secret = options.get("api_secret") not in (None, "")
        has_signature = options.get("signature_secret") not in (None, "")
        if not has_secret and not has_signature:
            problems.append(
                (
                    "api_secret",
                    "Vonage needs 'api_secret' (or 'signature_secret' for signed requests)",
                )
            )
        method = options.get("signature_method")
        if method is not None:
            if method not in SIGNATURE_METHODS:
                problems.append(
                    (
                        "signature_method",
                        f"signature_method is one of {', '.join(SIGNATURE_METHODS)} "
                        "(as set for the API key in the Vonage dashboard)",
                    )
                )
            elif not has_signature:
                problems.append(
                    ("signature_method", "signature_method needs 'signature_secret' as well")
                )
        signed = options.get("signed_webhooks")
        if signed is not None:
            if _flag(signed) is None:
                problems.append(("signed_webhooks", "signed_webhooks is true or false"))
            elif _flag(signed) and not has_signature:
                problems.append(
                    (
                        "signed_webhooks",
                        "signed_webhooks needs 'signature_secret' (the secret Vonage signs with)",
                    )
                )
        tolerance = options.get("webhook_tolerance")
        if tolerance is not None:
            try:
                ok = parse_duration(tolerance) > 0
            except ValueError:
                ok = False
            if not ok:
                problems.append(
                    (
                        "webhook_tolerance",
                        "webhook_tolerance is a positive duration such as 300s or 1h",
                    )
                )
        return problems

    def build_request(self, sms: OutboundSMS) -> HttpRequest:
        form = {
            "api_key": self.api_key,
            "to": sms.to.removeprefix("+"),
            "text": sms.text,
            # The legacy API does not detect Unicode: without this, non-GSM text
            # arrives as question marks.
            "type": "unicode" if sms.encoding == "UCS-2" else "text",
        }
        if sms.sender:
            # A numeric sender is written without '+', '00' or spaces (SDK SmsMessage.from_);
            # a sender ID as written (its spaces are part of it: "Vonage APIs").
            digits = sms.sender.replace(" ", "")
            digits = digits[1:] if digits[:1] == "+" else digits
            form["from"] = digits if digits.isdigit() else sms.sender
        if sms.status_callback:
            form["callback"] = sms.status_callback
        if len(sms.message_id) <= 40:  # the spec's limit for client-ref
            form["client-ref"] = sms.message_id
        if self._signature_secret is not None:
            form["timestamp"] = str(int(time.time()))
            form["sig"] = sign(form, self._signature_secret, self.signature_method)
        else:
            form["api_secret"] = self._api_secret or ""
        return HttpRequest("POST", self.url, self._headers, data=form)

    def parse_response(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> Reply:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if not 200 <= status < 300:
            return Reply(
                classify_status(status),
                status_code=status,
                detail=f"HTTP {status} from Vonage",
                retry_after=retry_after,
            )
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            doc = None
        parts = doc.get("messages") if isinstance(doc, dict) else None
        if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
            return Reply(
                Outcome.TRANSIENT,
                status_code=status,
                detail=f"malformed reply: HTTP {status} without Vonage's messages list",
            )
        codes = [_status_code(p.get("status")) for p in parts]
        if None in codes:
            return Reply(
                Outcome.TRANSIENT,
                status_code=status,
                detail="malformed reply: a message part without a numeric status",
            )
        ids = [p.get("message-id") for p, code in zip(parts, codes, strict=True) if code == 0]
        if any(not isinstance(i, str) or not i for i in ids):
            return Reply(
                Outcome.TRANSIENT,
                status_code=status,
                detail="malformed reply: an accepted part without a message-id",
            )
        first_id = ids[0] if ids else None
        failed = next(((p, code) for p, code in zip(parts, codes, strict=True) if code != 0), None)
        if failed is None:
            return Reply(
                Outcome.ACCEPTED,
                provider_message_id=first_id,
                status_code=status,
                # Each part has its own id and its own delivery receipt.
                part_ids=tuple(ids) if len(ids) > 1 else (),
            )
        part, code = failed
        assert code is not None
        text = part.get("error-text")
        text = text if isinstance(text, str) else ""
        outcome = self._outcome(code, text)
        detail = f"Vonage {code}"
        if text:
            detail += f": {scrub(text[:200])}"
        if ids:
            # Some parts went out and will reach the handset; the message as a
            # whole did not.  Classified by the failed part (usually status 1).
            detail += f" (partial: {len(ids)} of {len(parts)} parts accepted)"
        if outcome is Outcome.THROTTLED and retry_after is None:
            retry_after = THROTTLE_PAUSE
        return Reply(
            outcome,
            provider_message_id=first_id,
            status_code=status,
            error_code=str(code),
            detail=detail,
            retry_after=retry_after,
        )

    @staticmethod
    def _outcome(code: int, error_text: str) -> Outcome:
        outcome = ERROR_OUTCOMES.get(code)
        if outcome is None:
            # Undocumented status: not sent, cause unknown.  Fail over, count it.
            return Outcome.TRANSIENT
        if code in (2, 3) and "from" in error_text.lower():
            # "Missing from param" / an invalid 'from': our sender is wrong for this
            # account, which another provider may accept.  The wording "Missing
            # <name> param" is from a third-party guide, not confirmed with Vonage;
            # if it differs, a missing sender is REJECTED (no failover) instead.
            return Outcome.UNROUTABLE
        return outcome

    # -- webhooks ------------------------------------------------------------------------

    webhook_methods = {
        "status": frozenset({"GET", "POST"}),
        "inbound": frozenset({"GET", "POST"}),
    }

    @classmethod
    def unverified_webhooks(cls, options: Mapping[str, Any]) -> str | None:
        if (
            options.get("signature_secret") not in (None, "")
            and _flag(options.get("signed_webhooks")) is not False
        ):
            return None
        return "set signature_secret (the dashboard's signature secret) and sign webhooks"

    def verify_webhook(self, kind: str, request: WebhookRequest, now: float) -> None:
        secret = self._webhook_secret
        if secret is None:
            return  # no signature secret configured: accepted unverified (module docstring)
        auth = request.header("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            self._verify_jwt(token.strip(), request.body, secret, now)
            return
        params, _ = _params(request)
        signature = params.get("sig")
        if not signature:
            raise WebhookError(403, "unsigned: no sig parameter and no Authorization bearer JWT")
        signed_at = unix_seconds(params.get("timestamp"))
        if signed_at is None:
            raise WebhookError(403, "signed webhook without a timestamp in Unix seconds")
        self._check_age(signed_at, now, "timestamp")
        expected = sign(params, secret, self.signature_method)
        if not hmac.compare_digest(signature.strip().lower().encode(), expected.encode()):
            raise WebhookError(403, "sig does not match")

    def _verify_jwt(self, token: str, body: bytes, secret: str, now: float) -> None:
        try:
            with warnings.catch_warnings():
                # Vonage picks the secret's length (it asks for 32 bits or more); a
                # warning per webhook about it would help nobody.
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=["HS256"],
                    options={"require": ["iat", "payload_hash"], "verify_iat": False},
                )
        except jwt.InvalidTokenError as exc:
            raise WebhookError(403, f"bearer JWT refused: {type(exc).__name__}") from None
        issued = claims["iat"]
        if isinstance(issued, bool) or not isinstance(issued, int | float):
            raise WebhookError(403, "bearer JWT with a non-numeric iat")
        self._check_age(issued, now, "JWT iat")
        claimed = claims["payload_hash"]
        if (
            not isinstance(claimed, str)
            or not claimed.isascii()
            or not hmac.compare_digest(
                claimed.strip().lower().encode(), payload_hash(body).encode()
            )
        ):
            raise WebhookError(403, "payload_hash does not match the body")

    def _check_age(self, signed_at: float, now: float, what: str) -> None:
        if not within(signed_at, now, self.webhook_tolerance):
            raise WebhookError(
                403, f"stale: {what} is more than {self.webhook_tolerance:g} s from now"
            )

    def parse_receipts(self, request: WebhookRequest) -> list[Receipt]:
        params, doc = _params(request)
        if doc is not None and "message_uuid" in doc:
            return [self._messages_receipt(doc)]
        message_id = params.get("messageId") or params.get("message-id")
        raw = params.get("status")
        if not message_id or not raw:
            raise WebhookError(400, "delivery receipt without messageId and status")
        code = params.get("err-code") or None
        status = RECEIPT_STATUSES.get(raw.lower(), "unknown")
        if code == "0" or status == "delivered":
            code = None  # err-code 0 is "Delivered": no error
        return [
            Receipt(
                provider_message_id=message_id,
                status=status,
                error_code=code,
                at=_scts(params.get("scts")) or iso_time(params.get("message-timestamp")),
                retryable=_retryable(code) if status != "delivered" else None,
                message_id=params.get("client-ref") or None,
                opted_out=code in RECEIPT_OPT_OUT_CODES,
            )
        ]

    @staticmethod
    def _messages_receipt(doc: Mapping[str, Any]) -> Receipt:
        uuid, raw = doc.get("message_uuid"), doc.get("status")
        if not isinstance(uuid, str) or not uuid or not isinstance(raw, str) or not raw:
            raise WebhookError(400, "status webhook without message_uuid and status")
        status = MESSAGES_STATUSES.get(raw.lower(), "unknown")
        code: str | None = None
        error = doc.get("error")
        if isinstance(error, dict):
            kind, title = error.get("type"), error.get("title")
            if isinstance(kind, str) and "#" in kind:
                code = kind.rsplit("#", 1)[1] or None
            elif title is not None:
                code = _as_text(title)
        retryable: bool | None = True if raw.lower() == "undeliverable" else None
        ref = doc.get("client_ref")
        return Receipt(
            provider_message_id=uuid,
            status=status,
            error_code=code,
            at=iso_time(doc.get("timestamp")),
            retryable=retryable if status != "delivered" else None,
            message_id=ref if isinstance(ref, str) and ref else None,
        )

    def parse_inbound(self, request: WebhookRequest) -> list[Inbound]:
        params, doc = _params(request)
        if doc is not None and "message_uuid" in doc:
            sender, recipient = doc.get("from"), doc.get("to")
            if not isinstance(sender, str) or not sender or not isinstance(recipient, str):
                raise WebhookError(400, "inbound message without from and to")
            text = doc.get("text")
            uuid = doc.get("message_uuid")
            return [
                Inbound(
                    sender=with_plus(sender),
                    recipient=with_plus(recipient),
                    text=text if isinstance(text, str) else "",
                    provider_message_id=uuid if isinstance(uuid, str) else None,
                    at=iso_time(doc.get("timestamp")),
                )
            ]
        sender, recipient = params.get("msisdn"), params.get("to")
        if not sender or not recipient:
            raise WebhookError(400, "inbound message without msisdn and to")
        if "text" not in params and params.get("type") != "binary":
            raise WebhookError(400, "inbound message without text")
        return [
            Inbound(
                sender=with_plus(sender),
                recipient=with_plus(recipient),
                text=params.get("text", ""),
                provider_message_id=params.get("messageId") or None,
                at=iso_time(params.get("message-timestamp")),
            )
        ]


def _status_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        try:
            return int(value)
        except ValueError:  # isdigit() takes "\u00b2" and 5,000 digits; int() neither
            return None
    return None
