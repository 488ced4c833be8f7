"""Vonage delivery receipts and inbound messages over real sockets: FakeVonage
calls the router's webhook app on 127.0.0.1 with Vonage's real payloads,
signed as Vonage signs them.

Two schemes, both checked against the official SDK (vonage 4.x):

- SMS API ``sig``: receipts signed here with ``vonage_http_client.Auth.sign_params``
  (the SDK's signer) are accepted, and the fake's own signatures pass the SDK's
  ``Auth.check_signature``.  (The v4 SDK only does the HMAC methods; "md5hash"
  is checked against our signer and the fake's, written apart.)
- Messages API bearer JWT: the SDK ships no signer for these, only
  ``vonage_jwt.verify_signature``; the fake's tokens pass it, and tokens made
  here with PyJWT carry the claims of Vonage's documented sample.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
import pytest
from conftest import Hooks, call, make_config, state_of
from multidict import CIMultiDict, CIMultiDictProxy
from provider_support import (
    assert_failed_receipt_classified,
    assert_stop_opts_out_marketing_not_otp,
    delivered_round_trip,
    fake_fixture,
    otp_to,
    receipt_round_trip,
    routing_yaml,
    serving,
)

from smsroute import ConfigError, Router
from smsroute.config import Config, ProviderConfig
from smsroute.providers.base import WebhookError, WebhookRequest
from smsroute.providers.vonage import VonageProvider, sign
from smsroute.testing import FakeVonage

SECRET = "9a7c1f0e2b3d4c5e6f7a8b9c0d1e2f3a"
HANDSET = "+4915123456789"
OTP = otp_to(HANDSET)
OUR_NUMBER = "+447700900000"
# Every way Vonage can call back: (webhook_method, webhook_api).
WEBHOOK_STYLES = [("POST-JSON", "sms"), ("POST", "sms"), ("GET", "sms"), ("POST-JSON", "messages")]


def config(hooks: Hooks, fake: FakeVonage, **extra: object) -> Config:
    settings = ["type: vonage", f"base_url: {fake.url}", f'api_key: "{fake.api_key}"', "from: Acme"]
    settings += [
        f"{k}: {json.dumps(v) if isinstance(v, str) else str(v).lower()}" for k, v in extra.items()
    ]
    if fake.signature_secret is not None:
        settings.append(f'signature_secret: "{fake.signature_secret}"')
        settings.append(f"signature_method: {fake.signature_method}")
    else:
        settings.append(f'api_secret: "{fake.api_secret}"')
    return make_config(routing_yaml({"vonage": settings}, webhook_url=hooks.url))


fake = fake_fixture(lambda: FakeVonage(signature_secret=SECRET, signature_method="sha256"))


@pytest.fixture
async def router(hooks: Hooks, fake: FakeVonage) -> AsyncIterator[Router]:
    async with serving(hooks, config(hooks, fake)) as r:
        yield r


def dlr(
    fake: FakeVonage, message_id: str, provider_id: str, status: str = "delivered"
) -> dict[str, str]:
    """An SMS API delivery receipt's fields, unsigned (the spec's DeliveryReceipt)."""
    return {
        "msisdn": "4915123456789",
        "to": "Acme",
        "network-code": "26201",
        "messageId": provider_id,
        "price": "0.03330000",
        "status": status,
        "scts": "2001011400",
        "err-code": "0" if status == "delivered" else "2",
        "api-key": fake.api_key,
        "client-ref": message_id,
        "message-timestamp": "2020-01-01 14:00:00",
    }


def sdk_signed(fake: FakeVonage, params: dict[str, str]) -> dict[str, str]:
    """``params`` with timestamp, nonce and sig added by the official SDK's signer."""
    auth_mod = pytest.importorskip("vonage_http_client.auth")
    auth = auth_mod.Auth(
        api_key=fake.api_key,
        signature_secret=fake.signature_secret,
        signature_method=fake.signature_method,
    )
    signed = {**params, "timestamp": str(int(time.time())), "nonce": "c0ffee00-1e7f-4db5-9467"}
    signed["sig"] = auth.sign_params(dict(signed))
    return signed


# -- the whole loop over sockets, every way Vonage can send a receipt ------------------------


