"""What is known of each message: its state, and which provider id is whose.

A bounded in-memory store (the durable one comes with the outbox).  Each
message has one or more *attempts*: a provider that accepted it, with the id
that provider gave it (and the ids of its parts, when the provider reports
parts apart).  The latest acceptance is the current attempt: a resend through
another provider starts a new one, and the message's state is the current
attempt's.

Receipts move an attempt forward only: ``accepted`` < ``queued`` < ``sent`` <
``undelivered`` = ``failed`` < ``delivered``; ``unknown`` never changes a state.
A receipt counts only for an attempt of the provider whose endpoint it reached
and whose id it names (:meth:`StatusStore.correlate`); a receipt for a
replaced attempt is kept in that attempt and the history but does not move the
message.  A message sent in parts is delivered when every part is, and failed
(or undelivered) as soon as one part is.

A receipt can arrive before ``send()`` has recorded which provider id belongs
to which message (the provider's callback can beat its own HTTP answer): such
receipts wait briefly (``orphan_ttl``, at most ``max_orphans`` of them) and
are applied when the send is recorded.
"""

from __future__ import annotations

import datetime
import time
from collections import OrderedDict, deque
from typing import Literal, cast

import attrs

from smsroute.message import DeliveryReport, DeliveryStatus, MessageState

