"""Breakers that open on the delivery ratio and recover (issue 12): judged only on
messages sent since the breaker last opened, never opened by a delivered receipt,
and back to full traffic once the provider delivers again."""

from __future__ import annotations

import asyncio

from conftest import Hooks, make_config, twilio_block
from hypothesis import given, settings
from hypothesis import strategies as st
from provider_support import serving

from smsroute import BreakerState, CircuitBreaker, ManualClock, Message
from smsroute.breaker import PROBE
from smsroute.config import BreakerSettings, Config
from smsroute.instrument.events import BreakerTransition, Event
from smsroute.testing import FakeTwilio

OTP = Message(to="+4915123456789", text="Your code is 123456", category="otp")


def breaker(**kw: object) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock()
    s = BreakerSettings(min_delivery_ratio=0.5, min_receipts=5, **kw)  # type: ignore[arg-type]
    return CircuitBreaker(s, clock), clock


def receipts(b: CircuitBreaker, clock: ManualClock, delivered: bool, n: int) -> list[bool]:
    """``n`` receipts for messages accepted now; which of them opened the breaker."""
    return [b.record_receipt(delivered, clock.now()) for _ in range(n)]


def state(b: CircuitBreaker) -> BreakerState:
    return b.state


def probe_through(b: CircuitBreaker) -> None:
    """Half-open: the probes are accepted, so the breaker closes."""
    assert state(b) is BreakerState.HALF_OPEN
    for _ in range(b.settings.half_open_probes):
        ticket = b.allow()
        assert ticket == PROBE
        b.record_success(ticket)
    assert state(b) is BreakerState.CLOSED


# -- the breaker alone, on a manual clock ---------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.booleans(), max_size=60), st.lists(st.integers(0, 40), max_size=60))
def test_a_delivered_receipt_never_opens_a_breaker(script: list[bool], ages: list[int]) -> None:
    b, clock = breaker()
    for i, delivered in enumerate(script):
        clock.advance(1)
        age = ages[i] if i < len(ages) else 0
        was = b.state
        opened = b.record_receipt(delivered, clock.now() - age)
        if delivered:
            assert not opened
            assert b.state is was
        if opened:
            assert b.state is BreakerState.OPEN
        if b.state is not BreakerState.CLOSED and clock.now() >= (b.reopen_at or 0):
            probe_through(b)


def test_receipts_for_messages_accepted_before_the_breaker_opened_are_not_judged() -> None:
    b, clock = breaker()
    sent_before = clock.now()
    assert receipts(b, clock, False, 5) == [False] * 4 + [True]
    clock.advance(30)
    probe_through(b)
    # Messages sent before the trip keep failing (receipt_timeout, late receipts):
    # they describe the provider before it was judged, and change nothing now.
    for _ in range(50):
        assert not b.record_receipt(False, sent_before)
    assert b.state is BreakerState.CLOSED
    assert b.receipts == 0


def test_min_receipts_of_the_new_epoch_before_judging_again() -> None:
    b, clock = breaker()
    receipts(b, clock, False, 5)
    clock.advance(30)
    probe_through(b)
    assert receipts(b, clock, False, 4) == [False] * 4  # 4 < min_receipts: not judged yet
    assert state(b) is BreakerState.CLOSED
    assert receipts(b, clock, False, 1) == [True]
    assert state(b) is BreakerState.OPEN


def test_a_provider_still_not_delivering_waits_longer_each_time() -> None:
    b, clock = breaker(open_for=30.0, max_open_for=300.0)
    openings = []
    for _ in range(5):
        receipts(b, clock, False, 5)
        assert b.state is BreakerState.OPEN
        openings.append((b.reopen_at or 0) - clock.now())
        clock.set(b.reopen_at or 0)
        probe_through(b)  # the API accepts probes, but nothing is delivered
    assert openings == [30.0, 60.0, 120.0, 240.0, 300.0]


