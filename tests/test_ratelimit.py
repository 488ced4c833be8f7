"""Token buckets and Retry-After pauses, on a manual clock."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsroute import ManualClock
from smsroute.ratelimit import TokenBucket


def test_burst_then_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert abs(bucket.try_acquire() - 0.1) < 1e-9
    clock.advance(0.1)
    assert bucket.try_acquire() == 0.0


def test_reservations_queue_up_in_order() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock)
    waits = [bucket.reserve(max_wait=1.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_reservation_beyond_max_wait_takes_nothing() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.5) is None
    clock.advance(1.0)
    assert bucket.reserve(0.0) == 0.0


def test_long_run_rate_is_exact() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=50, burst=5, clock=clock)
    sent = 0
    for _ in range(10_000):  # 10 s in 1 ms steps
        clock.advance(0.001)
        while bucket.try_acquire() == 0.0:
            sent += 1
    assert 500 <= sent <= 505


def test_pause_refuses_until_retry_after() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=None, burst=None, clock=clock)
    bucket.pause_until(clock.now() + 5)
    assert bucket.reserve(10.0) is None
    assert bucket.paused_for() == 5.0
    clock.advance(5)
    assert bucket.reserve(0.0) == 0.0


def test_unlimited_bucket_never_waits() -> None:
    bucket = TokenBucket(rate=None, burst=None, clock=ManualClock())
    assert all(bucket.try_acquire() == 0.0 for _ in range(1000))


def grants_in_busiest_second(grants: list[float]) -> int:
    """The most grants in any closed window of one second (windows start at each grant)."""
    grants = sorted(grants)
    most, end = 0, 0
    for start, t in enumerate(grants):
        while end < len(grants) and grants[end] <= t + 1.0:
            end += 1
        most = max(most, end - start)
    return most


#: One step: advance the clock by ``dt`` seconds (0 often: several asks at one instant),
#: then ``reserve(max_wait)`` (0: take only a token free now; inf: any token, however late).
steps = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0.0, 2.5)),
        st.one_of(st.just(0.0), st.just(math.inf), st.floats(0.0, 3.0)),
    ),
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.one_of(st.sampled_from([1.0, 10.0, 50.0]), st.floats(0.2, 400.0)),
    burst=st.one_of(st.none(), st.integers(1, 60)),
    steps=steps,
)
def test_grants_in_any_second_never_exceed_rate_plus_burst(
    rate: float, burst: int | None, steps: list[tuple[float, float]]
) -> None:
    """Whatever the asks and their timing, the tokens granted (at the time each may be
    used: now + the wait returned) in any 1-s window are at most rate x 1 s + burst."""
    clock = ManualClock(start=1000.0)
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    grants: list[float] = []
    for dt, max_wait in steps:
        clock.advance(dt)
        wait = bucket.reserve(max_wait)
        if wait is not None:
            assert 0.0 <= wait <= max_wait
            grants.append(clock.now() + wait)
    configured = burst if burst is not None else max(1, int(rate))  # the documented default
    bound = math.floor(rate * 1.0 + configured + 1e-9)
    assert grants_in_busiest_second(grants) <= bound


async def test_a_reload_that_changes_only_burst_takes_it(tmp_path: Path) -> None:
    """Before, a reload changed a bucket's rate but never its burst."""
    from conftest import make_config, twilio_block

    from smsroute import Router
    from smsroute.testing import FakeTwilio

    async with FakeTwilio() as fake:
        path = tmp_path / "routing.yaml"

        def write(burst: int) -> None:
            path.write_text(
                "providers:\n"
                + twilio_block("a", fake, rate_limit=1, burst=burst)
                + "\nrules:\n  - name: d\n    providers: [a]\n"
            )

        write(1)
        clock = ManualClock()
        async with Router(make_config(path.read_text()), clock=clock) as router:
            assert router.state.bucket(router.config.providers["a"]).burst == 1.0
            write(5)
            router.reload(path)
            bucket = router.state.bucket(router.config.providers["a"])
            assert bucket.burst == 5.0
            clock.advance(10)
            assert [bucket.reserve(0.0) for _ in range(5)] == [0.0] * 5
            assert bucket.reserve(0.0) is None
