"""Router.send cancelled after 0, 1, 2, ... event-loop steps, in every configuration.

The project's rule: for every ``await`` on the send path, a test cancels there and
shows nothing was left taken.  tests/test_send_cancellation.py does it step by step
for the in-memory state and one Twilio provider; here the same sweep runs where the
send path has other awaits: the guards' batches in Redis (``guards.ask``), the shared
rate bucket (``state.refill``), the rate-limit wait, a ``max_concurrency`` slot held by
another send (``slots.acquire()``), an SMPP bind's window and sequence numbers, a
failover after a failed first provider, and a router's first send (``_start_state``).

Where each cancelled send stood is read off its task, not guessed: :class:`Stop` walks
the chain of coroutines it was suspended in and reads the dispatcher's ``called`` (how
many providers it had got to), so each run knows whether a provider was called.  The
invariant of the guards (docs/how-to/guards.md): a send cancelled before any provider
was called leaves the velocity window as it was; one the fake received counts; one
whose request had started but did not arrive may do either.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import linecache
from collections.abc import Awaitable, Callable, Iterator
from types import CodeType
from typing import Any

import attrs
import pytest
from conftest import make_config, twilio_block
from prometheus_client import CollectorRegistry
from redis_support import prefix, redis_url, state_block, until  # noqa: F401  (fixtures)
from test_guards_redis import START, guard_count, otp
from test_send_cancellation import all_free, config, inflight
from test_smpp import adapter, smpp_config, smsc  # noqa: F401  (smsc: the fixture)

from smsroute import BreakerState, DeliveryReport, ManualClock, Router, SendResult
from smsroute.dispatch import Dispatcher
from smsroute.providers.base import Provider
from smsroute.ratelimit import TokenBucket
from smsroute.state.guards_mirror import Mirror
from smsroute.state.redis_bucket import SharedBucket
from smsroute.state.redis_guards import RedisGuardCounts
from smsroute.testing import FakeTwilio
from smsroute.testing.smsc import FakeSMSC

#: One number per message: the velocity limit is 1 per number.
GUARDS = "guards:\n  otp:\n    velocity:\n      - {per: number, max: 1, window: 1h}\n"
#: How often a sweep lets the send finish by itself before it stops.
FINISHED = 3
#: Sweeps at most, until every await a test means to reach was cancelled at.
SWEEPS = 5


def fresh_numbers() -> Iterator[str]:
    """German mobile numbers never used before in the test."""
    return (f"+4915123{n:06d}" for n in itertools.count(1))


def _send_codes() -> frozenset[CodeType]:
    out: set[CodeType] = set()
    todo: list[type[Provider]] = [Provider]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        out.add(cls.send.__code__)
    return frozenset(out)


#: The code of every adapter's ``send``: a send suspended in one has called a provider.
SEND_CODES = _send_codes()
DISPATCH_SEND = Dispatcher.send.__code__
ATTEMPT = Dispatcher._attempt.__code__


class Stop:
    """Where a send's task was suspended when it was cancelled, read off the task.

    ``chain`` is the coroutines it was awaiting, outermost first (``name: line``);
    ``points`` those of smsroute's code;
    ``made`` how many providers it had called: the dispatcher's ``called``, less the
    attempt under way when that attempt had not reached the adapter's ``send`` yet
    (it waited for a concurrency slot).
    """

    def __init__(self, task: asyncio.Future[Any], steps: int) -> None:
        self.steps = steps
        self.chain: list[str] = []
        #: The awaits of smsroute's code it was suspended in (``name: line``).
        self.points: set[str] = set()
        called, attempt, sending = 0, False, False
        awaited: Any = task.get_coro()  # type: ignore[attr-defined]
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                self.chain.append(type(awaited).__name__)
                break
            code = frame.f_code
            line = linecache.getline(code.co_filename, frame.f_lineno).strip()
            where = f"{code.co_qualname}: {line}"
            self.chain.append(where)
            if "/smsroute/" in code.co_filename and "/smsroute/testing/" not in code.co_filename:
                self.points.add(where)
            if code is DISPATCH_SEND:
                called = frame.f_locals.get("called", 0)
            attempt = attempt or code is ATTEMPT
            sending = sending or code in SEND_CODES
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        self.made: int = called - 1 if attempt and not sending else called
        waiter = getattr(task, "_fut_waiter", None)
        #: What it awaited had come (or it had not started): it was yet to resume.
        self.woken = waiter is None or waiter.done()

    def __repr__(self) -> str:
        woken = ", woken" if self.woken else ""
        text = f"cancelled after {self.steps} steps, made {self.made}{woken}, in "
        return text + " > ".join(self.chain)


Check = Callable[[Stop | None, SendResult | None], Awaitable[None]]


async def every_step(
    begin: Callable[[], Awaitable[Awaitable[SendResult]]], check: Check, *awaits: str
) -> None:
    """Run ``await begin()`` (a send, after its setup) and cancel it after 0, 1, 2, ...
    event-loop steps, until it has finished by itself :data:`FINISHED` times more;
    after each run ``check(stop, None)`` (cancelled) or ``check(None, result)``.
    ``awaits`` (each a piece of the source line of an await in smsroute) must have
    been cancelled at.

    One step at a time through the first 150, then 1.25x more each run (the rest is
    waiting for sockets), as tests/test_send_cancellation.py does.  All of the first
    150 are run even when the send finished in fewer.  How many steps an answer from
    Redis takes varies from run to run, so one sweep may happen to stride over a short
    stretch such as the request after it: then the sweep runs again (at most
    :data:`SWEEPS` times) until every one of ``awaits`` was reached.
    """
    reached: set[str] = set()
    for _ in range(SWEEPS):
        finished = 0
        steps = -1
        while finished <= FINISHED or steps < 150:
            steps = steps + 1 if steps < 150 else int(steps * 1.25)
            assert steps < 1_000_000, "the send never finished by itself"
            task = asyncio.ensure_future(await begin())
            for _ in range(steps):
                await asyncio.sleep(0)
            if task.done():
                finished += 1
                await check(None, task.result())
                continue
            stop = Stop(task, steps)
            reached |= stop.points
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await check(stop, None)
        missing = [a for a in awaits if not any(a in point for point in reached)]
        if not missing:
            return
    pytest.fail(f"never cancelled at {missing}; reached {sorted(reached)}")


async def one_step(seconds: float) -> None:
    """The router's rate-limit wait on the real clock, as one loop step (``sleep=``): a
    wait of some milliseconds is hundreds of steps, which the sweep would stride over,
    and the request after it with them; the slot it waits for stays reserved."""
    await asyncio.sleep(0)


def unleased(bucket: TokenBucket) -> None:
    """Drop the slots a shared bucket has at hand (as when they go stale), so that the
    send leases from Redis: the ``state.refill`` await."""
    assert isinstance(bucket, SharedBucket)
    bucket._slots.clear()


async def settle(router: Router) -> None:
    """Wait until the guards' batches to Redis (checks, records, give-backs) are answered."""
    counts = router.state.guard_counts()
    if isinstance(counts, Mirror):
        counts = counts.remote
    if isinstance(counts, RedisGuardCounts):
        await counts.settle()


