"""The Telnyx adapter against FakeTelnyx, and both against Telnyx's official SDK.

Every exchange is real HTTP over 127.0.0.1.  Telnyx publishes its OpenAPI
description (team-telnyx/openapi) but it is over 4 MiB and not vendored in tests/specs,
so conformance comes from the official ``telnyx`` SDK, which Stainless
generates from that spec: the SDK is pointed at the fake (``base_url``), and
our request and the fake's answers are validated with the SDK's own models.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import aiohttp
import pytest
from conftest import make_config
from provider_support import (
    adapter,
    attempts,
    failover_yaml,
    fake_fixture,
    http_headers,
    otp_to,
    outbound_sms,
    provider_settings,
    route,
    routing_yaml,
    send_sms,
)

from smsroute import ConfigError, Outcome
from smsroute.config import ProviderConfig
from smsroute.providers.base import OutboundSMS, Reply
from smsroute.providers.telnyx import TelnyxProvider
from smsroute.testing.telnyx import FakeTelnyx

SENDER = "+14155550100"
TO = "+12025550123"
CALLBACK = "https://hooks.example.com/telnyx/status"


telnyx_a = fake_fixture(FakeTelnyx)
telnyx_b = fake_fixture(FakeTelnyx)


def provider_for(
    fake: FakeTelnyx, *, sender: str | None = SENDER, **options: Any
) -> TelnyxProvider:
    return adapter(TelnyxProvider, fake, options, sender=sender, name="telnyx-main")


outbound = partial(outbound_sms, to=TO, country="US", sender=SENDER, message_id="msg-1")


async def send(provider: TelnyxProvider, sms: OutboundSMS | None = None) -> Reply:
    return await send_sms(provider, sms or outbound())


# -- accepted ----------------------------------------------------------------------------


async def test_accepted_message_carries_telnyx_message_id(telnyx_a: FakeTelnyx) -> None:
    reply = await send(provider_for(telnyx_a))
    assert reply.outcome is Outcome.ACCEPTED
    assert reply.status_code == 200
    (message,) = telnyx_a.messages
    assert reply.provider_message_id == message.provider_message_id
    assert (message.to, message.sender, message.text) == (TO, SENDER, "Your code is 123456")
    assert message.fields["type"] == "SMS"


async def test_status_callback_becomes_webhook_url(telnyx_a: FakeTelnyx) -> None:
    await send(provider_for(telnyx_a), outbound(status_callback=CALLBACK))
    assert telnyx_a.messages[0].status_callback == CALLBACK
    assert telnyx_a.messages[0].fields["webhook_url"] == CALLBACK


async def test_no_webhook_url_without_status_callback(telnyx_a: FakeTelnyx) -> None:
    await send(provider_for(telnyx_a))
    assert "webhook_url" not in telnyx_a.messages[0].fields
    assert telnyx_a.messages[0].status_callback is None


async def test_alphanumeric_sender_goes_with_the_messaging_profile(telnyx_a: FakeTelnyx) -> None:
    provider = provider_for(
        telnyx_a, sender="Acme", messaging_profile_id=telnyx_a.messaging_profile_id
    )
    reply = await send(provider, outbound(sender="Acme"))
    assert reply.outcome is Outcome.ACCEPTED
    fields = telnyx_a.messages[0].fields
    assert (fields["from"], fields["messaging_profile_id"]) == (
        "Acme",
        telnyx_a.messaging_profile_id,
    )


def test_credentials_are_a_bearer_header_not_in_the_body() -> None:
    provider = TelnyxProvider(
        ProviderConfig(name="t", type="telnyx", sender=SENDER, options={"api_key": "KEYsecret"})
    )
    req = provider.build_request(outbound())
    assert req.url == "https://api.telnyx.com/v2/messages"
    assert req.headers["Authorization"] == "Bearer KEYsecret"
    assert "KEYsecret" not in json.dumps(req.json)


# -- rejected: a definitive no, no failover -----------------------------------------------


async def test_invalid_number_is_rejected(telnyx_a: FakeTelnyx) -> None:
    reply = await send(provider_for(telnyx_a), outbound(to="+1202555012"))
    assert reply.outcome is Outcome.REJECTED
    assert (reply.status_code, reply.error_code) == (400, "10002")
    assert reply.detail is not None
    assert "/to" in reply.detail
    assert telnyx_a.messages == []


async def test_opted_out_recipient_is_rejected_and_number_masked(telnyx_a: FakeTelnyx) -> None:
    telnyx_a.opted_out.add(TO)
    reply = await send(provider_for(telnyx_a))
    assert reply.outcome is Outcome.REJECTED
    assert (reply.status_code, reply.error_code) == (409, "40300")
    assert reply.detail is not None
    assert "block rule" in reply.detail
    assert TO not in reply.detail
    assert SENDER not in reply.detail


# -- unroutable: this account cannot, another provider may --------------------------------


async def test_country_not_enabled_is_unroutable() -> None:
    async with FakeTelnyx(unroutable_countries={"DE"}) as fake:
        reply = await send(provider_for(fake), outbound(to="+4915123456789"))
    assert reply.outcome is Outcome.UNROUTABLE
    assert reply.error_code == "40008"


async def test_missing_sender_is_unroutable_not_rejected(telnyx_a: FakeTelnyx) -> None:
    # Telnyx's "missing parameter" about /from is our configuration, not the recipient.
    reply = await send(provider_for(telnyx_a, sender=None), outbound(sender=None))
    assert reply.outcome is Outcome.UNROUTABLE
    assert reply.error_code == "10004"
    assert reply.detail is not None
    assert "/from" in reply.detail


async def test_alphanumeric_sender_without_profile_is_unroutable(telnyx_a: FakeTelnyx) -> None:
    reply = await send(provider_for(telnyx_a, sender="Acme"), outbound(sender="Acme"))
    assert reply.outcome is Outcome.UNROUTABLE
    assert reply.detail is not None
    assert "/messaging_profile_id" in reply.detail


# -- throttled ---------------------------------------------------------------------------


async def test_throttled_with_retry_after(telnyx_a: FakeTelnyx) -> None:
    telnyx_a.throttle(retry_after=12)
    reply = await send(provider_for(telnyx_a))
    assert reply.outcome is Outcome.THROTTLED
    assert (reply.status_code, reply.error_code, reply.retry_after) == (429, "10011", 12)


# -- auth --------------------------------------------------------------------------------


async def test_wrong_api_key_is_auth(telnyx_a: FakeTelnyx) -> None:
    provider = provider_for(telnyx_a, api_key="KEYwrong")
    reply = await send(provider)
    assert reply.outcome is Outcome.AUTH
    assert (reply.status_code, reply.error_code) == (401, "10009")
    assert "KEYwrong" not in (reply.detail or "")


async def test_forbidden_is_auth(telnyx_a: FakeTelnyx) -> None:
    telnyx_a.fail(403)
    reply = await send(provider_for(telnyx_a))
    assert (reply.outcome, reply.error_code) == (Outcome.AUTH, "10010")


async def test_unknown_messaging_profile_is_auth(telnyx_a: FakeTelnyx) -> None:
    reply = await send(provider_for(telnyx_a, messaging_profile_id="40017a0b-not-mine"))
    assert (reply.outcome, reply.error_code) == (Outcome.AUTH, "10006")


# -- transient ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_is_transient(telnyx_a: FakeTelnyx, status: int) -> None:
    telnyx_a.fail(status)
    reply = await send(provider_for(telnyx_a))
    assert (reply.outcome, reply.status_code, reply.error_code) == (
        Outcome.TRANSIENT,
        status,
        "10007",
    )


async def test_garbage_reply_is_transient_malformed(telnyx_a: FakeTelnyx) -> None:
    telnyx_a.garbage()
    reply = await send(provider_for(telnyx_a))
    assert reply.outcome is Outcome.TRANSIENT
    assert reply.detail is not None
    assert reply.detail.startswith("malformed reply")


def test_success_without_an_id_is_malformed() -> None:
    provider = TelnyxProvider(ProviderConfig(name="t", type="telnyx", options={"api_key": "k"}))
    reply = provider.parse_response(200, http_headers(), b'{"data": {"record_type": "message"}}')
    assert reply.outcome is Outcome.TRANSIENT
    assert reply.detail == "malformed reply: success without a message id"


def test_a_200_whose_recipient_already_failed_is_not_accepted() -> None:
    provider = TelnyxProvider(ProviderConfig(name="t", type="telnyx", options={"api_key": "k"}))
    body = {
        "data": {
            "id": "40318d5c-0000-4000-8000-000000000001",
            "to": [{"phone_number": TO, "status": "sending_failed"}],
            "errors": [{"code": "40012", "title": "Invalid destination number"}],
        }
    }
    reply = provider.parse_response(200, http_headers(), json.dumps(body).encode())
    assert (reply.outcome, reply.error_code) == (Outcome.REJECTED, "40012")
    assert reply.provider_message_id == "40318d5c-0000-4000-8000-000000000001"


# -- timeout -----------------------------------------------------------------------------


async def test_hanging_telnyx_times_out(telnyx_a: FakeTelnyx) -> None:
    telnyx_a.hang()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await send(provider_for(telnyx_a))
    assert telnyx_a.messages == []


# -- through the router -------------------------------------------------------------------


def two_telnyx_config(a: FakeTelnyx, b: FakeTelnyx) -> str:
    return failover_yaml(a, b, SENDER, default_region="US")


OTP = otp_to("+4915123456789")


async def test_router_fails_over_from_a_failing_telnyx_to_the_second(
    telnyx_a: FakeTelnyx, telnyx_b: FakeTelnyx
) -> None:
    telnyx_a.fail(503)
    result = await route(two_telnyx_config(telnyx_a, telnyx_b), OTP)
    assert result.ok
    assert result.provider == "secondary"
    assert attempts(result) == [("primary", Outcome.TRANSIENT), ("secondary", Outcome.ACCEPTED)]
    assert result.provider_message_id == telnyx_b.messages[0].provider_message_id


async def test_router_fails_over_when_telnyx_cannot_reach_the_country(telnyx_b: FakeTelnyx) -> None:
    async with FakeTelnyx(unroutable_countries={"DE"}) as a:
        result = await route(two_telnyx_config(a, telnyx_b), OTP)
    assert attempts(result) == [("primary", Outcome.UNROUTABLE), ("secondary", Outcome.ACCEPTED)]


async def test_router_stops_on_an_opted_out_recipient(
    telnyx_a: FakeTelnyx, telnyx_b: FakeTelnyx
) -> None:
    telnyx_a.opted_out.add(OTP.to)
    result = await route(two_telnyx_config(telnyx_a, telnyx_b), OTP)
    assert result.status == "failed"
    assert attempts(result) == [("primary", Outcome.REJECTED)]
    assert telnyx_b.requests == 0


async def test_router_times_out_a_hanging_telnyx_and_fails_over_an_otp(
    telnyx_a: FakeTelnyx, telnyx_b: FakeTelnyx
) -> None:
    telnyx_a.hang()
    result = await route(two_telnyx_config(telnyx_a, telnyx_b), OTP)
    assert attempts(result) == [("primary", Outcome.TIMEOUT), ("secondary", Outcome.ACCEPTED)]


async def test_router_sends_the_status_callback_as_webhook_url(telnyx_a: FakeTelnyx) -> None:
    telnyx = provider_settings(telnyx_a, SENDER, "timeout: 300ms")
    config = routing_yaml({"telnyx": telnyx}, webhook_url="https://hooks.example.com/smsroute")
    result = await route(config, OTP)
    assert (
        telnyx_a.messages[0].fields["webhook_url"]
        == f"https://hooks.example.com/smsroute/telnyx/status?smsroute_id={result.message_id}"
    )


def test_config_without_api_key_is_refused() -> None:
    config = """
