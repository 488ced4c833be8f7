"""What a durable outbox store must do, whatever keeps the data.

    enqueue, enqueue_many   write new messages, a batch in one transaction; a known
                            idempotency key answers with the first message's id
    lease                   take due messages, most urgent first, for a while
    renew                   keep the leases of messages still being worked on
    ack                     a provider accepted the message: it is sent
    retry                   a retryable failure: pending again, due later
    dead                    given up on: a dead letter, attempts kept
    release                 hand leases back untouched (a worker stopping)
    requeue                 a dead letter back in the queue, tries and ttl reset
    record_receipt, status  delivery receipts and each message's status history
    dead_letters, purge     what needs a person; forgetting what was sent long ago

A message moves through four states::

    pending --lease--> leased --ack--> sent
       ^                 |  |
       +-- retry --------+  +--dead--> dead --requeue--> pending
       +-- release ------+
       +-- lease expired-+     (the worker holding it died)

Every time is a float of seconds on the store's clock (wall-clock epoch
seconds in production), passed in by the caller so the store never reads a
clock itself.  SQLite (:mod:`smsroute.outbox.sqlite`) is the default store; a
Redis store implements the same :class:`OutboxStore` protocol.
"""

from __future__ import annotations

import datetime
import json
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import attrs

from smsroute.clock import Clock, SystemClock
from smsroute.errors import InvalidMessage
from smsroute.message import Attempt, DeliveryReport, Message, MessageState, Outcome, SendResult

#: Lease order: lower goes first.  Categories a config declares go after marketing.
PRIORITIES: Mapping[str, int] = {"otp": 0, "transactional": 1, "marketing": 2}
OTHER_PRIORITY = 3
PRIORITY_LEVELS = (0, 1, 2, 3)

State = str  # "pending" | "leased" | "sent" | "dead"


def encode_json(value: object) -> str:
    """Compact JSON as the stores keep it, raising TypeError for what JSON cannot hold."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _storable(text: str, what: str) -> None:
    """Raise :class:`InvalidMessage` when ``text`` cannot be stored as UTF-8 (it holds a
    lone surrogate); the message names what and where, never the text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessage(
            f"{what} holds a lone surrogate (U+{ord(text[exc.start]):04X}), which the "
            "outbox cannot store: decode it with its real encoding (or errors='replace')"
        ) from None


def priority_of(category: str) -> int:
    """The lease priority of a category: otp 0, transactional 1, marketing 2, others 3."""
    return PRIORITIES.get(category, OTHER_PRIORITY)


class WallClock:
    """Epoch seconds: the outbox's times must mean the same in every process."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()


def outbox_clock(clock: Clock) -> Clock:
    """The clock the outbox reads: wall time, unless a test gave the router its own clock."""
    return WallClock() if isinstance(clock, SystemClock) else clock


def make_id(now: float) -> str:
    """A message id: 32 hex digits, like ``send()``'s, the first 12 the time in ms.

    Ids that grow with time go to the end of the store's index instead of
    anywhere in it (faster inserts), and sort in enqueue order.
    """
    return f"{int(now * 1000) & 0xFFFF_FFFF_FFFF:012x}{secrets.token_hex(10)}"


def utc(seconds: float) -> datetime.datetime:
    """An aware UTC datetime from epoch seconds."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


SendAt = datetime.datetime | datetime.timedelta
TTL = datetime.timedelta | float


def new_message(
    message: Message,
    message_id: str,
    *,
    now: float,
    send_at: SendAt | None,
    ttl: TTL | None,
    default_ttl: float | None,
    idempotency_key: str | None,
) -> NewMessage:
    """A :class:`NewMessage` due at ``send_at`` (default: now), living ``ttl`` after that.

    Raises :class:`InvalidMessage` for what cannot be stored: a naive ``send_at``,
    a ttl that is not positive, metadata JSON cannot hold, a tag, metadata or
    idempotency key that is not text a store can keep (a lone surrogate).
    """
    if send_at is None:
        due = now
    elif isinstance(send_at, datetime.timedelta):
        due = now + send_at.total_seconds()
    elif isinstance(send_at, datetime.datetime):
        if send_at.tzinfo is None:
            raise InvalidMessage(
                "send_at has no time zone: give an aware datetime "
                "(e.g. datetime.now(UTC) + timedelta(hours=1)) or a timedelta"
            )
        due = send_at.timestamp()
    else:
        raise InvalidMessage(f"send_at must be a datetime or a timedelta, got {send_at!r}")
    if ttl is None:
        seconds = default_ttl
    else:
        seconds = ttl.total_seconds() if isinstance(ttl, datetime.timedelta) else float(ttl)
        if seconds <= 0:
            raise InvalidMessage(f"ttl must be positive, got {ttl!r}")
    if message.metadata:
        try:
            metadata = encode_json(dict(message.metadata))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidMessage(
                f"message metadata cannot be queued: {exc} (use JSON types: str, "
                "numbers, bools, lists, dicts)"
            ) from None
        _storable(metadata, "message metadata")
    if message.tags:
        _storable(encode_json(list(message.tags)), "a message tag")
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not idempotency_key
    ):
        raise InvalidMessage("an idempotency key must be a non-empty string")
    if idempotency_key is not None:
        _storable(idempotency_key, "the idempotency key")
    return NewMessage(
        message_id=message_id,
        message=message,
        priority=priority_of(message.category),
        due=due,
        ttl=seconds,
        enqueued_at=now,
        idempotency_key=idempotency_key,
    )


