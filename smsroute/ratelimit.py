"""Token buckets per provider, and pauses after a provider says Retry-After."""

from __future__ import annotations

from smsroute.clock import Clock


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; time from an injected clock.

    ``pause_until`` blocks the bucket until an absolute time (a 429's Retry-After).

    >>> bucket = TokenBucket(rate=10, burst=1, clock=ManualClock())
    >>> bucket.try_acquire(), bucket.try_acquire()
    (0.0, 0.1)
    >>> bucket.reserve(max_wait=1.0)   # take the next token, usable in 0.1 s
    0.1
    """

    __slots__ = ("_last", "_tokens", "burst", "clock", "configured", "paused_until", "rate")

    def __init__(self, rate: float | None, burst: int | None, clock: Clock) -> None:
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate or 1)))
        self.clock = clock
        self._tokens = self.burst
        self._last = clock.now()
        self.paused_until: float | None = None
        #: The provider config the limits were taken from (a state backend's: a reload
        #: makes new ones, see :meth:`set_limits`).
        self.configured: object = None

    def set_limits(self, rate: float | None, burst: int | None) -> None:
        """Take a reloaded provider's rate and burst; the tokens at hand are kept (at most
        the new burst)."""
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate or 1)))
        self._tokens = min(self._tokens, self.burst)

    def try_acquire(self) -> float:
        """Take a token and return 0.0, or take nothing and return the seconds to wait."""
        wait = self.reserve(0.0)
        return 0.0 if wait is not None else self.wait_time()

    def wait_time(self) -> float:
        """Seconds until a token would be free (0.0 when one is free now)."""
        now = self.clock.now()
        if self.paused_until is not None and now < self.paused_until:
            return self.paused_until - now
        if self.rate is None:
            return 0.0
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def reserve(self, max_wait: float) -> float | None:
        """Reserve a token: the seconds to wait before using it (0.0: use it now).

        Returns None, reserving nothing, when the wait would exceed ``max_wait``
        or the bucket is paused.  Reserving ahead (tokens may go negative) keeps
        concurrent waiters in order and the long-run rate exact.
        """
        now = self.clock.now()
        paused = self.paused_until
        if paused is not None:
            if now < paused:
                return None
            self.paused_until = None
        rate = self.rate
        if rate is None:
            return 0.0
        tokens = min(self.burst, self._tokens + (now - self._last) * rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        wait = (1.0 - tokens) / rate
        self._tokens = tokens
        if wait > max_wait:
            return None
        self._tokens = tokens - 1.0
        return wait

    def refund(self, at: float) -> None:
        """Give back a token reserved for clock time ``at`` that was never used.

        A send cancelled while it waited for its token returns it, so a caller
        that gives up does not lower the rate left for everyone else.
        """
        if self.rate is not None:
            self._tokens = min(self.burst, self._tokens + 1.0)

    def pause_until(self, when: float) -> None:
        """Refuse tokens until the absolute clock time ``when`` (keeps the later pause)."""
        if self.paused_until is None or when > self.paused_until:
            self.paused_until = when

    def paused_for(self) -> float:
        """Seconds left of a Retry-After pause (0.0 when not paused)."""
        if self.paused_until is None:
            return 0.0
        return max(0.0, self.paused_until - self.clock.now())
