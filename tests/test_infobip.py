"""The Infobip adapter against FakeInfobip, and both against Infobip's official SDK.

Every exchange is real HTTP over 127.0.0.1.  Infobip's OpenAPI description is
served from its API (not a repository) and is not vendored in tests/specs, so
conformance comes from the official ``infobip-api-python-client`` SDK, which
Infobip generates from that description: the SDK is pointed at the fake
(``Configuration(host=...)``), and our request and the fake's answers are
validated with the SDK's own models.

Infobip's quirk is tested throughout: a **200** whose destination has status
group ``REJECTED`` is not an acceptance.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import aiohttp
import pytest
from provider_support import (
    adapter,
    attempts,
    failover_yaml,
    fake_fixture,
    http_headers,
    otp_to,
    outbound_sms,
    route,
    send_sms,
)

from smsroute import Outcome
from smsroute.config import ProviderConfig
from smsroute.providers.base import OutboundSMS, Reply
from smsroute.providers.infobip import InfobipProvider
from smsroute.testing.infobip import FakeInfobip

SENDER = "InfoSMS"
TO = "+41793026727"
CALLBACK = "https://hooks.example.com/infobip/status"


infobip_a = fake_fixture(FakeInfobip)
infobip_b = fake_fixture(FakeInfobip)


def provider_for(fake: FakeInfobip, **options: Any) -> InfobipProvider:
    return adapter(InfobipProvider, fake, options, sender=SENDER)


def offline_provider(**options: Any) -> InfobipProvider:
    return InfobipProvider(
        ProviderConfig(
            name="infobip", type="infobip", sender=SENDER, options={"api_key": "k", **options}
        )
    )


outbound = partial(outbound_sms, to=TO, country="CH", sender=SENDER, message_id="msg-1")


async def send(provider: InfobipProvider, sms: OutboundSMS | None = None) -> Reply:
    return await send_sms(provider, sms or outbound())


def answer(status: dict[str, Any], **extra: Any) -> bytes:
    """An Infobip 200 body with one destination in ``status``."""
    message = {"messageId": "m-1", "status": status, "destination": "41793026727", **extra}
    return json.dumps({"bulkId": "1", "messages": [message]}).encode()


# -- accepted ----------------------------------------------------------------------------


async def test_pending_destination_is_accepted_with_its_message_id(infobip_a: FakeInfobip) -> None:
    reply = await send(provider_for(infobip_a))
    assert reply.outcome is Outcome.ACCEPTED
    (message,) = infobip_a.messages
    assert reply.provider_message_id == message.provider_message_id
    assert (message.to, message.sender, message.text) == (TO, SENDER, "Your code is 123456")


def test_request_is_v3_with_the_number_in_international_format_without_plus() -> None:
    req = offline_provider().build_request(outbound())
    assert req.url == "https://api.infobip.com/sms/3/messages"
    assert req.headers["Authorization"] == "App k"
    assert req.json == {
        "messages": [
            {
                "sender": SENDER,
                "destinations": [{"to": "41793026727"}],
                "content": {"text": "Your code is 123456"},
            }
        ]
    }


async def test_status_callback_becomes_the_delivery_webhook(infobip_a: FakeInfobip) -> None:
    await send(provider_for(infobip_a), outbound(status_callback=CALLBACK))
    message = infobip_a.messages[0]
    assert message.status_callback == CALLBACK
    webhooks = message.fields["messages"][0]["webhooks"]
    assert webhooks == {
        "delivery": {"url": CALLBACK},
        "contentType": "application/json",
        "callbackData": "msg-1",
    }


async def test_no_webhooks_without_status_callback(infobip_a: FakeInfobip) -> None:
    await send(provider_for(infobip_a))
    assert "webhooks" not in infobip_a.messages[0].fields["messages"][0]
    assert infobip_a.messages[0].status_callback is None


async def test_validity_period_is_sent_in_seconds(infobip_a: FakeInfobip) -> None:
    await send(provider_for(infobip_a, validity_period=600))
    options = infobip_a.messages[0].fields["messages"][0]["options"]
    assert options == {"validityPeriod": {"amount": 600, "timeUnit": "SECONDS"}}


# -- rejected: a 200 that is not a success -------------------------------------------------


async def test_invalid_number_comes_back_200_rejected(infobip_a: FakeInfobip) -> None:
    reply = await send(provider_for(infobip_a), outbound(to="+4179302"))
    assert reply.outcome is Outcome.REJECTED
    assert (reply.status_code, reply.error_code) == (200, "REJECTED_DESTINATION")
    assert infobip_a.messages == []  # nothing was sent
    assert infobip_a.requests == 1


async def test_scripted_rejection_is_a_200_with_the_status_asked_for(
    infobip_a: FakeInfobip,
) -> None:
    infobip_a.fail(200, "REJECTED_DND")
    reply = await send(provider_for(infobip_a))
    assert (reply.outcome, reply.status_code, reply.error_code) == (
        Outcome.REJECTED,
        200,
        "REJECTED_DND",
    )


def test_scripting_an_unknown_status_fails_at_once(infobip_a: FakeInfobip) -> None:
    with pytest.raises(ValueError, match="unknown Infobip status"):
        infobip_a.fail(200, "REJECTED_BY_TYPO")


# -- unroutable ----------------------------------------------------------------------------


async def test_network_not_set_up_on_the_account_is_unroutable() -> None:
    async with FakeInfobip(unroutable_countries={"CH"}) as fake:
        reply = await send(provider_for(fake))
        assert fake.messages == []
    assert (reply.outcome, reply.error_code) == (Outcome.UNROUTABLE, "REJECTED_NETWORK")


async def test_blocked_sender_is_unroutable() -> None:
    async with FakeInfobip(blocked_senders={SENDER}) as fake:
        reply = await send(provider_for(fake))
    assert (reply.outcome, reply.error_code) == (Outcome.UNROUTABLE, "REJECTED_SENDER")


def test_bad_request_about_the_sender_is_unroutable() -> None:
    body = {
        "errorCode": "E400",
        "description": "Request cannot be processed.",
        "action": "Check the syntax, violations and adjust the request.",
        "violations": [{"property": "messages[0].sender", "violation": "size must be at most 11"}],
        "resources": [],
    }
    reply = offline_provider().parse_response(400, http_headers(), json.dumps(body).encode())
    assert (reply.outcome, reply.error_code) == (Outcome.UNROUTABLE, "E400")
    assert reply.detail is not None
    assert "messages[0].sender" in reply.detail


# -- throttled -----------------------------------------------------------------------------


async def test_throttled_with_retry_after(infobip_a: FakeInfobip) -> None:
    infobip_a.throttle(retry_after=7)
    reply = await send(provider_for(infobip_a))
    assert reply.outcome is Outcome.THROTTLED
    assert (reply.status_code, reply.error_code, reply.retry_after) == (429, "E429", 7)


# -- auth ----------------------------------------------------------------------------------


async def test_wrong_api_key_is_auth(infobip_a: FakeInfobip) -> None:
    reply = await send(provider_for(infobip_a, api_key="wrong-key"))
    assert (reply.outcome, reply.status_code, reply.error_code) == (Outcome.AUTH, 401, "E401")
    assert "wrong-key" not in (reply.detail or "")


async def test_forbidden_is_auth(infobip_a: FakeInfobip) -> None:
    infobip_a.fail(403)
    reply = await send(provider_for(infobip_a))
    assert (reply.outcome, reply.error_code) == (Outcome.AUTH, "E403")


async def test_out_of_credit_is_auth(infobip_a: FakeInfobip) -> None:
    # The account cannot send anything until topped up: open the breaker.
    infobip_a.fail(200, "REJECTED_NOT_ENOUGH_CREDITS")
    reply = await send(provider_for(infobip_a))
    assert (reply.outcome, reply.status_code) == (Outcome.AUTH, 200)


def test_legacy_error_body_is_understood() -> None:
    body = {
        "requestError": {"serviceException": {"messageId": "UNAUTHORIZED", "text": "Unauthorized"}}
    }
    reply = offline_provider().parse_response(401, http_headers(), json.dumps(body).encode())
    assert (reply.outcome, reply.error_code, reply.detail) == (
        Outcome.AUTH,
        "UNAUTHORIZED",
        "Infobip UNAUTHORIZED: Unauthorized",
    )


# -- transient -----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(500, "E500"), (503, "E503")])
async def test_server_error_is_transient(infobip_a: FakeInfobip, status: int, code: str) -> None:
    infobip_a.fail(status)
    reply = await send(provider_for(infobip_a))
    assert (reply.outcome, reply.status_code, reply.error_code) == (Outcome.TRANSIENT, status, code)


async def test_system_error_rejection_is_transient(infobip_a: FakeInfobip) -> None:
    infobip_a.fail(200, 21)  # REJECTED_SYSTEM_ERROR, by status id
    reply = await send(provider_for(infobip_a))
    assert (reply.outcome, reply.error_code) == (Outcome.TRANSIENT, "REJECTED_SYSTEM_ERROR")


async def test_garbage_reply_is_transient_malformed(infobip_a: FakeInfobip) -> None:
    infobip_a.garbage()
    reply = await send(provider_for(infobip_a))
    assert reply.outcome is Outcome.TRANSIENT
    assert reply.detail is not None
    assert reply.detail.startswith("malformed reply")


def test_pending_without_a_message_id_is_malformed() -> None:
    status = {"groupId": 1, "groupName": "PENDING", "id": 26, "name": "PENDING_ACCEPTED"}
    body = json.dumps({"messages": [{"status": status}]}).encode()
    reply = offline_provider().parse_response(200, http_headers(), body)
    assert reply.outcome is Outcome.TRANSIENT
    assert reply.detail == "malformed reply: accepted message without a messageId"


# -- Infobip's own permanent flag, for statuses we do not know ------------------------------


@pytest.mark.parametrize(
    ("group", "permanent", "outcome"),
    [
        ("OPERATOR_ERRORS", True, Outcome.UNROUTABLE),
        ("HANDSET_ERRORS", True, Outcome.REJECTED),
        ("USER_ERRORS", True, Outcome.REJECTED),
        ("OPERATOR_ERRORS", False, Outcome.TRANSIENT),
    ],
)
def test_unknown_rejection_follows_the_error_group_and_permanent_flag(
    group: str, permanent: bool, outcome: Outcome
) -> None:
    status = {"groupId": 5, "groupName": "REJECTED", "id": 999, "name": "REJECTED_SOMETHING_NEW"}
    error = {"groupId": 3, "groupName": group, "id": 9, "name": "EC_X", "permanent": permanent}
    reply = offline_provider().parse_response(200, http_headers(), answer(status, error=error))
    assert reply.outcome is outcome
    assert reply.error_code == "REJECTED_SOMETHING_NEW"


def test_known_status_wins_over_the_error_object() -> None:
    # Out of credit is the account's problem, whatever group the error is filed under.
    status = {
        "groupId": 5,
        "groupName": "REJECTED",
        "id": 12,
        "name": "REJECTED_NOT_ENOUGH_CREDITS",
    }
    error = {"groupId": 2, "groupName": "USER_ERRORS", "id": 1, "name": "EC_X", "permanent": True}
    reply = offline_provider().parse_response(200, http_headers(), answer(status, error=error))
    assert reply.outcome is Outcome.AUTH


# -- timeout -------------------------------------------------------------------------------


async def test_hanging_infobip_times_out(infobip_a: FakeInfobip) -> None:
    infobip_a.hang()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await send(provider_for(infobip_a))


# -- through the router --------------------------------------------------------------------


def two_infobip_config(a: FakeInfobip, b: FakeInfobip) -> str:
    return failover_yaml(a, b, SENDER, default_region="CH")


OTP = otp_to(TO)


async def test_router_fails_over_to_the_second_infobip_when_the_network_is_not_set_up(
    infobip_b: FakeInfobip,
) -> None:
    async with FakeInfobip(unroutable_countries={"CH"}) as a:
        result = await route(two_infobip_config(a, infobip_b), OTP)
    assert attempts(result) == [("primary", Outcome.UNROUTABLE), ("secondary", Outcome.ACCEPTED)]
    assert result.provider_message_id == infobip_b.messages[0].provider_message_id


async def test_router_stops_on_a_200_rejection(
    infobip_a: FakeInfobip, infobip_b: FakeInfobip
) -> None:
    infobip_a.fail(200, "REJECTED_DESTINATION")
    result = await route(two_infobip_config(infobip_a, infobip_b), OTP)
    assert result.status == "failed"
    assert attempts(result) == [("primary", Outcome.REJECTED)]
    assert infobip_b.requests == 0


async def test_router_fails_over_on_a_server_error(
    infobip_a: FakeInfobip, infobip_b: FakeInfobip
) -> None:
    infobip_a.fail(500)
    result = await route(two_infobip_config(infobip_a, infobip_b), OTP)
    assert attempts(result) == [("primary", Outcome.TRANSIENT), ("secondary", Outcome.ACCEPTED)]


async def test_router_times_out_a_hanging_infobip_and_fails_over_an_otp(
    infobip_a: FakeInfobip, infobip_b: FakeInfobip
) -> None:
    infobip_a.hang()
    result = await route(two_infobip_config(infobip_a, infobip_b), OTP)
    assert attempts(result) == [("primary", Outcome.TIMEOUT), ("secondary", Outcome.ACCEPTED)]


# -- conformance: the official SDK against the fake -----------------------------------------


def sdk_api(fake: FakeInfobip, api_key: str | None = None) -> Any:
    client = pytest.importorskip("infobip_api_client")
    config = client.Configuration(host=fake.url, api_key=api_key or fake.api_key, retries=0)
    return client.SmsApi(client.ApiClient(config))


def sdk_request(to: str = "41793026727") -> Any:
    client = pytest.importorskip("infobip_api_client")
    return client.SmsRequest(
        messages=[
            client.SmsMessage(
                sender=SENDER,
                destinations=[client.SmsDestination(to=to)],
                content=client.SmsMessageContent(client.SmsTextContent(text="hi")),
                webhooks=client.SmsWebhooks(
                    delivery=client.SmsMessageDeliveryReporting(url=CALLBACK)
                ),
            )
        ]
    )


async def test_sdk_sends_through_the_fake_and_parses_its_answer(infobip_a: FakeInfobip) -> None:
    api = sdk_api(infobip_a)
    # The SDK is synchronous: run it in a thread while the fake answers on this loop.
    response = await asyncio.to_thread(api.send_sms_messages, sdk_request())
    (message,) = response.messages
    assert message.message_id == infobip_a.messages[0].provider_message_id
    assert message.status.group_name == "PENDING"
    assert message.status.name == "PENDING_ACCEPTED"
    assert message.destination == "41793026727"
    assert infobip_a.messages[0].status_callback == CALLBACK


async def test_sdk_parses_the_fakes_200_rejection(infobip_a: FakeInfobip) -> None:
    api = sdk_api(infobip_a)
    response = await asyncio.to_thread(api.send_sms_messages, sdk_request(to="4179302"))
    (message,) = response.messages
    assert (message.status.group_name, message.status.name) == ("REJECTED", "REJECTED_DESTINATION")


async def test_sdk_raises_unauthorized_with_an_api_error_body(infobip_a: FakeInfobip) -> None:
    exceptions = pytest.importorskip("infobip_api_client.exceptions")
    api = sdk_api(infobip_a, api_key="wrong-key")
    with pytest.raises(exceptions.UnauthorizedException) as info:
        await asyncio.to_thread(api.send_sms_messages, sdk_request())
    assert info.value.data.error_code == "E401"  # parsed into the SDK's ApiError


def test_our_request_validates_as_the_sdks_sms_request() -> None:
    client = pytest.importorskip("infobip_api_client")
    body = (
        offline_provider(validity_period=600).build_request(outbound(status_callback=CALLBACK)).json
    )
    parsed = client.SmsRequest.from_dict(body)  # strict pydantic: unknown enum or type fails
    assert parsed.to_dict() == body  # and nothing was dropped as unknown


@pytest.mark.parametrize(
    ("script", "body", "code"),
    [
        pytest.param(None, {"messages": []}, "E400", id="validation"),
        pytest.param(lambda f: f.fail(403), None, "E403", id="forbidden"),
        pytest.param(lambda f: f.throttle(1), None, "E429", id="throttled"),
        pytest.param(lambda f: f.fail(500), None, "E500", id="server-error"),
    ],
)
async def test_fake_error_bodies_validate_as_the_sdks_api_error(
    infobip_a: FakeInfobip, script: Any, body: Any, code: str
) -> None:
    client = pytest.importorskip("infobip_api_client")
    if script is not None:
        script(infobip_a)
    request = (
        body
        if body is not None
        else {"messages": [{"destinations": [{"to": "41793026727"}], "content": {"text": "hi"}}]}
    )
    headers = {"Authorization": f"App {infobip_a.api_key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{infobip_a.url}/sms/3/messages", json=request, headers=headers) as resp,
    ):
        doc = await resp.json()
    error = client.ApiError.from_dict(doc)  # every required field present and typed
    assert error.error_code == code
