"""``state.guard_checks: local``: each replica decides at once, Redis counts for all.

A replica checks a guarded message in its own memory (no wait for Redis), records it in
Redis with the next batch, and learns from each batch's answer what every replica
counted: a velocity log at its limit is held full, the anomaly guard's counts and the
budgets' spends are every replica's.  The price, asserted here as the bound the docs
give: another replica may accept one message more per log before it hears the log is
full.  One replica alone counts exactly as memory does (the equivalence properties of
tests/test_guards_redis.py run in this mode too).
"""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import signal
import time
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis_support import (  # noqa: F401
    RedisServer,
    prefix,
    redis_url,
    state_block,
    throwaway_redis,
    until,
)
from test_guards_redis import (
    ANOMALY_GUARD,
    DE,
    START,
    anomaly_burst,
    config_text,
    guard_count,
    otp,
    two_routers,
)

from smsroute import ConfigError, GuardOverrun, ManualClock, Router, parse_config
from smsroute.guardquery import SPEND_KEPT, Lane
from smsroute.guards import Guards
from smsroute.instrument.events import Event
from smsroute.runtime import Runtime
from smsroute.state.guards_mirror import Mirror
from smsroute.state.guards_script import GUARDS
from smsroute.state.guards_spec import hashed, packed_times
from smsroute.state.redis_guards import RedisGuardCounts
from smsroute.state.redis_link import Channel
from smsroute.testing import FakeTwilio


def local_config(fake: FakeTwilio, url: str, key_prefix: str, guards: str) -> str:
    return config_text(fake, url, key_prefix, guards) + "  guard_checks: local\n"


async def settled(*routers: Router) -> None:
    """Wait until what each router recorded is counted in Redis and answered."""
    for router in routers:
        counts = router.state.guard_counts()
        assert isinstance(counts, Mirror)
        await counts.remote.settle()


def overruns(events: list[tuple[str, Event]]) -> tuple[list[Any], list[Any]]:
    """Hooks for two_routers() that keep each replica's GuardOverrun events in ``events``,
    named "one" or "two"."""

    def hook(name: str) -> Any:
        def keep(event: Event) -> None:
            if isinstance(event, GuardOverrun):
                events.append((name, event))

        return keep

    return [hook("one")], [hook("two")]


async def test_a_full_log_is_learnt_and_overrun_by_at_most_one_per_replica(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 3, window: 1h}\n"
    text = local_config(twilio_a, redis_url, prefix, guards)
    clock = ManualClock(START)
    number = DE.format(1)
    events: list[tuple[str, Event]] = []
    async with two_routers(text, clock, overruns(events)) as (one, two):
        statuses = []
        for router in (one, one, two, two, one, one):
            statuses.append((await router.send(otp(number))).status)
            await settled(one, two)
        in_redis = guard_count(two, "velocity", number)
        clock.advance(3601)  # every time has left the window, everywhere
        later = [(await r.send(otp(number))).status for r in (one, two)]
    # two filled the log (its 3rd) and heard so from Redis: refused.  one had counted
    # two of its own: it accepts one more (the overrun), hears the log is full, refuses.
    assert statuses == ["accepted", "accepted", "accepted", "failed", "accepted", "failed"]
    assert twilio_a.requests == 4 + 2
    assert in_redis == 4  # Redis counted every replica's, the overrun too
    assert later == ["accepted", "accepted"]
    assert events == [("one", GuardOverrun("number", "DE"))]  # the overrun, told once