RANK = {
    "failed_send": 0,
    "accepted": 0,
    "queued": 1,
    "sent": 2,
    "undelivered": 3,
    "failed": 3,
    "delivered": 4,
}
#: Statuses after which no receipt is expected for an attempt.
FINAL_RANK = 3
#: Receipts waiting for their send to be recorded, at most (besides ``orphan_ttl``).
MAX_ORPHANS = 10_000


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _datetime(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def _aggregate(parts: dict[str, str]) -> str:
    """One status for a message sent in parts: failed as soon as one part is,
    delivered when every part is, else the least advanced part's."""
    least = "delivered"
    for status in parts.values():
        if status == "failed" or status == "undelivered":
            return status
        if RANK.get(status, -1) < RANK[least]:
            least = status
    return least


@attrs.define(slots=True)
class _Attempt:
    """A replaced attempt (made only when a message is resent)."""

    provider: str
    provider_message_id: str | None
    status: str
    parts: dict[str, str] | None


@attrs.define(slots=True)
class _Extra:
    """What only some messages have: parts reported apart, or earlier attempts."""

    #: The current attempt's part ids and each part's status (None: one part).
    parts: dict[str, str] | None = None
    #: Earlier attempts, oldest first (None: never resent).
    replaced: list[_Attempt] | None = None


@attrs.define(slots=True)
class _Entry:
    """Times are Unix timestamps: one per send, made datetimes only when read.

    A store holds up to 100,000 of these, one per message sent, so an entry is
    one object: the first event of its history lives in its own fields and the
    list of later events is made only when there are some.  (Every object kept
    per message makes Python's garbage collector run more often, and each run
    walks every send in flight: a list and two tuples more per message cost
    Router.send more CPU than the rest of this store.)  For the same reason the
    current attempt lives in the entry's own fields (``provider``,
    ``provider_message_id``, ``status``); ``extra`` is made only for a message
    whose provider reports parts apart, or a resent one.
    """

    message_id: str
    status: str
    provider: str | None
    provider_message_id: str | None
    error_code: str | None
    updated_at: float
    accepted_at: float | None
    country: str | None
    first_status: str
    first_provider: str | None
    first_at: float
    #: The recipient as the message gave it (a str: no object more per message), for
    #: an opt-out a correlated receipt reports; never in a MessageState.
    number: str | None
    later: list[tuple[str, str | None, float]] | None = None
    extra: _Extra | None = None

    @property
    def parts(self) -> dict[str, str] | None:
        return self.extra.parts if self.extra is not None else None

    @property
    def replaced(self) -> list[_Attempt] | None:
        return self.extra.replaced if self.extra is not None else None

    def more(self) -> _Extra:
        if self.extra is None:
            self.extra = _Extra()
        return self.extra

    def add(self, status: str, provider: str | None, at: float) -> None:
        if self.later is None:
            self.later = []
        self.later.append((status, provider, at))

    def ids(self) -> list[tuple[str, str]]:
        """Every (provider, provider id) of every attempt."""
        out: list[tuple[str, str]] = []
        attempts = [(self.provider, self.provider_message_id, self.parts)]
        attempts += [(a.provider, a.provider_message_id, a.parts) for a in self.replaced or ()]
        for provider, main, parts in attempts:
            if provider is None:
                continue
            if main is not None:
                out.append((provider, main))
            out += [(provider, part) for part in parts or ()]
        return out

    def current_has(self, provider: str, provider_message_id: str) -> bool:
        """Whether the id is the current attempt's (or one of its parts')."""
        if provider != self.provider:
            return False
        if provider_message_id == self.provider_message_id:
            return True
        return self.parts is not None and provider_message_id in self.parts

    def replaced_attempt(self, provider: str, provider_message_id: str) -> _Attempt | None:
        for attempt in self.replaced or ():
            if attempt.provider == provider and (
                provider_message_id == attempt.provider_message_id
                or (attempt.parts is not None and provider_message_id in attempt.parts)
            ):
                return attempt
        return None

    def tried(self, provider: str) -> bool:
        """Whether any attempt of this message went through ``provider``."""
        return provider == self.provider or any(a.provider == provider for a in self.replaced or ())

    def freeze(self) -> MessageState:
        first = (self.first_status, self.first_provider, _datetime(self.first_at))
        return MessageState(
            message_id=self.message_id,
            status=self.status,
            provider=self.provider,
            provider_message_id=self.provider_message_id,
            error_code=self.error_code,
            updated_at=_datetime(self.updated_at),
            history=(first, *((s, p, _datetime(at)) for s, p, at in self.later or ())),
        )


class StatusStore:
    """Message states by our id, and provider ids mapped to ours; oldest forgotten first.

    Bounded by count: ``max_messages`` messages (the oldest sent is forgotten
    first, with its provider ids) and ``max_orphans`` early receipts (each kept
    ``orphan_ttl`` seconds at most).
    """

    def __init__(
        self,
        max_messages: int = 100_000,
        orphan_ttl: float = 120.0,
        max_orphans: int = MAX_ORPHANS,
    ) -> None:
        self.max_messages = max_messages
        self.orphan_ttl = orphan_ttl
        self.max_orphans = max_orphans
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # provider -> its message id -> ours (nested rather than keyed by a tuple:
        # no object made per message)
        self._by_provider_id: dict[str, dict[str, str]] = {}
        self._orphans: dict[tuple[str, str], list[DeliveryReport]] = {}
        self._orphan_order: deque[tuple[datetime.datetime, tuple[str, str]]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def record_send(
        self,
        message_id: str,
        status: str,
        provider: str | None,
        provider_message_id: str | None,
        country: str | None,
        at: datetime.datetime | None = None,
        part_ids: tuple[str, ...] = (),
        number: str | None = None,
    ) -> list[DeliveryReport]:
        """Record a send's outcome; returns receipts that arrived for it before this call.

        An acceptance of a message already known (a resend) starts a new attempt:
        the message is ``accepted`` again, by ``provider``.  ``part_ids`` are the
        ids of the message's parts when the provider reports them apart (the
        first of them is usually ``provider_message_id``).  ``number`` is the
        recipient (:meth:`number`), kept for the opt-outs receipts report.
        """
        now = at.timestamp() if at is not None else time.time()
        entry = self._entries.get(message_id)
        if entry is None:
            entry = _Entry(
                message_id,
                status,
                provider,
                provider_message_id,
                None,
                now,
                now if status == "accepted" else None,
                country,
                status,
                provider,
                now,
                number,
            )
            self._entries[message_id] = entry
            if len(self._entries) > self.max_messages:
                _, old = self._entries.popitem(last=False)
                if old.extra is None:  # the usual case, inline
                    if old.provider and old.provider_message_id:
                        ids = self._by_provider_id.get(old.provider)
                        if ids is not None:
                            ids.pop(old.provider_message_id, None)
                else:
                    self._forget(old)
        elif status == "accepted" and provider is not None:  # a resend: a new attempt
            if entry.provider is not None:
                more = entry.more()
                if more.replaced is None:
                    more.replaced = []
                more.replaced.append(
                    _Attempt(entry.provider, entry.provider_message_id, entry.status, entry.parts)
                )
            entry.status = status
            entry.provider = provider
            entry.provider_message_id = provider_message_id
            entry.error_code = None
            if entry.extra is not None:
                entry.extra.parts = None
            entry.updated_at = now
            entry.accepted_at = now
            if number is not None:  # a message first recorded by a failed send has none
                entry.number = number
            entry.add(status, provider, now)
        else:  # a resend that no provider took: the message stays where it was
            entry.add(status, provider, now)
        if provider is None or provider_message_id is None:
            return []
        if part_ids:
            entry.more().parts = dict.fromkeys(part_ids, status)
        ids = self._by_provider_id.get(provider)
        if ids is None:
            ids = self._by_provider_id[provider] = {}
        ids[provider_message_id] = message_id
        parts = entry.parts if entry.extra is not None else None
        if parts is not None:
            for part in parts:
                ids[part] = message_id
        if not self._orphans:
            return []
        early = self._orphans.pop((provider, provider_message_id), [])
        if parts is not None:
            for part in parts:
                if part != provider_message_id:
                    early += self._orphans.pop((provider, part), [])
        # A parked receipt that named another of our messages is not this one's.
        return [r for r in early if r.message_id is None or r.message_id == message_id]

    def _forget(self, old: _Entry) -> None:
        """Drop the provider ids of a forgotten message sent in parts or resent."""
        for provider, provider_message_id in old.ids():
            ids = self._by_provider_id.get(provider)
            if ids is not None and ids.get(provider_message_id) == old.message_id:
                del ids[provider_message_id]

    def lookup(self, provider: str, provider_message_id: str) -> str | None:
        """Our message id for a provider's id (of any attempt or part), or None."""
        ids = self._by_provider_id.get(provider)
        return ids.get(provider_message_id) if ids is not None else None

    def correlate(
        self, provider: str, provider_message_id: str, claimed: str | None
    ) -> str | Literal[False] | None:
        """Which of our messages a receipt from ``provider``'s endpoint is about.

        ``claimed`` is the message id the receipt names (a client reference, or
        ``smsroute_id`` in the callback URL), if any.  Returns our message id when
        ``provider_message_id`` is the id of an attempt of that message through
        ``provider`` (and ``claimed``, if given, is that message); None when no
        message is known for it (yet: the receipt may beat the send's answer);
        False when the receipt contradicts what is known: it names a message
        whose attempt through ``provider`` has another id, or one id and another
        message.  Our id alone never correlates: a receipt moves only a message
        its provider sent, under the id that provider gave it.
        """
        found = self.lookup(provider, provider_message_id)
        if found is not None:
            return found if claimed is None or claimed == found else False
        if claimed is not None:
            entry = self._entries.get(claimed)
            if entry is not None and entry.tried(provider):
                return False
        return None

    def knows(self, message_id: str) -> bool:
        """Whether ``message_id`` is one of ours and still remembered."""
        return message_id in self._entries

    def pending(self, message_id: str, provider: str) -> bool:
        """Whether the message's attempt through ``provider`` still awaits a final receipt."""
        entry = self._entries.get(message_id)
        if entry is None:
            return False
        if entry.provider == provider:
            return RANK.get(entry.status, -1) < FINAL_RANK
        for attempt in entry.replaced or ():
            if attempt.provider == provider:
                return RANK.get(attempt.status, -1) < FINAL_RANK
        return False

    def accepted_at(self, message_id: str) -> datetime.datetime | None:
        """When the message was accepted (the latest acceptance for a resend)."""
        entry = self._entries.get(message_id)
        if entry is None or entry.accepted_at is None:
            return None
        return _datetime(entry.accepted_at)

    def number(self, message_id: str, provider: str, provider_message_id: str) -> str | None:
        """The recipient of ``message_id`` as its message gave it, when ``provider``
        sent it under ``provider_message_id`` (any attempt or part); else None."""
        entry = self._entries.get(message_id)
        if entry is None or self.lookup(provider, provider_message_id) != message_id:
            return None
        return entry.number

    def country(self, message_id: str) -> str | None:
        """The destination country recorded at send time."""
        entry = self._entries.get(message_id)
        return entry.country if entry is not None else None

    def park(self, report: DeliveryReport, now: datetime.datetime | None = None) -> None:
        """Keep a receipt whose provider id is not known yet, for ``orphan_ttl`` seconds.

        ``report.message_id`` is the id the receipt claimed, if any: it is applied
        only to that message.  At most ``max_orphans`` are kept, the oldest dropped.
        """
        now = now or _utcnow()
        self._expire_orphans(now)
        key = (report.provider, report.provider_message_id)
        self._orphans.setdefault(key, []).append(report)
        order = self._orphan_order
        order.append((now, key))
        while len(order) > self.max_orphans:
            self._orphans.pop(order.popleft()[1], None)

    def _expire_orphans(self, now: datetime.datetime) -> None:
        horizon = now - datetime.timedelta(seconds=self.orphan_ttl)
        order = self._orphan_order
        while order and order[0][0] < horizon:
            _, key = order.popleft()
            self._orphans.pop(key, None)

    def apply(self, report: DeliveryReport) -> DeliveryReport | None:
        """Move the message's state forward with a receipt of one of its attempts.

        Returns the report as it moved the message (for a message sent in parts,
        with the status of the whole), or None when it did not: stale, unknown,
        ``unknown`` status, not an id of the message's attempts through
        ``report.provider``, or a replaced attempt's (kept in that attempt and
        the history only).
        """
        if report.message_id is None or report.status == "unknown":
            return None
        entry = self._entries.get(report.message_id)
        if entry is None:
            return None
        rank = RANK.get(report.status, -1)
        at = report.at.timestamp()
        if not entry.current_has(report.provider, report.provider_message_id):
            attempt = entry.replaced_attempt(report.provider, report.provider_message_id)
            if attempt is None:
                return None
            status = _advance(attempt.parts, report)
            if status is None or RANK.get(status, -1) <= RANK.get(attempt.status, -1):
                return None
            attempt.status = status
            entry.add(status, report.provider, at)
            return None
        if entry.parts is not None:
            status = _advance(entry.parts, report)
            if status is None:
                return None
            rank = RANK.get(status, -1)
        if rank <= RANK.get(entry.status, -1):
            return None
        if entry.parts is not None and status != report.status:
            # Ranked above the entry's: a delivery status, never "accepted".
            report = attrs.evolve(report, status=cast(DeliveryStatus, status))
        entry.status = report.status
        entry.error_code = report.error_code
        entry.updated_at = at
        entry.add(report.status, report.provider, at)
        return report

    def get(self, message_id: str) -> MessageState | None:
        """The state of ``message_id``, or None when unknown (or forgotten)."""
        entry = self._entries.get(message_id)
        return entry.freeze() if entry is not None else None


def _advance(parts: dict[str, str] | None, report: DeliveryReport) -> str | None:
    """The status of an attempt after ``report``: the report's own for one part;
    for parts, the whole's once the report's part moved forward (None if it did not)."""
    if parts is None:
        return report.status
    part = report.provider_message_id
    if part not in parts or RANK.get(report.status, -1) <= RANK.get(parts[part], -1):
        return None
    parts[part] = report.status
    return _aggregate(parts)
