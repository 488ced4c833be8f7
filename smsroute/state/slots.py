"""The concurrency cap of each provider (``max_concurrency``): a counted slot per provider.

Always this process's own, whatever the state backend: a cap on requests in
flight is about this process's connections, not a shared budget.

:class:`ConcurrencySlot` is a semaphore with a synchronous fast path: while a
slot is free, :meth:`~ConcurrencySlot.try_acquire` takes it with no await, so
the send path needs no timer and no coroutine for it.  Measured under callgrind
(bench/callgrind_send.py, realistic config with and without ``max_concurrency``;
bench/RESULTS.md, "a realistic config"): an uncontended slot taken through
``asyncio.Semaphore`` under ``asyncio.timeout_at`` cost 54.5k instructions per
message (0.08x of raw aiohttp's whole send); taken by ``try_acquire``, 1.6k.
Only a send that finds every slot taken waits, in FIFO order, under the
attempt's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType

from smsroute.config import ProviderConfig


class ConcurrencySlot:
    """``capacity`` slots: :meth:`try_acquire` (no wait) or :meth:`acquire`, then :meth:`release`.

    The interface of :class:`asyncio.Semaphore` (``acquire``, ``release``,
    ``locked``, ``async with``) plus :meth:`try_acquire`.  Waiters are served
    first come, first served: a released slot goes straight to the oldest
    waiter, and :meth:`try_acquire` never takes a slot while anyone waits.  A
    waiter cancelled after it was handed a slot gives the slot back.
    """

    __slots__ = ("_free", "_waiters", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a concurrency cap needs at least one slot, not {capacity}")
        self.capacity = capacity
        self._free = capacity
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        """Whether :meth:`acquire` would wait now."""
        return self._free == 0 or bool(self._waiters)

    @property
    def in_use(self) -> int:
        """Slots taken now."""
        return self.capacity - self._free

    @property
    def waiting(self) -> int:
        """Callers queued in :meth:`acquire` now."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for one; never waits."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> bool:
        """Take a slot, waiting (first come, first served) while none is free."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before using it: pass it on
            else:
                with contextlib.suppress(ValueError):  # already handed over and skipped
                    self._waiters.remove(waiter)
            raise
        return True

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if any, else to the free count."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it directly
                return
        if self._free >= self.capacity:
            raise ValueError("ConcurrencySlot released more often than acquired")
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ConcurrencySlots:
    """One :class:`ConcurrencySlot` per capped provider, remade when a reload changes the cap."""

    def __init__(self) -> None:
        self._by_provider: dict[str, ConcurrencySlot] = {}
        #: Every slot made, by provider and cap: after a reload that changed a cap, the
        #: sends still on the old config and those on the new one each keep theirs (not a
        #: new one, empty, every time the other asks: the caps would not hold).
        self._made: dict[tuple[str, int], ConcurrencySlot] = {}

    def get(self, provider: ProviderConfig) -> ConcurrencySlot | None:
        """The slots of ``provider``, or None when it has no cap."""
        cap = provider.max_concurrency
        if cap is None:
            return None
        slot = self._by_provider.get(provider.name)
        if slot is None or slot.capacity != cap:
            slot = self._made.get((provider.name, cap))
            if slot is None:
                slot = self._made[(provider.name, cap)] = ConcurrencySlot(cap)
            self._by_provider[provider.name] = slot
        return slot