async def test_concurrent_local_checks_overrun_a_limit_by_a_bounded_amount(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    """60 sends at once through two replicas against a country limit of 25: each accepts
    at most 25 on its own count; once a batch's answer says the log is full, neither
    accepts more.  Everything accepted is counted in Redis."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: country, max: 25, window: 1m}\n"
    text = local_config(twilio_a, redis_url, prefix, guards)
    clock = ManualClock(START)
    async with two_routers(text, clock) as (one, two):
        results = await asyncio.gather(
            *[(one if i % 2 else two).send(otp(DE.format(i))) for i in range(60)]
        )
        await settled(one, two)
        in_redis = guard_count(one, "velocity")
        after = [(await r.send(otp(DE.format(99)))).status for r in (one, two)]
    accepted = sum(r.status == "accepted" for r in results)
    assert 25 <= accepted <= 50
    assert in_redis == accepted == twilio_a.requests
    assert after == ["failed", "failed"]  # both heard it is full


async def test_the_anomaly_guard_trips_on_every_replicas_traffic(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    """A baseline sent through one replica, a burst through both: the guard trips on
    the whole burst, in each replica, within one message of where the exact mode does
    (9 accepted, tests/test_guards_redis.py)."""
    text = local_config(twilio_a, redis_url, prefix, ANOMALY_GUARD)
    clock = ManualClock(START)
    async with two_routers(text, clock) as (one, two):
        burst, after = await anomaly_burst(one, two, clock, settle=settled)
    accepted = burst.count("accepted")
    assert 9 <= accepted <= 10
    assert burst == ["accepted"] * accepted + ["failed"] * (12 - accepted)
    assert after == "accepted"  # released, on every replica's counts


async def test_spend_is_shared_and_a_cap_overrun_by_at_most_one_per_replica(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    guards = """
        guards:
          budgets:
            - {scope: category, name: otp, limit: 0.3, per: month}
    """
    text = local_config(twilio_a, redis_url, prefix, guards)
    clock = ManualClock(START)
    async with two_routers(text, clock) as (one, two):
        first = [(await one.send(otp(DE.format(i)))).status for i in range(5)]
        await settled(one)
        second = []
        for i in range(2):
            second.append((await two.send(otp(DE.format(10 + i)))).status)
            await settled(two)  # its record answered (before that, it may accept more)
        spent = guard_count(one, "budget")
    # one: 4 x 0.08 = 0.32 reaches the cap; two had heard nothing yet: one more, then
    # the answer to it carries every replica's spend
    assert first == ["accepted"] * 4 + ["failed"]
    assert second == ["accepted", "failed"]
    assert abs(spent - 0.40) < 1e-9


async def test_a_lone_sends_spend_reaches_redis_by_itself_kept_for_its_period(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    """The spend of the last send before a pause is counted in the mirror after its
    record's batch has gone: it wakes a batch of its own (nothing else is sent, nobody
    settles), and Redis keeps it for its period plus SPEND_KEPT on the router's clock."""
    guards = """
        guards:
          budgets:
            - {scope: category, name: otp, limit: 100, per: month}
    """
    text = local_config(twilio_a, redis_url, prefix, guards)
    twilio_a.latency(0.2)  # the record's batch (10 ms on) is answered before the spend
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    async with Router(parse_config(text), clock=ManualClock(START), metrics=False) as router:
        assert (await router.send(otp(DE.format(1)))).ok
        assert not client.keys(f"{prefix}guard:b|*")  # not yet: it waits SPEND_DELAY

        def written() -> bool:
            return any(client.get(key) == "0.08" for key in client.keys(f"{prefix}guard:b|*"))

        await until(written, within=2.0)
        (key,) = client.keys(f"{prefix}guard:b|*")
        ttl = client.pttl(key) / 1000
    client.close()
    year, month = time.gmtime(START)[:2]
    month_ends = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
    assert month_ends - START + SPEND_KEPT - 5 < ttl <= month_ends - START + SPEND_KEPT + 1


