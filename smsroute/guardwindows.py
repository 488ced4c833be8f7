"""The guards' counts in this process's memory: the sliding logs of a velocity limit and
the anomaly guard's slots (used by :class:`~smsroute.guardcounts.MemoryGuardCounts`)."""

from __future__ import annotations

from collections import deque
from typing import TypeAlias

#: Velocity logs of a limit whose ``max`` is larger are deques (O(1) to drop the oldest;
#: but one costs ten times a list to make).
SHORT_LOG = 1000

Log: TypeAlias = "list[float] | deque[float]"


class VelocityWindow:
    """The sliding logs of one velocity limit: ident (a number, a prefix or a country) ->
    its send times, oldest first.

    Logs live in two generations of ``length`` seconds (``cur`` ends at ``end``): a log
    is moved into the current one when it is used, and a generation is dropped whole
    when the clock passes the end of the next one, when every time in its logs has left
    the window.  Idle logs cost neither a sweep nor an expiry queue."""

    __slots__ = ("cur", "end", "held", "length", "long", "prev")

    def __init__(self, length: float, most: int) -> None:
        self.length = length
        self.long = most > SHORT_LOG
        self.cur: dict[str, Log] = {}
        self.prev: dict[str, Log] = {}
        self.end = float("-inf")
        #: ident -> until when its log counts as full whatever it holds: another
        #: replica's messages filled it (``state.guard_checks: local``, :meth:`MemoryGuardCounts.hold`).
        self.held: dict[str, float] = {}

    def rotate(self, now: float) -> None:
        """Start the generation ``now`` falls in (when ``now >= end``)."""
        if self.held:
            self.held = {ident: until for ident, until in self.held.items() if until > now}
        if now < self.end + self.length:
            self.prev = self.cur
            self.end += self.length
        else:  # both generations are over
            self.prev = {}
            self.end = now + self.length
        self.cur = {}

    def log(self, ident: str) -> Log:
        """The log of ``ident`` in the current generation (moved or made there)."""
        log = self.cur.get(ident)
        if log is None:
            log = self.prev.pop(ident, None)
            if log is None:
                log = deque() if self.long else []
            self.cur[ident] = log
        return log

    def find(self, ident: str) -> Log | None:
        """The log of ``ident``, moving nothing."""
        log = self.cur.get(ident)
        return self.prev.get(ident) if log is None else log


def trim(log: Log, horizon: float) -> int:
    """Drop the times at or before ``horizon`` from the front of ``log``; the count left."""
    if isinstance(log, list):
        n = 0
        while n < len(log) and log[n] <= horizon:
            n += 1
        del log[:n]
    else:
        while log and log[0] <= horizon:
            log.popleft()
    return len(log)


class Slots:
    """One anomaly key's counts: slot number -> [requests, passed]; and, for the slot
    the clock is in, the sums that change only when a new slot begins."""

    __slots__ = (
        "armed",
        "base",
        "before",
        "cur",
        "end",
        "length",
        "nbase",
        "slots",
        "span",
        "start",
    )

    def __init__(self, length: float, span: float, nbase: int) -> None:
        self.length = length
        self.span = span
        #: Slots in the baseline.
        self.nbase = nbase
        self.slots: dict[int, list[int]] = {}
        #: The current slot's [requests, passed], its bounds, the requests of the four
        #: slots before it (the rest of the recent window) and the passed messages of the
        #: baseline before the window.
        self.cur = [0, 0]
        self.start = self.end = 0.0
        self.before = self.base = 0
        #: When the guard is armed: its category's first count plus the baseline.
        self.armed = float("inf")

    def prune(self, now: float) -> None:
        """Forget the slots no window or baseline counts any more."""
        slots = self.slots
        for number in [n for n in slots if (n + 1) * self.length < now - self.span]:
            del slots[number]
        self.end = 0.0  # its current slot may be gone: found again on next use

    def at(self, now: float) -> None:
        """Make the slot ``now`` falls in the current one."""
        slots = self.slots
        if len(slots) > self.nbase + 10:
            self.prune(now)
        number = int(now // self.length)
        self.start = number * self.length
        self.end = self.start + self.length
        cur = slots.get(number)
        if cur is None:
            cur = slots[number] = [0, 0]
        self.cur = cur
        before = base = 0
        for n in range(number - 4, number):
            counts = slots.get(n)
            if counts is not None:
                before += counts[0]
        for n in range(number - 4 - self.nbase, number - 4):
            counts = slots.get(n)
            if counts is not None:
                base += counts[1]
        self.before, self.base = before, base
