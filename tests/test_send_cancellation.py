"""A send cancelled at any await gives back everything it took.

A caller may cancel ``Router.send`` anywhere: an ``asyncio.timeout()`` around
it, a web client that disconnects.  Whatever the send held at that moment (a
half-open breaker's probe ticket, a rate-limit token, a ``max_concurrency``
slot, the in-flight gauge) must be returned, or the provider is starved for the
life of the process.  The named cases come first; the last tests cancel a send
after every possible number of event-loop steps, which reaches every await on
the path (ours and aiohttp's) without naming them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import make_config, twilio_block
from prometheus_client import CollectorRegistry
from redis_support import prefix, redis_url, until  # noqa: F401  (fixtures)

from smsroute import BreakerState, ManualClock, Message, Outcome, Router
from smsroute.testing import FakeTwilio

OTP = Message(to="+4915123456789", text="Your code is 123456", category="otp")


def config(a: FakeTwilio, b: FakeTwilio, **a_extra: object) -> str:
    return f"""
defaults:
  default_region: US
  max_rate_wait: 5s
  breaker: {{consecutive_failures: 1, open_for: 200ms, half_open_probes: 1}}
providers:
{twilio_block("a", a, timeout="5s", **a_extra)}
{twilio_block("b", b, timeout="5s")}
rules:
  - name: default
    providers: [a, b]
"""


def inflight(registry: CollectorRegistry, provider: str) -> float:
    value = registry.get_sample_value("smsroute_inflight_requests", {"provider": provider})
    return value or 0.0


async def half_open(router: Router, fake: FakeTwilio, clock: ManualClock) -> None:
    """Open provider a's breaker with one failure, then let its open time pass."""
    fake.fail(503, times=1)
    result = await router.send(OTP)
    assert result.provider == "b"
    assert router.breaker_states()[("a", None)] is BreakerState.OPEN
    clock.advance(0.3)
    assert router.breaker_states()[("a", None)] is BreakerState.HALF_OPEN


async def all_free(slots: asyncio.Semaphore, size: int) -> None:
    """Every one of the ``size`` slots can be taken at once (then they are given back)."""
    for _ in range(size):
        await asyncio.wait_for(slots.acquire(), 0.5)
    for _ in range(size):
        slots.release()


