"""Shared state on Redis, two routers in one process standing for two replicas.

Each test has its own key prefix (its keys are deleted afterwards).  Changes
made by one router reach the other through Redis only: the tests poll for
them with a deadline, never sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest
import redis.asyncio as aioredis
from conftest import make_config, twilio_block
from redis_support import free_port, prefix, redis_url, state_block, until  # noqa: F401

from smsroute import BreakerState, ManualClock, Message, Outcome, Router
from smsroute.config import Config
from smsroute.errors import StateBackendUnavailable
from smsroute.state.redis import RedisState
from smsroute.testing import FakeTwilio

DE = "+4915123456789"


BREAKER = "consecutive_failures: 3, open_for: 30s"
QUICK = "consecutive_failures: 3, open_for: 200ms, half_open_probes: 1"


def config(
    fake: FakeTwilio, url: str, key_prefix: str, *, breaker: str = BREAKER, **provider: object
) -> Config:
    return make_config(
        f"""
defaults:
  breaker: {{{breaker}}}
providers:
{twilio_block("tw", fake, **provider)}
rules:
  - name: default
    providers: [tw]
{state_block(url, key_prefix, sync_interval="50ms")}
"""
    )


@pytest.fixture
async def replicas(
    twilio_a: FakeTwilio,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> AsyncIterator[Callable[..., Router]]:
    """A factory of routers sharing this test's Redis prefix; all closed at the end."""
    async with AsyncExitStack() as stack:
        made: list[Router] = []

        def make(
            clock: ManualClock | None = None, breaker: str = BREAKER, **provider: object
        ) -> Router:
            cfg = config(twilio_a, redis_url, prefix, breaker=breaker, **provider)
            router = Router(cfg, clock=clock, metrics=False)
            made.append(router)
            return router

        async def close_all() -> None:
            for router in made:
                await router.aclose()

        stack.push_async_callback(close_all)
        yield make


def shared_of(router: Router) -> RedisState:
    state = router.state
    assert isinstance(state, RedisState)
    return state


async def breaker_in_redis(url: str, key_prefix: str, field: str = "tw|") -> list[str]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        packed = await client.hget(f"{key_prefix}breakers", field)
    finally:
        await client.aclose()
    return [] if packed is None else str(packed).split(",")


# -- start-up --------------------------------------------------------------------------


async def test_unreachable_redis_at_start_is_a_clear_error_without_the_password(
    twilio_a: FakeTwilio,
) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    router = Router(config(twilio_a, url, "x:"), metrics=False)
    with pytest.raises(StateBackendUnavailable) as caught:
        async with router:
            pass
    text = str(caught.value)
    assert f"redis://***@127.0.0.1:{port}/0" in text
    assert "s3cret" not in text
    assert "state.url" in text  # and what to do


async def test_first_send_without_async_with_connects_the_state(
    replicas: Callable[..., Router],
) -> None:
    router = replicas()
    result = await router.send(Message(to=DE, text="hi"))
    assert result.ok
    assert shared_of(router).link.up


# -- breakers ------------------------------------------------------------------------------