@pytest.mark.parametrize(("webhook_method", "webhook_api"), WEBHOOK_STYLES)
async def test_signed_receipt_from_the_fake_updates_status(
    hooks: Hooks, webhook_method: str, webhook_api: str
) -> None:
    async with (
        FakeVonage(
            signature_secret=SECRET,
            signature_method="sha512",
            webhook_method=webhook_method,
            webhook_api=webhook_api,
        ) as fake,
        serving(hooks, config(hooks, fake)) as router,
    ):
        result, reports = await delivered_round_trip(router, fake, OTP)
        assert [(r.message_id, r.provider_message_id) for r in reports] == [
            (result.message_id, result.provider_message_id)
        ]


async def test_md5hash_signed_receipt_is_accepted(hooks: Hooks) -> None:
    async with (
        FakeVonage(signature_secret=SECRET) as fake,  # the dashboard's default
        serving(hooks, config(hooks, fake)) as router,
    ):
        result, _ = await receipt_round_trip(router, fake, OTP)
        assert fake.receipts_sent[0][2] == 200
        assert await state_of(router, result.message_id) == "delivered"


@pytest.mark.parametrize(
    ("outcome", "code", "status", "retryable"),
    [
        ("undelivered", 2, "undelivered", True),  # absent subscriber, temporary
        ("undelivered", 3, "undelivered", False),  # absent subscriber, permanent
        ("undelivered", 9, "undelivered", False),  # the user opted out of the service
        ("failed", 11, "failed", True),  # unroutable at Vonage ("rejected")
    ],
)
async def test_failed_receipts_are_classified(
    router: Router, fake: FakeVonage, outcome: str, code: int, status: str, retryable: bool
) -> None:
    expected = (status, str(code), retryable)
    await assert_failed_receipt_classified(router, fake, OTP, outcome, code, expected)


# -- sig: the SDK's signer, forgeries, staleness -------------------------------------------------


async def test_receipt_signed_by_the_sdk_is_accepted(
    router: Router, hooks: Hooks, fake: FakeVonage
) -> None:
    result = await router.send(OTP)
    params = sdk_signed(fake, dlr(fake, result.message_id, result.provider_message_id or ""))
    url = f"{hooks.url}/vonage/status"
    assert (
        await call("POST", url, {"Content-Type": "application/json"}, json.dumps(params).encode())
        == 200
    )
    assert await state_of(router, result.message_id) == "delivered"


async def test_sdk_signed_receipt_tampered_by_one_byte_is_refused(
    router: Router, hooks: Hooks, fake: FakeVonage
) -> None:
    result = await router.send(OTP)
    params = sdk_signed(fake, dlr(fake, result.message_id, result.provider_message_id or ""))
    body = urlencode(params).encode()
    forged = body.replace(b"status=delivered", b"status=delivereD")
    assert forged != body
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert await call("POST", f"{hooks.url}/vonage/status", headers, forged) == 403
    assert await state_of(router, result.message_id) == "accepted"


def test_the_fakes_signatures_pass_the_sdks_check(fake: FakeVonage) -> None:
    auth_mod = pytest.importorskip("vonage_http_client.auth")
    auth = auth_mod.Auth(api_key=fake.api_key, signature_secret=SECRET, signature_method="sha256")
    fake.webhook_method = "GET"
    _, url, _, _ = fake.sms_webhook(
        "https://hooks.example.com/v/status", {"text": "a&b=c", "to": "1"}
    )
    params = dict(parse_qsl(urlsplit(url).query))
    assert auth.check_signature(dict(params))
    params["text"] = "a&b=d"
    assert not auth.check_signature(params)


def test_our_signer_agrees_with_the_sdks() -> None:
    auth_mod = pytest.importorskip("vonage_http_client.auth")
    params = {"msisdn": "447700900001", "text": "x=1&y", "timestamp": "1700000000", "nonce": "n"}
    for method in ("md5", "sha1", "sha256", "sha512"):
        auth = auth_mod.Auth(api_key="abcd1234", signature_secret=SECRET, signature_method=method)
        assert sign(params, SECRET, method) == auth.sign_params(dict(params))


