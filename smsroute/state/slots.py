"""The concurrency cap of each provider (``max_concurrency``): a semaphore per provider.

Always this process's own, whatever the state backend: a cap on requests in
flight is about this process's connections, not a shared budget.
"""

from __future__ import annotations

import asyncio

from smsroute.config import ProviderConfig


class ConcurrencySlots:
    """One semaphore per capped provider, remade when a reload changes the cap."""

    def __init__(self) -> None:
        self._by_provider: dict[str, tuple[int, asyncio.Semaphore]] = {}

    def get(self, provider: ProviderConfig) -> asyncio.Semaphore | None:
        """The semaphore of ``provider``, or None when it has no cap."""
        if provider.max_concurrency is None:
            return None
        entry = self._by_provider.get(provider.name)
        if entry is None or entry[0] != provider.max_concurrency:
            entry = (provider.max_concurrency, asyncio.Semaphore(provider.max_concurrency))
            self._by_provider[provider.name] = entry
        return entry[1]