async def test_replicas_opening_a_breaker_at_once_count_one_open(
    replicas: Callable[..., Router],
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    a, b = replicas(), replicas()
    async with a, b:
        pcfg = a.config.providers["tw"]
        ba, bb = a.state.breaker(pcfg, None), b.state.breaker(pcfg, None)
        ba.trip()
        bb.trip()  # both open before either has written: one compare-and-set wins
        await until(lambda: not shared_of(a)._dirty and not shared_of(b)._dirty)
        version, state, opens, _ = await breaker_in_redis(redis_url, prefix)
        assert (version, state, opens) == ("1", "open", "1")  # one open: 30 s, not 60 s
        assert ba.state is bb.state is BreakerState.OPEN
        assert ba.reopen_at is not None
        assert bb.reopen_at is not None
        assert abs(ba.reopen_at - bb.reopen_at) < 0.05
        assert 29.0 < ba.reopen_at - a.dispatcher.clock.now() <= 30.0


async def test_a_breaker_opened_by_one_replica_is_obeyed_by_the_other(
    replicas: Callable[..., Router], twilio_a: FakeTwilio
) -> None:
    a, b = replicas(), replicas()
    async with a, b:
        twilio_a.fail(503, times=3)
        for _ in range(3):
            await a.send(Message(to=DE, text="hi"))
        assert a.breaker_states()[("tw", None)] is BreakerState.OPEN
        pcfg = b.config.providers["tw"]
        took = await until(lambda: b.state.breaker(pcfg, None).state is BreakerState.OPEN)
        assert took < 1.0
        before = twilio_a.requests
        result = await b.send(Message(to=DE, text="hi"))
        assert result.last_resort  # every breaker open: tried as a last resort, said so
        plan = b.explain(Message(to=DE, text="hi"))
        assert plan.last_resort
        assert twilio_a.requests == before + 1


async def test_a_breaker_for_one_country_is_shared_for_that_country_only(
    replicas: Callable[..., Router],
) -> None:
    a, b = replicas(breaker_scope="provider_country"), replicas(breaker_scope="provider_country")
    async with a, b:
        pcfg = a.config.providers["tw"]
        a.state.breaker(pcfg, "DE").trip()
        german, french = b.state.breaker(pcfg, "DE"), b.state.breaker(pcfg, "FR")
        await until(lambda: german.state is BreakerState.OPEN)
        assert french.state is BreakerState.CLOSED
        c = replicas(breaker_scope="provider_country")  # created after: takes it at once
        async with c:
            assert c.state.breaker(pcfg, "DE").state is BreakerState.OPEN


async def test_a_replica_that_joins_later_waits_out_the_remaining_open_time(
    replicas: Callable[..., Router],
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    # Opened 25 s ago with open_for 30s, by a replica long gone: 5 s are left.
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        seconds, micros = await client.time()
        reopen_at = seconds + micros / 1e6 + 5.0
        await client.hset(f"{prefix}breakers", "tw|", f"1,open,1,{reopen_at:.6f}")
        await client.incr(f"{prefix}breakers:version")
    finally:
        await client.aclose()
    clock = ManualClock(start=1_000_000.0)  # a monotonic clock nothing like the others'
    router = replicas(clock=clock)
    async with router:
        breaker = router.state.breaker(router.config.providers["tw"], None)
        assert breaker.state is BreakerState.OPEN
        assert breaker.reopen_at is not None
        assert 4.0 < breaker.reopen_at - clock.now() <= 5.0  # not a fresh 30 s
        clock.advance(5.0)
        assert breaker.state is BreakerState.HALF_OPEN


async def test_probes_that_succeed_close_the_breaker_for_every_replica(
    replicas: Callable[..., Router],
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    a, b = replicas(breaker=QUICK), replicas(breaker=QUICK)
    async with a, b:
        pcfg = a.config.providers["tw"]
        ba, bb = a.state.breaker(pcfg, None), b.state.breaker(pcfg, None)
        ba.trip()
        await until(lambda: bb.state is BreakerState.OPEN)
        await until(lambda: ba.state is BreakerState.HALF_OPEN, what="reopen time reached")
        ticket = ba.allow()
        ba.record_success(ticket)
        assert ba.state is BreakerState.CLOSED
        await until(lambda: bb.state is BreakerState.CLOSED)
        assert (await breaker_in_redis(redis_url, prefix))[1:3] == ["closed", "0"]


async def test_a_failed_probe_reopens_for_longer_everywhere(
    replicas: Callable[..., Router],
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    a, b = replicas(breaker=QUICK), replicas(breaker=QUICK)
    async with a, b:
        pcfg = a.config.providers["tw"]
        ba, bb = a.state.breaker(pcfg, None), b.state.breaker(pcfg, None)
        ba.trip()
        await until(lambda: ba.state is BreakerState.HALF_OPEN)
        ba.record_failure(ba.allow())
        await until(lambda: bb.opens == 2)
        assert bb.state is BreakerState.OPEN
        assert bb.reopen_at is not None
        assert 0.2 < bb.reopen_at - b.dispatcher.clock.now() <= 0.4  # open_for x 2
        assert (await breaker_in_redis(redis_url, prefix))[1:3] == ["open", "2"]


async def test_keys_of_providers_this_config_does_not_know_are_left_alone(
    replicas: Callable[..., Router],
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.hset(f"{prefix}breakers", "ghost|", "3,open,2,9999999999.0")
        await client.hset(f"{prefix}breakers", "ghost|DE", "1,closed,0,0")
        await client.incr(f"{prefix}breakers:version")
        await client.set(f"{prefix}pause:ghost", "9999999999.0")
        router = replicas(rate_limit="100/s")
        async with router:
            assert (await router.send(Message(to=DE, text="hi"))).ok
            assert set(router.breaker_states()) == {("tw", None)}
            await until(lambda: shared_of(router).replicas >= 1 and shared_of(router)._shared != {})
        assert await client.hget(f"{prefix}breakers", "ghost|") == "3,open,2,9999999999.0"
    finally:
        await client.aclose()


# -- health, pauses, opt-outs, receipts -------------------------------------------------------


async def test_health_is_merged_across_replicas(replicas: Callable[..., Router]) -> None:
    a, b = replicas(), replicas()
    async with a, b:
        for _ in range(30):
            a.state.health("tw").record(True, 0.1)
        for _ in range(10):
            b.state.health("tw").record(False, None)
        ha, hb = a.state.health("tw"), b.state.health("tw")
        await until(lambda: ha.calls == 40 and hb.calls == 40, what="both see 40 answers")
        assert ha.success_rate == hb.success_rate == 0.75
        assert hb.latency == pytest.approx(0.1)


@pytest.mark.timeout(30)
async def test_a_retry_after_pause_told_to_one_replica_pauses_every_replica(
    replicas: Callable[..., Router], twilio_a: FakeTwilio
) -> None:
    a, b = replicas(rate_limit="100/s"), replicas(rate_limit="100/s")
    async with a, b:
        twilio_a.throttle(retry_after=5, times=1)
        result = await a.send(Message(to=DE, text="hi"))
        assert result.outcome is Outcome.THROTTLED
        bucket = b.state.bucket(b.config.providers["tw"])
        await until(lambda: bucket.paused_for() > 4.0)
        before = twilio_a.requests
        assert not (await b.send(Message(to=DE, text="hi"))).ok  # skipped, not sent
        assert twilio_a.requests == before


async def test_a_stop_received_by_one_replica_is_obeyed_by_another(
    replicas: Callable[..., Router],
) -> None:
    a, b = replicas(), replicas()
    async with a, b:
        a.dispatcher.optouts.opt_out(DE)
        await until(lambda: b.is_opted_out(DE))
        result = await b.send(Message(to=DE, text="sale!", category="marketing"))
        assert result.reason == "opted_out"
        a.dispatcher.optouts.opt_in(DE)
        await until(lambda: not b.is_opted_out(DE))
        c = replicas()  # a replica started later reads the whole set
        async with c:
            assert not c.is_opted_out(DE)
            b.dispatcher.optouts.opt_out(DE)
            await until(lambda: c.is_opted_out(DE))


async def test_a_receipt_is_claimed_by_one_replica_only(replicas: Callable[..., Router]) -> None:
    a, b = replicas(), replicas()
    async with a, b:
        key = ("tw", "SM123", "delivered", None, None)
        log_a, log_b = shared_of(a).receipt_log, shared_of(b).receipt_log
        assert await log_a.first_time(key)
        assert not await log_b.first_time(key)
        assert not await log_a.first_time(key)


async def test_every_replica_is_counted_live(replicas: Callable[..., Router]) -> None:
    a, b = replicas(), replicas()
    async with a, b:
        await until(lambda: shared_of(a).replicas == 2 and shared_of(b).replicas == 2)


async def test_closing_right_after_a_change_to_publish_does_not_hang(
    replicas: Callable[..., Router],
) -> None:
    # On Python 3.11, asyncio.wait_for swallows a cancellation that arrives as the
    # awaited event is set: the sync task then never ended and aclose() hung.
    for spins in range(20):
        router = replicas()
        async with asyncio.timeout(5), router:
            for _ in range(spins % 4):
                await asyncio.sleep(0)  # vary where the sync task is when we close
            shared_of(router).wake()
        assert shared_of(router)._task is None
