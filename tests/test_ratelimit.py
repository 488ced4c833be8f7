"""Token buckets and Retry-After pauses, on a manual clock."""

from __future__ import annotations

import pytest

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
