"""Rolling health of a provider: recent success rate and latency.

Fed by the router's send path with every answered attempt, and by delivery
receipts; read by the ``fastest`` and ``score`` strategies (a provider that
accepts messages and never delivers them loses traffic).  A provider with no data yet reads as
healthy and fast, so a new or recovered provider gets traffic to learn from.
"""

from __future__ import annotations

from collections import deque


class Health:
    """Success rate over the last ``window`` answers and an EWMA of latency, and
    the same for delivery: share of final receipts that said delivered, and an
    EWMA of time to deliver."""

    __slots__ = (
        "_alpha",
        "_deliveries",
        "_failures",
        "_outcomes",
        "_undelivered",
        "_window",
        "latency",
        "time_to_deliver",
    )

    def __init__(self, window: int = 100, alpha: float = 0.2) -> None:
        self._window = window
        self._alpha = alpha
        self._outcomes: deque[bool] = deque()
        self._failures = 0
        self._deliveries: deque[bool] = deque()
        self._undelivered = 0
        #: Exponentially weighted mean latency in seconds, or None before any answer.
        self.latency: float | None = None
        #: Exponentially weighted mean seconds from acceptance to delivery, or None.
        self.time_to_deliver: float | None = None

    def record_delivery(self, delivered: bool, seconds: float | None) -> None:
        """One final receipt (or a receipt that never came: ``delivered`` False)."""
        window = self._deliveries
        window.append(delivered)
        if not delivered:
            self._undelivered += 1
        if len(window) > self._window and not window.popleft():
            self._undelivered -= 1
        if delivered and seconds is not None:
            ttd = self.time_to_deliver
            self.time_to_deliver = seconds if ttd is None else ttd + self._alpha * (seconds - ttd)

    @property
    def delivery_ratio(self) -> float | None:
        """Share of final receipts in the window that said delivered, or None before any."""
        n = len(self._deliveries)
        return (n - self._undelivered) / n if n else None

    @property
    def receipts(self) -> int:
        """How many final receipts the delivery window holds."""
        return len(self._deliveries)

    def record(self, ok: bool, latency: float | None) -> None:
        """One answer: ``ok`` when the provider behaved; ``latency`` when it answered."""
        outcomes = self._outcomes
        outcomes.append(ok)
        if not ok:
            self._failures += 1
        if len(outcomes) > self._window and not outcomes.popleft():
            self._failures -= 1
        if latency is not None:
            self.latency = (
                latency
                if self.latency is None
                else self.latency + self._alpha * (latency - self.latency)
            )

    @property
    def success_rate(self) -> float | None:
        """Share of good answers in the window, or None before any."""
        n = len(self._outcomes)
        return (n - self._failures) / n if n else None

    @property
    def calls(self) -> int:
        """How many answers the window holds."""
        return len(self._outcomes)
