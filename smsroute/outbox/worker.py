"""The outbox worker: lease what is due, pace it, send it through the router, settle it.

    lease (most urgent first) --> pace (per provider) --> Dispatcher.send --> ack
      ^  renew leases every lease/3                             |-------> retry later
      |                                                         '-------> dead letter
      '-- expired leases come back to the queue (a worker died)

Pacing.  ``send()`` skips a provider whose rate limit would make it wait more
than ``defaults.max_rate_wait``; a queue should wait its turn instead.  So
before a message is handed to the router, the worker picks the first provider
of its plan (one not paused by a Retry-After, when there is one) and, holding
that provider's pacing lock:

1. waits for a free slot under the provider's ``max_concurrency``;
2. waits until fewer than ``n`` of its sends went out in the last
   ``window + rate_margin`` (``n`` per ``window`` is the rate limit as a whole
   number per second or more): the provider counts our requests when they
   arrive, and network jitter must not squeeze ``n + 1`` of them into its
   window, nor may a full bucket's burst;
3. reserves a token from the router's bucket for the provider (shared with
   ``send()``, and with other replicas under ``state: {backend: redis}``),
   waiting as long as it takes, a Retry-After pause included.

It then calls the router with that provider named as reserved: the router
tries it first without taking a second token.  Failover to another provider
inside that send uses the router's usual bucket wait.

Outcomes.  Accepted: done.  Rejected (or opted out): a dead letter at once.
A timeout under ``on_timeout: stop`` is a dead letter too: the message may
have been sent, and the rule says not to risk sending it twice.  Any other
failure is retried after a backoff with full jitter, ``uniform(0, min(max,
base * 2**(tries - 1)))``, until ``max_attempts`` tries or the ttl runs out.
Refused in its category's quiet hours (they began after it was due): held until
they end, without counting a try.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import socket
from collections import deque
from types import TracebackType
from typing import Protocol

from smsroute.aio import stop_task, stop_tasks, wait_event
from smsroute.config import OutboxSettings, ProviderConfig
from smsroute.dispatch import Dispatcher
from smsroute.errors import InvalidMessage, InvalidNumber, OutboxUnavailable, SmsrouteError
from smsroute.message import Outcome, SendResult
from smsroute.outbox.service import STORE_WAIT, OutboxService
from smsroute.outbox.store import OutboxStore, QueuedMessage
from smsroute.runtime import Prepared, Runtime

log = logging.getLogger("smsroute.outbox")

#: How often sent messages older than ``retention`` are purged.
PURGE_EVERY = 3600.0

__all__ = ["PURGE_EVERY", "STORE_WAIT", "OutboxWorker", "WorkerHost"]


class WorkerHost(Protocol):
    """What a worker needs of its router (a :class:`~smsroute.router.Router` is one):
    the dispatcher to plan and send through, and the outbox service for the store."""

    @property
    def dispatcher(self) -> Dispatcher:
        """Plans and sends one message (see :mod:`smsroute.dispatch`)."""
        ...

    @property
    def outbox_service(self) -> OutboxService:
        """The store, its settings and time, and the registry of running workers."""
        ...


def _window(rate: float) -> tuple[int, float]:
    """(n, seconds): at most n sends per window, n a whole number, the window at least 1 s."""
    n = max(1, math.floor(rate))
    return n, n / rate


class _Pacer:
    """Per provider: the moment each of the worker's sends may go (see the module docstring)."""

    def __init__(self, dispatcher: Dispatcher, margin: float) -> None:
        self._dispatcher = dispatcher
        self._margin = margin
        self._locks: dict[str, asyncio.Lock] = {}
        self._sent: dict[str, deque[float]] = {}
        self._inflight: dict[str, int] = {}
        self._freed: dict[str, asyncio.Event] = {}

    def head(self, rt: Runtime, prepared: Prepared) -> ProviderConfig:
        """The provider the send should start with: the plan's first that is not paused."""
        providers = rt.config.providers
        if len(prepared.rule.providers) == 1:  # no plan to make (the router's will be the same)
            return providers[prepared.rule.providers[0]]
        ordered, _, _ = self._dispatcher.plan(rt, prepared)
        state = self._dispatcher.state
        candidates = [providers[o.provider] for o in ordered]
        for pcfg in candidates:
            if state.bucket(pcfg).paused_for() == 0.0:
                return pcfg
        return min(candidates, key=lambda p: state.bucket(p).paused_for())

    async def acquire(self, pcfg: ProviderConfig) -> None:
        """Wait until a send to ``pcfg`` may go, and count it as going."""
        name = pcfg.name
        dispatcher = self._dispatcher
        clock, sleep = dispatcher.clock, dispatcher.sleep
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        async with lock:
            cap = pcfg.max_concurrency
            if cap is not None:
                freed = self._freed.setdefault(name, asyncio.Event())
                while self._inflight.get(name, 0) >= cap:
                    freed.clear()
                    await freed.wait()
            bucket = dispatcher.state.bucket(pcfg)
            sent: deque[float] | None = None
            if bucket.rate is not None:
                n, window = _window(bucket.rate)
                sent = self._sent.get(name)
                if sent is None or sent.maxlen != n:
                    sent = self._sent[name] = deque(sent or (), maxlen=n)
                if len(sent) == n:
                    early = sent[0] + window + self._margin - clock.now()
                    if early > 0:
                        await sleep(early)
            while True:
                wait = bucket.reserve(math.inf)
                if wait is None and not bucket.paused_for():  # a shared bucket leases more
                    wait = await dispatcher.state.refill(bucket, math.inf)
                if wait is not None:
                    break
                await sleep(max(bucket.paused_for(), 0.01))  # a Retry-After pause
            if wait > 0:
                reserved_for = clock.now() + wait
                try:
                    await sleep(wait)
                except BaseException:  # cancelled: the token goes back unused
                    bucket.refund(reserved_for)
                    raise
            if sent is not None:
                sent.append(clock.now())
            self._inflight[name] = self._inflight.get(name, 0) + 1

    def release(self, pcfg: ProviderConfig) -> None:
        """A send counted by :meth:`acquire` is over."""
        self._inflight[pcfg.name] -= 1
        freed = self._freed.get(pcfg.name)
        if freed is not None:
            freed.set()


