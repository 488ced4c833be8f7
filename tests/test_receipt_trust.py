"""A receipt moves a message only when it reaches the endpoint of a provider that sent
that message, under the id that provider gave it (issue 12).

The attacker's way in: an Infobip provider configured without callback
credentials takes any receipt anyone posts (Infobip signs nothing).  Before,
such a receipt naming a message sent through Twilio (by our id in the callback
URL, by a client reference, or by Twilio's own id) moved it to delivered and
rewrote its provider: the weakest endpoint decided for every message.  Real
sockets throughout: the fakes send, the router's webhook app listens.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import Hooks, call, make_config, state_of
from provider_support import provider_settings, routing_yaml, serving

from smsroute import DeliveryReport, Message, Router
from smsroute.instrument.events import Event, MessageFinished
from smsroute.testing import FakeInfobip, FakeTwilio, ReceivedMessage

OTP = Message(to="+4915123456789", text="Your code is 123456", category="otp")
TWILIO_NUMBER = "+15005550006"


@pytest.fixture
async def infobip() -> AsyncIterator[FakeInfobip]:
    async with FakeInfobip() as fake:
        yield fake


def two_providers(hooks: Hooks, twilio: FakeTwilio, infobip: FakeInfobip, *extra: str) -> str:
    """Twilio (signed receipts) first, then an Infobip without callback credentials."""
    providers = {
        "twilio": provider_settings(twilio, TWILIO_NUMBER),
        "infobip": provider_settings(infobip, "InfoSMS"),
    }
    return routing_yaml(providers, webhook_url=hooks.url) + "".join(extra)


def forged(
    infobip: FakeInfobip,
    url: str,
    provider_message_id: str,
    callback_data: str | None = None,
    status: str = "delivered",
) -> tuple[str, str, dict[str, str], bytes]:
    """An Infobip delivery report as anyone could post it: Infobip's real payload."""
    webhooks = {"callbackData": callback_data} if callback_data is not None else {}
    record = ReceivedMessage(
        provider_message_id=provider_message_id,
        to=OTP.to,
        sender="InfoSMS",
        text=OTP.text,
        fields={"messages": [{"webhooks": webhooks}]},
        received_at=0.0,
        status_callback=url,
    )
    return infobip.receipt_request(record, status, None)


async def test_a_receipt_at_another_providers_endpoint_moves_nothing(
    hooks: Hooks, twilio_a: FakeTwilio, infobip: FakeInfobip
) -> None:
    async with serving(hooks, make_config(two_providers(hooks, twilio_a, infobip))) as router:
        reports: list[DeliveryReport] = []
        router.on_delivery_report(reports.append)
        result = await router.send(OTP)
        assert result.provider == "twilio"
        mid, sid = result.message_id, result.provider_message_id or ""
        endpoint = f"{hooks.url}/infobip/status"

        def unknown() -> str:  # an Infobip-shaped id of no message
            return str(10**17 + secrets.randbelow(9 * 10**17))

        query = f"{endpoint}?smsroute_id={mid}"
        # Each a receipt of its own (none is dropped as a retry of another).
        attacks = {
            "our id in the callback URL": forged(infobip, query, unknown()),
            "our id as Infobip's callbackData": forged(infobip, endpoint, unknown(), mid),
            "Twilio's message id": forged(infobip, endpoint, sid),
            "all three": forged(infobip, query, sid, mid, "sent"),
            "a failure, all three": forged(infobip, query, sid, mid, "undelivered"),
        }
        for what, (method, url, headers, body) in attacks.items():
            assert await call(method, url, headers, body) == 200, what  # no retries provoked
            state = await router.status(mid)
            assert state is not None
            assert (state.status, state.provider, state.provider_message_id) == (
                "accepted",
                "twilio",
                sid,
            ), what
        assert reports == []
        assert router.state.health("infobip").receipts == 0
        assert router.state.health("twilio").receipts == 0
        # The genuine receipt, signed by Twilio at Twilio's endpoint, still counts.
        method, url, headers, body = twilio_a.receipt_request(
            twilio_a.messages[0], "delivered", None
        )
        assert await call(method, url, headers, body) == 200
        assert await state_of(router, mid) == "delivered"
        assert [(r.provider, r.status) for r in reports] == [("twilio", "delivered")]


