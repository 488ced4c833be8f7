"""The guards' counts shared by two routers through Redis (issue 19).

Two routers (two replicas) with ``state: {backend: redis}`` and the same key prefix
count velocity windows, anomaly slots and spend together: a limit reached through one
is reached for the other.  Times come from a :class:`ManualClock` (the guards' wall
clock, sent to the script), so windows slide without sleeping.  When Redis is gone the
guards go on counting in each replica's memory.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import textwrap
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from conftest import twilio_block
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_support import (  # noqa: F401
    RedisServer,
    prefix,
    redis_url,
    state_block,
    throwaway_redis,
    until,
)

from smsroute import ManualClock, Message, Router, parse_config
from smsroute.instrument.events import AnomalyTransition, StateBackendError
from smsroute.state.guards_mirror import Mirror
from smsroute.state.guards_script import GUARDS
from smsroute.state.guards_spec import hashed, packed_times
from smsroute.state.redis_guards import RedisGuardCounts
from smsroute.state.redis_link import Channel
from smsroute.testing import FakeTwilio

START = float(calendar.timegm((2026, 3, 31, 23, 0, 0)))
DE = "+4915123456{:03d}"


def config_text(
    fake: FakeTwilio, url: str, key_prefix: str, guards: str, timeout: str = "300ms"
) -> str:
    return (
        "providers:\n"
        + twilio_block("a", fake, prices="{DE: 0.08, default: 0.05}")
        + "\nrules:\n  - name: default\n    providers: [a]\n"
        + textwrap.dedent(guards)
        + state_block(url, key_prefix, sync_interval="100ms", timeout=timeout)
        + "\n"
    )


def guard_count(router: Router, guard: str, number: str = DE.format(0)) -> float:
    """The count ``explain`` gives the (first) guard of that kind for an otp to ``number``."""
    plan = router.explain(otp(number))
    count = next(g.count for g in plan.guards if g.guard == guard)
    assert count is not None
    return count


@contextlib.asynccontextmanager
async def two_routers(
    text: str, clock: ManualClock, hooks: tuple[list[Any], list[Any]] = ([], [])
) -> AsyncIterator[tuple[Router, Router]]:
    """Two replicas of one config (the same key prefix), on one clock (each with its
    ``hooks``)."""
    async with (
        Router(parse_config(text), clock=clock, metrics=False, hooks=hooks[0]) as one,
        Router(parse_config(text), clock=clock, metrics=False, hooks=hooks[1]) as two,
    ):
        yield one, two


ANOMALY_GUARD = """
    guards:
      otp:
        anomaly: {window: 5m, baseline: 1h, factor: 5, min_count: 10}
