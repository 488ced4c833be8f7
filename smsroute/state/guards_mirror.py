"""The guards' counts when each replica decides at once (``state.guard_checks: local``).

With ``state.guard_checks: exact`` (the default) a guarded message waits for Redis to
check and count it (:mod:`smsroute.state.redis_guards`): every limit holds exactly
across replicas, and every such send waits for one round trip.  With ``local`` the
replica decides from counts in its own memory (:class:`Mirror`, the memory counts and
their fast path), every message it decided on is counted in Redis with the next batch
(within :data:`~smsroute.state.redis_guards.SPEND_DELAY` or a round trip), and each
batch's answer brings back what Redis counted from every replica:

- a velocity log that is at its limit: held full here until it falls below its max in
  Redis (:meth:`~smsroute.guardcounts.MemoryGuardCounts.hold`);
- an anomaly key's requests over the window, passed messages over the baseline and
  when its category was first counted: the guard trips and releases on the whole
  traffic, with this replica's events;
- every budget's spend.

The price: a limit can be overrun, across replicas, by the messages other replicas
accept before they hear it is reached: a replica learns that a log is full from the
message that fills it, or from the first one it accepts past it, so in the common case
each other replica accepts at most one message more per log and window (more only if
it accepts several to the same log within one batch's round trip).  One replica alone
counts exactly, as the memory backend does.  ``explain`` reads the counts in Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smsroute.guardcounts import MemoryGuardCounts
from smsroute.guardquery import SPEND_KEPT, GuardAnswer, GuardQuery, Lane
from smsroute.instrument.events import Event, GuardOverrun

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from smsroute.state.guards_spec import Spec
    from smsroute.state.redis_guards import RedisGuardCounts


class Mirror(MemoryGuardCounts):
    """Counts in this process that decide, recorded in Redis and told what every
    replica counted (see the module)."""

    def __init__(
        self, remote: RedisGuardCounts, emit: Callable[[Event], None] | None = None
    ) -> None:
        super().__init__()
        self.remote = remote
        self._emit = emit
        remote.mirror = self
        remote.local = self  # what answers while Redis is down: the same counts
        self.recorder = remote  # what fast() passes, and spend (see Guards)

    # -- deciding, and recording what was decided -------------------------------------

    def evaluate(self, query: GuardQuery, commit: bool) -> GuardAnswer:
        answer = MemoryGuardCounts.evaluate(self, query, commit)
        refused = answer.refused
        # a budget refusal counts nothing; a refusal counts only the anomaly's request
        if commit and refused != "budget" and (refused is None or query.anomaly is not None):
            self.remote.record_query(query, refused is None)
        return answer

    def peek(self, query: GuardQuery) -> GuardAnswer:
        """What a check would answer with every replica's counts (read in Redis), or
        with this process's while Redis is down."""
        if self.remote.up:
            return self.remote.peek(query)
        return MemoryGuardCounts.peek(self, query)

    def give_back(self, lane: Lane, e164: str, member: str, now: float) -> None:
        """Out of this process's windows, and of Redis's with the next batch; the logs
        Redis said were full (this message's count may have filled them) are released
        now and again when Redis has taken it out (see :meth:`release`)."""
        MemoryGuardCounts.give_back(self, lane, e164, member, now)
        self._release(lane, e164)
        if self.remote.up:
            self.remote.give_back(lane, e164, member, now)

    def release(self, specs: Sequence[Spec], numbers: Sequence[str | None]) -> None:
        """Redis took given-back messages out of their logs: the holds an earlier answer
        put on those logs go (a log still full elsewhere is held again by the next
        message's answer)."""
        for spec, e164 in zip(specs, numbers, strict=True):
            if spec.lane is not None and e164 is not None:
                self._release(spec.lane, e164)

    def _release(self, lane: Lane, e164: str) -> None:
        for key, kind, end, _, _ in lane.velocity:
            window = self.windows.get(key)
            if window is not None and window.held:
                window.held.pop(
                    e164 if kind == 0 else e164[1:end] if kind == 1 else lane.country, None
                )

    # -- what Redis counted -------------------------------------------------------------

    def learn(
        self, specs: Sequence[Spec], numbers: Sequence[str | None], mark: int, reply: Any
    ) -> None:
        """Take a batch's answer (``mark``: the batch, as the specs carry it): the
        spends, anomaly counts and full velocity logs of every replica."""
        _, lanes, details = reply
        n = 0
        for spec in specs:
            if spec.mark != mark:
                continue
            spec.mark = -mark  # its lane's answer is next
            capvals, reads, recent, base, since, slot = lanes[n]
            n += 1
            lane = spec.lane
            if lane is None:
                continue
            for sk, key, value in zip(lane.budgets, spec.keys, [*capvals, *reads], strict=True):
                if sk.key == key:  # still the current period
                    total = float(value) + self.remote.unwritten(key) + self.unrecorded(key)
                    self.merge_spend(key, total, sk.end + SPEND_KEPT, sk.limit)
            if lane.anomaly is not None and since:
                self.merge_anomaly(lane.anomaly, int(slot), int(recent), int(base), float(since))
        for k in range(0, len(details), 2):
            q = details[k] - 1
            spec, e164 = specs[q], numbers[q]
            for item in details[k + 1].split(" "):
                v_text, until_text, *over = item.split(":")
                v, until = int(v_text), float(until_text)
                if spec.query is not None:
                    key, ident, length, most = spec.query.velocity[v]
                    country = ""
                else:
                    assert spec.lane is not None
                    assert e164 is not None
                    lane = spec.lane
                    key, kind, end, length, most = lane.velocity[v]
                    ident = e164 if kind == 0 else e164[1:end] if kind == 1 else lane.country
                    country = lane.country
                self.hold(key, ident, length, most, until)
                if over and self._emit is not None:
                    per = key.split("|")[2].rstrip("0123456789")  # v|scope|<per><digits>|...
                    self._emit(GuardOverrun(per, country))