async def test_an_infobip_id_with_another_messages_reference_moves_neither(
    hooks: Hooks, twilio_a: FakeTwilio, infobip: FakeInfobip
) -> None:
    twilio_a.fail(503)  # Twilio down: the message goes through Infobip
    async with serving(hooks, make_config(two_providers(hooks, twilio_a, infobip))) as router:
        result = await router.send(OTP)
        assert result.provider == "infobip"
        # Named by its client reference and Infobip's id, as Infobip sends it.
        method, url, headers, body = infobip.receipt_request(infobip.messages[0], "delivered", None)
        assert await call(method, url, headers, body) == 200
        assert await state_of(router, result.message_id) == "delivered"
        # ...but its id with another message's reference is a forgery: it moves neither.
        other = await router.send(OTP)
        first_id = infobip.messages[0].provider_message_id
        method, url, headers, body = forged(infobip, url, first_id, other.message_id, "undelivered")
        assert await call(method, url, headers, body) == 200
        assert await state_of(router, other.message_id) == "accepted"
        assert await state_of(router, result.message_id) == "delivered"


async def test_a_receipt_signed_by_one_twilio_account_cannot_move_anothers_message(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    """Two accounts of one provider type: the second's signature is valid at its own
    endpoint only, for its own message ids."""
    providers = {
        "primary": provider_settings(twilio_a, TWILIO_NUMBER),
        "secondary": provider_settings(twilio_b, TWILIO_NUMBER),
    }
    config = make_config(routing_yaml(providers, webhook_url=hooks.url))
    async with serving(hooks, config) as router:
        result = await router.send(OTP)
        assert result.provider == "primary"
        record = twilio_a.messages[0]
        # Posted to secondary's endpoint, signed with secondary's token, our id in the URL.
        url = f"{hooks.url}/secondary/status?smsroute_id={result.message_id}"
        forgery = ReceivedMessage(
            record.provider_message_id, record.to, record.sender, "", {}, 0.0, url
        )
        method, url, headers, body = twilio_b.receipt_request(forgery, "delivered", None)
        assert await call(method, url, headers, body) == 200
        assert await state_of(router, result.message_id) == "accepted"


async def test_an_outbox_message_moves_only_by_its_own_providers_receipt(
    tmp_path: Path, hooks: Hooks, twilio_a: FakeTwilio, infobip: FakeInfobip
) -> None:
    """Sent by an outbox worker in another router: the receiver knows it only from
    the durable record, which says which provider sent it under which id."""
    outbox = f"outbox:\n  path: {tmp_path / 'outbox.db'}\n  poll: 20ms\n"
    text = two_providers(hooks, twilio_a, infobip, outbox)
    sent = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, MessageFinished) and event.status == "accepted":
            sent.set()

    async with (
        Router(make_config(text), metrics=False, hooks=[on_event]) as sender,
        Router(make_config(text), metrics=False) as receiver,
    ):
        await hooks.serve(receiver)
        message_id = await sender.enqueue(OTP)
        async with sender.worker(concurrency=1), asyncio.timeout(10):
            await sent.wait()
        assert await state_of(receiver, message_id) == "accepted"  # the durable record
        sid = twilio_a.messages[0].provider_message_id
        query = f"{hooks.url}/infobip/status?smsroute_id={message_id}"
        method, url, headers, body = forged(infobip, query, sid, message_id)
        assert await call(method, url, headers, body) == 200
        assert await state_of(receiver, message_id) == "accepted"
        # Twilio's own receipt, at Twilio's endpoint, is recorded.
        record = twilio_a.messages[0]
        method, url, headers, body = twilio_a.receipt_request(record, "delivered", None)
        assert await call(method, url, headers, body) == 200
        assert await state_of(receiver, message_id) == "delivered"


async def test_what_waits_for_a_receipt_is_bounded_by_count(
    hooks: Hooks, twilio_a: FakeTwilio, infobip: FakeInfobip
) -> None:
    """At 1,000 messages/s, a receipt_timeout of 10 minutes alone would keep 600,000."""
    async with serving(hooks, make_config(two_providers(hooks, twilio_a, infobip))) as router:
        store = router.dispatcher.status_store
        store.max_messages = 5
        store.max_orphans = 5
        for _ in range(8):
            assert (await router.send(OTP)).ok
        assert router.receipts.awaiting == 5
        assert len(store) == 5
        # Receipts of no known message, which anyone may post to this endpoint, are parked...
        endpoint = f"{hooks.url}/infobip/status"
        for n in range(8):
            assert await call(*forged(infobip, endpoint, f"{10**17 + n}")) == 200
        # ...at most max_orphans of them.
        assert sum(len(parked) for parked in store._orphans.values()) == 5
        assert len(store._orphan_order) == 5