"""


async def anomaly_burst(
    one: Router, two: Router, clock: ManualClock, settle: Any = None
) -> tuple[list[str], str]:
    """A baseline through ``one`` (12 over an hour), then a burst of 12 through both in
    turn (``settle(one, two)`` awaited after the baseline and each send when given), then
    one more 10 minutes later: the burst's statuses and the last one's."""
    for i in range(12):
        clock.set(START + i * 300)
        assert (await one.send(otp(DE.format(i)))).status == "accepted"
    if settle is not None:
        await settle(one, two)
    clock.set(START + 65 * 60)
    burst = []
    for i in range(12):
        burst.append((await (one if i % 2 else two).send(otp(DE.format(100 + i)))).status)
        if settle is not None:
            await settle(one, two)
    clock.set(START + 75 * 60)
    return burst, (await two.send(otp(DE.format(200)))).status


def otp(number: str) -> Message:
    return Message(to=number, text="Code 123456", category="otp")


async def test_two_routers_share_one_velocity_window(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 3, window: 1h}\n"
    text = config_text(twilio_a, redis_url, prefix, guards)
    clock = ManualClock(START)
    async with two_routers(text, clock) as (one, two):
        results = [
            await one.send(otp(DE.format(1))),
            await two.send(otp(DE.format(1))),
            await one.send(otp(DE.format(1))),
            await two.send(otp(DE.format(1))),  # the 4th, counted across both: refused
            await one.send(otp(DE.format(1))),
        ]
        clock.advance(3601)
        later = await two.send(otp(DE.format(1)))
        plan = one.explain(otp(DE.format(1)))
    assert [r.status for r in results] == ["accepted"] * 3 + ["failed"] * 2
    assert results[3].reason is not None
    assert "at most 3 per number per 1h" in results[3].reason
    assert later.status == "accepted"
    assert twilio_a.requests == 4
    assert plan.refused_by is None


async def test_concurrent_sends_through_two_routers_never_pass_the_limit(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    guards = "guards:\n  otp:\n    velocity:\n      - {per: country, max: 25, window: 1m}\n"
    text = config_text(twilio_a, redis_url, prefix, guards)
    clock = ManualClock(START)
    async with two_routers(text, clock) as (one, two):
        sends = [(one if i % 2 else two).send(otp(DE.format(i))) for i in range(60)]
        results = await asyncio.gather(*sends)
    assert sum(r.status == "accepted" for r in results) == 25
    assert twilio_a.requests == 25


async def test_two_routers_share_spend_and_the_budget_rolls_over_with_the_month(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    guards = """
        guards:
          budgets:
            - {scope: category, name: otp, limit: 0.3, per: month}
    """
    text = config_text(twilio_a, redis_url, prefix, guards)
    clock = ManualClock(START + 3000)  # March 31st, 23:50 UTC
    async with two_routers(text, clock) as (one, two):
        statuses = []
        for i in range(5):  # 0.08 each, alternately: 0.32 after the 4th
            sender, other = (one, two) if i % 2 else (two, one)
            statuses.append((await sender.send(otp(DE.format(i)))).status)
            if i < 4:  # written with the next batch, or within 10 ms: the other sees it
                spent = round(0.08 * (i + 1), 2)
                await until(lambda o=other, s=spent: guard_count(o, "budget") >= s - 1e-9)
        clock.set(START + 3600)  # April
        april = await one.send(otp(DE.format(9)))
    assert statuses == ["accepted"] * 4 + ["failed"]
    assert april.status == "accepted"


async def test_the_anomaly_guard_trips_on_traffic_seen_by_both_routers(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    text = config_text(twilio_a, redis_url, prefix, ANOMALY_GUARD)
    clock = ManualClock(START)
    async with two_routers(text, clock) as (one, two):
        burst, after = await anomaly_burst(one, two, clock)
    assert burst == ["accepted"] * 9 + ["failed"] * 3
    assert after == "accepted"


async def test_without_redis_each_router_counts_alone(
    throwaway_redis: RedisServer,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    text = config_text(twilio_a, throwaway_redis.url, "guards-outage:", guards)
    clock = ManualClock(START)
    async with Router(parse_config(text), clock=clock, metrics=False) as router:
        first = await router.send(otp(DE.format(1)))
        throwaway_redis.kill()
        statuses = [(await router.send(otp(DE.format(1)))).status for _ in range(3)]
    assert first.status == "accepted"
    # Redis counted the first; the router's memory counts from the outage on.
    assert statuses == ["accepted", "accepted", "failed"]


async def test_a_send_cancelled_while_its_check_waits_for_redis_counts_for_nothing(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    config = parse_config(config_text(twilio_a, redis_url, prefix, guards))
    number = DE.format(7)
    async with Router(config, clock=ManualClock(START), metrics=False) as router:
        assert (await router.send(otp(number))).ok  # 1 of 2
        counts = router.state.guard_counts()
        ask = counts.ask
        entered = asyncio.Event()

        def spy(*args: Any) -> Any:
            entered.set()
            return ask(*args)

        counts.ask = spy  # type: ignore[method-assign]  # watch the real call, change nothing
        task = asyncio.ensure_future(router.send(otp(number)))
        await entered.wait()  # the send's check is on its way to Redis
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        counts.ask = ask  # type: ignore[method-assign]
        assert len(twilio_a.messages) == 1
        # The cancelled send took nothing: this is the 2nd of 2, the next is refused.
        assert (await router.send(otp(number))).ok
        refused = await router.send(otp(number))
        assert (refused.ok, refused.attempts) == (False, ())
        assert "velocity" in (refused.reason or "")
        assert len(twilio_a.messages) == 2


async def test_explain_reads_the_counts_every_replica_made(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    """explain() through one router sees what the other counted (read in Redis, not
    remembered): the limit was reached through ``one``, ``two`` has sent nothing."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 3, window: 1h}\n"
    text = config_text(twilio_a, redis_url, prefix, guards)
    clock = ManualClock(START)
    async with two_routers(text, clock) as (one, two):
        before = two.explain(otp(DE.format(5)))
        for _ in range(3):
            assert (await one.send(otp(DE.format(5)))).ok
        after = two.explain(otp(DE.format(5)))
        other = two.explain(otp(DE.format(6)))
    assert before.refused_by is None
    assert [g.count for g in before.guards if g.guard == "velocity"] == [0]
    assert after.refused_by == "velocity"
    assert [g.count for g in after.guards if g.guard == "velocity"] == [3]
    assert other.refused_by is None


