"""The durable outbox: enqueue now, send later within provider limits, lose nothing.

    store.py     the OutboxStore protocol, its records and the state machine
    sqlite.py    the default store: one SQLite file in WAL mode
    redis.py     the store shared by replicas: Redis, with Lua scripts for each step
    worker.py    the worker that leases, paces, sends and settles messages
    __main__.py  ``python -m smsroute.outbox CONFIG``: a worker as a process

Users meet it through the router: ``await router.enqueue(message)``,
``async with router.worker():``, ``await router.dead_letters()``,
``await router.requeue(message_id)`` and ``await router.status(message_id)``.
"""

from __future__ import annotations

from smsroute.config import OutboxSettings, StateSettings
from smsroute.errors import OutboxUnavailable
from smsroute.outbox.sqlite import SQLiteOutbox
from smsroute.outbox.store import (
    TTL,
    DeadLetter,
    NewMessage,
    OutboxStore,
    QueuedMessage,
    SendAt,
    make_id,
    new_message,
    outbox_clock,
    priority_of,
)
from smsroute.outbox.worker import OutboxWorker


def open_store(settings: OutboxSettings, state: StateSettings | None = None) -> OutboxStore:
    """The store ``settings`` describe (not connected until first used).

    A ``redis`` outbox lives in the Redis that ``state`` names, under its key prefix.
    Raises :class:`OutboxUnavailable` when the redis package is missing.
    """
    if settings.backend == "sqlite":
        return SQLiteOutbox(settings.path, synchronous=settings.synchronous)
    if settings.backend == "redis":
        if state is None or state.backend != "redis" or not state.url:
            raise ValueError("the redis outbox needs state: {backend: redis, url: ...}")
        try:
            from smsroute.outbox.redis import RedisOutbox  # the redis package is an extra
        except ImportError as exc:
            raise OutboxUnavailable(
                f"outbox.backend is redis but the redis package cannot be imported ({exc}): "
                "install it with pip install 'smsroute[redis]'"
            ) from None
        return RedisOutbox(state.url, key_prefix=state.key_prefix, timeout=state.timeout)
    raise ValueError(f"unknown outbox backend {settings.backend!r}")


__all__ = [
    "TTL",
    "DeadLetter",
    "NewMessage",
    "OutboxSettings",
    "OutboxStore",
    "OutboxUnavailable",
    "OutboxWorker",
    "QueuedMessage",
    "SQLiteOutbox",
    "SendAt",
    "make_id",
    "new_message",
    "open_store",
    "outbox_clock",
    "priority_of",
]