def received(number: str, *fakes: FakeTwilio) -> bool:
    """Whether a fake accepted a message to ``number``."""
    digits = number.lstrip("+")
    return any(m.to.lstrip("+") == digits for fake in fakes for m in fake.messages)


async def idle(*fakes: FakeTwilio) -> None:
    """Every request of a cancelled send still at a fake has been answered."""
    await until(lambda: all(f.in_flight == 0 for f in fakes), what="the fakes idle")


async def counted_as_made(
    router: Router, number: str, stop: Stop | None, *fakes: FakeTwilio
) -> int:
    """The guards' count of ``number`` after its send ``stop``ped (None: it finished),
    asserted against what the send did; the next message to the number is refused
    exactly when the count is 1."""
    await settle(router)
    count = guard_count(router, "velocity", number)
    if stop is None or received(number, *fakes):
        assert count == 1, stop  # it was sent: it counts
    elif stop.made == 0:
        assert count == 0, stop  # no provider was called: as if it never happened
    else:
        assert count in (0, 1), stop  # a request started: either is allowed
    again = await router.send(otp(number))
    assert again.ok is (count == 0), (stop, again.reason)
    if not again.ok:
        assert (again.attempts, "velocity" in (again.reason or "")) == ((), True), again
    return int(count)


# -- 1, 3, 4: the guards, counted in memory, in Redis, or locally and in Redis ------------


