"""A circuit breaker whose state is shared by every replica through Redis.

Each replica runs the ordinary state machine of :mod:`smsroute.breaker` on
its own calls (its own failure window), so the send path never waits for
Redis.  What is shared is the state: when a replica's breaker opens or
closes, the change is written to Redis at once by a compare-and-set script
(:data:`~smsroute.state.redis_scripts.BREAKER_SET`) on the breaker's version;
the other replicas adopt it at their next sync, within ``sync_interval``.

    replica A: CLOSED --failures--> OPEN   --CAS v4->v5: open, reopen_at (Redis time)-->  Redis
    replica B: CLOSED ............ sync sees v5 --> adopts OPEN and the same reopen_at

A replica whose CAS finds another version changes nothing and adopts what
Redis holds: two replicas opening at once count one open, not two (so the
open time does not double).  An open breaker stores its absolute reopen
time; every replica reads it as half-open from then on and sends up to
``half_open_probes`` probes; the first verdict written wins.
"""

from __future__ import annotations

from collections.abc import Callable

from smsroute.breaker import BreakerState, CircuitBreaker, TransitionHook
from smsroute.clock import Clock
from smsroute.config import BreakerSettings


def field_of(key: tuple[str, str | None]) -> str:
    """The breakers hash field of a (provider, country or None) key."""
    return f"{key[0]}|{key[1] or ''}"


def key_of(field: str) -> tuple[str, str | None]:
    """The (provider, country or None) key of a breakers hash field."""
    provider, _, country = field.rpartition("|")
    return provider, country or None


class SharedBreaker(CircuitBreaker):
    """A :class:`CircuitBreaker` that publishes its transitions and adopts other replicas'."""

    __slots__ = ("_adopting", "_publish", "field", "pending", "version")

    def __init__(
        self,
        settings: BreakerSettings,
        clock: Clock,
        publish: Callable[[SharedBreaker], None],
        *,
        key: tuple[str, str | None],
        on_transition: TransitionHook | None = None,
    ) -> None:
        super().__init__(settings, clock, key=key, on_transition=on_transition)
        self._publish = publish  # RedisState.publish: write this breaker to Redis now
        self._adopting = False
        self.field = field_of(key)
        #: The shared version this replica last wrote or adopted (0: never written).
        self.version = 0
        #: A local transition not yet written to Redis: OPEN or CLOSED.
        self.pending: BreakerState | None = None

    def _transition(self, to: BreakerState) -> None:
        before = self._state
        super()._transition(to)
        # Half-open is not written: every replica derives it from the shared reopen time.
        if not self._adopting and before is not to and to is not BreakerState.HALF_OPEN:
            self.pending = to
            self._publish(self)

    def adopt(self, version: int, state: str, opens: int, reopen_at: float | None) -> None:
        """Take the shared state (``reopen_at`` already on this replica's clock)."""
        self.version = version
        self._adopting = True
        try:
            if state == "open":
                self.opens = opens
                self.reopen_at = reopen_at
                if self._state is not BreakerState.OPEN:
                    self._probes_in_flight = 0
                    self._probe_successes = 0
                    self._transition(BreakerState.OPEN)
            elif self._state is not BreakerState.CLOSED:
                self._close()
        finally:
            self._adopting = False
