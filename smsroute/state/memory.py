"""Breakers, health and rate limiters kept in this process's memory.

State is keyed by provider name (and country, for per-country breakers), so
it survives a config reload: a provider that was failing before the reload is
still known to be failing after it.
"""

from __future__ import annotations

from smsroute.breaker import CircuitBreaker, TransitionHook
from smsroute.clock import Clock
from smsroute.config import ProviderConfig
from smsroute.guardcounts import MemoryGuardCounts
from smsroute.health import HALF_LIFE, Health
from smsroute.optout import OptOutStore
from smsroute.ratelimit import TokenBucket
from smsroute.state.slots import ConcurrencySlot, ConcurrencySlots
from smsroute.status import StatusStore


class MemoryState:
    """All live provider state for one router."""

    def __init__(
        self,
        clock: Clock,
        on_transition: TransitionHook | None = None,
        health_half_life: float = HALF_LIFE,
    ) -> None:
        self.clock = clock
        self.health_half_life = health_half_life
        self.on_transition = on_transition
        self._breakers: dict[tuple[str, str | None], CircuitBreaker] = {}
        self._health: dict[tuple[str, str | None], Health] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._slots = ConcurrencySlots()
        self._guards: MemoryGuardCounts | None = None

    def breaker(self, provider: ProviderConfig, country: str | None) -> CircuitBreaker:
        """The breaker for ``provider`` (per country when its scope is provider_country)."""
        key = (provider.name, country if provider.breaker_scope == "provider_country" else None)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(
                provider.breaker, self.clock, key=key, on_transition=self.on_transition
            )
            self._breakers[key] = breaker
        elif breaker.settings is not provider.breaker:
            breaker.settings = provider.breaker  # a reload changed the settings
        return breaker

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker created so far."""
        return list(self._breakers.values())

    def health(self, provider: str, country: str | None = None) -> Health:
        """Rolling health of ``provider`` overall, or towards one ``country``."""
        key = (provider, country)
        health = self._health.get(key)
        if health is None:
            health = self._health[key] = Health(clock=self.clock, half_life=self.health_half_life)
        return health

    def bucket(self, provider: ProviderConfig) -> TokenBucket:
        """The token bucket of ``provider`` (unlimited when it has no rate_limit)."""
        bucket = self._buckets.get(provider.name)
        if bucket is None:
            bucket = TokenBucket(provider.rate_limit, provider.burst, self.clock)
            bucket.configured = provider
            self._buckets[provider.name] = bucket
        elif bucket.configured is not provider:  # a reload: its rate or burst may differ
            bucket.set_limits(provider.rate_limit, provider.burst)
            bucket.configured = provider
        return bucket

    def slots(self, provider: ProviderConfig) -> ConcurrencySlot | None:
        """The concurrency cap of ``provider``, or None when uncapped."""
        return self._slots.get(provider)

    async def refill(self, bucket: TokenBucket, max_wait: float) -> float | None:
        """A bucket in memory has nothing more to give than ``reserve`` said: None."""
        return None

    def optout_store(self) -> OptOutStore:
        """Opt-outs in this process's memory."""
        return OptOutStore()

    def status_store(self) -> StatusStore:
        """Message states in this process's memory."""
        return StatusStore()

    def guard_counts(self) -> MemoryGuardCounts:
        """The guards' counts in this process's memory (one store per router)."""
        if self._guards is None:
            self._guards = MemoryGuardCounts()
        return self._guards

    @property
    def receipt_log(self) -> None:
        """No shared log: receipts are de-duplicated in the webhooks' memory only."""
        return None

    async def start(self) -> None:
        """Nothing to connect."""

    async def aclose(self) -> None:
        """Nothing to stop."""
