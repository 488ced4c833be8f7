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
3. **Velocity**: a sliding log of the send times per key (exact: a time leaves the
   window ``window`` seconds after it); at ``max`` within ``window`` the message is
   refused.
4. Passed: each velocity log gets this message's time, the anomaly slot a *passed*.

Spend is added after a provider accepted (:meth:`GuardCounts.spend`), in windows whose
keys name the calendar period (:class:`SpendKey`).  The query, the answer, the counts'
protocols, the spend keys and the lanes are in :mod:`smsroute.guardquery`.

In memory, the common case has a fast path (:meth:`MemoryGuardCounts.fast`): a
:class:`Lane` is the query of one category, rule and country worked out once (budget
keys, the anomaly counter, the velocity windows), so a message costs dict lookups and
arithmetic, and no object is built.  Whenever it would refuse, find a provider at its
cap or see the anomaly guard trip or release, it changes nothing and leaves the message
to :meth:`MemoryGuardCounts.evaluate`, which applies the rules above with the same
counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from smsroute.guardquery import (
    SPEND_KEPT,
    AnomalyQuery,
    GuardAnswer,
    GuardQuery,
    Lane,
    Recorder,
    SpendKey,
)
from smsroute.guardwindows import Slots, VelocityWindow, trim

#: Checks between two sweeps of idle anomaly slots and spends (velocity logs need none).
SWEEP_EVERY = 4096


def _take_back(lane: Lane, upto: tuple[VelocityWindow, int, int, int], e164: str) -> None:
    """Remove the time :meth:`MemoryGuardCounts.fast` put in the logs before ``upto``."""
    for limit in lane.windows:
        if limit is upto:
            return
        window, kind, end, _ = limit
        window.take_last(e164 if kind == 0 else e164[1:end] if kind == 1 else lane.country)


