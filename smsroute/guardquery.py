"""What the fraud and spend guards ask their counts, and what they answer.

:mod:`smsroute.guards` turns a message into one :class:`GuardQuery` (or, on the fast
path, a :class:`Lane`: the query of one category, rule and country worked out once);
a :class:`GuardCounts` answers it with a :class:`GuardAnswer`.  Spend is counted in
keys that name the calendar period (:class:`SpendKey`).  The counts themselves, and the
rules they apply, are in :mod:`smsroute.guardcounts` (this process's memory) and
:mod:`smsroute.state.redis_guards` (Redis, shared by replicas).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from smsroute.guardconfig import Budget
from smsroute.guardwindows import Slots, VelocityWindow

#: Seconds a spend is kept after its period ends.
SPEND_KEPT = 3600.0
#: A budget is at its cap once its spend reaches this fraction of its limit.  Spend is a
#: sum of prices in doubles here, in long doubles in Redis (``INCRBYFLOAT``, read back
#: to 17 decimals), and either lands a few units in the last place off the limit the
#: prices add up to (0.08 x 5 + 0.1 x 2 is 0.5999999999999999 in doubles, 0.6 in
#: Redis): compared with the limit itself, a spend of "0.6 of 0.6" could pass in memory
#: and refuse in Redis.  A billionth of the limit is far more than any sum's error and
#: far less than any price.
AT_CAP = 1.0 - 1e-9


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
        velocity: Sequence[tuple[str, str, float, int]] = (),
    ) -> None:
        #: Wall-clock seconds (UTC epoch): every replica counts on the same scale.
        self.now = now
        #: Unique per message (its id): a sliding log's member in Redis.
        self.member = member
        #: (spend key, the spend at its cap: see :data:`AT_CAP`): budgets whose cap
        #: refuses the message outright.
        self.caps = caps
        #: Spend keys only read (provider budgets: the plan decides).
        self.spends = spends
        self.anomaly = anomaly
        #: (limit key, ident, window, max) per velocity limit: the log of ``ident`` (the
        #: number, its prefix or its country) among those of the limit.
        self.velocity = velocity


class GuardAnswer:
    """What the counts said.  ``refused`` is None, ``budget``, ``anomaly`` or ``velocity``;
    ``index`` is which cap or velocity limit refused, ``count`` its count (or spend)."""

    __slots__ = (
        "base", "count", "counts", "index", "over", "recent", "refused", "spends", "tripped"
    )  # fmt: skip

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
        #: The providers at their cap, worked out from ``spends`` by the guards once (one
        #: answer from Redis may be shared by the messages of a lane in one batch).
        self.over: frozenset[str] | None = None


class GuardCounts(Protocol):
    """Counts of the guards, in a state backend (this process, or Redis)."""

    #: The anomaly state last seen per anomaly key (for trip and release events).
    tripped: dict[str, bool]

    async def check(self, query: GuardQuery) -> GuardAnswer:
        """Answer ``query`` and, when nothing refused, count the message."""
        ...

    def peek(self, query: GuardQuery) -> GuardAnswer:
        """What :meth:`check` would answer now, changing nothing."""
        ...

    def spend(self, keys: Sequence[SpendKey], amount: float, now: float) -> list[float]:
        """Add ``amount`` to each key's spend in its current period (``now`` falls in
        it: the caller moved it on); the totals after."""
        ...

    def give_back(self, lane: Lane, e164: str, member: str, now: float) -> None:
        """Take the message checked at ``now`` (as ``member``) out of the velocity
        windows of its ``lane``: its send was cancelled before any provider was called
        (the anomaly guard keeps its request)."""
        ...


class SharedGuardCounts(GuardCounts, Protocol):
    """Counts in a shared store, where a check waits for its answer: the common case
    asks for a :class:`Lane`'s message without building a query."""

    def ask(self, lane: Lane, e164: str, member: str, now: float) -> Awaitable[GuardAnswer]:
        """:meth:`GuardCounts.check` of the message of ``lane`` to ``e164`` (whose
        anomaly query blocks and which has no tag budget); a passed answer may be
        shared with other messages of the lane (read it, never change it)."""
        ...


class Recorder(Protocol):
    """Where :class:`MemoryGuardCounts` that decide for one replica record what they
    decided, for every replica to count (``state.guard_checks: local``)."""

    def record(self, lane: Lane, e164: str, member: str, now: float, passed: bool) -> None:
        """A message of ``lane`` passed (or was refused after the anomaly guard counted
        its request)."""
        ...

    #: Whether no batch is due: spend added to the counts' entries (see
    #: :attr:`MemoryGuardCounts.spent`) must :meth:`wake` it.
    asleep: bool

    def wake(self, now: float) -> None:
        """Record soon what the counts' entries hold unrecorded
        (:meth:`MemoryGuardCounts.take_unrecorded`); ``now``: the clock's time."""
        ...


