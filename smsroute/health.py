"""Rolling health of a provider: recent success rate and latency.

Fed by the router's send path with every answered attempt; read by the
``fastest`` and ``score`` strategies.  A provider with no data yet reads as
healthy and fast, so a new or recovered provider gets traffic to learn from.
"""

from __future__ import annotations

from collections import deque


class Health:
    """Success rate over the last ``window`` answers and an EWMA of latency."""

    __slots__ = ("_alpha", "_failures", "_outcomes", "_window", "latency")

    def __init__(self, window: int = 100, alpha: float = 0.2) -> None:
        self._window = window
        self._alpha = alpha
        self._outcomes: deque[bool] = deque()
        self._failures = 0
        #: Exponentially weighted mean latency in seconds, or None before any answer.
        self.latency: float | None = None

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
