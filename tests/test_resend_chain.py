"""``on_undelivered: resend`` through a chain of providers: each resend is a new attempt
whose receipts count for its own provider (issue 12).

Before, a resend left the first provider's failure in place: the second
provider's failure then ranked as stale and was dropped (no third send, no
``on_delivery_report``, no delivery health), ``status()`` blamed the second
provider for the first one's failure, and a late receipt of the first attempt
moved the message.  Three FakeTwilio accounts send real, signed receipts to the
router's webhook app over sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from conftest import Hooks, call, make_config, reaches
from provider_support import provider_settings, routing_yaml, serving

from smsroute import DeliveryReport, Message, Router
from smsroute.config import Config
from smsroute.instrument.events import Event, MessageFinished
from smsroute.testing import FakeTwilio

OTP = Message(to="+4915123456789", text="Your code is 123456", category="otp")
UNREACHABLE = 30003  # Twilio: handset unreachable, retryable through another provider


def chain(hooks: Hooks, a: FakeTwilio, b: FakeTwilio, c: FakeTwilio) -> Config:
    providers = {
        name: provider_settings(fake, "+15005550006")
        for name, fake in zip("abc", (a, b, c), strict=True)
    }
    text = routing_yaml(providers, webhook_url=hooks.url) + "    on_undelivered: resend\n"
    return make_config(text)


def accepted_by(provider: str, seen: asyncio.Event) -> Callable[[Event], None]:
    """A hook setting ``seen`` when a send (or resend) is accepted by ``provider``."""

    def hook(event: Event) -> None:
        if isinstance(event, MessageFinished) and event.provider == provider:
            seen.set()

    return hook


async def test_a_message_failing_at_a_then_b_is_resent_through_c(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio, twilio_c: FakeTwilio
) -> None:
    twilio_a.receipts("undelivered", error_code=UNREACHABLE)
    twilio_b.receipts("undelivered", error_code=UNREACHABLE)
    twilio_c.receipts("delivered")
    async with serving(hooks, chain(hooks, twilio_a, twilio_b, twilio_c)) as router:
        reports: list[DeliveryReport] = []
        router.on_delivery_report(reports.append)
        result = await router.send(OTP)
        async with asyncio.timeout(10):
            await reaches(router, result.message_id, "delivered")
        state = await router.status(result.message_id)
        assert state is not None
        assert (state.status, state.provider, state.error_code) == ("delivered", "c", None)
        assert state.provider_message_id == twilio_c.messages[0].provider_message_id
        assert [h[:2] for h in state.history] == [
            ("accepted", "a"),
            ("undelivered", "a"),
            ("accepted", "b"),
            ("undelivered", "b"),
            ("accepted", "c"),
            ("delivered", "c"),
        ]
        assert [(r.provider, r.status, r.error_code) for r in reports] == [
            ("a", "undelivered", str(UNREACHABLE)),
            ("b", "undelivered", str(UNREACHABLE)),
            ("c", "delivered", None),
        ]
        # Each provider's delivery health counts its own attempt, once.
        ratios = {p: router.state.health(p).delivery_ratio for p in "abc"}
        assert ratios == {"a": 0.0, "b": 0.0, "c": 1.0}
        assert [router.state.health(p).receipts for p in "abc"] == [1, 1, 1]
    assert [len(f.messages) for f in (twilio_a, twilio_b, twilio_c)] == [1, 1, 1]


async def test_status_after_a_resend_is_the_new_attempts_until_it_answers(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio, twilio_c: FakeTwilio
) -> None:
    twilio_a.receipts("undelivered", error_code=UNREACHABLE)
    twilio_b.receipts("never")
    resent = asyncio.Event()
    config = chain(hooks, twilio_a, twilio_b, twilio_c)
    async with Router(config, hooks=[accepted_by("b", resent)], metrics=False) as router:
        await hooks.serve(router)
        result = await router.send(OTP)
        async with asyncio.timeout(5):
            await resent.wait()
        state = await router.status(result.message_id)
        assert state is not None
        # b has not answered: nothing of a's failure is put on b.
        assert (state.status, state.provider, state.error_code) == ("accepted", "b", None)
        assert state.provider_message_id == twilio_b.messages[0].provider_message_id


async def test_a_late_receipt_of_the_replaced_attempt_does_not_move_the_message(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio, twilio_c: FakeTwilio
) -> None:
    twilio_a.receipts("undelivered", error_code=UNREACHABLE)
    twilio_b.receipts("never")
    resent = asyncio.Event()
    config = chain(hooks, twilio_a, twilio_b, twilio_c)
    async with Router(config, hooks=[accepted_by("b", resent)], metrics=False) as router:
        await hooks.serve(router)
        reports: list[DeliveryReport] = []
        result = await router.send(OTP)
        async with asyncio.timeout(5):
            await resent.wait()
        router.on_delivery_report(reports.append)
        # a, its receipt signed by a at a's endpoint, now says delivered after all.
        method, url, headers, body = twilio_a.receipt_request(
            twilio_a.messages[0], "delivered", None
        )
        assert await call(method, url, headers, body) == 200
        state = await router.status(result.message_id)
        assert state is not None
        assert (state.status, state.provider) == ("accepted", "b")
        assert state.history[-1][:2] == ("delivered", "a")  # recorded, for a's attempt
        assert reports == []
        assert router.state.health("a").receipts == 1  # a's undelivered only
        # b's own receipt still moves the message.
        method, url, headers, body = twilio_b.receipt_request(
            twilio_b.messages[0], "delivered", None
        )
        assert await call(method, url, headers, body) == 200
        state = await router.status(result.message_id)
        assert state is not None
        assert (state.status, state.provider) == ("delivered", "b")
        assert [(r.provider, r.status) for r in reports] == [("b", "delivered")]
    assert twilio_c.requests == 0