async def test_a_flushed_script_is_loaded_again(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    """After SCRIPT FLUSH (or a Redis restart) the batches load the script again and
    go on counting in Redis, not in memory."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    text = config_text(twilio_a, redis_url, prefix, guards)
    clock = ManualClock(START)
    async with two_routers(text, clock) as (one, two):
        assert (await one.send(otp(DE.format(8)))).ok
        client = aioredis.Redis.from_url(redis_url)
        await client.script_flush()
        await client.aclose()
        second = await one.send(otp(DE.format(8)))
        third = await two.send(otp(DE.format(8)))  # the 3rd, counted in Redis: refused
        assert one.state.guard_counts()._backend.link.up  # type: ignore[attr-defined]
    assert second.ok
    assert (third.ok, third.attempts) == (False, ())


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    member=st.text(min_size=1, max_size=40).filter(lambda m: "\n" not in m),
    later=st.floats(0, 10**7, allow_nan=False),
)
def test_any_member_id_is_counted_and_given_back_whole(
    redis_url: str,  # noqa: F811
    member: str,
    later: float,
) -> None:
    """A query is a line '<lane> <idents...> <member>' and a time (a packed double):
    whatever else a message id holds (spaces, NUL, non-ASCII; one with a newline is sent
    hashed), it is the member counted with its time in µs, at that time, and the one
    taken back."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"smsroute-test:{uuid.uuid4().hex[:12]}:v|"
    lane = ["7", "0", "0", "0", "1", key, "3600", "5", ""]  # id 7, 1 limit, nothing else
    now = START + later
    query, times = f"7 abc123 {member}", packed_times([now])
    script = client.register_script(GUARDS)
    try:
        _, _, details = script(keys=[], args=["check", "0", "1", *lane, query, times])
        assert details == []  # passed, nothing to report
        assert client.zrange(key + "abc123", 0, -1, withscores=True) == [
            (f"{member}:{now * 1e6:.0f}", now)
        ]
        _, _, details = script(keys=[], args=["peek", "0", "1", *lane, query, times])
        assert details[0] == 1
        assert details[1].split(" ")[:3] == ["-", "0", "0"]  # 1 of 5: would pass
        script(keys=[], args=["back", "0", "1", *lane, query, times])
        assert client.zcard(key + "abc123") == 0
    finally:
        client.delete(key + "abc123")
        client.close()


async def test_a_provider_at_its_cap_and_a_tag_budget_on_redis(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
) -> None:
    """The providers at their cap come from the lane's answer (worked out once per
    batch) and a tagged message takes its own query: both as in memory."""
    text = (
        "providers:\n"
        + twilio_block("a", twilio_a, prices="{DE: 0.08, default: 0.05}")
        + "\n"
        + twilio_block("b", twilio_b, prices="{DE: 0.09, default: 0.05}")
        + "\nrules:\n  - name: default\n    providers: [a, b]\n"
        + "    on_budget: cheapest_under_cap\n"
        + "guards:\n  budgets:\n"
        + "    - {scope: provider, name: a, limit: 0.2, per: hour}\n"
        + "    - {scope: tag, name: promo, limit: 0.1, per: hour}\n"
        + state_block(redis_url, prefix, sync_interval="100ms", timeout="300ms")
        + "\n"
    )
    async with Router(parse_config(text), clock=ManualClock(START), metrics=False) as router:
        plain = [(await router.send(otp(DE.format(i)))).provider for i in range(5)]
        tagged = [
            (await router.send(Message(to=DE.format(50), text="x", tags=("promo",)))).status
            for _ in range(3)
        ]
    assert plain == ["a", "a", "a", "b", "b"]
    assert tagged == ["accepted", "accepted", "failed"]


@pytest.mark.parametrize("backend", ["memory", "redis", "redis-local"])
async def test_a_send_cancelled_before_any_provider_was_called_leaves_the_window(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
    backend: str,
) -> None:
    """The guards passed it, then it waited for a rate-limit token and was cancelled
    there: it was never sent, so it does not count towards the number's limit."""
    text = (
        "defaults:\n  max_rate_wait: 5s\nproviders:\n"
        + twilio_block("a", twilio_a, rate_limit="1/s", burst=1)
        + "\nrules:\n  - name: default\n    providers: [a]\n"
        + "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
        + (state_block(redis_url, prefix, timeout="300ms") + "\n" if backend != "memory" else "")
        + ("  guard_checks: local\n" if backend == "redis-local" else "")
    )
    clock = ManualClock(START)
    number = DE.format(11)
    async with Router(parse_config(text), clock=clock, metrics=False) as router:
        assert (await router.send(otp(number))).ok  # 1 of 2; the bucket's token is gone
        task = asyncio.ensure_future(router.send(otp(number)))
        # Counted, then waiting for the next token (a second away on the clock).
        await until(lambda: guard_count(router, "velocity", number) == 2)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: guard_count(router, "velocity", number) == 1)  # given back
        clock.advance(2)  # a token again
        second = await router.send(otp(number))
        clock.advance(2)
        third = await router.send(otp(number))
    assert len(twilio_a.messages) == 2
    assert second.ok, second.reason
    assert (third.ok, third.attempts) == (False, ())
    assert "velocity" in (third.reason or "")


