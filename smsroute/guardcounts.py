"""What the fraud and spend guards count, and how it is counted in this process.

:mod:`smsroute.guards` turns a message into one :class:`GuardQuery`: the budgets at
their cap to check, the provider budgets to read, the anomaly counter of its country,
the velocity windows it falls in.  A :class:`GuardCounts` (one per state backend:
:class:`MemoryGuardCounts` here, ``RedisGuardCounts`` in
:mod:`smsroute.state.redis_guards` for replicas) answers it in one step, and records
the message when nothing refuses it, so that checking and counting are one atomic act.

The rules, the same for both:

1. **Budgets** (``caps``): a spend at or over its limit refuses; nothing is counted.
2. **Anomaly**: the message counts as a *request* in its country's current slot.  The
   guard is *tripped* when the requests of the last ``window`` reach ``min_count`` and
   their rate exceeds ``factor`` times the rate of *passed* messages over the
   ``baseline`` before the window; it is armed only once the category has been counted
   for a whole ``baseline`` (a new deployment does not trip on its first traffic).  A
   tripped guard refuses unless the message carries the caller's override (and the
   action allows one).  Requests count refused ones too, passed messages do not: an
   attack keeps the guard tripped and never becomes the baseline.
3. **Velocity**: a sliding log of the last ``max`` send times per key; at ``max``
   within ``window`` the message is refused.
4. Passed: each velocity log gets this message's time, the anomaly slot a *passed*.

Spend is added after a provider accepted (:meth:`GuardCounts.spend`), in windows whose
keys name the calendar period (see :mod:`smsroute.guards`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

#: Checks between two sweeps of idle keys (memory stays bounded by the traffic of a window).
SWEEP_EVERY = 4096


class AnomalyQuery:
    """The anomaly guard's part of a query (see the module's rules)."""

    __slots__ = ("armed_key", "baseline", "blocks", "factor", "key", "min_count", "slot", "window")

    def __init__(
        self,
        key: str,
        armed_key: str,
        window: float,
        baseline: float,
        factor: float,
        min_count: int,
        blocks: bool,
    ) -> None:
        self.key = key
        self.armed_key = armed_key
        self.window = window
        self.baseline = baseline
        self.slot = window / 5
        self.factor = factor
        self.min_count = min_count
        #: Whether a tripped guard refuses this message (no override, or no override allowed).
        self.blocks = blocks


class GuardQuery:
    """One message's question to the counts: see the module's rules for the order."""

    __slots__ = ("anomaly", "caps", "member", "now", "spends", "velocity")

    def __init__(
        self,
        now: float,
        member: str,
        caps: Sequence[tuple[str, float]] = (),
        spends: Sequence[str] = (),
        anomaly: AnomalyQuery | None = None,
        velocity: Sequence[tuple[str, float, int]] = (),
    ) -> None:
        #: Wall-clock seconds (UTC epoch): every replica counts on the same scale.
        self.now = now
        #: Unique per message (its id): a sliding log's member in Redis.
        self.member = member
        #: (spend key, limit): budgets whose cap refuses the message outright.
        self.caps = caps
        #: Spend keys only read (provider budgets: the plan decides).
        self.spends = spends
        self.anomaly = anomaly
        #: (key, window, max) per velocity limit.
        self.velocity = velocity


class GuardAnswer:
    """What the counts said.  ``refused`` is None, ``budget``, ``anomaly`` or ``velocity``;
    ``index`` is which cap or velocity limit refused, ``count`` its count (or spend)."""

    __slots__ = ("base", "count", "counts", "index", "recent", "refused", "spends", "tripped")

    def __init__(
        self,
        refused: str | None,
        index: int = 0,
        count: float = 0.0,
        spends: tuple[float, ...] = (),
        tripped: bool = False,
        recent: int = 0,
        base: int = 0,
        counts: tuple[int, ...] = (),
    ) -> None:
        self.refused = refused
        self.index = index
        self.count = count
        self.spends = spends
        self.tripped = tripped
        self.recent = recent
        self.base = base
        #: Messages in each velocity window (this one included when it passed).
        self.counts = counts


class GuardCounts(Protocol):
    """Counts of the guards, in a state backend (this process, or Redis)."""

    #: The anomaly state last seen per anomaly key (for trip and release events).
    tripped: dict[str, bool]

    async def check(self, query: GuardQuery) -> GuardAnswer:
        """Answer ``query`` and, when nothing refused, count the message."""
        ...

    def peek(self, query: GuardQuery) -> GuardAnswer:
        """What :meth:`check` would answer now, changing nothing (with Redis: as last seen)."""
        ...

    def spend(self, keys: Sequence[tuple[str, float]], amount: float, now: float) -> list[float]:
        """Add ``amount`` to each (key, seconds until its period ends); the totals after."""
        ...


class MemoryGuardCounts:
    """:class:`GuardCounts` in this process's memory."""

    def __init__(self) -> None:
        self.tripped: dict[str, bool] = {}
        #: key -> send times of the last ``max`` messages.
        self._logs: dict[str, deque[float]] = {}
        #: window -> (when, key) in order: the logs to look at when ``when`` has passed.
        self._expiry: dict[float, deque[tuple[float, str]]] = {}
        #: anomaly key -> its slots; and when each category was first counted.
        self._slots: dict[str, _Slots] = {}
        self._since: dict[str, float] = {}
        #: spend key -> [amount, when it may be forgotten].
        self._spent: dict[str, list[float]] = {}
        self._checks = 0

    async def check(self, query: GuardQuery) -> GuardAnswer:
        """Answer and count (no await inside: one step, like the Redis script)."""
        return self.evaluate(query, True)

    def peek(self, query: GuardQuery) -> GuardAnswer:
        """What :meth:`check` would answer, changing nothing."""
        return self.evaluate(query, False)

    def evaluate(self, query: GuardQuery, commit: bool) -> GuardAnswer:
        """The module's rules, in order; ``commit``: count the message."""
        now = query.now
        if commit:
            self._checks += 1
            if self._checks % SWEEP_EVERY == 0:
                self.sweep(now)
            if self._expiry:
                self._expire(now)
        spent = self._spent
        if query.caps:
            for i, (key, limit) in enumerate(query.caps):
                entry = spent.get(key)
                amount = entry[0] if entry is not None else 0.0
                if amount >= limit:
                    return GuardAnswer("budget", i, amount)
        spends = tuple([spent[k][0] if k in spent else 0.0 for k in query.spends])
        tripped = False
        recent = base = 0
        a = query.anomaly
        slot = 0
        if a is not None:
            slot = int(now // a.slot)
            kept = self._slots.get(a.key)
            if kept is None:
                kept = _Slots(a.slot, a.window + a.baseline)
                if commit:
                    self._slots[a.key] = kept
            slots = kept.slots
            if commit:
                counts = slots.get(slot)
                if counts is None:
                    counts = slots[slot] = [0, 0]
                counts[0] += 1
                since = self._since.setdefault(a.armed_key, now)
            else:
                since = self._since.get(a.armed_key, now)
            recent, base = kept.rates(slot, a)
            if not commit:
                recent += 1  # as check() would count this message
            tripped = (
                now - since >= a.baseline
                and recent >= a.min_count
                and recent * a.baseline > a.factor * base * a.window
            )
            if tripped and a.blocks:
                return GuardAnswer("anomaly", 0, recent, spends, True, recent, base)
        counts_out: list[int] = []
        found: list[deque[float] | None] = []
        logs = self._logs
        for i, (key, window, most) in enumerate(query.velocity):
            log = logs.get(key)
            n = 0
            if log is not None:
                horizon = now - window
                while log and log[0] <= horizon:
                    log.popleft()
                n = len(log)
            if n >= most:
                return GuardAnswer(
                    "velocity", i, n, spends, tripped, recent, base, (*counts_out, n)
                )
            counts_out.append(n + 1)
            found.append(log)
        if commit:
            expiry = self._expiry
            for (key, window, most), log in zip(query.velocity, found, strict=True):
                if log is None:
                    log = logs[key] = deque(maxlen=most)
                log.append(now)
                queue = expiry.get(window)
                if queue is None:
                    queue = expiry[window] = deque()
                queue.append((now + window, key))
            if a is not None:
                slots[slot][1] += 1
        return GuardAnswer(None, 0, 0.0, spends, tripped, recent, base, tuple(counts_out))

    def spend(self, keys: Sequence[tuple[str, float]], amount: float, now: float) -> list[float]:
        """Add ``amount`` to each key's spend; the totals after."""
        out = []
        spent = self._spent
        for key, ttl in keys:
            entry = spent.get(key)
            if entry is None:
                entry = spent[key] = [0.0, now + ttl]
            entry[0] += amount
            out.append(entry[0])
        return out

    def add_spend(self, key: str, amount: float, expires: float) -> None:
        """Add to a spend without reading it back (the Redis fallback's replay)."""
        entry = self._spent.get(key)
        if entry is None:
            self._spent[key] = [amount, expires]
        else:
            entry[0] += amount

    def _expire(self, now: float) -> None:
        """Forget the logs whose newest time left their window (oldest first, amortised)."""
        logs = self._logs
        for window, queue in self._expiry.items():
            while queue and queue[0][0] <= now:
                _, key = queue.popleft()
                log = logs.get(key)
                if log is not None and (not log or log[-1] <= now - window):
                    del logs[key]

    def sweep(self, now: float) -> None:
        """Forget the anomaly slots and spends no window or period counts any more."""
        for key, kept in list(self._slots.items()):
            slots = kept.slots
            for number in [n for n in slots if (n + 1) * kept.length < now - kept.span]:
                del slots[number]
            if not slots:
                del self._slots[key]
        for key, (_, expires) in list(self._spent.items()):
            if expires <= now:
                del self._spent[key]


class _Slots:
    """One anomaly key's counts: slot number -> [requests, passed]."""

    __slots__ = ("base", "base_slot", "length", "slots", "span")

    def __init__(self, length: float, span: float) -> None:
        self.length = length
        self.span = span
        self.slots: dict[int, list[int]] = {}
        #: The baseline's sum and the slot it was summed for: the baseline ends where the
        #: recent window starts, so it changes only when a new slot begins.
        self.base_slot = -1
        self.base = 0

    def rates(self, slot: int, a: AnomalyQuery) -> tuple[int, int]:
        """(requests in the recent window, passed messages in the baseline before it)."""
        slots = self.slots
        recent = 0
        for number in range(slot - 4, slot + 1):
            counts = slots.get(number)
            if counts is not None:
                recent += counts[0]
        if self.base_slot != slot:
            base = 0
            for number in range(slot - 4 - round(a.baseline / a.slot), slot - 4):
                counts = slots.get(number)
                if counts is not None:
                    base += counts[1]
            self.base_slot, self.base = slot, base
        return recent, self.base
