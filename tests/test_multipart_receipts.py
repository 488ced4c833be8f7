"""A message Vonage sends in parts is delivered when every part is, and failed as soon
as one part fails (issue 12).

Vonage gives each part of a long text its own message id in the send's answer
(``messages[]``) and sends a delivery receipt per part, each echoing our
``client-ref``.  Before, the first part's receipt alone made the message
delivered, and a later part's failure ranked as stale and was lost.  FakeVonage
answers and posts its real DLR payloads to the router's webhook app over sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import attrs
import pytest
from conftest import Hooks, call, make_config, state_of
from provider_support import Exchange, provider_settings, routing_yaml

from smsroute import DeliveryReport, Message, Router, SendResult
from smsroute.testing import FakeVonage, ReceivedMessage

TO = "+4915123456789"
LONG = Message(to=TO, text="Your parcel is on its way. " * 12)  # 324 characters: 3 parts


@pytest.fixture
async def vonage() -> AsyncIterator[FakeVonage]:
    async with FakeVonage() as fake:
        yield fake


@attrs.define
class Sent:
    router: Router
    fake: FakeVonage
    result: SendResult
    parts: list[ReceivedMessage]
    reports: list[DeliveryReport]

    async def receipt(self, part: int, status: str) -> None:
        method, url, headers, body = self.fake.receipt_request(self.parts[part], status, None)
        assert await call(method, url, headers, body) == 200

    async def status(self) -> str:
        return await state_of(self.router, self.result.message_id)


@pytest.fixture
async def sent(hooks: Hooks, vonage: FakeVonage) -> AsyncIterator[Sent]:
    """LONG sent through Vonage; each part's record, with the id Vonage's answer gave it."""
    config = make_config(
        routing_yaml({"vonage": provider_settings(vonage, "Acme")}, webhook_url=hooks.url)
    )
    wire = Exchange()
    async with (
        aiohttp.ClientSession(trace_configs=[wire.trace_config()]) as session,
        Router(config, session=session, metrics=False) as router,
    ):
        await hooks.serve(router)
        reports: list[DeliveryReport] = []
        router.on_delivery_report(reports.append)
        result = await router.send(LONG)
        assert result.ok
        ids = [part["message-id"] for part in wire.json()["messages"]]
        assert len(ids) == 3
        assert ids[0] == result.provider_message_id
        record = vonage.messages[0]
        parts = [attrs.evolve(record, provider_message_id=i) for i in ids]
        yield Sent(router, vonage, result, parts, reports)


async def test_delivered_only_when_every_part_is(sent: Sent) -> None:
    await sent.receipt(0, "delivered")
    assert await sent.status() == "accepted"
    await sent.receipt(2, "delivered")
    assert await sent.status() == "accepted"
    assert sent.reports == []
    await sent.receipt(1, "delivered")
    assert await sent.status() == "delivered"
    assert [r.status for r in sent.reports] == ["delivered"]  # one report for the message
    assert sent.router.state.health("vonage").receipts == 1  # counted once, not per part


async def test_sent_when_every_part_is_sent(sent: Sent) -> None:
    await sent.receipt(1, "sent")
    await sent.receipt(2, "sent")
    assert await sent.status() == "accepted"
    await sent.receipt(0, "sent")
    assert await sent.status() == "sent"


async def test_one_failed_part_fails_the_message_and_nothing_moves_it_back(sent: Sent) -> None:
    await sent.receipt(0, "delivered")
    await sent.receipt(1, "undelivered")
    state = await sent.router.status(sent.result.message_id)
    assert state is not None
    assert (state.status, state.error_code) == ("undelivered", "2")
    await sent.receipt(2, "delivered")
    assert await sent.status() == "undelivered"
    assert [r.status for r in sent.reports] == ["undelivered"]
    assert sent.router.state.health("vonage").delivery_ratio == 0.0


async def test_a_part_id_vonage_never_gave_is_ignored(sent: Sent) -> None:
    """Our client-ref with an id that is none of the message's parts: not its receipt."""
    stranger = attrs.evolve(sent.parts[0], provider_message_id="0000-not-a-part")
    method, url, headers, body = sent.fake.receipt_request(stranger, "delivered", None)
    assert await call(method, url, headers, body) == 200
    assert await sent.status() == "accepted"
