"""The outbox as a router offers it: enqueue, dead letters, requeue, the durable record.

:class:`OutboxService` opens the store the config's ``outbox`` section names
on first use, validates what is enqueued (through the ``validate`` callable
the router gives it: the same check as a send's), wakes the workers of this
process after an enqueue, and answers for the durable record of messages
(:meth:`OutboxService.status`, :meth:`OutboxService.record_receipt`: the
:class:`~smsroute.receipts.DurableRecord` the receipts part uses).  The
workers themselves are :class:`~smsroute.outbox.worker.OutboxWorker`; each
registers here while it runs, so that closing the router stops it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from smsroute.clock import Clock
from smsroute.config import Config, OutboxSettings, StateSettings
from smsroute.errors import InvalidMessage, InvalidNumber, SmsrouteError
from smsroute.message import DeliveryReport, Message, MessageState
from smsroute.outbox.store import (
    TTL,
    DeadLetter,
    NewMessage,
    OutboxStore,
    SendAt,
    make_id,
    new_message,
    outbox_clock,
)

log = logging.getLogger("smsroute.outbox")

#: Seconds closing waits on the store in all (and :meth:`OutboxWorker.stop` by default).
STORE_WAIT = 5.0

#: Opens the store ``outbox`` settings describe (``smsroute.outbox.open_store``).
StoreOpener = Callable[[OutboxSettings, StateSettings], OutboxStore]


def _failed(doing: str, exc: Exception) -> None:
    """A store call that must not raise failed: an expected, already worded error
    (:class:`OutboxUnavailable`: the store names itself and what to do) as one line; anything
    else, a bug, with its traceback."""
    if isinstance(exc, SmsrouteError):
        log.error("%s: %s", doing, exc)
    else:
        log.error(doing, exc_info=exc)


class RunningWorker(Protocol):
    """A worker as the service sees it while it runs."""

    def wake(self) -> None:
        """Look for due messages now."""
        ...

    async def stop(self) -> None:
        """Stop gracefully, within the worker's own bound."""
        ...


