"""The guards' fast path in memory (issue 19's speed target) against the general path.

:meth:`Guards.check_now` answers most messages with :meth:`MemoryGuardCounts.fast` (a
lane worked out once per category, rule and country) and leaves every other one to
:meth:`MemoryGuardCounts.evaluate`.  :meth:`Guards.check` always takes the general
path.  Driven with the same messages at the same times, both must refuse the same
messages with the same reasons, drop the same providers at their cap, emit the same
events and explain the same counts: the fast path is only a shortcut.
"""

from __future__ import annotations

import asyncio
import calendar
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsroute import (
    ANOMALY_OVERRIDE,
    AnomalyTransition,
    BudgetSpent,
    Event,
    Message,
    parse_config,
)
from smsroute.guardcounts import MemoryGuardCounts
from smsroute.guardquery import SpendKey
from smsroute.guards import Guards, Refusal
from smsroute.guardwindows import VelocityWindow, trim
from smsroute.runtime import Prepared, Runtime

START = float(calendar.timegm((2026, 1, 31, 23, 59, 0)))  # a minute before a new month

CONFIG = textwrap.dedent(
    """
    providers:
      a: {type: twilio, base_url: "http://127.0.0.1:9", account_sid: AC1, auth_token: t,
          from: "+15005550006", prices: {DE: 0.08, AT: 0.1, default: 0.05}}
      b: {type: twilio, base_url: "http://127.0.0.1:9", account_sid: AC1, auth_token: t,
          from: "+15005550006", prices: {DE: 0.06, AT: 0.1, default: 0.05}}
    rules:
      - name: nl
        match: {country: NL}
        providers: [b, a]
        on_budget: cheapest_under_cap
        guards: {velocity: [{per: number, max: 1, window: 5s}]}
      - name: default
        providers: [a, b]
        guards: {countries: {deny: [FR]}}
    guards:
      otp:
        velocity:
          - {per: number, max: 2, window: 60s}
          - {per: prefix, digits: 5, max: 3, window: 30s}
          - {per: country, max: 4, window: 20s}
        anomaly: {window: 10s, baseline: 20s, factor: 2, min_count: 3, action: require_override}
      budgets:
        - {scope: provider, name: a, limit: 0.6, per: hour}
        - {scope: provider, name: b, limit: 1.0, per: day}
        - {scope: category, name: otp, limit: 2.0, per: month}
        - {scope: country, name: AT, limit: 0.5, per: hour}
        - {scope: tag, name: t1, limit: 0.3, per: hour}
    """
)

NUMBERS = {
    "DE": "+4915123456{:03d}",
    "AT": "+43664123456{:01d}",
    "FR": "+3361234567{}",
    "NL": "+3161234567{}",
}

#: Mostly short steps (bursts, windows sliding), some across windows, budget periods.
ADVANCES = [0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 2.5, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 4000.0]

step = st.tuples(
    st.integers(0, 4),  # which number of the country
    st.sampled_from(["DE", "DE", "DE", "AT", "AT", "FR", "NL"]),
    st.sampled_from(ADVANCES),
    st.sampled_from([False, False, False, True]),  # the caller's override
    st.sampled_from([False, False, True]),  # tagged t1
    st.sampled_from(["otp", "otp", "otp", "transactional"]),
    st.sampled_from([True, True, False]),  # accepted by a provider (spend counted)
)


class Side:
    """One router's guards and counts, and the events they emitted."""

    def __init__(self, runtime: Runtime) -> None:
        self.guards = Guards(runtime.config)
        self.counts = MemoryGuardCounts()
        self.events: list[Event] = []


def answer(
    side: Side, fast: bool, message: Message, runtime: Runtime, now: float, events: bool = True
) -> tuple[Refusal | None, tuple[str, ...], str | None, Prepared]:
    p = runtime.prepare(message)
    d = p.destination
    emit = side.events.append if events else None
    if fast:
        checked = side.guards.check_now(
            side.counts, message, d.e164, d.country, p.rule, "m", now, emit
        )
        assert isinstance(checked, tuple)  # the counts are in memory: never awaited
    else:
        checked = asyncio.run(
            side.guards.check(side.counts, message, d.e164, d.country, p.rule, "m", now, emit)
        )
    refusal, over = checked
    names = [n for n in p.rule.providers if n not in over]
    provider = names[0] if names else None
    return refusal, tuple(sorted(over)), provider, p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=80), events=st.booleans())