@pytest.mark.parametrize("webhook_method", ["POST-JSON", "POST", "GET"])
async def test_forged_receipt_is_refused_and_changes_nothing(
    router: Router, fake: FakeVonage, webhook_method: str
) -> None:
    fake.webhook_method = webhook_method
    result = await router.send(OTP)
    method, url, headers, body = fake.receipt_request(fake.messages[0], "undelivered", 2)
    # One byte changed: err-code 3 (permanent) for 2 (temporary).
    if method == "GET":
        forged_url, forged = url.replace("err-code=2", "err-code=3"), body
        assert forged_url != url
    else:
        forged_url = url
        forged = body.replace(b'"err-code": "2"', b'"err-code": "3"').replace(
            b"err-code=2", b"err-code=3"
        )
        assert forged != body
    assert await call(method, forged_url, headers, forged) == 403
    assert await state_of(router, result.message_id) == "accepted"
    assert await call(method, url, headers, body) == 200  # the genuine one still counts
    assert await state_of(router, result.message_id) == "undelivered"


async def test_receipt_signed_with_another_secret_is_refused(
    router: Router, fake: FakeVonage
) -> None:
    result = await router.send(OTP)
    record = fake.messages[0]
    fake.signature_secret = "not-" + SECRET
    method, url, headers, body = fake.receipt_request(record, "delivered", None)
    assert await call(method, url, headers, body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_unsigned_receipt_is_refused(router: Router, hooks: Hooks, fake: FakeVonage) -> None:
    result = await router.send(OTP)
    params = dlr(fake, result.message_id, result.provider_message_id or "")
    body = json.dumps(params).encode()
    status = await call(
        "POST", f"{hooks.url}/vonage/status", {"Content-Type": "application/json"}, body
    )
    assert status == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_stale_receipt_is_refused(router: Router, hooks: Hooks, fake: FakeVonage) -> None:
    result = await router.send(OTP)
    params = dlr(fake, result.message_id, result.provider_message_id or "")
    url = f"{hooks.url}/vonage/status"
    for at in (time.time() - 3600, time.time() + 3600):  # an hour old; an hour ahead
        method, target, headers, body = fake.sms_webhook(url, params, at=at)
        assert await call(method, target, headers, body) == 403
    assert await state_of(router, result.message_id) == "accepted"
    # Within the tolerance (300 s by default) it is fine.
    method, target, headers, body = fake.sms_webhook(url, params, at=time.time() - 200)
    assert await call(method, target, headers, body) == 200
    assert await state_of(router, result.message_id) == "delivered"


async def test_webhook_tolerance_is_configurable(hooks: Hooks, fake: FakeVonage) -> None:
    async with serving(hooks, config(hooks, fake, webhook_tolerance="2h")) as router:
        result = await router.send(OTP)
        params = dlr(fake, result.message_id, result.provider_message_id or "")
        method, url, headers, body = fake.sms_webhook(
            f"{hooks.url}/vonage/status", params, at=time.time() - 3600
        )
        assert await call(method, url, headers, body) == 200


async def test_malformed_receipts_are_400(router: Router, hooks: Hooks, fake: FakeVonage) -> None:
    url = f"{hooks.url}/vonage/status"
    params = dlr(fake, "m1", "p1")
    del params["messageId"]
    method, target, headers, body = fake.sms_webhook(url, params)
    assert await call(method, target, headers, body) == 400
    # Not JSON although it says so.
    assert await call("POST", url, {"Content-Type": "application/json"}, b'{"status": ') == 400
    # A JSON array, not an object.
    assert await call("POST", url, {"Content-Type": "application/json"}, b"[1, 2]") == 400


async def test_receipt_for_an_unknown_message_is_answered_200(
    router: Router, hooks: Hooks, fake: FakeVonage
) -> None:
    method, url, headers, body = fake.sms_webhook(
        f"{hooks.url}/vonage/status", dlr(fake, "not-ours", "0A00000012345678")
    )
    assert await call(method, url, headers, body) == 200


# -- Messages API: bearer JWT -------------------------------------------------------------------


def messages_status(message_id: str, provider_id: str, status: str = "delivered") -> bytes:
    return json.dumps(
        {
            "message_uuid": provider_id,
            "to": "4915123456789",
            "from": "Acme",
            "timestamp": "2020-01-01T14:00:00.000Z",
            "status": status,
            "client_ref": message_id,
            "channel": "sms",
        }
    ).encode()


def bearer(body: bytes, *, secret: str = SECRET, iat: float | None = None) -> dict[str, str]:
    """Claims as in Vonage's documented sample (iat, jti, iss, payload_hash, api_key)."""
    claims = {
        "iat": int(time.time() if iat is None else iat),
        "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5",
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": "a1b2c3d",
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    }
    token = jwt.encode(claims, secret, algorithm="HS256")
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def test_jwt_signed_status_is_accepted(router: Router, hooks: Hooks) -> None:
    result = await router.send(OTP)
    body = messages_status(result.message_id, result.provider_message_id or "")
    assert await call("POST", f"{hooks.url}/vonage/status", bearer(body), body) == 200
    assert await state_of(router, result.message_id) == "delivered"


async def test_jwt_with_a_tampered_body_is_refused(router: Router, hooks: Hooks) -> None:
    result = await router.send(OTP)
    body = messages_status(result.message_id, result.provider_message_id or "")
    headers = bearer(body)
    forged = body.replace(b'"delivered"', b'"delivereD"')
    assert await call("POST", f"{hooks.url}/vonage/status", headers, forged) == 403
    assert await state_of(router, result.message_id) == "accepted"


@pytest.mark.parametrize(
    "headers",
    [
        lambda body: bearer(body, secret="another-" + SECRET),  # forged signature
        lambda body: bearer(body, iat=time.time() - 3600),  # stale
        lambda body: {"Authorization": "Bearer not.a.jwt", "Content-Type": "application/json"},
        lambda body: {"Content-Type": "application/json"},  # unsigned
    ],
    ids=["wrong-secret", "stale", "garbage-token", "unsigned"],
)
async def test_bad_jwts_are_refused(router: Router, hooks: Hooks, headers: Any) -> None:
    result = await router.send(OTP)
    body = messages_status(result.message_id, result.provider_message_id or "")
    assert await call("POST", f"{hooks.url}/vonage/status", headers(body), body) == 403
    assert await state_of(router, result.message_id) == "accepted"


async def test_jwt_without_payload_hash_is_refused(router: Router, hooks: Hooks) -> None:
    body = messages_status("m", "u")
    token = jwt.encode({"iat": int(time.time()), "iss": "Vonage"}, SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    assert await call("POST", f"{hooks.url}/vonage/status", headers, body) == 403


async def test_the_fakes_jwt_passes_the_sdks_verifier(hooks: Hooks) -> None:
    verify_jwt = pytest.importorskip("vonage_jwt.verify_jwt")
    async with FakeVonage(signature_secret=SECRET, webhook_api="messages") as fake:
        _, _, headers, body = fake.inbound_request(
            f"{hooks.url}/vonage/inbound", HANDSET, OUR_NUMBER, "hi"
        )
    token = headers["Authorization"].removeprefix("Bearer ")
    assert verify_jwt.verify_signature(token, SECRET)
    assert not verify_jwt.verify_signature(token, "not-" + SECRET)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["payload_hash"] == hashlib.sha256(body).hexdigest()
    assert claims["iss"] == "Vonage"


async def test_malformed_messages_webhook_is_400(router: Router, hooks: Hooks) -> None:
    body = json.dumps({"message_uuid": "u", "to": "4915123456789"}).encode()  # no status
    assert await call("POST", f"{hooks.url}/vonage/status", bearer(body), body) == 400


# -- inbound and opt-outs ------------------------------------------------------------------------


async def stop_then_sends(router: Router, hooks: Hooks, fake: FakeVonage) -> None:
    inbound = await assert_stop_opts_out_marketing_not_otp(
        router,
        fake,
        f"{hooks.url}/vonage/inbound",
        sender=HANDSET,
        recipient=OUR_NUMBER,
        text="STOP",
        opted_out="+49 151 23456789",
    )
    assert [(m.sender, m.recipient, m.keyword) for m in inbound] == [(HANDSET, OUR_NUMBER, "STOP")]


@pytest.mark.parametrize(("webhook_method", "webhook_api"), WEBHOOK_STYLES)
async def test_inbound_stop_opts_out_marketing_but_not_otp(
    hooks: Hooks, webhook_method: str, webhook_api: str
) -> None:
    async with (
        FakeVonage(
            signature_secret=SECRET,
            signature_method="sha256",
            webhook_method=webhook_method,
            webhook_api=webhook_api,
        ) as fake,
        serving(hooks, config(hooks, fake)) as router,
    ):
        await stop_then_sends(router, hooks, fake)


async def test_forged_inbound_stop_is_refused(
    router: Router, hooks: Hooks, fake: FakeVonage
) -> None:
    method, url, headers, body = fake.inbound_request(
        f"{hooks.url}/vonage/inbound", "+4915199999999", OUR_NUMBER, "STOP"
    )
    forged = body.replace(b"4915199999999", b"4915123456789")
    assert await call(method, url, headers, forged) == 403
    assert not router.is_opted_out(HANDSET)
    assert not router.is_opted_out("+4915199999999")


async def test_malformed_inbound_is_400(router: Router, hooks: Hooks, fake: FakeVonage) -> None:
    method, url, headers, body = fake.sms_webhook(
        f"{hooks.url}/vonage/inbound",
        {"to": "447700900000", "text": "STOP"},  # no msisdn
    )
    assert await call(method, url, headers, body) == 400


# -- without a secret, or with signed webhooks off --------------------------------------------


async def test_without_a_signature_secret_webhooks_are_accepted_unverified(hooks: Hooks) -> None:
    async with (
        FakeVonage() as fake,  # api_secret only: nothing to verify with
        serving(hooks, config(hooks, fake)) as router,
    ):
        result, _ = await receipt_round_trip(router, fake, OTP)
        assert await state_of(router, result.message_id) == "delivered"
        await stop_then_sends(router, hooks, fake)


async def test_signed_webhooks_false_accepts_unsigned_ones(hooks: Hooks, fake: FakeVonage) -> None:
    async with serving(hooks, config(hooks, fake, signed_webhooks=False)) as router:
        result = await router.send(OTP)  # still a signed send
        body = json.dumps(dlr(fake, result.message_id, result.provider_message_id or "")).encode()
        headers = {"Content-Type": "application/json"}
        assert await call("POST", f"{hooks.url}/vonage/status", headers, body) == 200
        assert await state_of(router, result.message_id) == "delivered"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('    signed_webhooks: true\n    api_secret: "s"\n', "signed_webhooks needs"),
        ('    signed_webhooks: maybe\n    api_secret: "s"\n', "true or false"),
        ('    webhook_tolerance: soon\n    api_secret: "s"\n', "webhook_tolerance"),
        ('    webhook_tolerance: 0\n    api_secret: "s"\n', "webhook_tolerance"),
    ],
)
def test_webhook_options_are_checked(extra: str, problem: str) -> None:
    body = (
        "providers:\n  v:\n    type: vonage\n    api_key: abcd1234\n    from: Acme\n"
        + extra
        + "rules:\n  - name: default\n    providers: [v]\n"
    )
    with pytest.raises(ConfigError, match=problem):
        make_config(body)


# -- the adapter alone ------------------------------------------------------------------------------


def test_parses_an_sms_api_receipt_without_a_network() -> None:
    provider = VonageProvider(
        ProviderConfig(name="v", type="vonage", options={"api_key": "abcd1234", "api_secret": "s"})
    )
    params = {
        "messageId": "0A0000001234567B",
        "status": "expired",
        "err-code": "1",
        "scts": "2001011400",
        "client-ref": "our-id",
    }
    request = WebhookRequest(
        "GET",
        "https://hooks.example.com/v/status?" + urlencode(params),
        CIMultiDictProxy(CIMultiDict()),
        b"",
    )
    provider.verify_webhook("status", request, time.time())  # no secret: accepted
    [receipt] = provider.parse_receipts(request)
    assert (receipt.status, receipt.error_code, receipt.retryable, receipt.message_id) == (
        "undelivered",
        "1",
        None,
        "our-id",
    )
    assert receipt.at is not None
    assert receipt.at.isoformat() == "2020-01-01T14:00:00+00:00"
    with pytest.raises(WebhookError):
        provider.parse_inbound(request)