async def cancel_when(
    started: Callable[[], bool], coro: Awaitable[Any], *, limit: float = 5.0
) -> None:
    """Run ``coro`` as a task, cancel it as soon as ``started()`` holds, await the end."""
    task = asyncio.ensure_future(coro)
    deadline = asyncio.get_running_loop().time() + limit
    while not started():
        assert not task.done(), "the send finished before the point to cancel it at"
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_half_open_probe_gives_the_provider_its_traffic_back(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    # The case from the issue: the probe is in flight (1 s latency) when the caller gives up.
    clock = ManualClock()
    registry = CollectorRegistry()
    async with Router(make_config(config(twilio_a, twilio_b)), clock=clock, registry=registry) as r:
        await half_open(r, twilio_a, clock)
        twilio_a.latency(1.0)
        before = twilio_a.requests
        await cancel_when(lambda: twilio_a.requests > before, r.send(OTP))
        twilio_a.heal()
        assert inflight(registry, "a") == 0
        result = await r.send(OTP)
        assert result.provider == "a", result.attempts  # the probe slot came back
        assert r.breaker_states()[("a", None)] is BreakerState.CLOSED


async def test_cancel_during_rate_limit_wait_returns_token_and_probe(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    clock = ManualClock()
    waiting = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the router's rate-limit wait, observed
        waiting.set()
        await asyncio.sleep(seconds)

    async with Router(
        make_config(config(twilio_a, twilio_b, rate_limit=1, burst=1)), clock=clock, sleep=sleep
    ) as r:
        await half_open(r, twilio_a, clock)
        bucket = r.state.bucket(r.config.providers["a"])
        bucket.reserve(0.0)  # the only token is gone: the next send waits ~1 s for one
        waits_before = bucket.wait_time()
        assert waits_before > 0.5
        sent_before = twilio_a.requests
        task = asyncio.ensure_future(r.send(OTP))
        async with asyncio.timeout(5):
            await waiting.wait()  # the send is asleep in its rate-limit wait
        assert twilio_a.requests == sent_before
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert bucket.wait_time() == pytest.approx(waits_before)  # the token came back
        clock.advance(1.0)
        result = await r.send(OTP)
        assert result.provider == "a", result.attempts  # and so did the probe ticket
        assert r.breaker_states()[("a", None)] is BreakerState.CLOSED


async def test_cancel_while_waiting_for_or_holding_a_concurrency_slot(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    registry = CollectorRegistry()
    async with Router(
        make_config(config(twilio_a, twilio_b, max_concurrency=1)), registry=registry
    ) as r:
        slots = r.state.slots(r.config.providers["a"])
        assert slots is not None
        twilio_a.latency(1.0)
        holder = asyncio.ensure_future(r.send(OTP))
        await until(lambda: twilio_a.requests > 0, what="the request at the fake")
        assert slots.locked()
        assert inflight(registry, "a") == 1
        # A second send queues for the slot; cancel it there.
        waiter = asyncio.ensure_future(r.send(OTP))
        await until(lambda: slots.waiting == 1, what="the second send queued for the slot")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.waiting == 0
        # Cancel the holder mid-request: the slot and the gauge come back at once.
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        await all_free(slots, 1)
        assert inflight(registry, "a") == 0
        twilio_a.heal()
        result = await r.send(OTP)
        assert result.provider == "a"
        assert not slots.locked()
        assert inflight(registry, "a") == 0


async def test_a_send_cancelled_while_it_waits_for_a_slot_gives_back_its_token_and_count(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    """Waiting for a ``max_concurrency`` slot comes after the rate-limit token and the
    guards' count were taken, and before any provider is called: a send cancelled
    there gives both back (the README: "a rate-limit token it had not used yet")."""
    clock = ManualClock()
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 1, window: 1h}\n"
    body = config(twilio_a, twilio_b, max_concurrency=1, rate_limit=1, burst=2) + guards
    other = Message(to="+4915123456780", text="Your code is 654321", category="otp")
    async with Router(make_config(body), clock=clock) as r:
        slots = r.state.slots(r.config.providers["a"])
        bucket = r.state.bucket(r.config.providers["a"])
        assert slots is not None
        twilio_a.latency(1.0)
        holder = asyncio.ensure_future(r.send(OTP))
        await until(lambda: twilio_a.requests > 0, what="the request at the fake")
        waits_before = bucket.wait_time()  # one token of the burst of two is left
        assert waits_before == 0.0
        waiter = asyncio.ensure_future(r.send(other))
        await until(lambda: slots.waiting == 1, what="the second send queued for the slot")
        assert bucket.wait_time() > 0.5  # it took the last token
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert bucket.wait_time() == pytest.approx(waits_before)  # the token came back
        assert twilio_a.requests == 1
        await holder
        twilio_a.heal()
        result = await r.send(other)  # the guard's count came back: max 1 per number
        assert result.status == "accepted", result
        assert result.provider == "a", result


async def test_no_free_slot_in_time_is_a_skip_that_calls_no_provider(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    """Every slot stays taken for the attempt's whole timeout: the provider is skipped
    (as a rate limit skips it, counted in ``smsroute_concurrency_skips_total``), its token
    given back and not paused; the next provider sends the message."""
    clock = ManualClock()
    body = config(twilio_a, twilio_b, max_concurrency=1, rate_limit=1, burst=2).replace(
        "timeout: 5s", "timeout: 300ms", 1
    )
    registry = CollectorRegistry()
    async with Router(make_config(body), clock=clock, registry=registry) as r:
        bucket = r.state.bucket(r.config.providers["a"])
        slots = r.state.slots(r.config.providers["a"])
        assert slots is not None
        await slots.acquire()  # held elsewhere for the whole test
        try:
            result = await r.send(OTP)
            assert result.status == "accepted", result
            assert result.provider == "b", result
            (skip, sent) = result.attempts
            assert skip.provider == "a"
            assert skip.outcome is Outcome.THROTTLED
            assert skip.detail == "skipped: no free max_concurrency slot in time"
            assert sent.provider == "b"
            assert twilio_a.requests == 0
            assert bucket.wait_time() == 0.0  # its token came back; no pause
            assert bucket.paused_for() == 0.0
            skips = {"provider": "a"}
            assert registry.get_sample_value("smsroute_concurrency_skips_total", skips) == 1
        finally:
            slots.release()
        assert (await r.send(OTP)).provider == "a"


async def test_cancel_during_shared_token_refill_takes_nothing(
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
    redis_url: str,  # noqa: F811  (the fixture)
    prefix: str,  # noqa: F811
) -> None:
    body = config(twilio_a, twilio_b, rate_limit=50, burst=1) + (
        f"state:\n  backend: redis\n  url: {redis_url}\n  key_prefix: '{prefix}'\n"
    )
    async with Router(make_config(body)) as r:
        state = r.state
        refill = state.refill
        entered = asyncio.Event()

        async def spy(bucket: Any, max_wait: float) -> float | None:
            entered.set()
            return await refill(bucket, max_wait)

        state.refill = spy  # type: ignore[method-assign]  # watch the real call, change nothing
        task = asyncio.ensure_future(r.send(OTP))
        await entered.wait()  # the send is inside the real refill, awaiting Redis
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state.refill = refill  # type: ignore[method-assign]
        # Nothing was left taken: the next sends go to a, promptly, and succeed.
        for _ in range(3):
            result = await r.send(OTP)
            assert result.provider == "a", result.attempts
        assert r.breaker_states().get(("a", None), BreakerState.CLOSED) is BreakerState.CLOSED


@pytest.mark.parametrize("probe", [True, False], ids=["half-open", "closed"])
async def test_cancel_after_every_number_of_loop_steps_leaves_nothing_taken(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio, probe: bool
) -> None:
    """Cancel the send after 0, 1, 2, ... event-loop steps until it finishes by itself.

    Each step is one trip round the loop, so together the runs stop the send at
    every await it reaches: the rate-limit wait, the concurrency slot, the
    connection, the request write, the answer.  After each, the router must be
    as if the send never happened.
    """
    clock = ManualClock()
    registry = CollectorRegistry()
    cfg = make_config(config(twilio_a, twilio_b, max_concurrency=2, rate_limit=1000, burst=1))
    async with Router(cfg, clock=clock, registry=registry) as r:
        pcfg = r.config.providers["a"]
        slots = r.state.slots(pcfg)
        assert slots is not None
        bucket = r.state.bucket(pcfg)
        finished = 0
        steps = -1
        while finished <= 3:
            # One step at a time through the first 150 (every await is reached by then),
            # then faster: the rest is waiting for the fake's answer, as long as the
            # machine takes.
            steps = steps + 1 if steps < 150 else int(steps * 1.25)
            assert steps < 1_000_000, "the send never finished by itself"
            # A cancelled request still at the fake would eat the next fault.
            await until(lambda: twilio_a.in_flight == 0, what="the fake idle")
            if probe:
                twilio_a.heal()
                await half_open(r, twilio_a, clock)
            clock.advance(1.0)
            bucket.reserve(0.0)  # the bucket's one token is gone: the send waits 1 ms for one
            task = asyncio.ensure_future(r.send(OTP))
            for _ in range(steps):
                await asyncio.sleep(0)
            if task.done():
                finished += 1
                continue
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert inflight(registry, "a") == 0, steps
            await all_free(slots, 2)
            if probe:
                # The probe ticket is back: the half-open breaker lets a probe through.
                assert r.breaker_states()[("a", None)] is BreakerState.HALF_OPEN, steps
                twilio_a.heal()
                result = await r.send(OTP)
                assert result.provider == "a", (steps, result.attempts)
