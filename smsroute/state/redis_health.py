"""Health merged across replicas: every replica's counters, summed in Redis.

A replica records answers and receipts locally, as :class:`~smsroute.health.Health`
does, and also counts them (ok, failed, latency sum, delivered, ...).  Each
sync flushes those counts into per-time-slot hashes in Redis and reads back
the sums of every replica over ``health_window``.  Readers then see the merged
numbers plus this replica's counts not yet flushed; before the first sync, or
for a provider nobody has data on, the local window answers.

Ageing (see :mod:`smsroute.health`): merged sums cover the last
``health_window`` only, so a sync that brings any answer (or receipt) from any
replica makes those figures current here too; a provider nobody used for a
half-life reads as stale on every replica, and its local figures age.
"""

from __future__ import annotations

from smsroute.clock import Clock
from smsroute.health import HALF_LIFE, Health

#: Order of the counters in a flush and in the merged sums (as in the SYNC script).
FIELDS = ("ok", "fail", "lat", "latn", "dlv", "und", "ttd", "ttdn")


class SharedHealth(Health):
    """A :class:`Health` whose readings are the sum of every replica's recent counts."""

    __slots__ = ("id", "merged", "pending")

    def __init__(
        self,
        id: str,
        window: int = 100,
        alpha: float = 0.2,
        *,
        clock: Clock | None = None,
        half_life: float = HALF_LIFE,
    ) -> None:
        super().__init__(window, alpha, clock=clock, half_life=half_life)
        #: The health's name in Redis: ``provider|`` or ``provider|COUNTRY``.
        self.id = id
        #: Counts since the last flush, in :data:`FIELDS` order.
        self.pending = [0.0] * 8
        #: Everyone's sums over the window at the last sync (None before it).
        self.merged: tuple[float, ...] | None = None

    def record(self, ok: bool, latency: float | None) -> None:
        super().record(ok, latency)
        p = self.pending
        p[0 if ok else 1] += 1
        if latency is not None:
            p[2] += latency
            p[3] += 1

    def record_delivery(self, delivered: bool, seconds: float | None) -> None:
        super().record_delivery(delivered, seconds)
        p = self.pending
        p[4 if delivered else 5] += 1
        if delivered and seconds is not None:
            p[6] += seconds
            p[7] += 1

    def take(self) -> list[float] | None:
        """The counts to flush, reset here (None when there is nothing new)."""
        p = self.pending
        if not any(p):
            return None
        self.pending = [0.0] * 8
        return p

    def give_back(self, counts: list[float]) -> None:
        """A flush failed: keep its counts for the next one."""
        self.pending = [a + b for a, b in zip(self.pending, counts, strict=True)]

    def merge(self, sums: tuple[float, ...]) -> None:
        """Take everyone's sums; mean latency and time to deliver replace the local ones."""
        self.merged = sums
        if sums[0] or sums[1]:  # someone has answers from the last health_window
            self.touch_answers(self._clock.now())
        if sums[4] or sums[5]:
            self.touch_deliveries(self._clock.now())
        if sums[3]:
            self.latency = sums[2] / sums[3]
        if sums[7]:
            self.time_to_deliver = sums[6] / sums[7]

    @property
    def success_rate(self) -> float | None:
        m = self.merged
        if m is None:
            return super().success_rate
        p = self.pending
        good, bad = m[0] + p[0], m[1] + p[1]
        return good / (good + bad) if good + bad else super().success_rate

    @property
    def calls(self) -> int:
        m = self.merged
        if m is None:
            return super().calls
        p = self.pending
        return int(m[0] + m[1] + p[0] + p[1])

    @property
    def delivery_ratio(self) -> float | None:
        m = self.merged
        if m is None:
            return super().delivery_ratio
        p = self.pending
        good, bad = m[4] + p[4], m[5] + p[5]
        return good / (good + bad) if good + bad else super().delivery_ratio

    @property
    def receipts(self) -> int:
        m = self.merged
        if m is None:
            return super().receipts
        p = self.pending
        return int(m[4] + m[5] + p[4] + p[5])