class MemoryGuardCounts:
    """:class:`GuardCounts` in this process's memory."""

    def __init__(self) -> None:
        self.tripped: dict[str, bool] = {}
        #: velocity limit key -> its logs.
        self.windows: dict[str, VelocityWindow] = {}
        #: anomaly key -> its slots; and when each category was first counted.
        self._slots: dict[str, Slots] = {}
        self._since: dict[str, float] = {}
        #: spend key -> [amount, when it may be forgotten, the part of the amount
        #: recorded (taken by :attr:`recorder`) or learnt from other replicas]: the
        #: amount less that part is this process's spend not recorded yet.  (A spend
        #: only adds to the amount, whoever records it.)
        self.spent: dict[str, list[float]] = {}
        #: The spend keys whose spend has reached their budget's cap (:data:`AT_CAP` of
        #: its limit): whatever adds to a spend adds its key here when it gets there, so
        #: that :meth:`fast` needs one look for all of a lane's budgets.
        self.capped: set[str] = set()
        self._sweep_in = SWEEP_EVERY
        #: Where what these counts decide is recorded for other replicas (None: nowhere).
        self.recorder: Recorder | None = None

    async def check(self, query: GuardQuery) -> GuardAnswer:
        """Answer and count (no await inside: one step, like the Redis script)."""
        return self.evaluate(query, True)

    def peek(self, query: GuardQuery) -> GuardAnswer:
        """What :meth:`check` would answer, changing nothing."""
        return self.evaluate(query, False)

    def window(self, key: str, length: float, most: int) -> VelocityWindow:
        """The logs of the velocity limit ``key`` (made when missing)."""
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = VelocityWindow(length, most)
        return window

    def fast(self, lane: Lane, e164: str, now: float) -> bool:
        """Check and count a message of ``lane`` to ``e164`` when nothing happens: True
        when it passed, no provider budget of the lane is at its cap and the anomaly
        guard neither trips nor releases.  False: nothing counted, :meth:`evaluate` must
        answer (a refusal, a provider at its cap, an anomaly transition).  The caller
        tells :attr:`recorder` of a pass."""
        if lane.counts is not self:
            lane.windows = tuple(
                (self.window(key, length, most), kind, end, most)
                for key, kind, end, length, most in lane.velocity
            )
            lane.kept = None
            lane.counts = self
        if not lane.start <= now < lane.until:  # a new period: the spends of past ones go
            lane.roll(now)
            self.sweep(now)
        if self.capped and not self.capped.isdisjoint(lane.keys):
            return False
        a = lane.anomaly
        slot: list[int] | None = None  # [requests, passed] of the anomaly's current slot
        if a is not None:
            kept = lane.kept
            if kept is None:
                kept = lane.kept = self._slots.get(a.key)
                if kept is None:  # a country's first message: counted by evaluate()
                    return False
            if not kept.start <= now < kept.end:
                kept.at(now)
            slot = kept.cur
            recent = kept.before + slot[0] + 1
            if (
                recent >= a.min_count
                and now >= kept.armed
                and recent * a.baseline > a.factor * kept.base * a.window
            ) or (self.tripped and self.tripped.get(a.key)):
                return False  # tripped, or released: evaluate() and its events
        for limit in lane.windows:  # this message's time goes in at once; taken back on a refusal
            window, kind, end, most = limit
            if now >= window.end:
                window.rotate(now)
            ident = e164 if kind == 0 else e164[1:end] if kind == 1 else lane.country
            if window.held and window.held.get(ident, now) > now:  # full elsewhere
                _take_back(lane, limit, e164)
                return False
            logs = window.cur
            log = logs.get(ident)
            if log is None:
                log = window.prev.pop(ident, None)
                if log is None:  # a log of one time is the time (see guardwindows.Log)
                    logs[ident] = now
                    continue
                logs[ident] = log
            if isinstance(log, float):
                if log <= now - window.length:  # its time has left the window
                    logs[ident] = now
                    continue
                if most < 2:
                    _take_back(lane, limit, e164)
                    return False
                logs[ident] = deque((log, now)) if window.long else [log, now]
                continue
            if log:
                if log[0] <= now - window.length:
                    trim(log, now - window.length)
                if len(log) >= most:
                    _take_back(lane, limit, e164)
                    return False
            log.append(now)
        if slot is not None:
            slot[0] += 1
            slot[1] += 1
        return True

    def evaluate(self, query: GuardQuery, commit: bool) -> GuardAnswer:
        """The module's rules, in order; ``commit``: count the message."""
        now = query.now
        if commit:
            self._sweep_in -= 1
            if not self._sweep_in:
                self._sweep_in = SWEEP_EVERY
                self.sweep(now)
        spent = self.spent
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
        kept = None
        if a is not None:
            kept = self._slots.get(a.key)
            if kept is None:
                kept = Slots(a.slot, a.window + a.baseline, round(a.baseline / a.slot))
                if commit:
                    self._slots[a.key] = kept
            if not kept.start <= now < kept.end:
                kept.at(now)
            if commit:
                kept.cur[0] += 1
                since = self._since.setdefault(a.armed_key, now)
                kept.armed = since + a.baseline
            else:
                since = self._since.get(a.armed_key, now)
            recent, base = kept.before + kept.cur[0], kept.base
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
        found: list[tuple[VelocityWindow, str]] = []
        windows = self.windows
        for i, (key, ident, length, most) in enumerate(query.velocity):
            window = windows.get(key)
            if window is None:
                window = VelocityWindow(length, most)
                if commit:
                    windows[key] = window
            if now >= window.end:
                window.rotate(now)
            log = window.find(ident)
            n = 0 if log is None else trim(log, now - length)
            if window.held and window.held.get(ident, now) > now:  # full elsewhere
                n = max(n, most)
            if n >= most:
                return GuardAnswer(
                    "velocity", i, n, spends, tripped, recent, base, (*counts_out, n)
                )
            counts_out.append(n + 1)
            found.append((window, ident))
        if commit:
            for window, ident in found:
                window.add(ident, now)
            if kept is not None:
                kept.cur[1] += 1
        return GuardAnswer(None, 0, 0.0, spends, tripped, recent, base, tuple(counts_out))

    def spend(self, keys: Sequence[SpendKey], amount: float, now: float) -> list[float]:
        """Add ``amount`` to each key's spend; the totals after."""
        out = []
        spent = self.spent
        recorder = self.recorder
        for sk in keys:
            entry = spent.get(sk.key)
            if entry is None:
                entry = spent[sk.key] = [0.0, sk.end + SPEND_KEPT, 0.0]
            entry[0] += amount
            if entry[0] >= sk.limit:
                self.capped.add(sk.key)
            out.append(entry[0])
        if recorder is not None and recorder.asleep:
            recorder.wake(now)
        return out

    def give_back(self, lane: Lane, e164: str, member: str, now: float) -> None:
        """:meth:`GuardCounts.give_back`: the last ``now`` in each log goes."""
        for key, kind, end, _, _ in lane.velocity:
            window = self.windows.get(key)
            if window is not None:
                window.remove(
                    e164 if kind == 0 else e164[1:end] if kind == 1 else lane.country, now
                )

    # -- what a shared store counted (state.guard_checks: local) -------------------------

    def hold(self, key: str, ident: str, length: float, most: int, until: float) -> None:
        """Count the log of ``ident`` (velocity limit ``key``) as full until ``until``:
        the shared store says every replica's messages fill it until then."""
        held = self.window(key, length, most).held
        if held.get(ident, until) <= until:
            held[ident] = until

    def merge_spend(self, key: str, total: float, expires: float, cap: float) -> None:
        """Take every replica's spend on ``key`` (``total``, this one's included; ``cap``:
        the spend at which its budget is at its cap)."""
        entry = self.spent.get(key)
        if entry is None:
            self.spent[key] = [total, expires, total]
        elif total > entry[0]:  # what this process has not recorded stays so
            unrecorded = entry[0] - entry[2]
            entry[0], entry[2] = total, total - unrecorded
        if total >= cap:
            self.capped.add(key)

    def merge_anomaly(
        self, a: AnomalyQuery, slot: int, recent: int, base: int, since: float
    ) -> None:
        """Take every replica's counts of the anomaly key of ``a`` as the shared store
        had them in its slot ``slot``: the requests of the window (``recent``), the
        passed messages of the baseline before it (``base``), when the category was
        first counted (``since``).  A slot this process has left already is ignored."""
        kept = self._slots.get(a.key)
        if kept is None:
            kept = self._slots[a.key] = Slots(
                a.slot, a.window + a.baseline, round(a.baseline / a.slot)
            )
        number = round(kept.start / kept.length) if kept.end else -1
        if number > slot:
            return
        if number < slot:
            kept.at(slot * kept.length)
        first = self._since.get(a.armed_key)
        if first is None or since < first:
            self._since[a.armed_key] = first = since
        kept.armed = first + a.baseline
        # the store's counts include this process's (but not the requests counted here
        # since the batch left): never fewer than counted here
        kept.before = max(kept.before, recent - kept.cur[0])
        kept.base = max(kept.base, base)

    def add_spend(self, key: str, amount: float, expires: float, cap: float) -> None:
        """Add to a spend without reading it back (the Redis fallback's replay; ``cap``:
        the spend at which its budget is at its cap)."""
        entry = self.spent.get(key)
        if entry is None:
            entry = self.spent[key] = [amount, expires, amount]
        else:
            entry[0] += amount
            entry[2] += amount
        if entry[0] >= cap:
            self.capped.add(key)

    def take_unrecorded(self, now: float) -> list[tuple[str, float, float]]:
        """This process's spend :attr:`recorder` has not taken yet, as (key, amount,
        seconds to keep it), taken."""
        out = []
        for key, entry in self.spent.items():
            amount = entry[0] - entry[2]
            if amount:
                out.append((key, amount, entry[1] - now))
                entry[2] = entry[0]
        return out

    def has_unrecorded(self) -> bool:
        """Whether :meth:`take_unrecorded` has anything to give."""
        return any(entry[0] != entry[2] for entry in self.spent.values())

    def unrecorded(self, key: str) -> float:
        """This process's spend on ``key`` :attr:`recorder` has not taken yet."""
        entry = self.spent.get(key)
        return 0.0 if entry is None else entry[0] - entry[2]

    def sweep(self, now: float) -> None:
        """Forget the anomaly slots and spends no window or period counts any more (a
        country's :class:`Slots` stays, empty: lanes hold it)."""
        for kept in self._slots.values():
            kept.prune(now)
        for key, (_, expires, _) in list(self.spent.items()):
            if expires <= now:
                del self.spent[key]
                self.capped.discard(key)
