"""What is known of each message: its state, and which provider id is whose.

A bounded in-memory store (the durable one comes with the outbox).  Receipts
move a message forward only: ``accepted`` < ``queued`` < ``sent`` <
``undelivered`` = ``failed`` < ``delivered``; ``unknown`` never changes a state.
A receipt can arrive before ``send()`` has recorded which provider id belongs
to which message (the provider's callback can beat its own HTTP answer): such
receipts wait briefly and are applied when the send is recorded.
"""

from __future__ import annotations

import datetime
import time
from collections import OrderedDict, deque

import attrs

from smsroute.message import DeliveryReport, MessageState

RANK = {
    "failed_send": 0,
    "accepted": 0,
    "queued": 1,
    "sent": 2,
    "undelivered": 3,
    "failed": 3,
    "delivered": 4,
}


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _datetime(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


@attrs.define(slots=True)
class _Entry:
    """Times are Unix timestamps: one per send, made datetimes only when read.

    A store holds up to 100,000 of these, one per message sent, so an entry is
    one object: the first event of its history lives in its own fields and the
    list of later events is made only when there are some.  (Every object kept
    per message makes Python's garbage collector run more often, and each run
    walks every send in flight: a list and two tuples more per message cost
    Router.send more CPU than the rest of this store.)
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
    later: list[tuple[str, str | None, float]] | None = None

    def add(self, status: str, provider: str | None, at: float) -> None:
        if self.later is None:
            self.later = []
        self.later.append((status, provider, at))

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
    """Message states by our id, and provider ids mapped to ours; oldest forgotten first."""

    def __init__(self, max_messages: int = 100_000, orphan_ttl: float = 120.0) -> None:
        self.max_messages = max_messages
        self.orphan_ttl = orphan_ttl
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
    ) -> list[DeliveryReport]:
        """Record a send's outcome; returns receipts that arrived for it before this call."""
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
            )
            self._entries[message_id] = entry
            if len(self._entries) > self.max_messages:
                _, old = self._entries.popitem(last=False)
                if old.provider and old.provider_message_id:
                    ids = self._by_provider_id.get(old.provider)
                    if ids is not None:
                        ids.pop(old.provider_message_id, None)
        else:  # a resend of a message we know
            entry.provider = provider or entry.provider
            entry.provider_message_id = provider_message_id or entry.provider_message_id
            entry.add(status, provider, now)
            if status == "accepted":
                entry.accepted_at = now
        if provider is None or provider_message_id is None:
            return []
        ids = self._by_provider_id.get(provider)
        if ids is None:
            ids = self._by_provider_id[provider] = {}
        ids[provider_message_id] = message_id
        if not self._orphans:
            return []
        return self._orphans.pop((provider, provider_message_id), [])

    def lookup(self, provider: str, provider_message_id: str) -> str | None:
        """Our message id for a provider's id, or None."""
        ids = self._by_provider_id.get(provider)
        return ids.get(provider_message_id) if ids is not None else None

    def knows(self, message_id: str) -> bool:
        """Whether ``message_id`` is one of ours and still remembered."""
        return message_id in self._entries

    def accepted_at(self, message_id: str) -> datetime.datetime | None:
        """When the message was accepted (the latest acceptance for a resend)."""
        entry = self._entries.get(message_id)
        if entry is None or entry.accepted_at is None:
            return None
        return _datetime(entry.accepted_at)

    def country(self, message_id: str) -> str | None:
        """The destination country recorded at send time."""
        entry = self._entries.get(message_id)
        return entry.country if entry is not None else None

    def park(self, report: DeliveryReport, now: datetime.datetime | None = None) -> None:
        """Keep a receipt whose provider id is not known yet, for ``orphan_ttl`` seconds."""
        now = now or _utcnow()
        self._expire_orphans(now)
        key = (report.provider, report.provider_message_id)
        self._orphans.setdefault(key, []).append(report)
        self._orphan_order.append((now, key))

    def _expire_orphans(self, now: datetime.datetime) -> None:
        horizon = now - datetime.timedelta(seconds=self.orphan_ttl)
        order = self._orphan_order
        while order and order[0][0] < horizon:
            _, key = order.popleft()
            self._orphans.pop(key, None)

    def apply(self, report: DeliveryReport) -> bool:
        """Move the message's state forward; False when the receipt is stale or unknown."""
        if report.message_id is None:
            return False
        entry = self._entries.get(report.message_id)
        if entry is None or report.status == "unknown":
            return False
        if RANK.get(report.status, -1) <= RANK.get(entry.status, -1):
            return False
        entry.status = report.status
        entry.provider = report.provider
        entry.provider_message_id = report.provider_message_id
        entry.error_code = report.error_code
        at = report.at.timestamp()
        entry.updated_at = at
        entry.add(report.status, report.provider, at)
        return True

    def get(self, message_id: str) -> MessageState | None:
        """The state of ``message_id``, or None when unknown (or forgotten)."""
        entry = self._entries.get(message_id)
        return entry.freeze() if entry is not None else None
