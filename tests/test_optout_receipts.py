"""Opt-outs the providers report in delivery receipts (issue 18, "opt-outs from every source").

Vonage (SMS API err-code 9), Plivo (200), Bandwidth (4775), Twilio (21610 in a status
callback), Telnyx (40300 in message.finalized) and Infobip
(REJECTED_DESTINATION_BLOCKLISTED in a delivery report) accept a message to a number
that opted out at the provider, then say so in its receipt.  Such a receipt, correlated
to a message we sent, records the opt-out: the next message of an opted-out category is
refused before any provider is called.  The number is the one we sent to, never one the
receipt names; a receipt that reached another provider's endpoint, an unsigned one, or
one of no message of ours records nothing.  Real sockets throughout: the fakes send
their own signed receipts to the router's webhook app.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
from conftest import Hooks, call, make_config, reaches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from provider_support import provider_settings, routing_yaml, serving
from redis_support import prefix, redis_url, state_block, until  # noqa: F401

from smsroute import DeliveryReport, Message, Router
from smsroute.numbers import mask
from smsroute.testing import (
    FakeBandwidth,
    FakeInfobip,
    FakeMessageBird,
    FakePlivo,
    FakeProvider,
    FakeSinch,
    FakeTelnyx,
    FakeTwilio,
    FakeVonage,
    ReceivedMessage,
)

HANDSET = "+4915123456789"
US_HANDSET = "+14155550123"
VONAGE_SECRET = "9a7c1f0e2b3d4c5e6f7a8b9c0d1e2f3a"
USER, PASSWORD = "smsroute", "s3cret-passw0rd"

Start = Callable[[Hooks], AbstractAsyncContextManager[Any]]
Settings = Callable[[Any], list[str]]


def _vonage(fake: FakeVonage) -> list[str]:
    return [
        "type: vonage",
        f"base_url: {fake.url}",
        f'api_key: "{fake.api_key}"',
        "from: Acme",
        f'signature_secret: "{VONAGE_SECRET}"',
        "signature_method: sha256",
    ]


def _callback_credentials(fake: FakeProvider, sender: str) -> list[str]:
    return provider_settings(
        fake, sender, f'callback_username: "{USER}"', f'callback_password: "{PASSWORD}"'
    )


#: Each provider whose receipts can say "the recipient opted out": how to start its fake
#: (signing its receipts as the provider does), its config, the number, and the receipt's
#: (status, error code) as the router reports it.
CASES: dict[str, tuple[Start, Settings, str, tuple[str, str]]] = {
    "twilio": (
        lambda hooks: FakeTwilio(),
        lambda fake: provider_settings(fake, "+15005550006"),
        US_HANDSET,
        ("failed", "21610"),
    ),
    "telnyx": (
        lambda hooks: FakeTelnyx(),
        lambda fake: provider_settings(fake, "+14155550100", f"public_key: {fake.public_key}"),
        HANDSET,
        ("failed", "40300"),
    ),
    "vonage": (
        lambda hooks: FakeVonage(signature_secret=VONAGE_SECRET, signature_method="sha256"),
        _vonage,
        HANDSET,
        ("failed", "9"),
    ),
    "plivo": (
        lambda hooks: FakePlivo(),
        lambda fake: provider_settings(fake, "+14155550100"),
        HANDSET,
        ("failed", "200"),
    ),
    "bandwidth": (
        lambda hooks: FakeBandwidth(
            callback_url=f"{hooks.url}/bandwidth/status",
            callback_username=USER,
            callback_password=PASSWORD,
        ),
        lambda fake: _callback_credentials(fake, "+19195551234"),
        HANDSET,
        ("undelivered", "4775"),
    ),
    "infobip": (
        lambda hooks: FakeInfobip(callback_username=USER, callback_password=PASSWORD),
        lambda fake: _callback_credentials(fake, "InfoSMS"),
        HANDSET,
        ("failed", "REJECTED_DESTINATION_BLOCKLISTED"),
    ),
}


def promo(number: str) -> Message:
    return Message(to=number, text="Sale! 20% off today", category="marketing")


async def opt_out_round_trip(
    router: Router, fake: FakeProvider, number: str
) -> tuple[str, list[DeliveryReport]]:
    """Send a marketing message the provider accepts and then reports as opted out; our
    message id and the reports, once the receipt was answered."""
    reports: list[DeliveryReport] = []
    router.on_delivery_report(reports.append)
    fake.receipts("opted_out")
    result = await router.send(promo(number))
    assert result.ok, result.reason
    async with asyncio.timeout(5):
        await fake.wait_receipts(1)
    assert [answer for _, _, answer in fake.receipts_sent] == [200]
    return result.message_id, reports


@pytest.mark.parametrize("name", list(CASES))
async def test_an_opt_out_receipt_is_recorded_and_the_next_message_refused(
    hooks: Hooks, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    start, make_settings, number, (status, code) = CASES[name]
    async with start(hooks) as fake:
        config = make_config(routing_yaml({name: make_settings(fake)}, webhook_url=hooks.url))
        async with serving(hooks, config) as router:
            assert not router.is_opted_out(number)
            with caplog.at_level(logging.INFO, logger="smsroute"):
                message_id, reports = await opt_out_round_trip(router, fake, number)
            assert [(r.message_id, r.status, r.error_code, r.opted_out) for r in reports] == [
                (message_id, status, code, True)
            ]
            assert reports[0].retryable is False  # no resend to a number that opted out
            assert router.is_opted_out(number)
            assert number in router.optouts.list()
            logged = [r.getMessage() for r in caplog.records if "opted out" in r.getMessage()]
            assert len(logged) == 1
            assert number not in logged[0]
            assert mask(number) in logged[0]
            requests = fake.requests
            # The next marketing message is refused here: the provider is not called.
            second = await router.send(promo(number))
            assert (second.ok, second.reason, second.attempts) == (False, "opted_out", ())
            assert fake.requests == requests
            # otp is not an opted-out category by default, and another number is untouched.
            fake.receipts("never")
            otp = await router.send(Message(to=number, text="Your code is 123456", category="otp"))
            assert otp.ok
            other = number[:-1] + ("8" if number[-1] != "8" else "7")
            assert (await router.send(promo(other))).ok
            assert not router.is_opted_out(other)


@pytest.mark.parametrize("name", list(CASES))
async def test_an_ordinary_failure_receipt_records_no_opt_out(hooks: Hooks, name: str) -> None:
    start, make_settings, number, _ = CASES[name]
    async with start(hooks) as fake:
        config = make_config(routing_yaml({name: make_settings(fake)}, webhook_url=hooks.url))
        async with serving(hooks, config) as router:
            reports: list[DeliveryReport] = []
            router.on_delivery_report(reports.append)
            fake.receipts("undelivered")  # each fake's usual failure (absent subscriber, ...)
            result = await router.send(promo(number))
            async with asyncio.timeout(5):
                await fake.wait_receipts(1)
            assert [(r.message_id, r.opted_out) for r in reports] == [(result.message_id, False)]
            assert not router.is_opted_out(number)
            assert (await router.send(promo(number))).ok


@pytest.mark.parametrize("make", [FakeSinch, FakeMessageBird])
async def test_providers_without_a_documented_opt_out_receipt_say_so(
    make: Callable[[], FakeProvider],
) -> None:
    async with make() as fake:
        with pytest.raises(NotImplementedError, match="no documented opted-out receipt"):
            fake.receipts("opted_out")


async def test_the_vonage_messages_api_has_no_documented_opt_out_receipt() -> None:
    async with FakeVonage(signature_secret=VONAGE_SECRET, webhook_api="messages") as fake:
        with pytest.raises(NotImplementedError, match="no documented opted-out receipt"):
            fake.receipts("opted_out")


async def test_an_opt_out_receipt_that_beats_the_send_answer_is_applied_when_parked(
    hooks: Hooks,
) -> None:
    start, make_settings, number, _ = CASES["plivo"]
    async with start(hooks) as fake:
        config = make_config(routing_yaml({"plivo": make_settings(fake)}, webhook_url=hooks.url))
        async with serving(hooks, config) as router:
            fake.receipts("opted_out", before_answer=True)
            result = await router.send(promo(number))
            assert result.ok
            async with asyncio.timeout(5):
                await reaches(router, result.message_id, "failed")
            assert router.is_opted_out(number)


async def test_the_number_is_ours_not_the_one_the_receipt_names(hooks: Hooks) -> None:
    """A genuine, signed receipt whose body names another recipient opts out the
    number our message went to, never the one in the body."""
    async with FakePlivo() as fake:
        config = make_config(
            routing_yaml({"plivo": provider_settings(fake, "+14155550100")}, webhook_url=hooks.url)
        )
        async with serving(hooks, config) as router:
            result = await router.send(promo(HANDSET))
            assert result.ok
            record = fake.messages[-1]
            other = "+4915199999999"
            lying = ReceivedMessage(
                provider_message_id=record.provider_message_id,
                to=other,
                sender=record.sender,
                text=record.text,
                fields=record.fields,
                received_at=record.received_at,
                status_callback=record.status_callback,
            )
            method, url, headers, body = fake.receipt_request(lying, "failed", "200")
            assert await call(method, url, headers, body) == 200
            assert router.is_opted_out(HANDSET)
            assert not router.is_opted_out(other)


# -- what an attacker can post ----------------------------------------------------------------


Rig = tuple[Router, FakeTwilio, FakeInfobip, str]


@pytest.fixture
async def twilio_and_open_infobip(hooks: Hooks) -> AsyncIterator[Rig]:
    """Twilio (signed receipts) first, then an Infobip without callback credentials,
    whose endpoint takes whatever anyone posts; one marketing message sent by Twilio
    (its id last)."""
    async with FakeTwilio() as twilio, FakeInfobip() as infobip:
        providers = {
            "twilio": provider_settings(twilio, "+15005550006"),
            "infobip": provider_settings(infobip, "InfoSMS"),
        }
        config = make_config(routing_yaml(providers, webhook_url=hooks.url))
        async with serving(hooks, config) as router:
            result = await router.send(promo(US_HANDSET))
            assert result.provider == "twilio"
            yield router, twilio, infobip, result.message_id


def infobip_report(
    infobip: FakeInfobip, url: str, provider_message_id: str, callback_data: str | None
) -> tuple[str, str, dict[str, str], bytes]:
    """An Infobip "recipient blocklisted" delivery report, as anyone could post it."""
    webhooks = {"callbackData": callback_data} if callback_data is not None else {}
    record = ReceivedMessage(
        provider_message_id=provider_message_id,
        to=US_HANDSET,
        sender="InfoSMS",
        text="x",
        fields={"messages": [{"webhooks": webhooks}]},
        received_at=0.0,
        status_callback=url,
    )
    return infobip.receipt_request(record, "failed", "REJECTED_DESTINATION_BLOCKLISTED")


async def test_an_opt_out_receipt_for_another_providers_message_records_nothing(
    hooks: Hooks, twilio_and_open_infobip: Rig
) -> None:
    router, twilio, infobip, our_id = twilio_and_open_infobip
    sid = twilio.messages[0].provider_message_id
    endpoint = f"{hooks.url}/infobip/status"
    # Every way to name Twilio's message at Infobip's open endpoint.
    attacks = {
        "Twilio's id": infobip_report(infobip, endpoint, sid, None),
        "our id as callbackData": infobip_report(infobip, endpoint, "4242424242", our_id),
        "our id in the URL": infobip_report(
            infobip, f"{endpoint}?smsroute_id={our_id}", "4343434343", None
        ),
        "all three": infobip_report(infobip, f"{endpoint}?smsroute_id={our_id}", sid, our_id),
    }
    for what, (method, url, headers, body) in attacks.items():
        assert await call(method, url, headers, body) == 200, what
        assert not router.is_opted_out(US_HANDSET), what
    state = await router.status(our_id)
    assert state is not None
    assert (state.status, state.provider) == ("accepted", "twilio")
    assert (await router.send(promo(US_HANDSET))).ok


async def test_an_unsigned_or_forged_opt_out_receipt_records_nothing(
    hooks: Hooks, twilio_and_open_infobip: Rig
) -> None:
    router, twilio, _, _ = twilio_and_open_infobip
    sent = twilio.messages[0]
    method, url, headers, body = twilio.receipt_request(sent, "failed", "21610")
    unsigned = {k: v for k, v in headers.items() if k.lower() != "x-twilio-signature"}
    assert await call(method, url, unsigned, body) == 403
    forged = dict(headers, **{"X-Twilio-Signature": "AAAA" + headers["X-Twilio-Signature"][4:]})
    assert await call(method, url, forged, body) == 403
    assert not router.is_opted_out(US_HANDSET)
    # The same receipt, signed by Twilio, is believed.
    assert await call(method, url, headers, body) == 200
    assert router.is_opted_out(US_HANDSET)


async def test_a_signed_opt_out_receipt_of_no_message_of_ours_records_nothing(
    hooks: Hooks, twilio_and_open_infobip: Rig
) -> None:
    router, twilio, _, _ = twilio_and_open_infobip
    sent = twilio.messages[0]
    stranger = ReceivedMessage(
        provider_message_id="SM" + "f" * 32,
        to=US_HANDSET,
        sender=sent.sender,
        text="x",
        fields={},
        received_at=0.0,
        status_callback=f"{hooks.url}/twilio/status",
    )
    method, url, headers, body = twilio.receipt_request(stranger, "failed", "21610")
    assert await call(method, url, headers, body) == 200  # so that Twilio stops retrying
    assert not router.is_opted_out(US_HANDSET)


async def test_deliver_believes_an_opt_out_only_of_the_provider_that_sent_the_message(
    twilio_and_open_infobip: Rig,
) -> None:
    """``Receipts.deliver`` checks again, against the status store, that the receipt's
    provider sent our message under the receipt's id before it opts anyone out."""
    router, twilio, _, our_id = twilio_and_open_infobip
    sid = twilio.messages[0].provider_message_id
    at = datetime.datetime.now(datetime.UTC)
    for provider, provider_message_id in [("infobip", sid), ("twilio", "SM" + "0" * 32)]:
        report = DeliveryReport(our_id, provider, provider_message_id, "failed", "x", at)
        await router.receipts.deliver(attrs.evolve(report, opted_out=True))
        assert not router.is_opted_out(US_HANDSET)


