"""Rolling health of a provider: recent success rate and latency, and delivery.

Fed by the router's send path with every answered attempt, and by delivery
receipts; read by the ``fastest`` and ``score`` strategies (a provider that
accepts messages and never delivers them loses traffic).  A provider with no data yet reads as
healthy and fast, so a new or recovered provider gets traffic to learn from.

Health ages with time, on the injected clock: figures not refreshed for
``half_life`` seconds count half as much.  Read as of a time (:meth:`Health.answers_weight`,
:meth:`Health.deliveries_weight`), the success rate and delivery ratio move
toward 100% (the benefit of the doubt a new provider gets) as their weight
decays; the next answer after an idle spell forgives the same share of the
old failures and carries at least ``1 - weight`` of the latency average, so
reading and recording agree.  A provider whose figures are a half-life old is
*stale*: the strategies give it a small share of traffic to refresh them
(:data:`smsroute.selection.EXPLORE_SHARE`).
"""

from __future__ import annotations

import math
from collections import deque

from smsroute.clock import Clock, SystemClock

#: Default half-life of health figures, in seconds (``state.health_half_life``).
HALF_LIFE = 300.0

# Idle spells shorter than half_life / _FRESH change a 100-entry window by less
# than one entry: nothing is aged (no pow, no float work on a busy provider).
_FRESH = 64.0


def _forgive(window: deque[bool], bad: int, weight: float) -> int:
    """Turn the oldest ``bad - round(bad * weight)`` False entries of ``window`` True;
    the new count of False entries."""
    forgive = bad - round(bad * weight)
    if forgive <= 0:
        return bad
    items = list(window)
    for i, good in enumerate(items):
        if not good:
            items[i] = True
            forgive -= 1
            bad -= 1
            if not forgive:
                break
    window.clear()
    window.extend(items)
    return bad


class Health:
    """Success rate over the last ``window`` answers and an EWMA of latency, and
    the same for delivery: share of final receipts that said delivered, and an
    EWMA of time to deliver.  Each half carries the clock time of its last update."""

    __slots__ = (
        "_alpha",
        "_answered_at",
        "_clock",
        "_delivered_at",
        "_deliveries",
        "_failures",
        "_fresh",
        "_outcomes",
        "_undelivered",
        "_window",
        "half_life",
        "latency",
        "time_to_deliver",
    )

    def __init__(
        self,
        window: int = 100,
        alpha: float = 0.2,
        *,
        clock: Clock | None = None,
        half_life: float = HALF_LIFE,
    ) -> None:
        self._window = window
        self._alpha = alpha
        self._clock: Clock = clock if clock is not None else SystemClock()
        #: Seconds after which figures not refreshed count half as much.
        self.half_life = half_life
        self._fresh = half_life / _FRESH
        # Clock times of the last answer and receipt; inf: none yet, nothing to age.
        self._answered_at = math.inf
        self._delivered_at = math.inf
        self._outcomes: deque[bool] = deque()
        self._failures = 0
        self._deliveries: deque[bool] = deque()
        self._undelivered = 0
        #: Exponentially weighted mean latency in seconds, or None before any answer.
        self.latency: float | None = None
        #: Exponentially weighted mean seconds from acceptance to delivery, or None.
        self.time_to_deliver: float | None = None

    # -- ageing --------------------------------------------------------------------------

    def _weight(self, idle: float) -> float:
        return 1.0 if idle < self._fresh else 0.5 ** (idle / self.half_life)

    def answers_weight(self, now: float) -> float:
        """How much the success rate and latency still count at ``now``: 1.0 when
        fresh (or with no data), 0.5 after a half-life without an answer."""
        return self._weight(now - self._answered_at)

    def deliveries_weight(self, now: float) -> float:
        """:meth:`answers_weight` for the delivery ratio and time to deliver."""
        return self._weight(now - self._delivered_at)

    def touch_answers(self, now: float) -> None:
        """Answers are known to be current at ``now`` (another replica's, merged)."""
        self._answered_at = now

    def touch_deliveries(self, now: float) -> None:
        """Receipts are known to be current at ``now`` (another replica's, merged)."""
        self._delivered_at = now

    # -- delivery --------------------------------------------------------------------------

    def record_delivery(self, delivered: bool, seconds: float | None) -> None:
        """One final receipt (or a receipt that never came: ``delivered`` False)."""
        now = self._clock.now()
        idle = now - self._delivered_at
        self._delivered_at = now
        alpha = self._alpha
        window = self._deliveries
        if idle >= self._fresh:  # idle for a while: old figures count less
            weight = 0.5 ** (idle / self.half_life)
            self._undelivered = _forgive(window, self._undelivered, weight)
            alpha = max(alpha, 1.0 - weight)
        window.append(delivered)
        if not delivered:
            self._undelivered += 1
        if len(window) > self._window and not window.popleft():
            self._undelivered -= 1
        if delivered and seconds is not None:
            ttd = self.time_to_deliver
            self.time_to_deliver = seconds if ttd is None else ttd + alpha * (seconds - ttd)

    @property
    def delivery_ratio(self) -> float | None:
        """Share of final receipts in the window that said delivered, or None before any."""
        n = len(self._deliveries)
        return (n - self._undelivered) / n if n else None

    @property
    def receipts(self) -> int:
        """How many final receipts the delivery window holds."""
        return len(self._deliveries)

    # -- answers ---------------------------------------------------------------------------

    def record(self, ok: bool, latency: float | None) -> None:
        """One answer: ``ok`` when the provider behaved; ``latency`` when it answered."""
        now = self._clock.now()
        idle = now - self._answered_at
        self._answered_at = now
        alpha = self._alpha
        outcomes = self._outcomes
        if idle >= self._fresh:  # idle for a while: old figures count less
            weight = 0.5 ** (idle / self.half_life)
            self._failures = _forgive(outcomes, self._failures, weight)
            alpha = max(alpha, 1.0 - weight)
        outcomes.append(ok)
        if not ok:
            self._failures += 1
        if len(outcomes) > self._window and not outcomes.popleft():
            self._failures -= 1
        if latency is not None:
            mean = self.latency
            self.latency = latency if mean is None else mean + alpha * (latency - mean)

    @property
    def success_rate(self) -> float | None:
        """Share of good answers in the window, or None before any."""
        n = len(self._outcomes)
        return (n - self._failures) / n if n else None

    @property
    def calls(self) -> int:
        """How many answers the window holds."""
        return len(self._outcomes)
