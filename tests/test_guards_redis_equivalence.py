"""The guards counting in Redis decide as the guards counting in memory (issue 19).

:mod:`smsroute.state.guards_script` applies "the same rules as smsroute.guardcounts" in
one Lua script (``state.guard_checks: exact``), and with ``guard_checks: local`` "one
replica alone counts exactly, as the memory backend does"
(:mod:`smsroute.state.guards_mirror`).  Driven with the same messages at the same times
(those of :mod:`test_guards_fast`: velocity per number, prefix and country, an anomaly
guard with the caller's override, budgets per provider, category, country and tag,
accepted or not, time steps across windows, slots and budget periods), the three
sides must refuse the same messages with the same reasons, find the same providers at
their cap, emit the same anomaly trips and releases and explain the same counts.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import attrs
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis_support import redis_url  # noqa: F401
from test_guards_fast import CONFIG, NUMBERS, START, step

from smsroute import ANOMALY_OVERRIDE, AnomalyTransition, ManualClock, Message, parse_config
from smsroute.config import GuardChecks, StateSettings
from smsroute.guardcounts import MemoryGuardCounts
from smsroute.guardquery import GuardCounts, Lane
from smsroute.guards import Guards, GuardStatus, Refusal
from smsroute.instrument.events import Event
from smsroute.runtime import Prepared, Runtime
from smsroute.state.guards_mirror import Mirror
from smsroute.state.redis import RedisState
from smsroute.state.redis_guards import RedisGuardCounts

Step = tuple[int, str, float, bool, bool, str, bool]
Checked = tuple[Refusal | None, frozenset[str]]


class Side:
    """One router's guards and counts (memory, Redis ``exact`` or Redis ``local``) and
    the anomaly transitions they emitted."""

    def __init__(self, runtime: Runtime, counts: GuardCounts) -> None:
        self.guards = Guards(runtime.config)
        self.counts = counts
        self.events: list[Event] = []

    @property
    def remote(self) -> RedisGuardCounts | None:
        counts = self.counts
        if isinstance(counts, Mirror):
            return counts.remote
        return counts if isinstance(counts, RedisGuardCounts) else None

    async def settle(self) -> None:
        """Wait until what was checked, recorded and spent is in Redis (and answered)."""
        if self.remote is not None:
            await self.remote.settle()

    async def check(self, message: Message, p: Prepared, member: str, now: float) -> Checked:
        """What the router's send asks the guards (see Dispatcher.send)."""
        d, rule, emit = p.destination, p.rule, self.events.append
        guards, counts = self.guards, self.counts
        checked = guards.check_now(counts, message, d.e164, d.country, rule, member, now, emit)
        if isinstance(checked, Lane):  # exact: the check waits for its batch
            assert isinstance(counts, RedisGuardCounts)
            answer = await guards.ask(counts, checked, message, d.e164, rule, member, now)
            checked = guards.answered(counts, message, d.country, rule, answer, emit)
        return checked

    def spent(self, message: Message, p: Prepared, provider: str, cost: float, now: float) -> None:
        self.guards.spent(
            self.counts, message, p.destination.country, provider, cost, now, self.events.append
        )

    def explain(self, message: Message, p: Prepared, now: float) -> tuple[GuardStatus, ...]:
        d = p.destination
        return self.guards.explain(self.counts, message, d.e164, d.country, p.rule, now)

    def transitions(self) -> list[tuple[str, str, str, int, int]]:
        return [
            (e.category, e.country, e.to_state, e.recent, e.baseline)
            for e in self.events
            if isinstance(e, AnomalyTransition)
        ]


#: Redis's clock moved on by ARGV[2] ms for the keys matching ARGV[1]: those whose time
#: to live is up go, the others have that much less to live.  The guards' times are the
#: router's clock (a ManualClock here, the script's arguments), and Redis expires their
#: keys on its own: with this, the keys expire as they would have had both clocks moved.
ELAPSE = """
local elapsed = tonumber(ARGV[2])
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
  local ttl = redis.call('PTTL', key)
  if ttl >= 0 then
    if ttl <= elapsed then
      redis.call('DEL', key)
    else
      redis.call('PEXPIRE', key, ttl - elapsed)
    end
  end
end
"""


def otp(i: int, advance: float = 0.0) -> Step:
    """A step of test_guards_fast's strategy: an otp to number ``i`` of DE, ``advance``
    seconds after the step before, accepted, no tag and no override."""
    return (i, "DE", advance, False, False, "otp", True)