def test_the_fast_path_answers_as_the_general_path(
    steps: list[tuple[int, str, float, bool, bool, str, bool]], events: bool
) -> None:
    """With and without events (a router without metrics or hooks spends with no one
    to tell: a cap must be seen all the same)."""
    runtime = Runtime(parse_config(CONFIG))
    fast, general = Side(runtime), Side(runtime)
    now = START
    for i, country, advance, override, tagged, category, accepted in steps:
        now += advance
        message = Message(
            to=NUMBERS[country].format(i),
            text="Your code is 123456",
            category=category,
            tags=("t1",) if tagged else (),
            metadata={"smsroute.override": ANOMALY_OVERRIDE} if override else {},
        )
        one = answer(fast, True, message, runtime, now, events)
        two = answer(general, False, message, runtime, now, events)
        assert one[:3] == two[:3]
        refusal, _, provider, p = one
        if refusal is None and provider is not None and accepted:
            cost = runtime.config.providers[provider].prices.price_for(p.destination.country)
            for side in (fast, general):
                side.guards.spent(
                    side.counts,
                    message,
                    p.destination.country,
                    provider,
                    cost,
                    now,
                    side.events.append if events else None,
                )
        assert fast.events == general.events
        explained = [
            side.guards.explain(
                side.counts, message, p.destination.e164, p.destination.country, p.rule, now
            )
            for side in (fast, general)
        ]
        assert explained[0] == explained[1]


@pytest.mark.parametrize("events", [True, False])
@pytest.mark.parametrize("how", ["spent", "last-percent", "merged", "replayed"])
def test_a_provider_at_its_cap_takes_the_general_path_however_its_spend_got_there(
    how: str, events: bool
) -> None:
    """Provider a's budget is 0.6 an hour.  Spent here (five DE messages at 0.08 and two
    AT at 0.1, added in an order that makes 0.5999999999999999 in doubles: within
    AT_CAP of the limit, so at its cap), taken from another replica's total (``merge_spend``, guard_checks: local) or
    replayed after Redis was down (``add_spend``): the fast path must give way so that
    the next message is planned without a, with or without anyone told of the spend."""
    runtime = Runtime(parse_config(CONFIG))
    side = Side(runtime)
    emit = side.events.append if events else None
    otp = Message(to=NUMBERS["DE"].format(1), text="Your code is 123456", category="otp")
    plain = Message(to=NUMBERS["DE"].format(2), text="Your parcel", category="transactional")
    assert answer(side, True, otp, runtime, START, events)[:2] == (None, ())  # lanes made
    guards = runtime.config.guards
    assert guards is not None
    a = SpendKey(next(b for b in guards.budgets if b.name == "a"))
    key = a.at(START)
    if how == "spent":
        for country in ["DE", "DE", "DE", "AT", "AT", "DE", "DE"]:
            cost = 0.08 if country == "DE" else 0.1
            side.guards.spent(side.counts, plain, country, "a", cost, START, emit)
        assert side.counts.spent[key][0] == 0.5999999999999999
    elif how == "last-percent":
        for cost in (0.595, 0.0049999996):
            side.guards.spent(side.counts, plain, "DE", "a", cost, START, emit)
        assert a.limit <= side.counts.spent[key][0] < 0.6
    elif how == "merged":
        side.counts.merge_spend(key, 0.61, a.end + 3600, a.limit)
    else:
        side.counts.add_spend(key, 0.3, a.end + 3600, a.limit)
        side.counts.add_spend(key, 0.3, a.end + 3600, a.limit)
    for message in (otp, plain):  # two lanes, both with provider a's budget
        refusal, over, provider, _ = answer(side, True, message, runtime, START + 1, events)
        assert (refusal, over, provider) == (None, ("a",), "b")
    # the next hour a's spend starts again from nothing
    assert answer(side, True, plain, runtime, START + 3600, events)[:3] == (None, (), "a")


@pytest.mark.parametrize("events", [True, False])
@pytest.mark.parametrize("junk", [float("inf"), float("nan")])
def test_a_spend_that_is_not_a_number_neither_raises_nor_is_told(junk: float, events: bool) -> None:
    """A total read from data smsroute did not write (Redis's '1E400' is inf, or NaN)
    must not make the spend of an accepted message raise (the send would end failed
    after the provider took it) nor be told as a percent of the limit; inf is at the
    cap, on the fast path as on the general one."""
    runtime = Runtime(parse_config(CONFIG))
    side = Side(runtime)
    emit = side.events.append if events else None
    plain = Message(to=NUMBERS["DE"].format(2), text="Your parcel", category="transactional")
    assert answer(side, True, plain, runtime, START, events)[:2] == (None, ())
    guards = runtime.config.guards
    assert guards is not None
    a = SpendKey(next(b for b in guards.budgets if b.name == "a"))
    side.counts.merge_spend(a.at(START), junk, a.end + 3600, a.limit)
    side.guards.spent(side.counts, plain, "DE", "a", 0.08, START, emit)  # no exception
    assert not [e for e in side.events if isinstance(e, BudgetSpent) and e.scope == "provider:a"]
    _, over, provider, _ = answer(side, True, plain, runtime, START + 1, events)
    assert (over, provider) == ((("a",), "b") if junk > 0 else ((), "a"))


