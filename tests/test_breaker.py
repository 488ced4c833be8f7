"""The circuit breaker state machine, driven by a manual clock: no sleeps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smsroute import BreakerState, CircuitBreaker, ManualClock
from smsroute.breaker import ALLOWED, PROBE
from smsroute.config import BreakerSettings


def make(**kw: object) -> tuple[CircuitBreaker, ManualClock, list[tuple[str, str]]]:
    clock = ManualClock()
    seen: list[tuple[str, str]] = []
    settings_ = BreakerSettings(**kw)  # type: ignore[arg-type]
    breaker = CircuitBreaker(
        settings_, clock, on_transition=lambda b, a, z: seen.append((a.value, z.value))
    )
    return breaker, clock, seen


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.record_failure(b.allow())


def succeed(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.record_success(b.allow())


def test_consecutive_failures_open_the_breaker() -> None:
    b, _, seen = make(consecutive_failures=3, min_calls=100)
    fail(b, 2)
    assert b.state is BreakerState.CLOSED
    fail(b)
    assert b.state is BreakerState.OPEN
    assert seen == [("closed", "open")]


def test_success_resets_the_consecutive_count() -> None:
    b, _, _ = make(consecutive_failures=3, min_calls=100)
    fail(b, 2)
    succeed(b)
    fail(b, 2)
    assert b.state is BreakerState.CLOSED


def test_failure_rate_opens_only_after_min_calls() -> None:
    b, _, _ = make(consecutive_failures=None, min_calls=10, failure_rate=0.5, window=20)
    for _ in range(4):
        fail(b)
        succeed(b)
    assert b.state is BreakerState.CLOSED  # 8 calls: under min_calls
    fail(b)
    succeed(b)  # 10 calls, 5 failed: 50%
    assert b.state is BreakerState.OPEN


def test_failure_rate_of_zero_is_a_threshold_not_unset() -> None:
    b, _, _ = make(consecutive_failures=None, min_calls=2, failure_rate=0.0)
    succeed(b)
    fail(b)
    assert b.state is BreakerState.OPEN


def test_count_window_forgets_old_failures() -> None:
    b, _, _ = make(consecutive_failures=None, min_calls=4, failure_rate=0.5, window=4)
    fail(b)
    succeed(b, 3)
    fail(b)
    assert b.failure_rate == 0.25
    assert b.state is BreakerState.CLOSED


def test_time_window_forgets_failures_older_than_the_window() -> None:
    b, clock, _ = make(
        consecutive_failures=None, min_calls=2, failure_rate=0.5, window=50, window_seconds=60.0
    )
    fail(b)
    clock.advance(61)
    succeed(b)
    assert b.failure_rate == 0.0
    succeed(b)
    assert b.state is BreakerState.CLOSED


def test_auth_failure_trips_at_once() -> None:
    b, _, _ = make(consecutive_failures=5)
    b.record_failure(b.allow(), trip=True)
    assert b.state is BreakerState.OPEN


def test_open_breaker_refuses_until_reopen_time() -> None:
    b, clock, _ = make(consecutive_failures=1, open_for=30.0)
    fail(b)
    assert b.allow() == 0
    clock.advance(29.9)
    assert b.allow() == 0
    assert b.reopen_at == 30.0


def test_full_cycle_closed_open_half_open_closed() -> None:
    b, clock, seen = make(consecutive_failures=1, open_for=30.0, half_open_probes=2)
    fail(b)
    clock.advance(30)
    assert b.state is BreakerState.HALF_OPEN
    first, second = b.allow(), b.allow()
    assert (first, second) == (PROBE, PROBE)
    assert b.allow() == 0  # only two probes in flight
    b.record_success(first)
    assert b.state is BreakerState.HALF_OPEN
    b.record_success(second)
    assert b.state is BreakerState.CLOSED
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert b.allow() == ALLOWED


def test_failed_probe_reopens_for_twice_as_long() -> None:
    b, clock, _ = make(consecutive_failures=1, open_for=30.0, max_open_for=300.0)
    fail(b)
    clock.advance(30)
    b.record_failure(b.allow())
    assert b.state is BreakerState.OPEN
    assert b.reopen_at == 30 + 60
    clock.advance(60)
    b.record_failure(b.allow())
    assert b.reopen_at == 90 + 120


def test_open_duration_is_capped_by_max_open_for() -> None:
    b, clock, _ = make(consecutive_failures=1, open_for=30.0, max_open_for=50.0)
    fail(b)
    for _ in range(5):
        clock.set(b.reopen_at or 0.0)
        b.record_failure(b.allow())
    assert b.reopen_at is not None
    assert b.reopen_at - clock.now() == 50.0


def test_released_probe_frees_its_slot() -> None:
    b, clock, _ = make(consecutive_failures=1, half_open_probes=1)
    fail(b)
    clock.advance(30)
    ticket = b.allow()
    assert b.allow() == 0
    b.release(ticket)  # e.g. the provider throttled: says nothing about health
    assert b.allow() == PROBE


def test_late_result_from_before_opening_does_not_close() -> None:
    b, _clock, _ = make(consecutive_failures=1)
    early = b.allow()
    fail(b)
    b.record_success(early)
    assert b.state is BreakerState.OPEN


# -- properties ------------------------------------------------------------------------

events = st.lists(
    st.tuples(st.sampled_from(["ok", "fail", "trip", "release", "tick"]), st.floats(0, 100)),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 4), st.integers(1, 6))
def test_state_machine_invariants(
    script: list[tuple[str, float]], probes: int, consecutive: int
) -> None:
    clock = ManualClock()
    b = CircuitBreaker(
        BreakerSettings(
            consecutive_failures=consecutive,
            min_calls=5,
            open_for=10.0,
            max_open_for=40.0,
            half_open_probes=probes,
        ),
        clock,
    )
    held: list[int] = []
    for action, amount in script:
        if action == "tick":
            clock.advance(amount)
            continue
        if action == "release":
            if held:
                b.release(held.pop())
            continue
        before = b.state
        ticket = b.allow()
        if before is BreakerState.OPEN:
            # an open breaker never lets a call through before its reopen time
            assert ticket == 0
        if ticket == 0:
            continue
        if action == "ok":
            b.record_success(ticket)
        elif action == "fail":
            b.record_failure(ticket)
        elif action == "trip":
            b.record_failure(ticket, trip=True)
            if before is not BreakerState.OPEN:
                assert b.state is BreakerState.OPEN
        else:
            held.append(ticket)
        # never more probes in flight than allowed
        assert b._probes_in_flight <= probes
        if b.state is BreakerState.OPEN:
            assert b.reopen_at is not None
            assert 0 < b.reopen_at - clock.now() <= 40.0 + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["ok", "release"]), max_size=300))
def test_healthy_answers_never_open_the_breaker(script: list[str]) -> None:
    b = CircuitBreaker(
        BreakerSettings(consecutive_failures=1, min_calls=1, failure_rate=0.0), ManualClock()
    )
    for action in script:
        ticket = b.allow()
        if action == "ok":
            b.record_success(ticket)
        else:
            b.release(ticket)
    assert b.state is BreakerState.CLOSED
