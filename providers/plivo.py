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
"""

from __future__ import annotations

import base64
import json
import re
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

__all__ = ["STATUS_OUTCOMES", "TEXT_OUTCOMES", "PlivoProvider"]

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


class PlivoProvider(HttpProvider):
    """Plivo's Message API.

    Config (besides the common keys)::

        plivo:
          type: plivo
          auth_id: ${PLIVO_AUTH_ID}           # MA... (main account) or SA... (subaccount)
          auth_token: ${PLIVO_AUTH_TOKEN}
          from: "+14155550100"                # or powerpack_uuid: ...
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
        except ValueError:
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