# Infobip status names and error codes as an attacker would pick them.
STATUS_NAMES = st.sampled_from(
    ["REJECTED_DESTINATION_BLOCKLISTED", "REJECTED_DESTINATION", "DELIVERED_TO_HANDSET"]
)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_no_report_posted_to_an_open_endpoint_opts_our_recipient_out(
    hooks: Hooks, twilio_and_open_infobip: Rig, data: st.DataObject
) -> None:
    """Whatever Infobip-shaped report anyone posts to the endpoint that checks nothing,
    naming our message however it likes: the answer is 200 or 400, and nobody is opted out."""
    router, twilio, _, our_id = twilio_and_open_infobip
    sid = twilio.messages[0].provider_message_id
    ids = st.one_of(st.just(sid), st.just(our_id), st.text("0123456789abcdefSM", max_size=40))
    message_id = data.draw(ids)
    callback_data = data.draw(st.one_of(st.none(), ids))
    query = data.draw(st.one_of(st.just(""), ids.map(lambda v: f"?smsroute_id={v}")))
    name = data.draw(STATUS_NAMES)
    result: dict[str, Any] = {
        "messageId": message_id,
        "to": data.draw(st.sampled_from([US_HANDSET.removeprefix("+"), "4915123456789"])),
        "status": {"groupId": 5, "groupName": "REJECTED", "id": 14, "name": name},
        "error": {"groupId": 0, "groupName": "OK", "id": 0, "name": "NO_ERROR"},
    }
    if callback_data is not None:
        result["callbackData"] = callback_data
    body = json.dumps({"results": [result]}).encode()
    url = f"{hooks.url}/infobip/status{query}"
    answer = await call("POST", url, {"Content-Type": "application/json"}, body)
    assert answer in (200, 400)
    assert not router.is_opted_out(US_HANDSET)
    assert router.optouts.list() == []


async def test_a_receipts_opt_out_is_obeyed_by_another_replica(
    hooks: Hooks,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    async with FakeVonage(signature_secret=VONAGE_SECRET, signature_method="sha256") as fake:
        text = (
            routing_yaml({"vonage": _vonage(fake)}, webhook_url=hooks.url)
            + state_block(redis_url, prefix, sync_interval="50ms")
            + "\n"
        )
        config = make_config(text)
        async with serving(hooks, config) as a, Router(config, metrics=False) as b:
            await opt_out_round_trip(a, fake, HANDSET)
            assert a.is_opted_out(HANDSET)
            await a.optouts.flush()
            await until(lambda: HANDSET in b.optouts, what="replica b sees the opt-out")
            requests = fake.requests
            assert (await b.send(promo(HANDSET))).reason == "opted_out"
            assert fake.requests == requests
