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
  message's :attr:`Reply.provider_message_id`.
- Non-200 answers come from Vonage's edge (5xx, or a 429 there): classified by
  HTTP status.

About the SDK (vonage 4.9.1 / vonage-sms 1.2.0): its host is an option
(``HttpClientOptions(rest_host=...)``) but its scheme is always https, so the
tests carry its requests to the fake over plain HTTP with a transport adapter.
Its signed send does not work: it signs every ``SmsMessage`` field, None ones
included, and ``requests`` leaves those out of the form, so the signature
covers fields never sent (its signer itself agrees with :func:`sign`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
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

__all__ = ["ERROR_OUTCOMES", "SIGNATURE_METHODS", "VonageProvider", "sign"]

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
    md5, sha1, sha256 or sha512; default md5hash).
    """

    type_name = "vonage"
    required_options = frozenset({"api_key"})
    optional_options = frozenset({"api_secret", "signature_secret", "signature_method"})
    secret_options = frozenset({"api_secret", "signature_secret"})
    default_base_url = "https://rest.nexmo.com"

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
            sender = sms.sender.replace(" ", "")
            # A numeric sender is written without '+' or '00' (SDK SmsMessage.from_).
            form["from"] = sender[1:] if sender[:1] == "+" and sender[1:].isdigit() else sender
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
        except ValueError:
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
            return Reply(Outcome.ACCEPTED, provider_message_id=first_id, status_code=status)
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


def _status_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