@pytest.mark.parametrize("backend", ["memory", "redis-exact", "redis-local"])
async def test_a_cancelled_send_counts_for_the_guards_only_once_a_provider_was_called(
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    backend: str,
) -> None:
    """Velocity guard (1 per number per hour), rate limit, max_concurrency, cancelled at
    every step: a send cancelled before any provider was called leaves the number's
    window as it was (the next message to it goes); one the fake received counts (the
    next is refused).  The in-flight gauge and the slots come back every time, and a
    message to another number goes to provider a.  In memory (``guards.ask`` has no
    await there), in Redis with ``guard_checks: exact`` (the check waits for its batch)
    and with ``local`` (decided here, recorded in Redis)."""
    memory = backend == "memory"
    body = config(
        twilio_a, twilio_b, max_concurrency=2, rate_limit=1000 if memory else 2000, burst=1
    )
    body += GUARDS
    if not memory:
        mode = backend.removeprefix("redis-")
        body += state_block(redis_url, prefix, guard_checks=mode, timeout="2s") + "\n"
    clock = ManualClock(START) if memory else None
    registry = CollectorRegistry()
    numbers = fresh_numbers()
    number = ""
    sleep = clock.sleep if clock is not None else one_step
    async with Router(make_config(body), clock=clock, sleep=sleep, registry=registry) as r:
        pcfg = r.config.providers["a"]
        slots = r.state.slots(pcfg)
        assert slots is not None
        bucket = r.state.bucket(pcfg)

        async def begin() -> Awaitable[SendResult]:
            nonlocal number
            number = next(numbers)
            if clock is not None:
                clock.advance(1.0)
                bucket.reserve(0.0)  # the one token is gone: the send waits 1 ms for one
            else:
                unleased(bucket)
            return r.send(otp(number))

        async def check(stop: Stop | None, result: SendResult | None) -> None:
            if result is not None:
                assert result.provider == "a", result.attempts
            await idle(twilio_a, twilio_b)
            assert inflight(registry, "a") == 0, stop
            await all_free(slots, 2)
            await counted_as_made(r, number, stop, twilio_a, twilio_b)
            other = await r.send(otp(next(numbers)))
            assert other.provider == "a", (stop, other.attempts)

        awaits = ["provider.send", "self._sleep(wait)"] if memory else ["provider.send"]
        if backend == "redis-exact":
            awaits.append("Dispatcher.send: answer = await")  # the check's batch (guards.ask)
        if not memory:
            awaits.append("state.refill")
        await every_step(begin, check, *awaits)