async def test_local_checks_go_on_while_redis_is_stopped_and_count_there_again(
    throwaway_redis: RedisServer,  # noqa: F811
    twilio_a: FakeTwilio,
) -> None:
    """Redis frozen (SIGSTOP: connections hang, nothing answers): a local check does not
    wait for it, so sends go on at once, well within the 3 s a Redis call may take; the
    batch under way waits for Redis (or times out), and once Redis answers again the
    records go there again."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    text = local_config(twilio_a, throwaway_redis.url, "guards-local-stop:", guards)
    text = text.replace("timeout: 300ms", "timeout: 3s")  # a wait for Redis would show
    assert throwaway_redis.process is not None
    pid = throwaway_redis.process.pid
    async with Router(parse_config(text), clock=ManualClock(START), metrics=False) as router:
        assert (await router.send(otp(DE.format(1)))).ok
        await settled(router)
        os.kill(pid, signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            frozen = [(await router.send(otp(DE.format(1)))).status for _ in range(2)]
            took = loop.time() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: router.state.link.up, within=5.0)  # type: ignore[attr-defined]
        assert (await router.send(otp(DE.format(2)))).ok
        await settled(router)
        client = redis.Redis.from_url(throwaway_redis.url)
        number_logs = client.keys("guards-local-stop:guard:v|*")
        client.close()
    assert frozen == ["accepted", "failed"]  # this replica's own count: exact
    assert took < 1.5  # half the 3 s state timeout: nothing waited for Redis
    assert len(number_logs) == 2  # number 1 before the freeze, number 2 after


_TEXT = st.characters(categories=["L", "N", "P", "S", "Zs"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.one_of(
        st.sampled_from(["exact", "local", "Local", "exact ", ""]),
        st.text(_TEXT, max_size=20),
        st.booleans(),
        st.none(),
        st.integers(),
        st.lists(st.sampled_from(["exact", "local"]), max_size=2),
    )
)
def test_any_guard_checks_value_loads_or_is_one_config_error(value: object) -> None:
    """Whatever ``state.guard_checks`` holds: the config with it (``exact`` or ``local``,
    exactly; null: the default), or one ConfigError naming it (never a traceback, never
    another value)."""
    source = json.dumps(
        {
            "providers": {"a": {"type": "twilio", "account_sid": "AC1", "auth_token": "t"}},
            "rules": [{"name": "default", "providers": ["a"]}],
            "state": {"backend": "redis", "guard_checks": value},
        },
        ensure_ascii=False,
    )
    problem: ConfigError | None = None
    try:
        loaded = parse_config(source)
    except ConfigError as exc:
        problem = exc
    if problem is not None:
        assert value not in ("exact", "local", None)
        assert "state.guard_checks" in str(problem)
        assert "Traceback" not in str(problem)
    else:  # null is the default, as for every key
        assert value in ("exact", "local", None)
        assert loaded.state.guard_checks == (value or "exact")


def test_guard_checks_takes_exact_or_local_only() -> None:
    text = "providers: {}\nrules: []\nstate: {backend: redis, guard_checks: eventually}\n"
    try:
        parse_config(text)
    except ConfigError as exc:
        message = str(exc)
    else:  # pragma: no cover - the assertion below says what went wrong
        message = ""
    assert "state.guard_checks" in message
    assert "choose one of exact, local" in message


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    member=st.text(min_size=1, max_size=40).filter(lambda m: "\n" not in m),
    passed=st.booleans(),
)
def test_any_member_id_is_recorded_and_given_back_whole(
    redis_url: str,  # noqa: F811
    member: str,
    passed: bool,
) -> None:
    """A recorded message's line ends '<p or r><member>': whatever the id holds (spaces,
    NUL, non-ASCII), the script strips the flag only, counts a passed one under its
    whole id and time (the member a give-back names) and a refused one in no velocity
    log."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"smsroute-test:{uuid.uuid4().hex[:12]}:v|"
    lane = ["7", "0", "0", "0", "1", key, "3600", "1", ""]  # id 7, 1 limit of max 1
    t = int(START * 1e6)
    times = packed_times([START])
    script = client.register_script(GUARDS)
    try:
        flag = "p" if passed else "r"
        _, lanes, details = script(
            keys=[], args=["record", "0", "1", *lane, f"7 abc {flag}{member}", times]
        )
        assert lanes == [[[], [], -1, 0, "", -1]]
        if passed:
            assert client.zrange(key + "abc", 0, -1) == [f"{member}:{t}"]
            assert details == [1, f"0:{START + 3600:.17g}"]  # full (1 of 1) until it leaves
        else:
            assert client.zcard(key + "abc") == 0
            assert details == []
        script(keys=[], args=["back", "0", "1", *lane, f"7 abc {member}", times])
        assert client.zcard(key + "abc") == 0
    finally:
        client.delete(key + "abc")
        client.close()


