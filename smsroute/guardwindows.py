"""The guards' counts in this process's memory: the sliding logs of a velocity limit and
the anomaly guard's slots (used by :class:`~smsroute.guardcounts.MemoryGuardCounts`)."""

from __future__ import annotations

from collections import deque
from typing import TypeAlias

#: Velocity logs of a limit whose ``max`` is larger are deques (O(1) to drop the oldest;
#: but one costs ten times a list to make).
SHORT_LOG = 1000

#: A velocity log: its times, oldest first.  A log of one time is that time, a float: most
#: logs (one number's) hold one, and a float is no container, so the logs of a busy
#: router's numbers neither cost a list each nor add to the garbage collector's work
#: (every container that outlives its send makes the collections come sooner, and
#: each one walks every send under way).  A second time makes it a list.
Log: TypeAlias = "float | list[float] | deque[float]"


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

    def add(self, ident: str, now: float) -> None:
        """Put ``now`` at the end of the log of ``ident`` (moved or made in the current
        generation)."""
        cur = self.cur
        log = cur.get(ident)
        if log is None:
            log = self.prev.pop(ident, None)
            if log is None:
                cur[ident] = now
                return
            cur[ident] = log
        if isinstance(log, float):
            if log > now - self.length:  # still in the window
                cur[ident] = deque((log, now)) if self.long else [log, now]
            else:
                cur[ident] = now
        else:
            log.append(now)

    def find(self, ident: str) -> Log | None:
        """The log of ``ident``, moving nothing."""
        log = self.cur.get(ident)
        return self.prev.get(ident) if log is None else log

    def take_last(self, ident: str) -> None:
        """Take the last time out of the current generation's log of ``ident``."""
        log = self.cur[ident]
        if isinstance(log, float):
            del self.cur[ident]
        else:
            log.pop()

    def remove(self, ident: str, time: float) -> None:
        """Take the latest ``time`` out of the log of ``ident``, if it holds one."""
        logs = self.cur if ident in self.cur else self.prev
        log = logs.get(ident)
        if log is None:
            return
        if isinstance(log, float):
            if log == time:
                del logs[ident]
            return
        for i in range(len(log) - 1, -1, -1):
            if log[i] == time:
                del log[i]
                return


def trim(log: Log, horizon: float) -> int:
    """Drop the times at or before ``horizon`` from the front of ``log``; the count left
    (a one-time log, a float, is left as it is: counted 0 once it is past)."""
    if isinstance(log, float):
        return 1 if log > horizon else 0
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