class OutboxService:
    """The durable send-later side of a router (one per router).

    ``config`` gives the config in force, ``validate`` checks a message as a
    send would (raising :class:`InvalidNumber` or :class:`InvalidMessage`) and
    says whether it may go at the time it is due (epoch seconds): None, or when
    its category's quiet hours end (``inf``: never), the time it is stored for
    instead.  ``open_store`` makes the store on first use.
    """

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        clock: Clock,
        validate: Callable[[Message, float], float | None],
        open_store: StoreOpener,
    ) -> None:
        self._config = config
        self._validate = validate
        self._open = open_store
        self._clock = outbox_clock(clock)
        self._store: OutboxStore | None = None
        self._workers: frozenset[RunningWorker] = frozenset()
        self._closed = False

    # -- what workers and the router use ---------------------------------------------

    def settings(self) -> OutboxSettings:
        """The ``outbox`` section in force (its defaults when the config has none)."""
        return self._config().outbox or OutboxSettings()

    def store(self) -> OutboxStore:
        """The store, opened on first use (``RuntimeError`` once the router is closed)."""
        if self._store is None:
            if self._closed:
                raise RuntimeError("the router is closed")
            self._store = self._open(self.settings(), self._config().state)
        return self._store

    def adopt(self, store: OutboxStore) -> None:
        """Use ``store`` from now on instead of the one the config names (a store of your own)."""
        self._store = store

    def now(self) -> float:
        """The outbox's time: wall-clock seconds, as its records keep them."""
        return self._clock.now()

    @property
    def workers(self) -> frozenset[RunningWorker]:
        """The workers of this router running now."""
        return self._workers

    def register(self, worker: RunningWorker, *, running: bool) -> None:
        """A worker started (``running``) or stopped."""
        workers = self._workers
        self._workers = workers | {worker} if running else workers - {worker}

    def wake(self) -> None:
        """Tell this process's workers that something is due."""
        for worker in self._workers:
            worker.wake()

    # -- enqueueing ------------------------------------------------------------------

    def item(
        self,
        message: Message,
        now: float,
        send_at: SendAt | None,
        ttl: TTL | None,
        idempotency_key: str | None,
    ) -> NewMessage:
        """``message`` validated and made a record to store (due when its quiet hours end)."""
        send_at = self._held(message, now, send_at)
        return new_message(
            message,
            make_id(now),
            now=now,
            send_at=send_at,
            ttl=ttl,
            default_ttl=self.settings().ttl,
            idempotency_key=idempotency_key,
        )

    def _held(self, message: Message, now: float, send_at: SendAt | None) -> SendAt | None:
        """``message`` validated; ``send_at``, or when its quiet hours end if it would be
        due inside them."""
        if isinstance(send_at, datetime.datetime) and send_at.tzinfo is not None:
            due = send_at.timestamp()
        elif isinstance(send_at, datetime.timedelta):
            due = now + send_at.total_seconds()
        else:  # now, or a send_at new_message() refuses with the reason
            due = now
        opens = self._validate(message, due)
        if opens is None:
            return send_at
        if opens == float("inf"):
            raise InvalidMessage(
                f"category '{message.category}' has quiet hours that leave no hour outside "
                "them in every time zone of this number: it could never be sent"
            )
        return datetime.datetime.fromtimestamp(opens, datetime.UTC)

    async def enqueue(
        self,
        message: Message,
        send_at: SendAt | None,
        ttl: TTL | None,
        idempotency_key: str | None,
    ) -> str:
        """See :meth:`Router.enqueue`."""
        item = self.item(message, self.now(), send_at, ttl, idempotency_key)
        message_id = await self.store().enqueue(item)
        self.wake()
        return message_id

    async def enqueue_many(
        self,
        messages: Iterable[Message],
        send_at: SendAt | None,
        ttl: TTL | None,
        idempotency_keys: Iterable[str | None] | None,
    ) -> list[str]:
        """See :meth:`Router.enqueue_many`."""
        batch = list(messages)
        keys = [None] * len(batch) if idempotency_keys is None else list(idempotency_keys)
        if len(keys) != len(batch):
            raise ValueError(f"{len(keys)} idempotency keys for {len(batch)} messages")
        now = self.now()
        items: list[NewMessage] = []
        for i, (message, key) in enumerate(zip(batch, keys, strict=True)):
            try:
                items.append(self.item(message, now, send_at, ttl, key))
            except (InvalidNumber, InvalidMessage) as exc:
                raise type(exc)(f"messages[{i}]: {exc}") from None
        if not items:
            return []
        ids = await self.store().enqueue_many(items)
        self.wake()
        return ids

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """See :meth:`Router.dead_letters`."""
        return await self.store().dead_letters(limit)

    async def requeue(self, message_id: str) -> bool:
        """See :meth:`Router.requeue`."""
        done = await self.store().requeue(message_id, self.now())
        if done:
            self.wake()
        return done

    # -- the durable record (receipts) -----------------------------------------------

    def _in_use(self) -> bool:
        return not self._closed and (self._store is not None or self._config().outbox is not None)

    async def status(self, message_id: str) -> MessageState | None:
        """The durable state, when this router uses an outbox (opened here, or configured)."""
        if not self._in_use():
            return None
        return await self.store().status(message_id)

    async def recipient(self, message_id: str) -> str | None:
        """The number an outbox message was enqueued for; None when unknown, when no
        outbox is used, or when the store cannot be read (logged).  Never raises."""
        if not self._in_use():
            return None
        try:
            return await self.store().recipient(message_id)
        except Exception as exc:  # an opt-out not recorded is logged, never a failed webhook
            _failed("could not read a message's recipient from the outbox", exc)
            return None

    async def record_receipt(self, report: DeliveryReport) -> bool:
        """Record a receipt in the outbox, when this router uses one.

        True when the outbox knows the message (it may have been sent by a worker
        in another process).
        """
        if not self._in_use():
            return False
        try:
            return await self.store().record_receipt(report, self.now())
        except Exception as exc:  # applied in memory; losing its record is not fatal
            _failed("could not record a delivery receipt in the outbox", exc)
            return False

    async def record_accepted(
        self, message_id: str, provider: str, provider_message_id: str | None
    ) -> bool:
        """Record that a resend was accepted by ``provider``, when this router uses an
        outbox that knows the message (the new attempt is the current one)."""
        if not self._in_use():
            return False
        try:
            return await self.store().record_accepted(
                message_id, provider, provider_message_id, self.now()
            )
        except Exception as exc:  # recorded in memory; losing its record is not fatal
            _failed("could not record a resend in the outbox", exc)
            return False

    async def aclose(self) -> None:
        """Stop this router's workers (together: each within its bound), then close the store."""
        self._closed = True
        workers = self._workers
        if workers:
            await asyncio.gather(*(worker.stop() for worker in workers))
        if self._store is not None:
            try:  # a store that hangs must not hang aclose(): what it holds is durable already
                async with asyncio.timeout(STORE_WAIT):
                    await self._store.close()
            except TimeoutError:
                log.warning(
                    "the outbox store %r did not close in %g s; left behind",
                    self._store,
                    STORE_WAIT,
                )
