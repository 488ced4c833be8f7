"""The MessageBird adapter against FakeMessageBird, and both against the official SDK.

Behaviour: every outcome class the legacy ``POST /messages`` API can produce,
over real HTTP on 127.0.0.1, one per test; then the router failing over
between two MessageBird accounts.

Conformance: MessageBird published no machine-readable spec of this API, so
the reference is the official ``messagebird`` SDK (python-rest-api), run
against FakeMessageBird: it must send (JSON, recipients comma-separated), and
parse FakeMessageBird's answers and errors into its own objects.
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
from smsroute.providers.messagebird import MessageBirdProvider
from smsroute.testing.messagebird import FakeMessageBird

TO = "+31612345678"
SENDER = "Acme"
CALLBACK = "https://hooks.example.com/messagebird/status"
OTP = Message(to=TO, text="Code 123456", category="otp")


fake = fake_fixture(FakeMessageBird)
fake_b = fake_fixture(FakeMessageBird)


def provider_for(fake: FakeMessageBird, **options: Any) -> MessageBirdProvider:
    return adapter(MessageBirdProvider, fake, options, sender=SENDER)


outbound = partial(outbound_sms, to=TO, country="NL", sender=SENDER)


async def send(provider: MessageBirdProvider, sms: OutboundSMS | None = None) -> Reply:
    return await send_sms(provider, sms or outbound())


def bare_provider() -> MessageBirdProvider:
    return MessageBirdProvider(
        ProviderConfig(name="m", type="messagebird", options={"access_key": "live_x"})
    )


# -- accepted -----------------------------------------------------------------------------------


async def test_accepted_message_id_is_the_provider_message_id(fake: FakeMessageBird) -> None:
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.ACCEPTED
    assert reply.status_code == 201
    (record,) = fake.messages
    assert reply.provider_message_id == record.provider_message_id
    assert len(record.provider_message_id) == 32  # 32 hex digits, as MessageBird's ids


async def test_message_carries_msisdn_originator_text_and_reference(
    fake: FakeMessageBird,
) -> None:
    await send(provider_for(fake))
    (record,) = fake.messages
    assert record.fields["recipients"] == ["31612345678"]  # MSISDN: digits, no "+"
    assert record.fields["originator"] == SENDER
    assert record.fields["body"] == "Your code is 123456"
    # MessageBird reports only on messages with a reference: always one.
    assert record.fields["reference"] == "0123456789abcdef0123456789abcdef"


async def test_numeric_originator_is_sent_without_plus(fake: FakeMessageBird) -> None:
    await send(provider_for(fake), outbound(sender="+3197010203040"))
    assert fake.messages[0].fields["originator"] == "3197010203040"


async def test_status_callback_is_sent_as_report_url(fake: FakeMessageBird) -> None:
    await send(provider_for(fake), outbound(status_callback=CALLBACK))
    (record,) = fake.messages
    assert record.status_callback == CALLBACK
    assert record.fields["reportUrl"] == CALLBACK


async def test_no_report_url_without_status_callback(fake: FakeMessageBird) -> None:
    await send(provider_for(fake))
    (record,) = fake.messages
    assert record.status_callback is None
    assert "reportUrl" not in record.fields


async def test_datacoding_follows_our_encoding(fake: FakeMessageBird) -> None:
    await send(provider_for(fake), outbound("Kod: ж"))
    await send(provider_for(fake), outbound("Code: 1"))
    assert [m.fields["datacoding"] for m in fake.messages] == ["unicode", "plain"]


async def test_validity_is_passed_on(fake: FakeMessageBird) -> None:
    await send(provider_for(fake, validity=600))
    assert fake.messages[0].fields["validity"] == 600


def test_config_refuses_a_validity_that_is_not_whole_seconds() -> None:
    with pytest.raises(ConfigError, match="validity"):
        make_config(
            """
providers:
  mb:
    type: messagebird
    access_key: live_x
    validity: 1.5
rules:
  - name: default
    providers: [mb]