SENDS = st.lists(  # (which replica, which number, seconds later)
    st.tuples(st.integers(0, 1), st.integers(0, 2), st.sampled_from([0.0, 1.0, 30.0, 59.0, 61.0])),
    min_size=1,
    max_size=14,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(sends=SENDS, most=st.integers(1, 3))
def test_two_replicas_never_pass_a_limit_by_more_than_one(
    redis_url: str,  # noqa: F811
    sends: list[tuple[int, int, float]],
    most: int,
) -> None:
    """Any sends through two replicas, each answered before the next (the common case the
    docs bound): in every window, a number gets at most ``max`` + 1 messages (the other
    replica's one before it hears), and Redis counted every one that was sent."""
    guards = f"guards:\n  otp:\n    velocity:\n      - {{per: number, max: {most}, window: 1m}}\n"

    async def run() -> tuple[list[tuple[float, int]], int, int, float]:
        async with FakeTwilio() as fake:
            key_prefix = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
            text = local_config(fake, redis_url, key_prefix, guards)
            clock = ManualClock(START)
            accepted: list[tuple[float, int]] = []
            async with two_routers(text, clock) as routers:
                for which, number, later in sends:
                    clock.advance(later)
                    result = await routers[which].send(otp(DE.format(number)))
                    if result.ok:
                        accepted.append((clock.now(), number))
                    await settled(*routers)
            client = redis.Redis.from_url(redis_url)
            keys = client.keys(f"{key_prefix}*")
            counted = sum(client.zcard(k) for k in keys if b"guard:v|" in k)
            if keys:
                client.delete(*keys)
            client.close()
            return accepted, counted, fake.requests, clock.now()

    accepted, counted, requests, end = asyncio.run(run())
    assert requests == len(accepted)
    # Redis has every accepted message still in a window (a log is trimmed only lazily)
    assert sum(1 for a, _ in accepted if a > end - 60) <= counted <= len(accepted)
    for t, number in accepted:
        window = [a for a, n in accepted if n == number and t - 60 < a <= t]
        assert len(window) <= most + 1, (most, accepted)


@pytest.mark.parametrize(
    "reply",
    [42, ["x"], [[], [["bad"]], []], [[], [[[], [], -1, 0, "", -1]], [1, "zz:yy"]]],
    ids=["not-a-list", "too-short", "lane-too-short", "bad-full-log"],
)
async def test_a_garbled_answer_from_redis_is_logged_and_sending_goes_on(
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    twilio_a: FakeTwilio,
    reply: object,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first batch is counted in Redis but its answer comes back garbled: one log line,
    nothing learnt, and the replica goes on deciding (exactly, on its own counts) and
    recording (the next batches are read as usual)."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 2, window: 1h}\n"
    text = local_config(twilio_a, redis_url, prefix, guards)
    real = Channel.evalsha
    garbled: list[object] = []

    async def answer(channel: Channel, args: list[bytes], count: int) -> Any:
        real_reply = await real(channel, args, count)
        if not garbled:
            garbled.append(real_reply)
            return reply
        return real_reply

    monkeypatch.setattr(Channel, "evalsha", answer)
    number = DE.format(3)
    async with Router(parse_config(text), clock=ManualClock(START), metrics=False) as router:
        statuses = []
        for _ in range(3):
            statuses.append((await router.send(otp(number))).status)
            await settled(router)
        in_redis = guard_count(router, "velocity", number)
    assert garbled  # the garbled answer was given
    assert statuses == ["accepted", "accepted", "failed"]
    assert in_redis == 2  # both counted in Redis, the one whose answer was garbled too
    assert "recording the guards' counts in Redis failed" in caplog.text


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    member=st.text(min_size=1, max_size=30),
    later=st.floats(0, 3000, allow_nan=False),
    mode=st.sampled_from(["local", "exact"]),
)
@example(member="a\nb c", later=0.000_001, mode="local").via("a newline and a space")
@example(member="a\nb c", later=0.000_001, mode="exact").via("the same, checked in Redis")
def test_a_checked_member_of_any_text_is_counted_and_given_back(
    redis_url: str,  # noqa: F811
    member: str,
    later: float,
    mode: str,
) -> None:
    """Whatever id a check names (a newline: sent hashed, as a line of the batch may hold
    none; spaces, NUL, non-ASCII: as it is), the check (``exact``) or the record of a
    local check (``local``) puts it in the number's log in Redis, at the check's time,
    and its give-back takes that member out."""
    guards = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 5, window: 1h}\n"
    number = DE.format(7)

    async def run() -> tuple[list[tuple[bytes, float]], int, float]:
        async with FakeTwilio() as fake:
            key_prefix = f"smsroute-test:{uuid.uuid4().hex[:12]}:"
            text = config_text(fake, redis_url, key_prefix, guards)
            config = parse_config(text + f"  guard_checks: {mode}\n")
            clock = ManualClock(START)
            client = redis.Redis.from_url(redis_url)
            try:
                async with Router(config, clock=clock, metrics=False) as router:
                    assert (await router.send(otp(DE.format(1)))).ok  # the state started
                    counts = router.state.guard_counts()
                    remote = counts.remote if isinstance(counts, Mirror) else counts
                    assert isinstance(remote, RedisGuardCounts)
                    runtime = Runtime(config)
                    guards_ = Guards(runtime.config)
                    message = otp(number)
                    p = runtime.prepare(message)
                    now = START + later
                    checked = guards_.check_now(
                        counts, message, p.destination.e164, "DE", p.rule, member, now, None
                    )
                    if isinstance(checked, Lane):  # exact: asked in Redis
                        answer = await guards_.ask(
                            remote, checked, message, number, p.rule, member, now
                        )
                        assert answer.refused is None
                    else:
                        assert checked == (None, frozenset())  # passed (and recorded)
                    await remote.settle()
                    key = next(
                        k
                        for k in client.keys(f"{key_prefix}guard:v|*")
                        if k.endswith(hashed(number).encode())
                    )
                    logged = client.zrange(key, 0, -1, withscores=True)
                    guards_.give_back(counts, message, number, "DE", p.rule, member, now)
                    await remote.settle()
                    return logged, client.zcard(key), now
            finally:
                keys = client.keys(f"{key_prefix}*")
                if keys:
                    client.delete(*keys)
                client.close()

    logged, left, now = asyncio.run(run())
    sent = hashed(member) if "\n" in member else member
    assert logged == [(f"{sent}:{now * 1e6:.0f}".encode(), now)]
    assert left == 0