providers:
  telnyx:
    type: telnyx
    from: "+14155550100"
rules:
  - name: default
    providers: [telnyx]
"""
    with pytest.raises(ConfigError, match="api_key"):
        make_config(config)


# -- conformance: the official SDK against the fake ---------------------------------------


async def test_sdk_sends_through_the_fake_and_parses_its_answer(telnyx_a: FakeTelnyx) -> None:
    telnyx = pytest.importorskip("telnyx")
    async with telnyx.AsyncTelnyx(
        api_key=telnyx_a.api_key, base_url=f"{telnyx_a.url}/v2", max_retries=0
    ) as client:
        sent = await client.messages.send(to=TO, from_=SENDER, text="hi", webhook_url=CALLBACK)
    assert sent.data is not None
    assert sent.data.id == telnyx_a.messages[0].provider_message_id
    assert sent.data.to is not None
    assert sent.data.to[0].status == "queued"
    assert sent.data.from_ is not None
    assert sent.data.from_.phone_number == SENDER
    assert sent.data.webhook_url == CALLBACK
    assert sent.data.parts == 1


async def test_sdk_raises_its_authentication_error_on_the_fakes_401(telnyx_a: FakeTelnyx) -> None:
    telnyx = pytest.importorskip("telnyx")
    async with telnyx.AsyncTelnyx(
        api_key="KEYwrong", base_url=f"{telnyx_a.url}/v2", max_retries=0
    ) as client:
        with pytest.raises(telnyx.AuthenticationError) as info:
            await client.messages.send(to=TO, from_=SENDER, text="hi")
    assert info.value.status_code == 401
    assert info.value.body["errors"][0]["code"] == "10009"  # type: ignore[index]


def test_our_request_uses_only_fields_the_sdk_defines() -> None:
    params = pytest.importorskip("telnyx.types.message_send_params")
    provider = TelnyxProvider(
        ProviderConfig(
            name="t",
            type="telnyx",
            sender=SENDER,
            options={"api_key": "k", "messaging_profile_id": "p"},
        )
    )
    body = provider.build_request(outbound(status_callback=CALLBACK)).json
    allowed = {"from" if k == "from_" else k for k in params.MessageSendParams.__annotations__}
    assert set(body) == {"to", "from", "text", "type", "messaging_profile_id", "webhook_url"}
    assert set(body) <= allowed


async def test_fake_success_body_matches_the_sdks_payload_model(telnyx_a: FakeTelnyx) -> None:
    pytest.importorskip("telnyx")
    from telnyx.types import MessageSendResponse
    from telnyx.types.outbound_message_payload import OutboundMessagePayload

    body = await raw_post(telnyx_a, {"to": TO, "from": SENDER, "text": "hi"})
    parsed = MessageSendResponse.model_validate(body)  # types: dates, enums, literals
    assert parsed.data is not None
    assert parsed.data.record_type == "message"
    known = {f.alias or name for name, f in OutboundMessagePayload.model_fields.items()}
    assert set(body["data"]) <= known  # nothing the spec does not define


@pytest.mark.parametrize(
    ("fields", "api_key", "code"),
    [
        pytest.param({"to": TO, "text": "hi"}, None, "10004", id="missing-from"),
        pytest.param({"to": "+1", "from": SENDER, "text": "hi"}, None, "10002", id="invalid-to"),
        pytest.param({"to": TO, "from": SENDER, "text": "hi"}, "KEYwrong", "10009", id="bad-key"),
    ],
)
async def test_fake_error_bodies_match_the_sdks_error_model(
    telnyx_a: FakeTelnyx, fields: dict[str, str], api_key: str | None, code: str
) -> None:
    pytest.importorskip("telnyx")
    from telnyx.types.messaging_error_0b38e7044b import MessagingError0b38e7044b

    body = await raw_post(telnyx_a, fields, api_key=api_key)
    (error,) = body["errors"]
    parsed = MessagingError0b38e7044b.model_validate(error)
    assert parsed.code == code
    assert parsed.title


async def raw_post(fake: FakeTelnyx, fields: dict[str, str], *, api_key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {api_key or fake.api_key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/v2/messages", json=fields, headers=headers) as resp,
    ):
        return await resp.json()