def transactional(country: str, advance: float = 0.0) -> Step:
    """A step of test_guards_fast's strategy: number 0 of ``country``, accepted, no tag
    and no override, in a category with no guard of its own (budgets only)."""
    return (0, country, advance, False, False, "transactional", True)


def rounded(statuses: tuple[GuardStatus, ...]) -> list[GuardStatus]:
    """``statuses`` with their counts to 12 significant digits: a spend in Redis is a sum
    made by INCRBYFLOAT (a long double, read back to 17 digits), in memory a sum of
    doubles (0.08 + 0.08 + 0.05 is 0.21000000000000002 there, 0.21 in Redis)."""
    return [
        attrs.evolve(s, count=None if s.count is None else float(f"{s.count:.12g}"))
        for s in statuses
    ]


def message_of(i: int, country: str, override: bool, tagged: bool, category: str) -> Message:
    return Message(
        to=NUMBERS[country].format(i),
        text="Your code is 123456",
        category=category,
        tags=("t1",) if tagged else (),
        metadata={"smsroute.override": ANOMALY_OVERRIDE} if override else {},
    )


async def drive(url: str, steps: list[Step], ways: str = "", offset: float = 0.0) -> None:
    """``steps`` through a memory side and two Redis sides (exact, local), each with a
    fresh key prefix, on one ManualClock from ``START + offset``; every answer compared
    as it comes.  ``ways`` says how each step goes (missing: ``.``):

    - ``.`` alone, then every side explains it;
    - ``-`` alone, not explained;
    - ``+`` checked with the step before, concurrently (one batch in Redis): no spend
      comes between their checks;
    - ``x`` alone, and if it passed its send is cancelled before any provider is called
      (given back) instead of going to the provider.
    """
    runtime = Runtime(parse_config(CONFIG))
    clock = ManualClock(START + offset)
    groups: list[list[int]] = []
    for k in range(len(steps)):
        if k and k < len(ways) and ways[k] == "+":
            groups[-1].append(k)
        else:
            groups.append([k])
    states: list[RedisState] = []
    prefixes = [f"smsroute-test:{uuid.uuid4().hex[:12]}:" for _ in range(2)]
    client = redis.Redis.from_url(url)
    script = client.register_script(ELAPSE)

    async def elapse(seconds: float) -> None:
        """Redis's clock moves as the router's does: keys expire (see ELAPSE)."""
        if seconds:
            for name in prefixes:
                script(keys=[], args=[f"{name}*", round(seconds * 1000)])

    try:
        modes: tuple[GuardChecks, ...] = ("exact", "local")
        for name, mode in zip(prefixes, modes, strict=True):
            settings_ = StateSettings(
                backend="redis", url=url, key_prefix=name, timeout=2.0, guard_checks=mode
            )
            states.append(RedisState(settings_, clock))
            await states[-1].start()
        memory = Side(runtime, MemoryGuardCounts())
        exact = Side(runtime, states[0].guard_counts())
        local = Side(runtime, states[1].guard_counts())
        assert isinstance(exact.counts, RedisGuardCounts)
        assert isinstance(local.counts, Mirror)
        sides = (memory, exact, local)
        for group in groups:
            sent: list[tuple[Message, Prepared, str, float, Step]] = []
            for k in group:
                i, country, advance, override, tagged, category, _ = steps[k]
                clock.advance(advance)
                if k == group[0]:  # a batch takes no time in Redis: its clock moves on
                    await elapse(advance)  # with its first message's (keys expire later
                    # than the router's clock says, never sooner: what the script reads
                    # is counted by the times it is given, in or out of a window)
                message = message_of(i, country, override, tagged, category)
                # its id: unique (with its time, its member of the logs in Redis)
                sent.append((message, runtime.prepare(message), f"m{k}", clock.now(), steps[k]))
            answers = [
                [await memory.check(m, p, member, now) for m, p, member, now, _ in sent],
                await asyncio.gather(*(exact.check(m, p, mb, now) for m, p, mb, now, _ in sent)),
                [await local.check(m, p, member, now) for m, p, member, now, _ in sent],
            ]
            # local: what it decided is counted in Redis, and learnt back, before the next
            # message (one replica alone, nothing in flight)
            await local.settle()
            what = f"steps {group}, at +{clock.now() - START:g}s"
            assert answers[1] == answers[0], f"exact, {what}"
            assert answers[2] == answers[0], f"local, {what}"
            last = group[-1]
            way = ways[last] if last < len(ways) else "."
            for (message, p, member, now, step_), (refusal, over) in zip(
                sent, answers[0], strict=True
            ):
                names = [n for n in p.rule.providers if n not in over]
                if refusal is not None or not names:
                    continue
                d = p.destination
                if way == "x":  # cancelled while it waited for a rate-limit token
                    for side in sides:
                        side.guards.give_back(
                            side.counts, message, d.e164, d.country, p.rule, member, now
                        )
                elif step_[6]:  # accepted by the provider: its cost is spent
                    provider = names[0]
                    cost = runtime.config.providers[provider].prices.price_for(d.country)
                    assert cost is not None
                    for side in sides:
                        side.spent(message, p, provider, cost, now)
            assert exact.transitions() == memory.transitions(), f"exact, {what}"
            assert local.transitions() == memory.transitions(), f"local, {what}"
            if way in ".x":  # explain reads Redis: what waits for a batch is written first
                for side in sides:
                    await side.settle()
                message, p, _, now, _ = sent[-1]
                explained = [rounded(side.explain(message, p, now)) for side in sides]
                assert explained[1] == explained[0], f"exact, {what}"
                assert explained[2] == explained[0], f"local, {what}"
    finally:
        for state in states:
            await state.aclose()
        try:
            for name in prefixes:
                keys = list(client.scan_iter(match=f"{name}*", count=1000))
                if keys:
                    client.delete(*keys)
        finally:
            client.close()


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    steps=st.lists(step, min_size=1, max_size=60),
    ways=st.text(".....--+++x", max_size=60),
    offset=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
)
@example(
    steps=[transactional("DE")] * 3 + [transactional("AT")] * 2 + [transactional("DE")] * 3,
    ways="",
    offset=0.0,
).via(
    "provider a's spend is 0.08 x 5 + 0.1 x 2: 0.6, its cap (0.5999999999999999 summed in doubles)"
)
@example(steps=[otp(0), otp(0, 60.0)], ways="", offset=0.865234375).via(
    "explain in Redis counts a time exactly a window old (ZCOUNT's bound written to 14 digits)"
)
@example(steps=[otp(0), otp(1, 20.0), otp(2), otp(3)], ways="", offset=0.8652347).via(
    "the anomaly guard armed a baseline after the first count, to the bit (not to the µs)"
)
@example(steps=[otp(0), otp(0), otp(0, 60.0)], ways="", offset=0.017114877700805664).via(
    "local: a full log is held until its oldest time leaves, to the bit (not to the µs)"
)
@example(steps=[otp(0), otp(0, 4000.0), otp(0)], ways="", offset=0.0).via(
    "the anomaly guard stays armed after an idle spell longer than 4 x (window + baseline)"
)
@example(steps=[otp(0), otp(0), otp(1), otp(0, 20.0), otp(0)], ways="...+", offset=0.0).via(
    "local: one batch records a lane's message and, ten slots later, another of its anomaly "
    "key: the lane's requests are told with the slot they were counted in"
)
def test_the_guards_in_redis_decide_as_the_guards_in_memory(
    redis_url: str,  # noqa: F811
    steps: list[Step],
    ways: str,
    offset: float,
) -> None:
    started = time.monotonic()
    asyncio.run(drive(redis_url, steps, ways, offset))
    # Redis expires keys on its own clock too (ELAPSE moves them on with the ManualClock,
    # but real time passes as well): an example must take far less than the shortest
    # time to live (a 5s window and a second) for no key to expire before its time.
    assert time.monotonic() - started < 4.0


def test_a_provider_whose_prices_add_up_to_its_limit_is_at_its_cap_in_memory() -> None:
    """0.08 x 5 + 0.1 x 2 is 0.5999999999999999 summed in doubles: provider a's budget of
    0.6 is reached all the same (its explain says "spent 0.6 of 0.6"), as in Redis."""

    async def run() -> frozenset[str]:
        runtime = Runtime(parse_config(CONFIG))
        side = Side(runtime, MemoryGuardCounts())
        for k, country in enumerate(["DE", "DE", "DE", "AT", "AT", "DE", "DE"]):
            message = message_of(0, country, False, False, "transactional")
            p = runtime.prepare(message)
            assert await side.check(message, p, f"m{k}", START) == (None, frozenset())
            cost = runtime.config.providers["a"].prices.price_for(country)
            assert cost is not None
            side.spent(message, p, "a", cost, START)
        message = message_of(0, "DE", False, False, "transactional")
        return (await side.check(message, runtime.prepare(message), "m7", START))[1]

    assert asyncio.run(run()) == frozenset({"a"})