class LocalCounts(GuardCounts, Protocol):
    """Counts in this process's memory (``MemoryGuardCounts``), which answer a lane's
    message at once when nothing happens (:meth:`fast`) and any message with
    :meth:`evaluate`."""

    #: Where what they decide is recorded for other replicas (None: nowhere).
    recorder: Recorder | None

    def fast(self, lane: Lane, e164: str, now: float) -> bool:
        """Check and count a message of ``lane`` to ``e164``; False: :meth:`evaluate` must."""
        ...

    def evaluate(self, query: GuardQuery, commit: bool) -> GuardAnswer:
        """Answer ``query``; ``commit``: count the message."""
        ...


class SpendKey:
    """One budget's spend key in its current calendar period (UTC), worked out again only
    when the clock leaves the period: ``b|<scope:name>|<per>|<period number>``."""

    __slots__ = ("budget", "end", "hi", "key", "limit", "lo", "start", "told")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        #: The spend at which the budget is at its cap (see :data:`AT_CAP`).
        self.limit = budget.limit * AT_CAP
        self.key = ""
        self.start = self.end = 0.0
        #: The percent of the limit last told this period (a BudgetSpent event), and
        #: the band [lo, hi) of spends in the same percent.
        self.told = -1
        self.lo = self.hi = 0.0

    def at(self, now: float) -> str:
        """The key of the period ``now`` falls in."""
        if not self.start <= now < self.end:
            per = self.budget.per
            if per == "hour":
                number = int(now // 3600)
                self.start, self.end = number * 3600.0, (number + 1) * 3600.0
            elif per == "day":
                number = int(now // 86400)
                self.start, self.end = number * 86400.0, (number + 1) * 86400.0
            else:
                t = time.gmtime(now)
                number = t.tm_year * 12 + t.tm_mon - 1
                y, m = divmod(number + 1, 12)
                self.start = float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))
                self.end = float(calendar.timegm((y, m + 1, 1, 0, 0, 0)))
            self.key = f"b|{self.budget.label}|{per}|{number}"
            self.told = -1
            self.lo = self.hi = 0.0
        return self.key

    def ttl(self, now: float) -> float:
        """Seconds to keep the spend of the current period (after :meth:`at`)."""
        return self.end - now + SPEND_KEPT


class Lane:
    """The query of a message of one category, under one rule, to one country, worked
    out once (by :mod:`smsroute.guards`) for :meth:`MemoryGuardCounts.fast`: only the
    number and the time change from one message to the next."""

    __slots__ = (
        "anomaly", "budgets", "country", "counts", "geo", "kept", "keys", "ncaps",
        "overridable", "shared", "start", "until", "velocity", "windows",
    )  # fmt: skip

    def __init__(
        self,
        country: str,
        geo: str | None,
        budgets: tuple[SpendKey, ...],
        ncaps: int,
        anomaly: AnomalyQuery | None,
        velocity: Sequence[tuple[str, int, int, float, int]],
    ) -> None:
        self.country = country
        #: Why the geo guard refuses the country (None: it does not).
        self.geo = geo
        #: Budgets at whose cap the fast path gives way: the first ``ncaps`` refuse (of
        #: the category and the country), the rest are provider budgets (only read).
        self.budgets = budgets
        self.ncaps = ncaps
        #: The spend keys of ``budgets`` in the periods the clock was last in, and the
        #: span [start, until) in which they are all current (see :meth:`roll`).
        self.keys: tuple[str, ...] = ()
        self.start = self.until = 0.0
        self.anomaly = anomaly
        #: (limit key, 0 number / 1 prefix / 2 country, prefix end, window, max).
        self.velocity = tuple(velocity)
        #: The counts ``windows`` belong to.
        self.counts: LocalCounts | None = None
        #: (window, kind, prefix end, max) per velocity limit, in ``counts``.
        self.windows: tuple[tuple[VelocityWindow, int, int, int], ...] = ()
        #: The anomaly slots of the country, in ``counts`` (once it has some).
        self.kept: Slots | None = None
        #: What a :class:`SharedGuardCounts` keeps for the lane (its packed arguments).
        self.shared: Any = None
        #: Whether the caller may override its anomaly guard (then a message with the
        #: override is not the lane's: its anomaly query does not block).
        self.overridable = False

    def roll(self, now: float) -> None:
        """Work out :attr:`keys` for the periods ``now`` falls in (the lane's own copy:
        a budget's :class:`SpendKey` may be moved to another period meanwhile by a
        message of another lane, at another time)."""
        self.keys = tuple([sk.at(now) for sk in self.budgets])
        if self.budgets:
            self.start = max(sk.start for sk in self.budgets)
            self.until = min(sk.end for sk in self.budgets)
        else:
            self.start, self.until = float("-inf"), float("inf")
        self.shared = None  # packed with the keys of the periods before