"""
        )


# -- rejected -----------------------------------------------------------------------------------


async def test_invalid_number_is_rejected(fake: FakeMessageBird) -> None:
    reply = await send(provider_for(fake), outbound(to="+316123"))
    assert reply.outcome is Outcome.REJECTED
    assert (reply.status_code, reply.error_code) == (422, "9")
    assert "recipient" in (reply.detail or "")
    assert fake.messages == []


def test_invalid_parameter_other_than_the_originator_is_rejected() -> None:
    reply = bare_provider().parse_response(
        422,
        http_headers(),
        b'{"errors": [{"code": 10, "description": "datacoding is invalid", '
        b'"parameter": "datacoding"}]}',
    )
    assert (reply.outcome, reply.error_code) == (Outcome.REJECTED, "10")


# -- unroutable ---------------------------------------------------------------------------------


async def test_invalid_originator_is_unroutable(fake: FakeMessageBird) -> None:
    reply = await send(provider_for(fake), outbound(sender="Acme Corporation"))  # > 11 chars
    assert reply.outcome is Outcome.UNROUTABLE
    assert (reply.status_code, reply.error_code) == (422, "10")


async def test_missing_originator_is_unroutable(fake: FakeMessageBird) -> None:
    reply = await send(provider_for(fake), outbound(sender=None))
    assert reply.outcome is Outcome.UNROUTABLE


async def test_bad_originator_outweighs_a_bad_number(fake: FakeMessageBird) -> None:
    # Both listed in one answer: the sender is this account's problem, so fail over.
    reply = await send(provider_for(fake), outbound(to="+316123", sender="Acme Corporation"))
    assert reply.outcome is Outcome.UNROUTABLE
    assert reply.detail is not None
    assert "recipient" in reply.detail
    assert "originator" in reply.detail


# -- throttled ----------------------------------------------------------------------------------


async def test_429_is_throttled_with_retry_after(fake: FakeMessageBird) -> None:
    fake.throttle(retry_after=4, times=1)
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.THROTTLED
    assert reply.retry_after == 4


# -- auth ---------------------------------------------------------------------------------------


async def test_wrong_access_key_is_auth_and_stays_out_of_detail(fake: FakeMessageBird) -> None:
    reply = await send(provider_for(fake, access_key="live_notthekey"))
    assert reply.outcome is Outcome.AUTH
    assert (reply.status_code, reply.error_code) == (401, "2")
    assert "live_notthekey" not in (reply.detail or "")


async def test_wrong_key_wins_over_field_errors_in_the_same_answer(fake: FakeMessageBird) -> None:
    # MessageBird lists every problem; with a wrong key the answer is 401 all the same.
    reply = await send(provider_for(fake, access_key="wrong"), outbound(sender="Acme Corporation"))
    assert (reply.outcome, reply.status_code) == (Outcome.AUTH, 401)


async def test_no_balance_is_auth(fake: FakeMessageBird) -> None:
    fake.fail(422, 25)
    reply = await send(provider_for(fake))
    assert (reply.outcome, reply.error_code) == (Outcome.AUTH, "25")


# -- transient ----------------------------------------------------------------------------------


async def test_server_error_is_transient(fake: FakeMessageBird) -> None:
    fake.fail(500, times=1)
    reply = await send(provider_for(fake))
    assert (reply.outcome, reply.error_code) == (Outcome.TRANSIENT, "99")


async def test_garbage_answer_is_transient_malformed(fake: FakeMessageBird) -> None:
    fake.garbage(times=1)
    reply = await send(provider_for(fake))
    assert reply.outcome is Outcome.TRANSIENT
    assert (reply.detail or "").startswith("malformed reply")


def test_errors_in_a_2xx_answer_are_not_accepted() -> None:
    body = b'{"errors": [{"code": 99, "description": "Internal error", "parameter": null}]}'
    reply = bare_provider().parse_response(200, http_headers(), body)
    assert reply.outcome is Outcome.TRANSIENT


# -- timeout and failover, through the router ---------------------------------------------------


def accounts(a: FakeMessageBird, b: FakeMessageBird) -> str:
    return failover_yaml(a, b, SENDER, default_region="NL")


async def test_router_fails_over_to_the_second_account(
    fake: FakeMessageBird, fake_b: FakeMessageBird
) -> None:
    fake.fail(422, 25)
    result = await route(accounts(fake, fake_b), OTP)
    assert attempts(result) == [("primary", Outcome.AUTH), ("secondary", Outcome.ACCEPTED)]
    assert result.provider_message_id == fake_b.messages[0].provider_message_id


async def test_hanging_account_times_out_and_otp_fails_over(
    fake: FakeMessageBird, fake_b: FakeMessageBird
) -> None:
    fake.hang()
    result = await route(accounts(fake, fake_b), OTP)
    assert attempts(result) == [("primary", Outcome.TIMEOUT), ("secondary", Outcome.ACCEPTED)]


# -- the official SDK against FakeMessageBird --------------------------------------------------


def sdk_client(fake: FakeMessageBird, access_key: str | None = None) -> Any:
    messagebird = pytest.importorskip("messagebird")
    from messagebird.client import USER_AGENT
    from messagebird.http_client import HttpClient

    key = access_key or fake.access_key
    # The client's endpoint is fixed; its HttpClient takes any endpoint.
    return messagebird.Client(key, http_client=HttpClient(fake.url, key, USER_AGENT))


async def test_sdk_creates_a_message_and_reads_the_fakes_answer(fake: FakeMessageBird) -> None:
    client = sdk_client(fake)
    message = await asyncio.to_thread(
        client.message_create,
        "Acme",
        ["31612345678", "31687654321"],  # sent as "31612345678,31687654321"
        "Code 123456",
        {"reference": "ref-1", "reportUrl": CALLBACK},
    )
    (record,) = fake.messages
    assert message.id == record.provider_message_id
    assert (message.originator, message.body, message.reference) == ("Acme", "Code 123456", "ref-1")
    assert message.direction == "mt"
    assert message.createdDatetime is not None
    assert message.createdDatetime.tzinfo is not None
    items = message.recipients["items"]
    assert [(r.recipient, r.status) for r in items] == [
        (31612345678, "sent"),
        (31687654321, "sent"),
    ]
    assert record.status_callback == CALLBACK


async def test_sdk_raises_messagebirds_errors_for_a_bad_request(fake: FakeMessageBird) -> None:
    client = sdk_client(fake)
    from messagebird.client import ErrorException

    with pytest.raises(ErrorException) as caught:
        await asyncio.to_thread(client.message_create, "Acme Corporation", ["316123"], "hi")
    assert [(e.code, e.parameter) for e in caught.value.errors] == [
        (9, "recipient"),
        (10, "originator"),
    ]


async def test_sdk_sees_code_2_for_a_wrong_access_key(fake: FakeMessageBird) -> None:
    client = sdk_client(fake, access_key="live_wrong")
    from messagebird.client import ErrorException

    with pytest.raises(ErrorException) as caught:
        await asyncio.to_thread(client.message_create, "Acme", ["31612345678"], "hi")
    assert caught.value.errors[0].code == 2
    assert caught.value.errors[0].description == "Request not allowed (incorrect access_key)"
