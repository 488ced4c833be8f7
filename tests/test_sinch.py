"""The Sinch adapter against FakeSinch, and both against the official ``sinch`` SDK.

Behaviour: every outcome class the XMS batches API can produce, over real HTTP
on 127.0.0.1, one per test; then the router failing over between two Sinch
service plans.

Conformance: Sinch publishes no OpenAPI description of the SMS API that we
could find, so the reference is the official ``sinch`` SDK (sinch-sdk-python),
run against FakeSinch: it must send, and parse FakeSinch's answers into its own
models.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import pytest
from conftest import make_config
from provider_support import (
    adapter,
    attempts,
    failover_yaml,
    fake_fixture,
    http_headers,
    outbound_sms,
    route,
    send_sms,
)

from smsroute import ConfigError, Message, Outcome
from smsroute.config import ProviderConfig
from smsroute.providers.base import OutboundSMS, Reply
from smsroute.providers.sinch import SinchProvider
from smsroute.testing.sinch import FakeSinch

TO = "+14155550100"
SENDER = "+15005550006"
CALLBACK = "https://hooks.example.com/sinch/status"
OTP = Message(to=TO, text="Code 123456", category="otp")


fake = fake_fixture(FakeSinch)
fake_b = fake_fixture(FakeSinch)


def provider_for(fake: FakeSinch, **options: Any) -> SinchProvider:
    return adapter(SinchProvider, fake, options, sender=SENDER)


outbound = partial(outbound_sms, to=TO, country="US", sender=SENDER)


async def send(provider: SinchProvider, sms: OutboundSMS | None = None) -> Reply:
    return await send_sms(provider, sms or outbound())


def offline_provider() -> SinchProvider:
    return SinchProvider(
        ProviderConfig(name="s", type="sinch", options={"service_plan_id": "p", "api_token": "t"})
    )


# -- accepted ------------------------------------------------------------------------------


async def test_accepted_batch_id_is_the_provider_message_id(fake: FakeSinch) -> None:
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.ACCEPTED
    assert reply.status_code == 201
    (record,) = fake.messages
    assert reply.provider_message_id == record.provider_message_id
    assert len(record.provider_message_id) == 26  # a ULID, as Sinch's batch ids


async def test_batch_carries_number_sender_text_and_our_message_id(fake: FakeSinch) -> None:
    await send(provider_for(fake))
    (record,) = fake.messages
    assert record.fields["to"] == [TO]
    assert record.fields["from"] == SENDER
    assert record.fields["body"] == "Your code is 123456"
    assert record.fields["client_reference"] == "0123456789abcdef0123456789abcdef"


async def test_status_callback_asks_for_per_recipient_reports_to_it(fake: FakeSinch) -> None:
    await send(provider_for(fake), outbound(status_callback=CALLBACK))
    (record,) = fake.messages
    assert record.status_callback == CALLBACK
    assert record.fields["delivery_report"] == "per_recipient"


async def test_no_report_fields_without_status_callback(fake: FakeSinch) -> None:
    await send(provider_for(fake))
    (record,) = fake.messages
    assert record.status_callback is None
    assert "callback_url" not in record.fields
    assert "delivery_report" not in record.fields


async def test_configured_delivery_report_is_used_with_the_callback(fake: FakeSinch) -> None:
    provider = provider_for(fake, delivery_report="per_recipient_final")
    await send(provider, outbound(status_callback=CALLBACK))
    assert fake.messages[0].fields["delivery_report"] == "per_recipient_final"


async def test_sender_left_out_uses_the_default_originator() -> None:
    async with FakeSinch(default_originator="+15005550009") as fake:
        reply = await send(provider_for(fake), outbound(sender=None))
        assert reply.outcome is Outcome.ACCEPTED
        assert "from" not in fake.messages[0].fields
        assert fake.messages[0].sender == "+15005550009"


def test_region_chooses_the_base_url_when_none_is_given() -> None:
    config = ProviderConfig(
        name="sinch",
        type="sinch",
        options={"service_plan_id": "plan", "api_token": "token", "region": "eu"},
    )
    request = SinchProvider(config).build_request(outbound())
    assert request.url == "https://eu.sms.api.sinch.com/xms/v1/plan/batches"
    assert request.headers["Authorization"] == "Bearer token"


def test_region_defaults_to_us() -> None:
    config = ProviderConfig(
        name="sinch", type="sinch", options={"service_plan_id": "plan", "api_token": "token"}
    )
    assert SinchProvider(config).url == "https://us.sms.api.sinch.com/xms/v1/plan/batches"


def test_base_url_overrides_the_region() -> None:
    config = ProviderConfig(
        name="sinch",
        type="sinch",
        base_url="http://127.0.0.1:9/",
        options={"service_plan_id": "plan", "api_token": "token", "region": "au"},
    )
    assert SinchProvider(config).url == "http://127.0.0.1:9/xms/v1/plan/batches"


# -- rejected --------------------------------------------------------------------------------


async def test_invalid_number_is_rejected_and_not_quoted(fake: FakeSinch) -> None:
    reply = await send(provider_for(fake), outbound(to="+1415555010"))
    assert reply.outcome is Outcome.REJECTED
    assert (reply.status_code, reply.error_code) == (400, "syntax_invalid_parameter_format")
    assert reply.detail is not None
    assert "1415555010" not in reply.detail  # Sinch quotes the number; scrubbed
    assert fake.messages == []


async def test_illegal_number_type_is_rejected(fake: FakeSinch) -> None:
    fake.fail(403, "illegal_number_type")
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.REJECTED
    assert reply.error_code == "illegal_number_type"


async def test_body_too_long_is_rejected(fake: FakeSinch) -> None:
    reply = await send(provider_for(fake), outbound("x" * 1601))
    assert reply.outcome is Outcome.REJECTED
    assert reply.error_code == "syntax_constraint_violation"


# -- unroutable ------------------------------------------------------------------------------


async def test_report_without_any_callback_url_is_unroutable(fake: FakeSinch) -> None:
    # delivery_report configured, no status callback, no default URL on the plan.
    reply = await send(provider_for(fake, delivery_report="full"))
    assert reply.outcome is Outcome.UNROUTABLE
    assert (reply.status_code, reply.error_code) == (403, "missing_callback_url")


async def test_unknown_campaign_is_unroutable(fake: FakeSinch) -> None:
    fake.fail(403, "unknown_campaign")
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.UNROUTABLE
    assert reply.error_code == "unknown_campaign"


async def test_missing_sender_without_default_originator_is_rejected(fake: FakeSinch) -> None:
    reply = await send(provider_for(fake), outbound(sender=None))
    assert reply.outcome is Outcome.REJECTED
    assert reply.status_code == 400


# -- throttled -------------------------------------------------------------------------------


async def test_429_is_throttled_with_retry_after(fake: FakeSinch) -> None:
    fake.throttle(retry_after=7, times=1)
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.THROTTLED
    assert reply.status_code == 429
    assert reply.retry_after == 7


# -- auth ------------------------------------------------------------------------------------


async def test_wrong_token_is_auth_and_the_token_stays_out_of_detail(fake: FakeSinch) -> None:
    reply = await send(provider_for(fake, api_token="not-the-token"))
    assert reply.outcome is Outcome.AUTH
    assert reply.status_code == 401
    assert "not-the-token" not in (reply.detail or "")


async def test_wrong_service_plan_is_auth(fake: FakeSinch) -> None:
    reply = await send(provider_for(fake, service_plan_id="0" * 32))
    assert reply.outcome is Outcome.AUTH


async def test_blocked_account_is_auth(fake: FakeSinch) -> None:
    fake.fail(403, "blocked_account")
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.AUTH
    assert reply.error_code == "blocked_account"


# -- transient -------------------------------------------------------------------------------


async def test_server_error_is_transient(fake: FakeSinch) -> None:
    fake.fail(503, times=1)
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.TRANSIENT
    assert reply.status_code == 503


async def test_garbage_answer_is_transient_malformed(fake: FakeSinch) -> None:
    fake.garbage(times=1)
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.TRANSIENT
    assert reply.detail is not None
    assert reply.detail.startswith("malformed reply")


def test_success_without_a_batch_id_is_malformed() -> None:
    reply = offline_provider().parse_response(201, http_headers(), b'{"type": "mt_text"}')
    assert reply.outcome is Outcome.TRANSIENT


def test_unsupported_media_type_is_transient_not_rejected() -> None:
    reply = offline_provider().parse_response(415, http_headers(), b"")
    assert reply.outcome is Outcome.TRANSIENT


# -- timeout and failover, through the router ---------------------------------------------------


def two_plans(a: FakeSinch, b: FakeSinch) -> str:
    return failover_yaml(a, b, SENDER, default_region="US")


async def test_router_fails_over_to_the_second_service_plan(
    fake: FakeSinch, fake_b: FakeSinch
) -> None:
    fake.fail(503)
    result = await route(two_plans(fake, fake_b), OTP)
    assert attempts(result) == [("primary", Outcome.TRANSIENT), ("secondary", Outcome.ACCEPTED)]
    assert result.provider_message_id == fake_b.messages[0].provider_message_id


async def test_hanging_service_plan_times_out_and_otp_fails_over(
    fake: FakeSinch, fake_b: FakeSinch
) -> None:
    fake.hang()
    result = await route(two_plans(fake, fake_b), OTP)
    assert attempts(result) == [("primary", Outcome.TIMEOUT), ("secondary", Outcome.ACCEPTED)]


def test_config_refuses_an_unknown_region(fake: FakeSinch) -> None:
    text = two_plans(fake, fake).replace("timeout: 300ms", "region: mars", 1)
    with pytest.raises(ConfigError, match="region"):
        make_config(text)


# -- the official SDK against FakeSinch ------------------------------------------------------


def sdk_client(fake: FakeSinch) -> Any:
    sinch = pytest.importorskip("sinch")
    from sinch.core.clients.retry_configuration import RetryConfiguration
    from sinch.core.enums import RetryPolicy

    client = sinch.SinchClient(
        service_plan_id=fake.service_plan_id,
        sms_api_token=fake.api_token,
        sms_region="us",
        # The SDK retries 429s by default; here every answer must be seen as sent.
        retry_configuration=RetryConfiguration(retry_policy=RetryPolicy.NONE),
    )
    # The origin of the service-plan API is this template formatted with the region.
    client.configuration.sms_domain_with_service_plan_id = fake.url
    client.configuration.transport.http_session.trust_env = False
    return client


async def test_sdk_sends_a_batch_and_reads_the_fakes_answer(fake: FakeSinch) -> None:
    client = sdk_client(fake)
    batch = await asyncio.to_thread(
        client.sms.batches.send_sms,
        to=[TO],
        from_=SENDER,
        body="Code 123456",
        delivery_report="per_recipient",
        event_destination_target=CALLBACK,
        client_reference="ref-1",
    )
    (record,) = fake.messages
    assert batch.id == record.provider_message_id
    assert (batch.to, batch.from_, batch.body) == ([TO], SENDER, "Code 123456")
    assert batch.canceled is False
    assert batch.created_at is not None
    assert batch.created_at.tzinfo is not None
    assert batch.event_destination_target == CALLBACK
    assert batch.client_reference == "ref-1"
    assert record.status_callback == CALLBACK


async def test_sdk_sees_sinchs_error_code_for_an_invalid_number(fake: FakeSinch) -> None:
    client = sdk_client(fake)
    from sinch.domains.sms.api.v1.exceptions import SmsException

    with pytest.raises(SmsException) as caught:
        await asyncio.to_thread(
            client.sms.batches.send_sms, to=["+1415"], from_=SENDER, body="Code 123456"
        )
    assert caught.value.response_status_code == 400
    assert caught.value.http_response.body["code"] == "syntax_invalid_parameter_format"
    assert fake.messages == []


async def test_sdk_is_refused_with_a_wrong_token(fake: FakeSinch) -> None:
    client = sdk_client(fake)
    client.configuration.sms_api_token = "wrong"
    from sinch.domains.sms.api.v1.exceptions import SmsException

    with pytest.raises(SmsException) as caught:
        await asyncio.to_thread(client.sms.batches.send_sms, to=[TO], from_=SENDER, body="hi")
    assert caught.value.response_status_code == 401
