"""Time as smsroute sees it: an injectable clock.

Breakers, health windows and rate limiters read time only through a
:class:`Clock`, so a test can drive them with :class:`ManualClock` and never
sleep.  Timeouts on real network I/O use the event loop's own timer.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of monotonic time in seconds."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences are meaningful)."""
        ...


class SystemClock:
    """The real monotonic clock."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to.

    >>> clock = ManualClock()
    >>> clock.advance(30)
    >>> clock.now()
    30.0
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """An ``asyncio.sleep`` stand-in: moves the clock instead of waiting.

        Pass it as ``Router(config, clock=clock, sleep=clock.sleep)``.
        """
        import asyncio

        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def set(self, now: float) -> None:
        """Jump to an absolute time at or after the current one."""
        if now < self._now:
            raise ValueError("a clock cannot go backwards")
        self._now = float(now)


class _WallClock:
    """Epoch seconds: what the time of day is read from (quiet hours)."""

    __slots__ = ()

    #: ``time.time`` itself: no Python frame when the send path reads it (a guarded
    #: send reads it once).
    now = staticmethod(time.time)


def wall_clock(clock: Clock) -> Clock:
    """The clock of wall-clock time (epoch seconds) that goes with ``clock``.

    A :class:`SystemClock` is monotonic, so wall time is ``time.time()``; any other
    clock (a test's :class:`ManualClock`) is taken to count epoch seconds itself, so
    a test sets the time of day with ``ManualClock(start=<epoch seconds>)``.  The
    outbox reads its clock the same way.
    """
    return _WallClock() if isinstance(clock, SystemClock) else clock
