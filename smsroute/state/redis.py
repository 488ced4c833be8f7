"""Breakers, health and rate limits shared by every replica through Redis.

The send path reads and writes only local objects, as with
:class:`~smsroute.state.memory.MemoryState`; one background task per router
keeps them in step with Redis:

* at once, when something changes here: a breaker that opened or closed is
  written by compare-and-set (:mod:`~smsroute.state.redis_breaker`), a
  provider's Retry-After pause is shared;
* every ``sync_interval`` (250 ms by default), in one script call: this
  replica's heartbeat, every breaker changed by others since the last sync,
  shared pauses, and health (this replica's counters in, everyone's sums out,
  :mod:`~smsroute.state.redis_health`).

So a breaker opened by one replica is obeyed by the others within
``sync_interval`` plus one round trip (at most 1 s by config), and the hot
path makes no Redis call for breaker state or health.  Rate limits are the
exception that must be exact: they are slots of one schedule per provider in
Redis, leased in batches (:mod:`~smsroute.state.redis_bucket`).

Times in Redis are absolute, on the Redis server's clock (``TIME`` in the
scripts).  Each replica estimates the offset between that clock and its own
monotonic clock from its syncs (the sample with the shortest round trip of
the last few), and converts on the way in and out.

Needs Redis 6.2 or later (the opt-out log uses ``XADD MINID``); a single
server or a primary with replicas, not Redis Cluster (scripts derive keys).

When Redis fails, :class:`~smsroute.state.redis_link.RedisLink` says so
(a log line and ``smsroute_state_backend_errors_total``); everything keeps
working on local state, and what happened meanwhile (breaker changes, health
counts) is written when Redis answers again.  Keys of providers this config
does not name are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import secrets
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from smsroute.aio import stop_task, wait_event
from smsroute.breaker import BreakerState, CircuitBreaker, TransitionHook
from smsroute.clock import Clock
from smsroute.config import ProviderConfig, StateSettings
from smsroute.health import Health
from smsroute.instrument.events import Event
from smsroute.optout import OptOutStore
from smsroute.ratelimit import TokenBucket
from smsroute.state.guards_mirror import Mirror
from smsroute.state.redis_breaker import SharedBreaker
from smsroute.state.redis_bucket import SharedBucket
from smsroute.state.redis_guards import RedisGuardCounts
from smsroute.state.redis_health import SharedHealth
from smsroute.state.redis_link import RedisLink
from smsroute.state.redis_optouts import RedisOptOuts
from smsroute.state.redis_receipts import ReceiptLog
from smsroute.state.redis_shared import Scripts
from smsroute.state.slots import ConcurrencySlot, ConcurrencySlots
from smsroute.status import StatusStore

log = logging.getLogger("smsroute.state")

#: Time slots per health window (the window read is the current slot and the ones before).
HEALTH_SLOTS = 6
#: Clock-offset samples kept; the one with the shortest round trip wins.
CLOCK_SAMPLES = 16


def _parse_breaker(packed: str) -> tuple[int, str, int, float] | None:
    """A breaker as :data:`~smsroute.state.redis_scripts.BREAKER_SET` packs it, or None
    when ``packed`` is not such a value (not smsroute's: the breaker's next change writes
    it anew, see that script)."""
    parts = packed.split(",")
    if len(parts) != 4 or parts[1] not in ("open", "closed"):
        return None
    try:
        version, opens, reopen_at = int(parts[0]), int(parts[2]), float(parts[3])
    except ValueError:
        return None
    if version < 0 or opens < 0 or not math.isfinite(reopen_at):
        return None
    return version, parts[1], opens, reopen_at


class RedisState:
    """All live provider state for one router, shared with other replicas through Redis.

    >>> state = RedisState(config.state, SystemClock())
    >>> await state.start()          # raises StateBackendUnavailable if Redis does not answer
    >>> state.breaker(config.providers["twilio"], "DE").state
    <BreakerState.CLOSED: 'closed'>
    """

    def __init__(
        self,
        settings: StateSettings,
        clock: Clock,
        on_transition: TransitionHook | None = None,
        emit: Callable[[Event], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.on_transition = on_transition
        self._emit = emit
        self.link = RedisLink(settings, emit)
        self.scripts = Scripts(self.link)
        #: This process among the replicas (host:pid:random).
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        #: Live replicas seen at the last sync (this one included).
        self.replicas = 1
        prefix = settings.key_prefix
        self.keys = {
            "breakers": f"{prefix}breakers",
            "breakers_version": f"{prefix}breakers:version",
            "replicas": f"{prefix}replicas",
            "health": f"{prefix}health:",
        }
        self._breakers: dict[tuple[str, str | None], SharedBreaker] = {}
        self._health: dict[tuple[str, str | None], SharedHealth] = {}
        self._buckets: dict[str, SharedBucket] = {}
        self._slots = ConcurrencySlots()
        #: Breakers as Redis held them at the last sync, by hash field.
        self._shared: dict[str, tuple[int, str, int, float]] = {}
        self._shared_version = ""
        self._dirty: set[SharedBreaker] = set()
        self._offsets: deque[tuple[float, float]] = deque(maxlen=CLOCK_SAMPLES)
        self._offset: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._receipts = ReceiptLog(self)
        self._optouts: RedisOptOuts | None = None
        self._status: StatusStore | None = None
        self._guards: RedisGuardCounts | None = None
        self._counts: RedisGuardCounts | Mirror | None = None

    # -- what the router reads on its send path ----------------------------------------

    def breaker(self, provider: ProviderConfig, country: str | None) -> CircuitBreaker:
        """The shared breaker for ``provider`` (per country when its scope is provider_country)."""
        key = (provider.name, country if provider.breaker_scope == "provider_country" else None)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = SharedBreaker(
                provider.breaker,
                self.clock,
                self.publish,
                key=key,
                on_transition=self.on_transition,
            )
            self._breakers[key] = breaker
            shared = self._shared.get(breaker.field)
            if shared is not None:
                self._adopt(breaker, shared)
        elif breaker.settings is not provider.breaker:
            breaker.settings = provider.breaker
        return breaker

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker this router has used."""
        return list(self._breakers.values())

    def health(self, provider: str, country: str | None = None) -> Health:
        """Health of ``provider`` (or towards ``country``), merged over every replica."""
        key = (provider, country)
        health = self._health.get(key)
        if health is None:
            health = self._health[key] = SharedHealth(
                f"{provider}|{country or ''}",
                clock=self.clock,
                half_life=self.settings.health_half_life,
            )
        return health

    def bucket(self, provider: ProviderConfig) -> TokenBucket:
        """The provider's share of its one schedule in Redis."""
        bucket = self._buckets.get(provider.name)
        if bucket is None:
            bucket = self._buckets[provider.name] = SharedBucket(provider, self)
            bucket.configured = provider
        elif bucket.configured is not provider:  # a reload: its rate or burst may differ
            bucket.configure(provider)
            bucket.configured = provider
        return bucket

    def slots(self, provider: ProviderConfig) -> ConcurrencySlot | None:
        """The concurrency cap of ``provider`` in this process (not shared), or None."""
        return self._slots.get(provider)

    async def refill(self, bucket: TokenBucket, max_wait: float) -> float | None:
        """Lease slots from Redis for ``bucket`` and take one (None: none in time)."""
        if isinstance(bucket, SharedBucket):
            return await bucket.fill(max_wait)
        return None

    def optout_store(self) -> OptOutStore:
        """Opt-outs shared through Redis (one store per router)."""
        if self._optouts is None:
            self._optouts = RedisOptOuts(self)
        return self._optouts

    def status_store(self) -> StatusStore:
        """Message states: in this process's memory (the durable ones live in the outbox)."""
        if self._status is None:
            self._status = StatusStore()
        return self._status

    def guard_counts(self) -> RedisGuardCounts | Mirror:
        """The guards' counts, shared through Redis (one store per router): checked in
        Redis, or with ``guard_checks: local`` in this process and counted in Redis."""
        counts = self._counts
        if counts is None:
            self._guards = RedisGuardCounts(self)
            counts = self._counts = (
                Mirror(self._guards, self._emit)
                if self.settings.guard_checks == "local"
                else self._guards
            )
        return counts

    @property
    def receipt_log(self) -> ReceiptLog:
        """Receipts already processed by any replica."""
        return self._receipts

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, take the shared view once, then keep it in step in the background.

        Raises :class:`~smsroute.state.backend.StateBackendUnavailable` when Redis
        does not answer.
        """
        if self._task is not None:
            return
        self._stopping = False
        await self.link.connect()
        await self._sync()
        if self._optouts is not None:
            await self._optouts.refresh()
        self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        """Stop syncing; write what is pending (briefly, if Redis answers); disconnect."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True  # ends the loop even if a cancellation got lost
            self._wake.set()
            if not await stop_task(task, max(1.0, 2 * self.settings.timeout)):
                log.warning("smsroute: the Redis sync task did not stop; left behind")
            if self.link.up:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(1.0, 2 * self.settings.timeout)):
                        await self._push()
                        await self._sync()
        if self._guards is not None:
            await self._guards.aclose()
        await self.link.aclose()

    def wake(self) -> None:
        """Have the background task write local changes now rather than at the next sync."""
        self._wake.set()

    def publish(self, breaker: SharedBreaker) -> None:
        """A breaker changed here: write it to Redis now."""
        self._dirty.add(breaker)
        self._wake.set()

    def offset(self, redis_now: float) -> float:
        """Redis time minus this replica's clock (from syncs; ``redis_now`` before the first)."""
        offset = self._offset
        return redis_now - self.clock.now() if offset is None else offset

    # -- the background task ------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.sync_interval
        next_sync = loop.time() + interval
        while not self._stopping:
            timeout = next_sync - loop.time()
            if timeout > 0.0:
                await wait_event(self._wake, timeout)  # see smsroute.aio: never wait_for
            if self._stopping:
                return
            self._wake.clear()
            try:
                if loop.time() >= next_sync:
                    next_sync = loop.time() + interval
                    await self._sync()
                    if self._optouts is not None and self.link.up:
                        await self._optouts.refresh()
                if self.link.up:
                    await self._push()
            except Exception:  # a bug here must not stop the syncing for good
                log.exception("smsroute: syncing shared state with Redis failed")

    async def _push(self) -> None:
        """Write local breaker changes (compare-and-set) and pauses."""
        keys = [self.keys["breakers"], self.keys["breakers_version"]]
        for breaker in list(self._dirty):
            target = breaker.pending
            if target is None:
                self._dirty.discard(breaker)
                continue
            s = breaker.settings
            call = functools.partial(
                self.scripts.breaker_set,
                keys=keys,
                args=[
                    breaker.field,
                    breaker.version,
                    "open" if target is BreakerState.OPEN else "closed",
                    repr(s.open_for),
                    repr(s.max_open_for),
                ],
            )
            reply = await self.link.run("breaker", call)
            if reply is None:
                return
            _, packed, _ = reply
            shared = _parse_breaker(packed)
            if shared is None:  # the script reads a breaker as this does: never
                self.link.bad_data("breaker", f"field '{breaker.field}' unreadable", keys[0])
                return
            self._shared[breaker.field] = shared
            if breaker.pending is target:
                breaker.pending = None
                self._dirty.discard(breaker)
                self._adopt(breaker, shared)
            else:  # changed again while writing: write that next, against this version
                breaker.version = shared[0]
                self._wake.set()
        for bucket in list(self._buckets.values()):
            until = bucket.unpublished_pause
            if until is None:
                continue
            seconds = until - self.clock.now()  # what is left of it (Redis may have been away)
            if seconds > 0.0:
                call = functools.partial(
                    self.scripts.pause, keys=[bucket.pause_key], args=[repr(seconds)]
                )
                if await self.link.run("pause", call) is None:
                    return
            if bucket.unpublished_pause == until:
                bucket.unpublished_pause = None
        if self._optouts is not None and self._optouts.pending:
            await self._optouts.flush()

    async def _sync(self) -> None:
        """One round trip: heartbeat, breakers changed elsewhere, pauses, health."""
        s = self.settings
        healths = list(self._health.values())
        flushed: list[tuple[SharedHealth, list[float]]] = []
        for health in healths:
            counts = health.take()
            if counts is not None:
                flushed.append((health, counts))
        args: list[Any] = [
            self._shared_version,
            self.replica,
            repr(max(3.0, 4 * s.sync_interval)),
            self.keys["health"],
            repr(s.health_window / HEALTH_SLOTS),
            HEALTH_SLOTS,
            len(flushed),
        ]
        for health, counts in flushed:
            args.append(health.id)
            args.extend(repr(c) if c != int(c) else str(int(c)) for c in counts)
        args.append(len(healths))
        args.extend(h.id for h in healths)
        buckets = list(self._buckets.values())
        keys = [
            self.keys["breakers"],
            self.keys["breakers_version"],
            self.keys["replicas"],
            *(b.pause_key for b in buckets),
        ]
        clock = self.clock
        t0 = clock.now()
        reply = await self.link.run("sync", functools.partial(self.scripts.sync, keys, args))
        t1 = clock.now()
        if reply is None:
            for health, counts in flushed:
                health.give_back(counts)
            return
        now_text, version, flat, live, pauses, sums = reply
        redis_now = float(now_text)
        offset = self._clock_sample(redis_now, t0, t1)
        self.replicas = int(live)
        if version != self._shared_version:
            self._shared_version = version
            shared = {}
            for field, packed in zip(flat[::2], flat[1::2], strict=True):
                entry = _parse_breaker(packed)
                if entry is None:  # not smsroute's: as if absent (its next change heals it)
                    self.link.bad_data(
                        "sync",
                        f"field '{field}' is not a breaker smsroute wrote",
                        self.keys["breakers"],
                    )
                else:
                    shared[field] = entry
            self._shared = shared
            for breaker in list(self._breakers.values()):
                entry = shared.get(breaker.field)
                if breaker.pending is not None:
                    continue  # our own change is on its way; its CAS decides
                if entry is None:
                    if breaker.version:  # Redis lost its data: what this replica knows goes back
                        breaker.version = 0
                        if breaker.state is BreakerState.OPEN:
                            breaker.pending = BreakerState.OPEN
                            self.publish(breaker)
                elif entry[0] != breaker.version:
                    self._adopt(breaker, entry)
        for bucket, paused in zip(buckets, pauses, strict=True):
            until = float(paused)
            if until > redis_now:
                bucket.pause_until(until - offset, publish=False)
        for i, health in enumerate(healths):
            health.merge(tuple(float(x) for x in sums[8 * i : 8 * i + 8]))

    def _adopt(self, breaker: SharedBreaker, shared: tuple[int, str, int, float]) -> None:
        version, state, opens, reopen_at = shared
        local = None if state != "open" else reopen_at - self.offset(reopen_at)
        breaker.adopt(version, state, opens, local)

    def _clock_sample(self, redis_now: float, t0: float, t1: float) -> float:
        samples = self._offsets
        samples.append((t1 - t0, redis_now - (t0 + t1) / 2))
        self._offset = offset = min(samples)[1]
        return offset