async def test_when_redis_comes_back_the_guards_count_there_again(
    throwaway_redis: RedisServer,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    """Redis restarts empty (its scripts gone too): the guards count in memory while it
    is away, then in Redis again on a connection of their own, loading the script anew."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    text = config_text(twilio_a, throwaway_redis.url, "guards-back:", guards)
    clock = ManualClock(START)
    async with Router(parse_config(text), clock=clock, metrics=False) as router:
        assert (await router.send(otp(DE.format(1)))).ok  # in Redis
        throwaway_redis.kill()
        assert (await router.send(otp(DE.format(2)))).ok  # in memory
        throwaway_redis.start()
        await until(lambda: router.state.link.up, within=5.0)  # type: ignore[attr-defined]
        results = [(await router.send(otp(DE.format(3)))).status for _ in range(3)]
        client = redis.Redis.from_url(throwaway_redis.url)
        keys = client.keys("guards-back:guard:v|*")
        client.close()
    assert results == ["accepted", "accepted", "failed"]  # counted in Redis, from empty
    assert len(keys) == 1  # number 3's log (Redis lost the first one's)


async def traffic(
    redis_url: str,  # noqa: F811
    guards: str,
    groups: list[tuple[float, list[int]]],
    backend: str,
) -> tuple[list[str], list[str]]:
    """Send ``groups`` (seconds later, numbers sent at once) through a router whose
    guards count in ``backend`` (memory, redis, or redis-local: redis with
    ``guard_checks: local``): the statuses, and the anomaly trips and releases."""
    async with FakeTwilio() as fake:
        key_prefix = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
        # a generous timeout: a call slower than it under a loaded machine would put the
        # link down and the checks in this process's counts (another test's subject)
        text = config_text(fake, redis_url, key_prefix, guards, timeout="20s")
        if backend == "memory":
            text = text[: text.index("state:")]
        elif backend == "redis-local":
            text += "  guard_checks: local\n"
        clock = ManualClock(START)
        out: list[str] = []
        events: list[str] = []

        failed: list[str] = []

        def hook(event: Any) -> None:
            if isinstance(event, AnomalyTransition):
                events.append(f"{event.to_state} {event.recent} {event.baseline}")
            elif isinstance(event, StateBackendError):
                failed.append(event.operation)

        async with Router(parse_config(text), clock=clock, metrics=False, hooks=[hook]) as router:
            for later, numbers in groups:
                clock.advance(later)
                sends = [router.send(otp(DE.format(n))) for n in numbers]
                out += [r.status for r in await asyncio.gather(*sends)]
        assert not failed, f"Redis failed during {failed}: the run did not count in Redis"
    if backend != "memory":
        client = redis.Redis.from_url(redis_url)
        keys = client.keys(f"{key_prefix}*")
        if keys:
            client.delete(*keys)
        client.close()
    return out, events


GROUPS = st.lists(  # groups of sends made at once: (seconds later, numbers of the group)
    st.tuples(
        st.sampled_from([0.0, 1.0, 30.0, 299.0, 300.0, 301.0, 599.0, 600.0, 900.0]),
        st.lists(st.integers(0, 5), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=8,
)


@pytest.mark.parametrize("backend", ["redis", "redis-local"])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(groups=GROUPS)
def test_the_script_answers_as_the_memory_counts_do(
    redis_url: str,  # noqa: F811
    backend: str,
    groups: Any,
) -> None:
    """Any traffic, sent in groups at once (one batch in Redis) and in sequence, through a
    router counting in memory and one counting in Redis: the same messages pass and the
    same are refused, windows sliding at their exact edges (a log counted once per batch
    and trimmed only at its limit must refuse exactly when the memory's would).  With
    ``guard_checks: local`` one replica decides in its own memory and Redis only counts
    (what Redis says back must never refuse what the memory passed, or pass more)."""
    guards = """
        guards:
          otp:
            velocity:
              - {per: number, max: 3, window: 10m}
              - {per: prefix, digits: 10, max: 5, window: 5m}
              - {per: country, max: 9, window: 15m}
    """

    redis_run = asyncio.run(traffic(redis_url, guards, groups, backend))
    assert redis_run == asyncio.run(traffic(redis_url, guards, groups, "memory"))


ANOMALY_GROUPS = st.lists(
    st.tuples(
        st.sampled_from([0.0, 10.0, 59.0, 60.0, 61.0, 300.0, 1800.0, 3600.0]),
        st.lists(st.integers(0, 40), min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("backend", ["redis", "redis-local"])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(groups=ANOMALY_GROUPS)
def test_the_anomaly_guard_trips_and_releases_as_in_memory(
    redis_url: str,  # noqa: F811
    backend: str,
    groups: Any,
) -> None:
    """As above for the anomaly guard (its slots' sums read once per slot and batch in
    Redis, this batch's counts added at the end): same statuses, and the same trips and
    releases, in the same order."""
    guards = """
        guards:
          otp:
            anomaly: {window: 5m, baseline: 1h, factor: 2, min_count: 3}
    """

    redis_run = asyncio.run(traffic(redis_url, guards, groups, backend))
    assert redis_run == asyncio.run(traffic(redis_url, guards, groups, "memory"))


@pytest.mark.parametrize("backend", ["redis", "redis-local"])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    groups=st.lists(
        st.tuples(
            st.sampled_from([0.0, 60.0, 1800.0, 3600.0]),
            st.lists(st.integers(0, 9), min_size=1, max_size=5),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_budgets_cap_and_roll_over_as_in_memory(
    redis_url: str,  # noqa: F811
    backend: str,
    groups: Any,
) -> None:
    """As above for budgets (0.08 a message): a category cap, and a provider cap under
    the rule's default ``on_budget: refuse`` (the lane's answer works out the providers
    at their cap once per batch), over hour boundaries: the same statuses in both."""
    guards = """
        guards:
          budgets:
            - {scope: category, name: otp, limit: 0.6, per: hour}
            - {scope: provider, name: a, limit: 0.3, per: hour}
    """
    redis_run = asyncio.run(traffic(redis_url, guards, groups, backend))
    assert redis_run == asyncio.run(traffic(redis_url, guards, groups, "memory"))


async def test_explain_while_redis_is_gone_answers_from_memory(
    throwaway_redis: RedisServer,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    """explain() reads Redis with a blocking call: with Redis killed under it, that call
    fails within the state timeout, explain answers from this replica's counts, the link
    is marked down, and sending goes on."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    text = config_text(twilio_a, throwaway_redis.url, "guards-explain:", guards)
    async with Router(parse_config(text), clock=ManualClock(START), metrics=False) as router:
        assert (await router.send(otp(DE.format(3)))).ok  # counted in Redis
        assert guard_count(router, "velocity", DE.format(3)) == 1  # read there
        throwaway_redis.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        plan = router.explain(otp(DE.format(3)))
        took = loop.time() - started
        assert not router.state.link.up  # type: ignore[attr-defined]
        after = await router.send(otp(DE.format(3)))
    assert plan.refused_by is None
    assert [g.count for g in plan.guards if g.guard == "velocity"] == [0]  # memory: none yet
    assert took < 1.0  # the state timeout is 300 ms
    assert after.ok


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_idents_hash_to_blake2b_of_twelve_bytes_as_every_version_did(ident: str) -> None:
    """The Redis keys of numbers and prefixes are named by BLAKE2b (12-byte digest) of
    the ident: replicas of different versions during a rolling upgrade, and ``explain``,
    must name the same keys however the hash is made."""
    assert hashed(ident) == hashlib.blake2b(ident.encode(), digest_size=12).hexdigest()
    assert hashed("+4915123456789") == "d67f27efb796b6746a97d709"  # a known answer


async def test_a_garbled_check_answer_is_logged_and_its_checks_answered_here(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch's answer comes back garbled while more checks wait for the next: one log
    line, and every waiting send, of that batch and of the next, is answered by this
    process's counts (a limit still holds: the third message to a number is refused);
    the batches after go to Redis again."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    text = config_text(twilio_a, redis_url, prefix, guards)
    real = Channel.evalsha
    calls: list[int] = []
    garble = [False]
    real_ask = RedisGuardCounts.ask
    asked: list[str] = []

    def ask(counts: RedisGuardCounts, lane: Any, e164: str, member: str, now: float) -> Any:
        asked.append(e164)
        return real_ask(counts, lane, e164, member, now)

    async def answer(channel: Channel, args: list[bytes], count: int) -> Any:
        calls.append(count)
        reply = await real(channel, args, count)
        if garble[0]:
            garble[0] = False
            # held until the other sends' checks wait for the next batch
            await until(lambda: len(asked) == 1 + len(numbers), within=5.0)
            return [[], 42, []]
        return reply

    monkeypatch.setattr(Channel, "evalsha", answer)
    monkeypatch.setattr(RedisGuardCounts, "ask", ask)
    numbers = [1, 2, 1, 3, 4]
    async with Router(parse_config(text), clock=ManualClock(START), metrics=False) as router:
        assert (await router.send(otp(DE.format(9)))).ok  # the state started, in Redis
        calls.clear()
        asked.clear()
        garble[0] = True
        first = asyncio.ensure_future(router.send(otp(DE.format(1))))
        await until(lambda: bool(calls), within=5.0)  # its batch is under way
        rest = await asyncio.gather(*(router.send(otp(DE.format(n))) for n in numbers))
        results = [await first, *rest]
        after = await router.send(otp(DE.format(7)))
        in_redis = guard_count(router, "velocity", DE.format(7))
    statuses = [r.status for r in results]
    # answered here: the garbled batch's check, then the ones that waited for the next
    assert statuses == ["accepted", "accepted", "accepted", "failed", "accepted", "accepted"]
    assert not results[3].attempts  # refused before any provider was called
    assert after.ok
    assert in_redis == 1  # counted in Redis again
    assert len(calls) >= 2  # the garbled batch, then Redis again
    assert caplog.text.count("checking guards in Redis failed") == 1


KEY = "k" * 8 + "-a-test-hash-key"  # 24 bytes


@pytest.mark.parametrize("mode", ["exact", "local"])
async def test_with_a_hash_key_the_keys_hash_numbers_with_it_and_replicas_share_them(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
    mode: str,
) -> None:
    """``state.hash_key``: the number and prefix logs in Redis are named by the keyed
    BLAKE2b (the unkeyed hash of the number, which anyone can compute from a guess, names
    nothing), two replicas with the key count together, and ``explain`` reads the same
    keys; a replica with another key counts apart (its keys are other keys)."""
    guards = (
        "guards:\n  otp:\n    velocity:\n"
        "      - {per: number, max: 2, window: 1h}\n"
        "      - {per: prefix, digits: 8, max: 100, window: 1h}\n"
    )
    text = config_text(twilio_a, redis_url, prefix, guards)
    text += f"  guard_checks: {mode}\n  hash_key: ${{HASH_KEY}}\n"
    number = DE.format(5)

    def config(key: str) -> Any:
        return parse_config(text, environ={"HASH_KEY": key})

    clock = ManualClock(START)
    async with (
        Router(config(KEY), clock=clock, metrics=False) as one,
        Router(config(KEY), clock=clock, metrics=False) as two,
        Router(config(KEY[::-1]), clock=clock, metrics=False) as other,
    ):
        statuses = []
        for router in (one, two, one):
            statuses.append((await router.send(otp(number))).status)
            for r in (one, two):
                counts = r.state.guard_counts()
                await (counts.remote if isinstance(counts, Mirror) else counts).settle()
        counted = guard_count(two, "velocity", number)
        apart = (await other.send(otp(number))).status
    client = redis.Redis.from_url(redis_url)
    names = [k.decode() for k in client.keys(f"{prefix}guard:v|*")]
    client.close()
    keyed = hashlib.blake2b(number.encode(), digest_size=12, key=KEY.encode()).hexdigest()
    prefix_keyed = hashlib.blake2b(number[1:9].encode(), digest_size=12, key=KEY.encode())
    if mode == "exact":
        assert statuses == ["accepted", "accepted", "failed"]  # the 3rd across both: refused
    else:  # one had counted one of its own and not heard of two's: the bounded overrun
        assert statuses == ["accepted", "accepted", "accepted"]
    assert counted == statuses.count("accepted")  # every replica's, in the keyed logs
    assert apart == "accepted"  # another key: other logs
    assert sum(n.endswith(keyed) for n in names) == 1
    assert sum(n.endswith(prefix_keyed.hexdigest()) for n in names) == 1
    assert not any(n.endswith((hashed(number), hashed(number[1:9]))) for n in names)
    assert len(names) == 4  # number and prefix, for each of the two keys
