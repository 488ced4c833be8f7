"""One rate limit per provider for every replica: a GCRA schedule in Redis, leased in batches.

Redis keeps the provider's schedule as one number, the theoretical arrival
time (TAT) of its next slot, in Redis time.  A replica asks for several
consecutive slots at once (:data:`~smsroute.state.redis_scripts.RESERVE`) and
gets back when each may be used: ``start + i / rate``.  Slots are disjoint
across replicas, so the replicas together send at most ``rate`` per second
(plus ``burst - 1`` after an idle spell), however many they are.  A message
takes the next local slot and waits until its time, exactly as with the
in-memory bucket; only when the local slots run out does it await one Redis
call, shared by every message waiting at that moment.

How many slots to ask for: the messages waiting now, or the demand of the
last moments over :data:`LEASE_HORIZON` if more, never more than
:data:`LEASE_SHARE` of a second at the provider's rate (so one replica cannot
hoard the schedule).  A slot nobody used within :data:`GRACE` of its time is
dropped: sending on it late would put more sends in some second than the rate
allows.  For the same reason a lease asks for slots that start at least a
*lead* ahead of now, the time this replica has lately taken to read a reply
(a busy event loop reads late), so that slots arrive before they are due;
slots of a lease that still came late are dropped, unless this replica was
late twice in a row (then it sends on them rather than starve).

While Redis is down a replica falls back to a local bucket with the rate
divided by the number of replicas it last saw alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from smsroute.config import ProviderConfig
from smsroute.ratelimit import TokenBucket

if TYPE_CHECKING:
    from smsroute.state.redis_shared import SharedBackend

#: Seconds after its time that an unused slot may still be taken.
GRACE = 0.010
#: Seconds of recent demand one lease covers.
LEASE_HORIZON = 0.02
#: Largest lease, as a share of one second at the provider's rate.
LEASE_SHARE = 0.05
#: Largest lease in slots, whatever the rate.
MAX_LEASE = 1000
#: Slots are never leased further ahead than this (seconds), whatever a caller would wait.
MAX_HORIZON = 60.0
#: Largest lead (seconds) asked of Redis: slots start at least this far ahead.
MAX_LEAD = 0.1
#: Seconds the limit is kept in this process after Redis answered that the rate or pause
#: key holds data smsroute did not write (Redis is up; that key cannot be used), before
#: Redis is asked again.
BAD_DATA_LOCAL = 10.0

log = logging.getLogger("smsroute.state")

#: A recording hook called once per lease (never per message): the Redis times of the
#: lease's slots in order, how many of them were kept (the last ones, now also the last
#: entries of the bucket's local slot queue), and the offset (Redis time minus local
#: clock) they were converted with.  Tests set it to check the grants themselves.
LeaseHook = Callable[[list[float], int, float], None]


class SharedBucket(TokenBucket):
    """A :class:`TokenBucket` whose tokens are slots of a schedule shared through Redis."""

    __slots__ = (
        "_backend",
        "_demand",
        "_demand_since",
        "_fallback",
        "_fetching",
        "_full_until",
        "_late_leases",
        "_lead",
        "_local_until",
        "_rate_est",
        "_slots",
        "_waiters",
        "name",
        "on_lease",
        "pause_key",
        "rate_key",
        "unpublished_pause",
    )

    def __init__(self, provider: ProviderConfig, backend: SharedBackend) -> None:
        super().__init__(provider.rate_limit, provider.burst, backend.clock)
        self._backend = backend
        self.name = provider.name
        prefix = backend.settings.key_prefix
        self.rate_key = f"{prefix}rate:{provider.name}"
        self.pause_key = f"{prefix}pause:{provider.name}"
        #: Local times of slots leased from Redis, in order.
        self._slots: deque[float] = deque()
        #: No slot within max_wait before this local time (the schedule is full).
        self._full_until = -math.inf
        self._fetching: asyncio.Future[int] | None = None
        self._waiters = 0
        self._late_leases = 0
        self._lead = 0.0
        self._demand = 0
        self._demand_since = self.clock.now()
        self._rate_est = 0.0
        self._fallback: tuple[int, TokenBucket] | None = None
        #: Counted in this process until then (local clock): see :data:`BAD_DATA_LOCAL`.
        self._local_until = -math.inf
        #: The end (local clock) of a Retry-After pause still to be written to Redis.
        self.unpublished_pause: float | None = None
        #: See :data:`LeaseHook`; None (the default) records nothing.
        self.on_lease: LeaseHook | None = None

    def configure(self, provider: ProviderConfig) -> None:
        """Take a reloaded provider's rate and burst."""
        if provider.rate_limit != self.rate or (
            provider.burst is not None and float(provider.burst) != self.burst
        ):
            self.rate = provider.rate_limit
            self.burst = float(
                provider.burst if provider.burst is not None else max(1, int(self.rate or 1))
            )
            self._slots.clear()
            self._fallback = None

    # -- the send path ---------------------------------------------------------------

    def reserve(self, max_wait: float) -> float | None:
        """A leased slot: seconds to wait before using it, or None (no slot in time at hand)."""
        self._demand += 1
        return self._take(max_wait)

    def _take(self, max_wait: float) -> float | None:
        now = self.clock.now()
        paused = self.paused_until
        if paused is not None:
            if now < paused:
                return None
            self.paused_until = None
        if self.rate is None:
            return 0.0
        if not self._backend.link.up or now < self._local_until:
            return self._local().reserve(max_wait)
        slots = self._slots
        horizon = now - GRACE
        while slots:
            at = slots[0]
            if at < horizon:
                slots.popleft()  # nobody took it in time
                continue
            wait = at - now
            if wait > max_wait:
                return None
            slots.popleft()
            return wait if wait > 0.0 else 0.0
        if self._fetching is None and now >= self._full_until:
            # Start leasing now: the router awaits it through fill(); a caller that only
            # polls reserve() (the outbox worker) finds the slots on its next try.
            with contextlib.suppress(RuntimeError):  # no running event loop: no lease
                self._start_lease(max_wait)
        return None

    def refund(self, at: float) -> None:
        """Put back the leased slot for local time ``at``: its send was cancelled unused."""
        if self.rate is None:
            return
        if not self._backend.link.up or self.clock.now() < self._local_until:
            self._local().refund(at)
            return
        slots = self._slots
        i = 0
        while i < len(slots) and slots[i] <= at:
            i += 1
        slots.insert(i, at)

    async def fill(self, max_wait: float) -> float | None:
        """Lease more slots from Redis (one call for every message waiting now) and take one.

        Gives up (None) when Redis has no slot within ``max_wait``, counted from the
        call: time spent waiting for leases is part of the wait.
        """
        self._waiters += 1
        until = self.clock.now() + max_wait
        try:
            while True:
                left = until - self.clock.now()
                if left < 0.0:
                    return None
                wait = self._take(left)
                if wait is not None or self.paused_until is not None or self._slots:
                    return wait  # a slot, a pause, or the next slot too far for max_wait
                if not self._backend.link.up or self.rate is None:
                    return wait
                if self.clock.now() < self._local_until:
                    return self._take(until - self.clock.now())
                if self.clock.now() < self._full_until:
                    return None
                fetching = self._fetching
                if fetching is None:
                    fetching = self._start_lease(left)
                await asyncio.shield(fetching)
                if not fetching.result() and not self._slots:
                    return self._take(until - self.clock.now())  # nothing granted: no retry
                # Slots came (perhaps taken by other waiters first): take one, or lease again.
        finally:
            self._waiters -= 1

    def _start_lease(self, max_wait: float) -> asyncio.Future[int]:
        asyncio.get_running_loop()  # RuntimeError outside one, before anything is created
        fetching = self._fetching = asyncio.ensure_future(self._lease(max_wait))
        fetching.add_done_callback(_retrieve)
        return fetching

    def _lease_size(self) -> int:
        now = self.clock.now()
        elapsed = now - self._demand_since
        if elapsed > 0.0:
            rate = self._demand / elapsed
            self._rate_est = rate if elapsed > 1.0 else 0.5 * self._rate_est + 0.5 * rate
            self._demand = 0
            self._demand_since = now
        assert self.rate is not None
        want = max(self._waiters, math.ceil(self._rate_est * LEASE_HORIZON))
        cap = max(1, min(MAX_LEASE, math.ceil(self.rate * LEASE_SHARE)))
        return max(1, min(want, cap))

    async def _lease(self, max_wait: float) -> int:
        """Ask Redis for slots; returns how many came."""
        try:
            return await self._ask(min(max_wait, MAX_HORIZON))
        except Exception:  # a bug must not fail sends: they wait for the next lease
            log.exception("smsroute: leasing rate-limit slots of %s failed", self.name)
            return 0
        finally:
            self._fetching = None  # before any waiter resumes

    async def _ask(self, max_wait: float) -> int:
        rate = self.rate
        if rate is None:
            return 0
        interval = 1.0 / rate
        tau = (self.burst - 1.0) * interval
        count = self._lease_size()
        backend = self._backend
        lead = self._lead
        reply = await backend.link.run(
            "ratelimit",
            lambda: backend.scripts.reserve(
                keys=[self.rate_key, self.pause_key],
                args=[count, repr(interval), repr(tau), repr(max_wait), repr(lead)],
            ),
        )
        if reply is None:
            if backend.link.up:  # it answered that the rate or pause key is not smsroute's
                self._local_until = self.clock.now() + BAD_DATA_LOCAL
            return 0  # Redis is down (or that): reserve() now uses the local fallback
        granted, now_r, paused_r, start_r = int(reply[0]), *(float(x) for x in reply[1:])
        offset = backend.offset(now_r)
        arrived = self.clock.now()
        if not paused_r:  # how late this reply was read: the next lease starts that far ahead
            late = arrived - (now_r - lead - offset)
            self._lead = min(MAX_LEAD, max(0.0, self._lead + 0.3 * (late - self._lead)))
        if paused_r > 0.0:
            self.pause_until(paused_r - offset, publish=False)
            return 0
        if granted == 0:
            self._full_until = start_r - max_wait - offset
            return 0
        # A slot that arrives more than GRACE after its time is dropped: sending on it
        # now would put more sends in a second than the rate allows.  Only when this
        # replica is so slow that a whole lease came late twice in a row are late slots
        # used (at arrival), or it would never send at all.
        too_late = arrived - GRACE
        slots = self._slots
        kept = 0
        for i in range(granted):
            at = max(now_r, start_r + i * interval) - offset
            if at >= too_late or self._late_leases:
                slots.append(at if at > arrived else arrived)
                kept += 1
        self._late_leases = 0 if kept else self._late_leases + 1
        on_lease = self.on_lease
        if on_lease is not None:  # a test's record of the grants (slot times only grow, so
            # the kept slots are the last ones)
            on_lease([max(now_r, start_r + i * interval) for i in range(granted)], kept, offset)
        return granted

    # -- pauses and the fallback -------------------------------------------------------

    def pause_until(self, when: float, *, publish: bool = True) -> None:
        """Refuse slots until ``when``; a pause this replica was told of is shared."""
        super().pause_until(when)
        if publish:
            self._slots.clear()  # leased before the provider said stop
            if self.unpublished_pause is None or when > self.unpublished_pause:
                self.unpublished_pause = when
                self._backend.wake()

    def _local(self) -> TokenBucket:
        replicas = max(1, self._backend.replicas)
        entry = self._fallback
        if entry is None or entry[0] != replicas:
            assert self.rate is not None
            share = self.rate / replicas
            burst = max(1, int(self.burst) // replicas)
            entry = self._fallback = (replicas, TokenBucket(share, burst, self.clock))
        return entry[1]


def _retrieve(future: asyncio.Future[int]) -> None:
    """Mark a lease's exception as seen (a lease nobody awaited must not warn)."""
    if not future.cancelled():
        future.exception()
