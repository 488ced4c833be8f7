"""What a state backend offers the router, and how the config picks one.

A backend holds the live state of every provider: circuit breakers, health,
rate limits and concurrency slots.  The router's send path calls only the
synchronous methods below (dictionary lookups and local arithmetic); the one
await is :meth:`StateBackend.refill`, called when a rate-limited provider's
bucket has no token at hand.

    state:                        # in the config
      backend: memory | redis     # memory: this process alone (the default)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from smsroute.breaker import CircuitBreaker, TransitionHook
from smsroute.clock import Clock
from smsroute.config import ProviderConfig, StateSettings
from smsroute.errors import StateBackendUnavailable
from smsroute.guardquery import GuardCounts
from smsroute.health import Health
from smsroute.instrument.events import Event
from smsroute.optout import OptOutStore
from smsroute.ratelimit import TokenBucket
from smsroute.state.slots import ConcurrencySlot
from smsroute.status import StatusStore

if TYPE_CHECKING:
    from smsroute.state.redis_receipts import ReceiptLog


class StateBackend(Protocol):
    """Breakers, health, rate limits and slots for one router."""

    def breaker(self, provider: ProviderConfig, country: str | None) -> CircuitBreaker:
        """The breaker for ``provider`` (per country when its scope is provider_country)."""
        ...

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker this router has used."""
        ...

    def health(self, provider: str, country: str | None = None) -> Health:
        """Health of ``provider`` overall, or towards one ``country``."""
        ...

    def bucket(self, provider: ProviderConfig) -> TokenBucket:
        """The rate limiter of ``provider``."""
        ...

    def slots(self, provider: ProviderConfig) -> ConcurrencySlot | None:
        """The concurrency cap of ``provider`` in this process, or None."""
        ...

    async def refill(self, bucket: TokenBucket, max_wait: float) -> float | None:
        """After ``bucket.reserve`` said None: get more tokens if the backend can.

        Returns the seconds to wait for a token now reserved, or None.
        """
        ...

    def optout_store(self) -> OptOutStore:
        """The store of numbers that opted out, for the router to use."""
        ...

    def status_store(self) -> StatusStore:
        """The store of message states, for the router to use."""
        ...

    def guard_counts(self) -> GuardCounts:
        """The counts of the fraud and spend guards (velocity, anomaly, spend)."""
        ...

    @property
    def receipt_log(self) -> ReceiptLog | None:
        """Receipts already processed by any replica (None: this process's memory only)."""
        ...

    async def start(self) -> None:
        """Connect and start background work; raise :class:`StateBackendUnavailable`."""
        ...

    async def aclose(self) -> None:
        """Stop background work and flush what is pending."""
        ...


def open_state(
    settings: StateSettings,
    clock: Clock,
    on_transition: TransitionHook | None = None,
    emit: Callable[[Event], None] | None = None,
) -> StateBackend:
    """The backend ``settings`` asks for (nothing is connected before :meth:`start`)."""
    if settings.backend == "memory":
        from smsroute.state.memory import MemoryState

        return MemoryState(clock, on_transition, settings.health_half_life)
    try:
        from smsroute.state.redis import RedisState
    except ImportError as exc:
        raise StateBackendUnavailable(
            f"state.backend is redis but the redis package cannot be imported ({exc}): "
            "install it with pip install 'smsroute[redis]'"
        ) from None
    return RedisState(settings, clock, on_transition, emit)