class OutboxWorker:
    """Sends queued messages in the background, within every provider's limits.

    >>> async with router.worker(concurrency=16) as worker:
    ...     await worker.drain()          # tests: until nothing due is left

    ``concurrency`` is how many messages are leased and worked on at once
    (default ``outbox.concurrency``); ``rng`` draws the backoff jitter
    (default: the router's).  Leaving the ``async with`` stops gracefully:
    no new leases, messages not yet handed to a provider go back to the queue
    untouched, sends under way finish and are recorded.  ``python -m
    smsroute.outbox CONFIG`` runs one as a process.
    """

    def __init__(
        self,
        router: WorkerHost,
        *,
        concurrency: int | None = None,
        rng: random.Random | None = None,
        owner: str | None = None,
    ) -> None:
        self._dispatcher = dispatcher = router.dispatcher
        self._service = service = router.outbox_service
        settings: OutboxSettings = service.settings()
        self.concurrency = settings.concurrency if concurrency is None else concurrency
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.settings = settings
        #: Who holds the leases: host, process and a random tag.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._rng = rng or dispatcher.rng
        self._pacer = _Pacer(dispatcher, settings.rate_margin)
        self._store: OutboxStore | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sending: set[str] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        #: Set when no new lease may be taken; _halt when the lease keeper must end too.
        self._stopping = False
        self._halt = asyncio.Event()
        self._stop_task: asyncio.Future[None] | None = None
        #: Leases of cancelled messages on their way back to the queue.
        self._handbacks: set[asyncio.Task[None]] = set()
        self._store_up = True
        #: Messages this worker sent, scheduled for a retry, and dead-lettered.
        self.sent = 0
        self.retried = 0
        self.dead = 0

    def __repr__(self) -> str:
        return f"OutboxWorker(owner={self.owner!r}, concurrency={self.concurrency})"

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> OutboxWorker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Check that the store answers, then lease and send in background tasks.

        Raises :class:`~smsroute.errors.OutboxUnavailable` (naming the store and
        what to do) when the store cannot be used: nothing is started then.
        """
        if self._main is not None:
            raise RuntimeError("this worker was started already")
        self._store = store = self._service.store()
        try:
            await store.next_due()
        except SmsrouteError:
            raise
        except Exception as exc:  # a store of a third party: still one clear line
            raise OutboxUnavailable(
                f"the outbox store {store!r} cannot be used ({type(exc).__name__}: {exc})"
            ) from None
        self._service.register(self, running=True)
        self._main = asyncio.create_task(self._run(), name=f"smsroute-outbox {self.owner}")
        self._keeper = asyncio.create_task(
            self._keep(), name=f"smsroute-outbox-leases {self.owner}"
        )
        log.info(
            "outbox worker %s started: concurrency %d, store %r",
            self.owner,
            self.concurrency,
            store,
        )

    async def stop(self, grace: float | None = None, *, store_wait: float = STORE_WAIT) -> None:
        """Stop gracefully; see the class docstring.

        Sends under way are given ``grace`` seconds (default: until they end,
        which the router's deadline bounds); then they are cancelled too and
        their messages go back to the queue (they may have been sent: at least
        once, never lost).  Whatever the store does, stopping waits on it at
        most ``store_wait`` seconds in all: a lease loop or lease keeper stuck in
        a store call is cancelled (again and again: see :mod:`smsroute.aio`),
        and leases that could not be handed back expire after ``outbox.lease``.
        """
        if self._main is None:
            return
        if self._stop_task is None:  # callers at once (async with, router.aclose) share one stop
            self._stop_task = asyncio.ensure_future(self._stop(self._main, grace, store_wait))
        await asyncio.shield(self._stop_task)

    async def _stop(self, main: asyncio.Task[None], grace: float | None, wait: float) -> None:
        # Shares of ``wait``: the lease loop 0.4, cancelled sends 0.1 + 0.1, the
        # keeper 0.2, handing leases back 0.2.  Each phase ends in its share.
        self._stopping = True
        self._wake.set()
        if not await stop_task(main, 0.4 * wait, patience=0.2 * wait):
            log.warning(
                "outbox worker %s: its lease loop did not end in %.1f s (the store hangs?); "
                "left behind",
                self.owner,
                0.4 * wait,
            )
        waiting = [t for mid, t in self._tasks.items() if mid not in self._sending]
        await stop_tasks(waiting, 0.1 * wait)  # not sent yet: their leases go back
        sending = list(self._tasks.values())
        if sending:
            _, late = await asyncio.wait(sending, timeout=grace)
            await stop_tasks(late, 0.1 * wait)
        self._halt.set()
        if self._keeper is not None and not await stop_task(
            self._keeper, 0.2 * wait, patience=0.1 * wait
        ):
            log.warning("outbox worker %s: its lease keeper did not end; left behind", self.owner)
        released = await self._release_all(0.2 * wait)
        self._service.register(self, running=False)
        log.info(
            "outbox worker %s stopped: %d sent, %d retried, %d dead-lettered, %d handed back",
            self.owner,
            self.sent,
            self.retried,
            self.dead,
            released,
        )

    async def _release_all(self, seconds: float) -> int:
        """Hand back every lease this worker holds, within ``seconds``."""
        store = self._store
        if store is None:
            return 0
        handbacks = list(self._handbacks)
        try:
            async with asyncio.timeout(seconds):
                if handbacks:  # one call for all below: these only need to end
                    await asyncio.gather(*handbacks, return_exceptions=True)
                return await store.release(self.owner, None, self._now())
        except TimeoutError:
            reason = f"the store did not answer in {seconds:.1f} s"
        except Exception as exc:
            reason = str(exc) if isinstance(exc, SmsrouteError) else repr(exc)
        finally:
            await stop_tasks(handbacks, 0.0)
        log.warning(
            "outbox worker %s could not hand its leases back (%s): its messages are sent "
            "once their leases expire (outbox.lease, %g s)",
            self.owner,
            reason,
            self.settings.lease,
        )
        return 0

    def abort(self) -> None:
        """Cancel every send under way now (a second Ctrl-C); :meth:`stop` still hands leases back."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks.values():
            task.cancel()

    def wake(self) -> None:
        """Look for due messages now (the router calls it after an enqueue in this process)."""
        self._wake.set()

    async def drain(self) -> None:
        """Wait until nothing is due and nothing is being sent (later messages may remain)."""
        if self._main is None or self._stopping:
            raise RuntimeError("drain() needs a running worker: async with router.worker() as w")
        self._idle.clear()
        self._wake.set()
        await self._idle.wait()

    async def run_once(self) -> int:
        """Lease what is due (up to ``concurrency``), send and settle it all; returns how many.

        No background task: tests drive the worker step by step with a
        :class:`ManualClock`, and nothing waits in real time but the sends.
        """
        if self._store is None:
            self._store = self._service.store()
        batch = await self._lease(self.concurrency)
        tasks = [self._spawn(item) for item in batch]
        await asyncio.gather(*tasks)
        return len(batch)

    # -- the loops ------------------------------------------------------------------

    def _now(self) -> float:
        return self._service.now()

    async def _run(self) -> None:
        assert self._store is not None
        poll = self.settings.poll
        low_water = max(1, self.concurrency // 8)  # lease in batches, not one by one
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._tasks)
            timeout: float | None = None
            if free > 0 and (free >= low_water or not self._tasks):
                batch = await self._lease(free)
                if self._stopping:  # leased while stopping: hand back at once
                    await self._hand_back(batch)
                    break
                for item in batch:
                    self._spawn(item)
                if len(batch) < free:  # nothing more is due now
                    if not self._tasks:
                        self._idle.set()
                    timeout = await self._until_due(poll)
            await self._nap(timeout)

    async def _until_due(self, poll: float) -> float:
        assert self._store is not None
        try:
            due = await self._store.next_due()
        except Exception as exc:
            self._store_failed("read the queue", exc)
            return poll
        if due is None:
            return poll
        return min(poll, max(0.0, due - self._now()))

    async def _nap(self, seconds: float | None) -> None:
        await wait_event(self._wake, seconds)

    async def _lease(self, n: int) -> list[QueuedMessage]:
        assert self._store is not None
        now = self._now()
        try:
            batch = await self._store.lease(self.owner, n, now, now + self.settings.lease)
        except Exception as exc:
            self._store_failed("lease messages", exc)
            return []
        if not self._store_up:
            self._store_up = True
            log.warning("outbox worker %s: the store %r answers again", self.owner, self._store)
        return batch

    def _store_failed(self, doing: str, exc: Exception) -> None:
        """A store call failed: a bug with its traceback, the store being unusable in one line
        (at ERROR the first time, then at DEBUG until it answers again)."""
        if not isinstance(exc, SmsrouteError):
            log.error("outbox worker %s cannot %s", self.owner, doing, exc_info=exc)
        elif self._store_up:
            self._store_up = False
            log.error(
                "outbox worker %s cannot %s: %s (trying again every %g s)",
                self.owner,
                doing,
                exc,
                self.settings.poll,
            )
        else:
            log.debug("outbox worker %s cannot %s: %s", self.owner, doing, exc)

    async def _hand_back(self, batch: list[QueuedMessage]) -> None:
        if batch and self._store is not None:
            try:
                await self._store.release(self.owner, [i.message_id for i in batch], self._now())
            except Exception as exc:  # stop() hands back everything of ours once more
                self._store_failed("hand leases back", exc)

    def _give_back(self, message_id: str) -> None:
        """Hand back the lease of a message whose handling was cancelled (in the background:
        a cancelled task must not wait; :meth:`stop` waits for these, within its bound)."""
        if self._store is None:
            return
        task = asyncio.ensure_future(self._hand_back_one(message_id))
        self._handbacks.add(task)
        task.add_done_callback(self._handbacks.discard)

    async def _hand_back_one(self, message_id: str) -> None:
        assert self._store is not None
        try:
            async with asyncio.timeout(STORE_WAIT):
                await self._store.release(self.owner, [message_id], self._now())
        except Exception as exc:  # TimeoutError included: the lease expires instead
            log.warning(
                "outbox worker %s could not hand back the lease of message %s (%s): it is "
                "sent once the lease expires",
                self.owner,
                message_id,
                exc if isinstance(exc, SmsrouteError) else type(exc).__name__,
            )

    async def _keep(self) -> None:
        """Renew leases every lease/3; purge old sent messages every hour; end on ``_halt``."""
        assert self._store is not None
        settings = self.settings
        next_purge = self._now()
        while not self._halt.is_set():
            now = self._now()
            if settings.retention is not None and now >= next_purge:
                next_purge = now + PURGE_EVERY
                try:
                    purged = await self._store.purge(now - settings.retention)
                except Exception as exc:
                    self._store_failed("purge old messages", exc)
                else:
                    if purged:
                        log.info("outbox: purged %d messages sent before the retention", purged)
            if await wait_event(self._halt, settings.lease / 3):
                return
            ids = list(self._tasks)
            if ids:
                try:
                    await self._store.renew(self.owner, ids, self._now() + settings.lease)
                except Exception as exc:
                    self._store_failed("renew its leases", exc)

    def _spawn(self, item: QueuedMessage) -> asyncio.Task[None]:
        mid = item.message_id
        task = self._tasks.get(mid)
        if task is not None:  # our own lease ran out and came back to us: already on it
            return task
        task = asyncio.create_task(self._handle(item))
        self._tasks[mid] = task
        task.add_done_callback(lambda _: self._done(mid))
        return task

    def _done(self, message_id: str) -> None:
        self._tasks.pop(message_id, None)
        self._sending.discard(message_id)
        self._wake.set()

    # -- one message ----------------------------------------------------------------

    async def _handle(self, item: QueuedMessage) -> None:
        dispatcher = self._dispatcher
        try:
            if item.expires is not None and self._now() >= item.expires:
                await self._dead(
                    item, f"its ttl ran out before it could be sent ({item.tries} tries)", None
                )
                return
            rt = dispatcher.runtime
            try:
                prepared = rt.prepare(item.message)
            except (InvalidNumber, InvalidMessage) as exc:
                await self._dead(item, f"it can no longer be sent as written: {exc}", None)
                return
            head = self._pacer.head(rt, prepared)
            await self._pacer.acquire(head)  # cancelled here, nothing was sent
            self._sending.add(item.message_id)
            try:
                result = await dispatcher.send(
                    item.message, item.message_id, frozenset(), head.name
                )
            finally:
                self._pacer.release(head)
        except asyncio.CancelledError:
            self._give_back(item.message_id)  # its token went back in the pacer
            raise
        except OutboxUnavailable as exc:  # the store cannot be used: the lease lapses, no harm
            self._store_failed(f"record message {item.message_id}", exc)
            return
        except Exception as exc:  # a bug must not lose the message: try again later
            log.exception("outbox worker %s failed on message %s", self.owner, item.message_id)
            try:
                await self._later(item, f"worker error: {type(exc).__name__}", None)
            except Exception as again:  # the store's own error is worded already: one line
                log.error(
                    "outbox worker %s could not reschedule message %s%s: its lease will expire",
                    self.owner,
                    item.message_id,
                    f" ({again})" if isinstance(again, SmsrouteError) else "",
                    exc_info=None if isinstance(again, SmsrouteError) else again,
                )
            return
        try:
            await self._settle(item, prepared, result)
        except Exception as exc:  # never retry what a provider may have accepted: let it lapse
            log.error(
                "outbox worker %s could not record the outcome of message %s (%s); "
                "it is sent again if its lease expires",
                self.owner,
                item.message_id,
                result.status,
                exc_info=None if isinstance(exc, SmsrouteError) else exc,
            )

    async def _settle(self, item: QueuedMessage, prepared: Prepared, result: SendResult) -> None:
        assert self._store is not None
        if result.ok:
            await self._store.ack(item.message_id, self.owner, result, self._now())
            self.sent += 1
            return
        reason = result.reason or "failed"
        if result.quiet_until is not None:  # quiet hours began since it was due: hold it
            due = result.quiet_until.timestamp()
            if item.expires is not None and due >= item.expires:
                await self._dead(item, f"its ttl runs out before then: {reason}", result)
                return
            await self._store.retry(item.message_id, self.owner, due, reason, None, self._now())
            self.retried += 1
            return
        if result.outcome is Outcome.REJECTED:
            await self._dead(item, reason, result)
            return
        if result.outcome is Outcome.TIMEOUT:
            config = self._dispatcher.runtime.config
            category = config.categories.get(item.message.category)
            on_timeout = prepared.rule.on_timeout or (category.on_timeout if category else None)
            if on_timeout == "stop":
                await self._dead(item, f"{reason}; nor retried later", result)
                return
        await self._later(item, reason, result)

    async def _later(self, item: QueuedMessage, reason: str, result: SendResult | None) -> None:
        assert self._store is not None
        tries = item.tries + 1
        if tries >= self.settings.max_attempts:
            await self._dead(item, f"gave up after {tries} tries: {reason}", result)
            return
        now = self._now()
        due = now + self.backoff(tries)
        if item.expires is not None and due >= item.expires:
            await self._dead(item, f"its ttl ran out after {tries} tries: {reason}", result)
            return
        await self._store.retry(item.message_id, self.owner, due, reason, result, now)
        self.retried += 1

    async def _dead(self, item: QueuedMessage, reason: str, result: SendResult | None) -> None:
        assert self._store is not None
        await self._store.dead(item.message_id, self.owner, reason, result, self._now())
        self.dead += 1
        log.warning("outbox: message %s is a dead letter: %s", item.message_id, reason)

    def backoff(self, tries: int) -> float:
        """Seconds to wait after the ``tries``-th failed send: full jitter.

        Uniform in ``[0, min(backoff.max, backoff.base * 2 ** (tries - 1))]``,
        drawn from the worker's rng.
        """
        s = self.settings
        cap = min(s.backoff_max, s.backoff_base * 2.0 ** min(tries - 1, 60))
        return cap * self._rng.random()