def test_hysteresis_recovery_needs_the_ratio_halfway_above_the_minimum() -> None:
    b, clock = breaker(open_for=30.0)
    receipts(b, clock, False, 5)
    clock.advance(30)
    probe_through(b)
    # 60% delivered: above the 50% minimum (stays closed), below the 75% that
    # counts as recovered (a new trip would wait twice as long).
    receipts(b, clock, False, 4)  # fewer than min_receipts: not judged yet
    receipts(b, clock, True, 6)  # delivered: never opens, even at 20% of 5
    assert b.state is BreakerState.CLOSED
    assert b.on_probation
    assert b.opens == 1
    receipts(b, clock, True, 10)  # 16 of 20: 80%
    assert not b.on_probation
    assert b.opens == 0
    receipts(b, clock, False, 13)  # 16 of 33 < 50%
    assert b.state is BreakerState.OPEN
    assert b.reopen_at == clock.now() + 30.0  # back to open_for: it had recovered


def test_nothing_is_judged_without_min_delivery_ratio() -> None:
    b = CircuitBreaker(BreakerSettings(min_receipts=1), ManualClock())
    assert not any(b.record_receipt(False, 0.0) for _ in range(50))
    assert b.state is BreakerState.CLOSED


# -- the scenario of the issue, over sockets ----------------------------------------------------


def config(hooks: Hooks, a: FakeTwilio, b: FakeTwilio) -> Config:
    return make_config(f"""
defaults:
  webhook_url: {hooks.url}
  breaker: {{consecutive_failures: 5, min_delivery_ratio: 50%, min_receipts: 5,
             open_for: 30s, max_open_for: 5m}}
providers:
{twilio_block("primary", a)}
{twilio_block("secondary", b)}
rules:
  - name: default
    providers: [primary, secondary]
""")


async def test_provider_that_delivers_again_gets_its_traffic_back_and_keeps_it(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    clock = ManualClock()
    transitions: list[tuple[float, str]] = []

    def hook(event: Event) -> None:
        if isinstance(event, BreakerTransition) and event.provider == "primary":
            transitions.append((clock.now(), event.to_state))

    twilio_a.receipts("undelivered", error_code=30003)
    twilio_b.receipts("delivered")
    async with serving(hooks, config(hooks, twilio_a, twilio_b), clock=clock) as r:
        r.add_hook(hook)
        for _ in range(5):
            assert (await r.send(OTP)).provider == "primary"
        async with asyncio.timeout(5):
            await twilio_a.wait_receipts(5)
        assert transitions == [(0.0, "open")]

        twilio_a.receipts("delivered")  # the provider recovers
        providers = []
        for _ in range(40):  # low traffic: one message every 10 s
            clock.advance(10)
            result = await r.send(OTP)
            providers.append(result.provider)
            if result.provider == "primary":
                async with asyncio.timeout(5):
                    await twilio_a.wait_receipts(len(twilio_a.messages))
    # Half-open after one open period; closed by the second probe, 10 s later.
    assert transitions == [(0.0, "open"), (30.0, "half_open"), (40.0, "closed")]
    assert providers[:2] == ["secondary"] * 2
    assert providers[2:] == ["primary"] * 38  # its traffic back, and kept
    assert r.breaker_states()[("primary", None)] is BreakerState.CLOSED


async def test_late_expiries_of_messages_sent_before_the_trip_do_not_reopen(
    hooks: Hooks, twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    # A silent provider: nothing comes back, so messages count as undelivered
    # at defaults.receipt_timeout (10 minutes) after they were accepted.
    clock = ManualClock()
    twilio_a.receipts("never")
    twilio_b.receipts("delivered")
    async with serving(hooks, config(hooks, twilio_a, twilio_b), clock=clock) as r:
        for _ in range(5):
            assert (await r.send(OTP)).provider == "primary"
        clock.set(300)
        for _ in range(5):
            assert (await r.send(OTP)).provider == "primary"
        clock.set(601)  # the first five are overdue
        await r.send(OTP)
        assert r.breaker_states()[("primary", None)] is BreakerState.OPEN

        twilio_a.receipts("delivered")  # it recovers
        clock.set(700)
        assert (await r.send(OTP)).provider == "primary"
        async with asyncio.timeout(5):
            await twilio_a.wait_receipts(1)
        # The five sent at t=300 become overdue at t=900: they were sent before
        # the breaker opened and say nothing about the provider now.
        for t in range(800, 1300, 50):
            clock.set(t)
            assert (await r.send(OTP)).provider == "primary"
        assert r.breaker_states()[("primary", None)] is BreakerState.CLOSED