@pytest.mark.parametrize("path", ["lane", "query"])
async def test_a_send_cancelled_as_its_guard_check_is_answered_counts_for_nothing(
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    path: str,
) -> None:
    """The one step of the sweep above that depends on timing, made certain: with
    ``guard_checks: exact`` the send is cancelled in the very step its check's answer
    comes from Redis (counted there), before it resumes.  No provider was called, so the
    number's window must be as before: the next message to it goes.  ``lane``: a plain
    message (its lane's check, awaited by the send); ``query``: a message with a tag
    budget (its own query, awaited inside ``RedisGuardCounts.check``)."""
    budgets = "  budgets:\n    - {scope: tag, name: promo, limit: 1000, per: day}\n"
    body = config(twilio_a, twilio_b) + GUARDS + budgets + state_block(redis_url, prefix) + "\n"
    number = next(fresh_numbers())
    message = otp(number)
    if path == "query":
        message = attrs.evolve(message, tags=("promo",))
    async with Router(make_config(body), metrics=False) as r:
        counts = r.state.guard_counts()
        assert isinstance(counts, RedisGuardCounts)
        enqueue = counts._enqueue
        task: asyncio.Task[Any] | None = None

        def spy(*args: Any) -> None:  # the real call, and a cancel the moment it is answered
            enqueue(*args)
            future = args[3]
            assert task is not None
            future.add_done_callback(lambda _: task.cancel())  # before the task's wake-up

        counts._enqueue = spy  # type: ignore[method-assign]
        task = asyncio.ensure_future(r.send(message))
        with pytest.raises(asyncio.CancelledError):
            await task
        counts._enqueue = enqueue  # type: ignore[method-assign]
        await settle(r)
        assert (twilio_a.requests, twilio_b.requests) == (0, 0)
        assert guard_count(r, "velocity", number) == 0  # it was never sent
        again = await r.send(message)
        assert again.ok, again.reason


# -- 2: the state in Redis: the shared bucket, slots, gauge and the breaker's probe -----


@pytest.mark.parametrize("probe", [True, False], ids=["half-open", "closed"])
async def test_with_the_state_in_redis_a_cancelled_send_leaves_nothing_taken(
    twilio_a: FakeTwilio,
    twilio_b: FakeTwilio,
    redis_url: str,  # noqa: F811
    prefix: str,  # noqa: F811
    probe: bool,
) -> None:
    """``state: {backend: redis}`` with a shared rate limit and max_concurrency, no guards,
    cancelled at every step (leasing slots from Redis, waiting for one, the request):
    the in-flight gauge is 0 and both slots are free after each; a half-open breaker's
    probe ticket is back (it is still half-open and lets the next send probe); and the
    shared bucket is not starved: the next send goes to a at once."""
    body = config(twilio_a, twilio_b, max_concurrency=2, rate_limit=2000, burst=1)
    body = body.replace("open_for: 200ms", "open_for: 20ms")  # a real clock: a short wait
    body += state_block(redis_url, prefix, timeout="2s") + "\n"
    registry = CollectorRegistry()
    loop = asyncio.get_running_loop()
    async with Router(make_config(body), sleep=one_step, registry=registry) as r:
        slots = r.state.slots(r.config.providers["a"])
        assert slots is not None

        async def begin() -> Awaitable[SendResult]:
            if probe:
                twilio_a.heal()
                twilio_a.fail(503, times=1)
                opened = await r.send(otp("+4915123456789"))
                assert opened.provider == "b", opened.attempts
                await until(
                    lambda: r.breaker_states()[("a", None)] is BreakerState.HALF_OPEN,
                    what="provider a's breaker half-open",
                )
            unleased(r.state.bucket(r.config.providers["a"]))
            return r.send(otp("+4915123456789"))

        async def check(stop: Stop | None, result: SendResult | None) -> None:
            if result is not None:
                assert result.provider == "a", result.attempts
            await idle(twilio_a, twilio_b)
            assert inflight(registry, "a") == 0, stop
            await all_free(slots, 2)
            if probe and stop is not None:  # the probe ticket is back
                assert r.breaker_states()[("a", None)] is BreakerState.HALF_OPEN, stop
            t0 = loop.time()
            after = await r.send(otp("+4915123456789"))
            assert [a.provider for a in after.attempts] == ["a"], (stop, after.attempts)
            assert loop.time() - t0 < 0.5, stop  # no starved bucket, no wait for a lease
            assert r.breaker_states()[("a", None)] is BreakerState.CLOSED, stop

        await every_step(begin, check, "provider.send", "state.refill")


# -- 5: waiting for a max_concurrency slot another send holds ------------------------------


