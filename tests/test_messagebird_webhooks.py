"""MessageBird status reports and inbound messages over real sockets: FakeMessageBird
calls the router's webhook app on 127.0.0.1 with MessageBird's GET requests, signed
with ``MessageBird-Signature-JWT`` (HS256 JWT over url_hash/payload_hash).

The official ``messagebird`` SDK's ``RequestValidator`` checks both ends: it
accepts what FakeMessageBird signs and refuses it tampered; tokens built to its
specification (with PyJWT, which it uses itself) are accepted by the adapter.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from conftest import Hooks, call, make_config, state_of
from multidict import CIMultiDict, CIMultiDictProxy
from provider_support import (
    assert_early_receipt_correlated,
    assert_failed_receipt_classified,
    assert_stop_opts_out_marketing_not_otp,
    delivered_round_trip,
    fake_fixture,
    otp_to,
    provider_settings,
    routing_yaml,
    serving,
)

from smsroute import Router
from smsroute.config import ProviderConfig
from smsroute.providers.base import WebhookRequest
from smsroute.providers.messagebird import MessageBirdProvider
from smsroute.testing.messagebird import FakeMessageBird

TO = "+31612345678"
SENDER = "+15005550006"
OTP = otp_to(TO)


fake = fake_fixture(FakeMessageBird)


def config_text(hooks: Hooks, fake: FakeMessageBird, *, key: bool = True) -> str:
    key_line = [f'signing_key: "{fake.signing_key}"'] if key else []
    settings = provider_settings(fake, SENDER, *key_line)
    return routing_yaml({"primary": settings}, default_region="NL", webhook_url=hooks.url)


@pytest.fixture
async def router(hooks: Hooks, fake: FakeMessageBird) -> AsyncIterator[Router]:
    async with serving(hooks, make_config(config_text(hooks, fake))) as r:
        yield r


def token(key: str, url: str, body: bytes = b"", **claims: Any) -> str:
    """A token as MessageBird's documentation and the SDK's validator define it."""
    alg = claims.pop("alg", "HS256")
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": "MessageBird",
        "nbf": now,
        "exp": now + 60,
        "jti": "9b2a3c4d",
        "url_hash": hashlib.sha256(url.encode()).hexdigest(),
    }
    if body:
        payload["payload_hash"] = hashlib.sha256(body).hexdigest()
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg)


# -- the whole loop over sockets ------------------------------------------------------------


async def test_signed_status_report_reaches_the_router_and_updates_status(
    router: Router, fake: FakeMessageBird
) -> None:
    result, reports = await delivered_round_trip(router, fake, OTP)
    assert [(r.status, r.message_id, r.provider_message_id) for r in reports] == [
        ("delivered", result.message_id, result.provider_message_id)
    ]


async def test_report_arriving_before_send_returns_is_correlated(
    router: Router, fake: FakeMessageBird
) -> None:
    await assert_early_receipt_correlated(router, fake, OTP)


async def test_failed_report_carries_reason_and_code(router: Router, fake: FakeMessageBird) -> None:
    # 27, absent subscriber: another provider may reach it later.
    expected = ("undelivered", "27", True)
    await assert_failed_receipt_classified(router, fake, OTP, "undelivered", None, expected)


# -- signatures --------------------------------------------------------------------------------


async def test_tampered_report_is_refused_and_changes_nothing(
    router: Router, fake: FakeMessageBird
) -> None:
    result = await router.send(OTP)
    method, url, headers, _body = fake.receipt_request(fake.messages[0], "delivered", None)
    forged = url.replace("status=delivered", "status=delivereD")
    assert forged != url
    assert len(forged) == len(url)
    assert await call(method, forged, headers) == 403
    assert await state_of(router, result.message_id) == "accepted"
    assert await call(method, url, headers) == 200
    assert await state_of(router, result.message_id) == "delivered"


async def test_tampered_token_is_refused(router: Router, fake: FakeMessageBird) -> None:
    await router.send(OTP)
    method, url, headers, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    sig = headers["MessageBird-Signature-JWT"]
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert await call(method, url, {"MessageBird-Signature-JWT": flipped}) == 403


async def test_unsigned_report_is_refused_when_a_signing_key_is_configured(
    router: Router, fake: FakeMessageBird
) -> None:
    result = await router.send(OTP)
    method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    assert await call(method, url, {}) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_token_signed_with_the_access_key_is_refused(
    router: Router, fake: FakeMessageBird
) -> None:
    await router.send(OTP)
    method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    headers = {"MessageBird-Signature-JWT": token(fake.access_key + "x" * 8, url)}
    assert await call(method, url, headers) == 403


async def test_token_for_another_url_is_refused(router: Router, fake: FakeMessageBird) -> None:
    await router.send(OTP)
    method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    headers = {"MessageBird-Signature-JWT": token(fake.signing_key, url + "&x=1")}
    assert await call(method, url, headers) == 403


@pytest.mark.parametrize(
    "claims",
    [
        # Times as seconds from when the test runs, made absolute by relative() below:
        # computed here, at collection, a long suite could reach the test minutes later.
        {"exp": -10, "nbf": -70},  # expired
        {"nbf": 60, "exp": 120},  # not valid yet
        {"iss": "SomeoneElse"},
        {"iss": None},
        {"exp": None},
        {"nbf": None},
        {"url_hash": None},
    ],
    ids=["expired", "not-yet-valid", "wrong-issuer", "no-iss", "no-exp", "no-nbf", "no-url-hash"],
)
async def test_stale_or_incomplete_token_is_refused(
    router: Router, fake: FakeMessageBird, claims: dict[str, Any]
) -> None:
    result = await router.send(OTP)
    method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    headers = {"MessageBird-Signature-JWT": token(fake.signing_key, url, **relative(claims))}
    assert await call(method, url, headers) == 403
    assert await state_of(router, result.message_id) == "accepted"


def relative(claims: dict[str, Any]) -> dict[str, Any]:
    """``exp`` and ``nbf`` given as seconds from now, made absolute now."""
    now = int(time.time())
    return {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in claims.items()}


async def test_token_with_a_payload_hash_but_no_body_is_refused(
    router: Router, fake: FakeMessageBird
) -> None:
    await router.send(OTP)
    method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    bogus = hashlib.sha256(b"x").hexdigest()
    headers = {"MessageBird-Signature-JWT": token(fake.signing_key, url, payload_hash=bogus)}
    assert await call(method, url, headers) == 403


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
async def test_other_hmac_algorithms_are_accepted(
    router: Router, fake: FakeMessageBird, alg: str
) -> None:
    result = await router.send(OTP)
    method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    key = fake.signing_key * 2  # long enough for HS512 without PyJWT's key-length warning
    provider = router.dispatcher.runtime.providers["primary"]
    assert isinstance(provider, MessageBirdProvider)
    provider.signing_key = key
    headers = {"MessageBird-Signature-JWT": token(key, url, alg=alg)}
    assert await call(method, url, headers) == 200
    assert await state_of(router, result.message_id) == "delivered"


async def test_unsigned_token_alg_none_is_refused(router: Router, fake: FakeMessageBird) -> None:
    await router.send(OTP)
    method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    now = int(time.time())
    claims = {
        "iss": "MessageBird",
        "nbf": now,
        "exp": now + 60,
        "url_hash": hashlib.sha256(url.encode()).hexdigest(),
    }
    unsigned = jwt.encode(claims, "", algorithm="none")
    assert await call(method, url, {"MessageBird-Signature-JWT": unsigned}) == 403


async def test_malformed_signed_report_is_a_400(router: Router, hooks: Hooks) -> None:
    provider = router.dispatcher.runtime.providers["primary"]
    assert isinstance(provider, MessageBirdProvider)
    assert provider.signing_key is not None
    url = f"{hooks.url}/primary/status?{urlencode({'id': 'abc', 'recipient': '31612345678'})}"
    headers = {"MessageBird-Signature-JWT": token(provider.signing_key, url)}
    assert await call("GET", url, headers) == 400  # no status


async def test_post_is_not_a_status_report(router: Router, hooks: Hooks) -> None:
    assert await call("POST", f"{hooks.url}/primary/status", {}, b"id=1") == 405


async def test_without_a_signing_key_unsigned_reports_are_accepted(
    hooks: Hooks, fake: FakeMessageBird
) -> None:
    async with serving(hooks, make_config(config_text(hooks, fake, key=False))) as router:
        result = await router.send(OTP)
        method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
        assert await call(method, url, {}) == 200
        assert await state_of(router, result.message_id) == "delivered"


# -- inbound and opt-outs -------------------------------------------------------------------------


async def test_inbound_stop_opts_out_marketing_but_not_otp(
    router: Router, hooks: Hooks, fake: FakeMessageBird
) -> None:
    inbound = await assert_stop_opts_out_marketing_not_otp(
        router, fake, f"{hooks.url}/primary/inbound", sender=TO, recipient=SENDER, text="Stop"
    )
    assert [(m.sender, m.recipient, m.keyword) for m in inbound] == [(TO, SENDER, "STOP")]


async def test_forged_inbound_stop_is_refused(
    router: Router, hooks: Hooks, fake: FakeMessageBird
) -> None:
    method, url, headers, _ = fake.inbound_request(
        f"{hooks.url}/primary/inbound", TO, SENDER, "STOP"
    )
    forged = url.replace("originator=31612345678", "originator=31612345679")
    assert forged != url
    assert await call(method, forged, headers) == 403
    assert not router.is_opted_out(TO)
    assert not router.is_opted_out("+31612345679")


async def test_signed_inbound_post_with_a_body_is_accepted(
    router: Router, hooks: Hooks, fake: FakeMessageBird
) -> None:
    url = f"{hooks.url}/primary/inbound"
    body = urlencode(
        {"id": "e8077d80", "recipient": "15005550006", "originator": "31612345678", "body": "STOP"}
    ).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "MessageBird-Signature-JWT": fake.signature(url, body),
    }
    assert await call("POST", url, headers, body + b"x") == 403  # payload_hash covers the body
    assert not router.is_opted_out(TO)
    assert await call("POST", url, headers, body) == 200
    assert router.is_opted_out(TO)


async def test_malformed_inbound_is_a_400(
    router: Router, hooks: Hooks, fake: FakeMessageBird
) -> None:
    url = f"{hooks.url}/primary/inbound?{urlencode({'id': 'x', 'recipient': '15005550006'})}"
    headers = {"MessageBird-Signature-JWT": fake.signature(url)}
    assert await call("GET", url, headers) == 400


# -- the parser on MessageBird's documented shapes ---------------------------------------------


def provider() -> MessageBirdProvider:
    return MessageBirdProvider(
        ProviderConfig(name="mb", type="messagebird", options={"access_key": "live_x"})
    )


def get(url: str) -> WebhookRequest:
    return WebhookRequest("GET", url, CIMultiDictProxy(CIMultiDict()), b"")


@pytest.mark.parametrize(
    ("status", "reason", "code", "ours", "error_code", "retryable"),
    [
        ("scheduled", "", "", "queued", None, None),
        ("sent", "pending DLR", "", "sent", None, None),
        ("buffered", "", "", "sent", None, None),
        ("delivered", "successfully delivered", "", "delivered", None, None),
        ("expired", "absent subscriber", "27", "undelivered", "27", True),
        ("delivery_failed", "unknown subscriber", "1", "undelivered", "1", False),
        ("delivery_failed", "", "", "undelivered", None, None),
        ("something_new", "", "", "unknown", None, None),
    ],
)
def test_status_report_table(
    status: str,
    reason: str,
    code: str,
    ours: str,
    error_code: str | None,
    retryable: bool | None,
) -> None:
    # The status report of MessageBird's own Ruby SDK example.
    query = {
        "id": "eef0ab57a9e049be946f3821568c2b2e",
        "reference": "FOO",
        "recipient": "31612345678",
        "status": status,
        "statusDatetime": "2019-01-11T09:17:11+00:00",
        "mccmnc": "20408",
        "ported": "1",
    }
    if reason:
        query["statusReason"] = reason
    if code:
        query["statusErrorCode"] = code
    [receipt] = provider().parse_receipts(get(f"https://example.com/mb?{urlencode(query)}"))
    assert (receipt.status, receipt.error_code, receipt.retryable) == (ours, error_code, retryable)
    assert (receipt.provider_message_id, receipt.message_id) == (
        "eef0ab57a9e049be946f3821568c2b2e",
        "FOO",
    )
    assert receipt.at is not None
    assert receipt.at.isoformat() == "2019-01-11T09:17:11+00:00"


def test_shortcode_inbound_is_understood() -> None:
    query = (
        "mid=123456789&shortcode=1008&keyword=MESSAGEBIRD&originator=31612345678"
        "&operator=20401&message=This+is+an+incoming+message&receive_datetime=20160503142657"
    )
    [message] = provider().parse_inbound(get(f"https://example.com/mb?{query}"))
    assert (message.sender, message.recipient, message.text, message.provider_message_id) == (
        "+31612345678",
        "1008",
        "This is an incoming message",
        "123456789",
    )
    assert message.at is not None
    assert message.at.isoformat() == "2016-05-03T14:26:57+00:00"


# -- the official SDK --------------------------------------------------------------------------------


def sdk_validator(key: str) -> tuple[Any, type[Exception]]:
    """The SDK's ``RequestValidator`` for ``key`` and the error it raises."""
    pytest.importorskip("messagebird")
    from messagebird.error import ValidationError  # type: ignore[import-untyped]
    from messagebird.request_validator import RequestValidator  # type: ignore[import-untyped]

    return RequestValidator(key), ValidationError