def test_idle_velocity_logs_are_forgotten_after_two_windows() -> None:
    window = VelocityWindow(60.0, 5)

    def send(ident: str, now: float) -> None:
        if now >= window.end:
            window.rotate(now)
        window.add(ident, now)

    for n in range(100):
        send(f"+4915123456{n:03d}", START + n * 0.1)
    assert len(window.cur) + len(window.prev) == 100
    send("+4915123456999", START + 60)  # a new generation: the old logs are kept
    assert (len(window.cur), len(window.prev)) == (1, 100)
    assert window.find("+4915123456000") == START  # a one-time log is the time
    send("+4915123456998", START + 60 + 60)  # their times all left the window: forgotten
    assert (len(window.cur), len(window.prev)) == (1, 1)
    send("+4915123456997", START + 1000)  # both generations over at once
    assert (len(window.cur), len(window.prev)) == (1, 0)


def test_a_time_leaves_the_window_exactly_window_seconds_after_it() -> None:
    runtime = Runtime(parse_config(CONFIG))
    side = Side(runtime)
    message = Message(to=NUMBERS["NL"].format(1), text="Code 1", category="transactional")
    assert answer(side, True, message, runtime, START)[0] is None
    refused = answer(side, True, message, runtime, START + 4.999)[0]
    assert refused is not None
    assert "at most 1 per number per 5s" in refused.reason
    assert answer(side, True, message, runtime, START + 5.0)[0] is None


def test_the_fast_path_gives_way_to_an_anomaly_trip_and_its_release() -> None:
    runtime = Runtime(parse_config(CONFIG))
    side = Side(runtime)

    def otp(number: str) -> Message:
        return Message(to=number, text="Your code is 123456", category="otp")

    first = answer(side, True, otp(NUMBERS["DE"].format(0)), runtime, START)  # arms at +20s
    burst = [
        answer(side, True, otp(NUMBERS["AT"].format(i)), runtime, START + at)[0]
        for i, at in enumerate((20.0, 20.5, 21.0))
    ]
    calm = answer(side, True, otp(NUMBERS["AT"].format(3)), runtime, START + 40.0)
    assert first[0] is None
    assert burst[:2] == [None, None]
    assert burst[2] is not None
    assert burst[2].guard == "anomaly"
    assert calm[0] is None
    transitions = [(e.country, e.to_state) for e in side.events if isinstance(e, AnomalyTransition)]
    assert transitions == [("AT", "tripped"), ("AT", "released")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "add", "add", "take_last", "remove"]),
            st.sampled_from(["+31612345678", "+31612345679", "NL"]),
            st.floats(min_value=0.0, max_value=4.0),  # the clock's step
        ),
        max_size=60,
    ),
    st.booleans(),
)
def test_velocity_logs_count_as_a_plain_list_of_times_would(
    ops: list[tuple[str, str, float]], long: bool
) -> None:
    """A log of one time is kept as the time (a float), of more as a list (or a deque
    past SHORT_LOG): whatever the mix of adds, take-backs and give-backs, every log
    counts exactly the times a plain list would still hold in the window."""
    length = 5.0
    window = VelocityWindow(length, 5000 if long else 5)
    model: dict[str, list[float]] = {}
    now = START
    last: str | None = None  # the ident of the last add (take_last undoes only that)
    for op, ident, step in ops:
        if op != "take_last":  # a take-back follows its add at once (fast(), a refusal)
            last = None
            now += step
            if now >= window.end:
                window.rotate(now)
        if op == "add":
            window.add(ident, now)
            model.setdefault(ident, []).append(now)
            last = ident
        elif op == "take_last" and last is not None:
            window.take_last(last)
            model[last].pop()
            last = None
        elif op == "remove" and model.get(ident):
            time = model[ident][len(model[ident]) // 2]
            window.remove(ident, time)
            model[ident].remove(time)  # the first equal time: the same count either way
        for name, times in model.items():
            log = window.find(name)
            expected = sum(1 for t in times if t > now - length)
            assert (0 if log is None else trim(log, now - length)) == expected, name