async def test_a_send_cancelled_while_it_waits_for_a_concurrency_slot_gives_back_everything(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    """``max_concurrency: 1``, the slot held by another send hung at the fake, which is
    cancelled some steps after ours started (so ours gets the slot and finishes by
    itself).  Ours cancelled while it waits for the slot never made a request: the slot
    count is right, its rate-limit token is back (the bucket waits as before it) and so
    is its guards' count (the next message to the number goes)."""
    clock = ManualClock(START)
    registry = CollectorRegistry()
    body = config(twilio_a, twilio_b, max_concurrency=1, rate_limit=1000, burst=2) + GUARDS
    numbers = fresh_numbers()
    number = ""
    before = 0.0
    holder: asyncio.Future[SendResult] | None = None
    releaser: asyncio.Future[None] | None = None
    async with Router(make_config(body), clock=clock, sleep=clock.sleep, registry=registry) as r:
        pcfg = r.config.providers["a"]
        slots = r.state.slots(pcfg)
        assert slots is not None
        bucket = r.state.bucket(pcfg)

        async def release(hold: asyncio.Future[SendResult]) -> None:
            for _ in range(40):
                await asyncio.sleep(0)
            hold.cancel()

        async def begin() -> Awaitable[SendResult]:
            nonlocal number, before, holder, releaser
            clock.advance(1.0)  # two tokens: one for the holder, one for ours
            twilio_a.hang(times=1)
            holder = asyncio.ensure_future(r.send(otp(next(numbers))))
            await until(lambda: twilio_a.in_flight == 1, what="the holder at the fake")
            assert slots.in_use == 1
            before = bucket.wait_time()
            releaser = asyncio.ensure_future(release(holder))
            number = next(numbers)
            return r.send(otp(number))

        async def check(stop: Stop | None, result: SendResult | None) -> None:
            assert holder is not None
            assert releaser is not None
            await releaser
            with contextlib.suppress(asyncio.CancelledError):
                await holder
            twilio_a.heal()  # the holder's hung request ends (its client is gone)
            await idle(twilio_a, twilio_b)
            if result is not None:
                assert result.provider == "a", result.attempts
            assert (slots.in_use, slots.waiting) == (0, 0), stop
            assert inflight(registry, "a") == 0, stop
            if stop is not None and stop.made == 0:
                assert bucket.wait_time() == pytest.approx(before), stop  # the token is back
            await counted_as_made(r, number, stop, twilio_a, twilio_b)
            other = await r.send(otp(next(numbers)))
            assert other.provider == "a", (stop, other.attempts)
            await all_free(slots, 1)

        await every_step(begin, check, "slots.acquire()", "provider.send")


# -- 6: an SMPP provider: the bind's window and its sequence numbers --------------------


async def test_a_cancelled_smpp_send_frees_its_window_slot_and_its_sequence_number(
    smsc: FakeSMSC,  # noqa: F811
) -> None:
    """An SMPP bind with a window of 1, cancelled at every step: the window has no slot
    taken after each (``links().in_flight`` is 0), no request waits for an answer under
    its sequence number, and the next send goes through with the SMSC's own id for it
    (the cancelled request's late answer is not taken for it)."""
    cfg = smpp_config(smsc, window=1, enquire_link="30s", timeout="2s")
    async with Router(cfg, metrics=False) as r:
        provider = adapter(r)
        binds = provider._pool.binds  # the adapter exposes the window (links()), not this

        async def begin() -> Awaitable[SendResult]:
            return r.send(otp("+4915123456789"))

        async def check(stop: Stop | None, result: SendResult | None) -> None:
            assert provider.links().in_flight == 0, stop
            assert [b._pending for b in binds] == [{}], stop  # no sequence number left waiting
            assert not provider._pool._waiters, stop
            after = await r.send(otp("+4915123456789"))
            assert after.ok, (stop, after.attempts)
            assert after.attempts[-1].provider_message_id == smsc.messages[-1].message_ids[0]
            assert provider.links().in_flight == 0

        await every_step(begin, check, "provider.send", "bind.request")


async def test_a_routers_first_send_cancelled_at_every_step_leaves_it_able_to_start(
    smsc: FakeSMSC,  # noqa: F811
) -> None:
    """The first send of a router that was not started starts it (``_start_state``:
    the state backend, then each provider's ``start``, the SMPP binds and where their
    receipts go).  Cancelled at every step of that: the next send goes through and its
    delivery receipt reaches the router."""
    cfg = smpp_config(smsc, enquire_link="30s", timeout="2s")
    smsc.receipts("DELIVRD")
    routers: list[Router] = []

    async def begin() -> Awaitable[SendResult]:
        routers.append(Router(cfg, metrics=False))
        return routers[-1].send(otp("+4915123456789"))

    async def check(stop: Stop | None, result: SendResult | None) -> None:
        r = routers[-1]
        try:
            reports: list[DeliveryReport] = []
            r.on_delivery_report(reports.append)
            after = await r.send(otp("+4915123456789"))
            assert after.ok, (stop, after.attempts)
            await until(
                lambda: any(x.message_id == after.message_id for x in reports),
                within=2.0,
                what=f"the receipt of the send after the first one, {stop}",
            )
        finally:
            await r.aclose()

    await every_step(begin, check, "self._start_state()", "provider.send")


# -- 7: failover: cancelled at the second provider, after the first failed ------------------


async def test_cancelled_after_a_failover_nothing_is_left_taken_and_the_guard_count_stays(
    twilio_a: FakeTwilio, twilio_b: FakeTwilio
) -> None:
    """Provider a answers 503, then the send goes to b and is cancelled at every step
    (b's rate-limit wait, its slot, its request): a and b have no slot, gauge or token
    held, and the guards' count stays, since a was called (it stays 0 for a send
    cancelled before a was called)."""
    clock = ManualClock(START)
    registry = CollectorRegistry()
    limits = {"max_concurrency": 1, "rate_limit": 1000, "burst": 1}
    body = (
        "defaults:\n  default_region: US\n  max_rate_wait: 5s\n"
        "  breaker: {consecutive_failures: 1000, failure_rate: 1.0}\nproviders:\n"
        f"{twilio_block('a', twilio_a, timeout='5s', **limits)}\n"
        f"{twilio_block('b', twilio_b, timeout='5s', **limits)}\n"
        "rules:\n  - name: default\n    providers: [a, b]\n" + GUARDS
    )
    numbers = fresh_numbers()
    number = ""
    drained = 0.0
    async with Router(make_config(body), clock=clock, sleep=clock.sleep, registry=registry) as r:
        providers = r.config.providers
        slots = {name: r.state.slots(providers[name]) for name in "ab"}
        buckets = {name: r.state.bucket(providers[name]) for name in "ab"}

        async def begin() -> Awaitable[SendResult]:
            nonlocal number, drained
            twilio_a.heal()
            twilio_b.heal()
            clock.advance(1.0)
            buckets["b"].reserve(0.0)  # b's one token is gone: the send waits 1 ms at b
            drained = clock.now()
            twilio_a.fail(503, times=1)
            number = next(numbers)
            return r.send(otp(number))

        async def check(stop: Stop | None, result: SendResult | None) -> None:
            if result is not None:
                assert [a.provider for a in result.attempts] == ["a", "b"], result.attempts
                assert result.provider == "b"
            await idle(twilio_a, twilio_b)
            for name in "ab":
                assert inflight(registry, name) == 0, (name, stop)
                free = slots[name]
                assert free is not None
                assert (free.in_use, free.waiting) == (0, 0), (name, stop)
            if stop is not None and stop.made <= 1:  # b was not called: its token is back
                since = clock.now() - drained
                assert buckets["b"].wait_time() == pytest.approx(max(0.0, 0.001 - since)), stop
            assert r.breaker_states().get(("a", None), BreakerState.CLOSED) is BreakerState.CLOSED
            count = await counted_as_made(r, number, stop, twilio_a, twilio_b)
            if stop is not None and stop.made >= 1:
                assert count == 1, stop  # a was called: the message counts
            twilio_a.heal()
            other = await r.send(otp(next(numbers)))
            assert other.provider == "a", (stop, other.attempts)

        await every_step(begin, check, "self._sleep(wait)", "provider.send")