@attrs.frozen(slots=True)
class NewMessage:
    """A validated message on its way into the store.

    ``due`` is the earliest time it may be sent (``send_at``, or now);
    ``expires`` is ``due + ttl``: after it the message is dead-lettered unsent.
    """

    message_id: str
    message: Message
    priority: int
    due: float
    ttl: float | None
    enqueued_at: float
    idempotency_key: str | None = None

    @property
    def expires(self) -> float | None:
        """When the message stops being worth sending (None: never)."""
        return None if self.ttl is None else self.due + self.ttl


@attrs.frozen(slots=True)
class QueuedMessage:
    """A message a worker leased: what it needs to send it and judge the outcome.

    ``tries`` counts the sends already made (each may have tried several providers).
    """

    message_id: str
    message: Message
    priority: int
    due: float
    expires: float | None
    tries: int
    enqueued_at: float


@attrs.frozen(slots=True)
class DeadLetter:
    """A message the outbox gave up on, as :meth:`Router.dead_letters` lists it.

    ``reason`` says why; ``tries`` is how many times it was sent and
    ``attempts`` every provider attempt of those tries, oldest first.
    ``outcome`` is the last attempt's (None when it was never sent, e.g. its
    ttl ran out first).  :meth:`Router.requeue` puts it back in the queue.
    """

    message_id: str
    message: Message
    reason: str
    tries: int
    attempts: tuple[Attempt, ...]
    outcome: Outcome | None
    enqueued_at: datetime.datetime
    dead_at: datetime.datetime


class OutboxStore(Protocol):
    """The storage of the outbox; see the module docstring for the state machine.

    Methods that change one message and name an ``owner`` act only while that
    owner holds the message's lease (a worker that lost its lease has nothing
    more to decide), except :meth:`ack`: a provider accepted the message, so it
    is marked sent unless it already is, lest it be sent again.
    """

    async def enqueue(self, item: NewMessage) -> str:
        """Store one message; returns its id, or the first id for a known idempotency key."""
        ...

    async def enqueue_many(self, items: Sequence[NewMessage]) -> list[str]:
        """Store a batch in one transaction; ids in order, as :meth:`enqueue` returns them."""
        ...

    async def lease(self, owner: str, limit: int, now: float, until: float) -> list[QueuedMessage]:
        """Lease up to ``limit`` pending messages due by ``now`` until ``until``.

        Leases that expired before ``now`` return to pending first.  Order: by
        priority, then due time, then enqueue order.
        """
        ...

    async def renew(self, owner: str, message_ids: Collection[str], until: float) -> int:
        """Extend ``owner``'s leases of ``message_ids`` to ``until``; returns how many it held."""
        ...

    async def ack(self, message_id: str, owner: str, result: SendResult, now: float) -> bool:
        """Record an accepted send; False when the message was already final."""
        ...

    async def retry(
        self,
        message_id: str,
        owner: str,
        due: float,
        reason: str,
        result: SendResult | None,
        now: float,
    ) -> bool:
        """Back to pending until ``due``, counting a try when ``result`` is given."""
        ...

    async def dead(
        self, message_id: str, owner: str, reason: str, result: SendResult | None, now: float
    ) -> bool:
        """Dead-letter the message, counting a try (and its attempts) when ``result`` is given."""
        ...

    async def release(self, owner: str, message_ids: Collection[str] | None, now: float) -> int:
        """Return leases untouched (all of ``owner``'s when ``message_ids`` is None)."""
        ...

    async def requeue(self, message_id: str, now: float) -> bool:
        """Put a dead letter back: pending, due now, tries reset, ttl counted from now."""
        ...

    async def record_receipt(self, report: DeliveryReport, now: float) -> bool:
        """Record a delivery receipt of a message in the store; False when unknown here.

        Only a receipt from the provider of the message's current attempt moves
        its status; any other is kept in the history.
        """
        ...

    async def record_accepted(
        self, message_id: str, provider: str, provider_message_id: str | None, now: float
    ) -> bool:
        """A resend of the message was accepted by ``provider``: that attempt is now the
        current one (status ``accepted``, whatever the last one's); False when unknown here."""
        ...

    async def status(self, message_id: str) -> MessageState | None:
        """The message's status and history, or None when the store does not know it."""
        ...

    async def recipient(self, message_id: str) -> str | None:
        """The number the message was enqueued for (as written), or None when unknown."""
        ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, most recent first."""
        ...

    async def next_due(self) -> float | None:
        """When the soonest pending message is due (None: nothing pending)."""
        ...

    async def counts(self) -> Mapping[State, int]:
        """How many messages are in each state."""
        ...

    async def purge(self, before: float) -> int:
        """Forget sent messages (and their idempotency keys) last changed before ``before``."""
        ...

    async def close(self) -> None:
        """Release the store's resources; later calls raise RuntimeError."""
        ...


def attempt_fields(a: Attempt) -> tuple[object, ...]:
    """An attempt as the flat row both stores keep (after the message id and try number)."""
    return (
        a.provider,
        a.outcome.value,
        a.latency,
        a.status_code,
        a.error_code,
        a.detail,
        a.provider_message_id,
        a.retry_after,
    )