async def test_sdk_validator_accepts_the_fakes_signature_and_refuses_tampering(
    router: Router, hooks: Hooks, fake: FakeMessageBird
) -> None:
    validator, ValidationError = sdk_validator(fake.signing_key)
    await router.send(OTP)
    _, url, headers, body = fake.receipt_request(fake.messages[0], "delivered", None)
    claims = validator.validate_signature(headers["MessageBird-Signature-JWT"], url, body)
    assert claims["iss"] == "MessageBird"
    with pytest.raises(ValidationError):
        validator.validate_signature(
            headers["MessageBird-Signature-JWT"], url.replace("delivered", "delivereD"), body
        )
    _, in_url, in_headers, in_body = fake.inbound_request(
        f"{hooks.url}/primary/inbound", TO, SENDER, "STOP"
    )
    validator.validate_signature(in_headers["MessageBird-Signature-JWT"], in_url, in_body)
    post = b"originator=31612345678&body=STOP"
    signature = fake.signature(in_url, post)
    validator.validate_signature(signature, in_url, post)
    with pytest.raises(ValidationError):
        validator.validate_signature(signature, in_url, post[:-1] + b"Q")


async def test_what_the_sdk_validator_accepts_we_accept_and_vice_versa(
    router: Router, fake: FakeMessageBird
) -> None:
    """Tokens built to the SDK's rules: the SDK and the adapter agree on each."""
    validator, ValidationError = sdk_validator(fake.signing_key)
    result = await router.send(OTP)
    method, url, _, _ = fake.receipt_request(fake.messages[0], "delivered", None)
    now = int(time.time())
    cases = [
        token(fake.signing_key, url + "&extra=1"),
        token(fake.signing_key, url, exp=now - 30, nbf=now - 90),
        token(fake.signing_key, url, iss="Evil"),
        token(fake.signing_key, url),  # the good one last: it changes the state
    ]
    for case in cases:
        try:
            validator.validate_signature(case, url, b"")
            sdk_ok = True
        except ValidationError:
            sdk_ok = False
        ours = await call(method, url, {"MessageBird-Signature-JWT": case})
        assert (ours == 200) is sdk_ok
    assert await state_of(router, result.message_id) == "delivered"
