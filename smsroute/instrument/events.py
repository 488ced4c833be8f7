"""The events the router emits.  Each is small, immutable and free of private
data: no phone number (only its country), no text, no secret.

Events are named tuples: two are built per message on the hot path, where a
tuple costs a third of a frozen attrs class.  Read them by field name;
``event._asdict()`` gives the fields as a dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from smsroute.message import Outcome


class AttemptFinished(NamedTuple):
    """One provider was tried for one message."""

    message_id: str
    provider: str
    country: str
    outcome: Outcome
    latency: float
    attempt: int
    status_code: int | None = None
    error_code: str | None = None
    skipped: bool = False


class MessageFinished(NamedTuple):
    """``send()`` returned; ``status`` is final for this send."""

    message_id: str
    category: str
    country: str
    status: str
    duration: float
    provider: str | None
    segments: int
    cost: float | None
    currency: str | None
    reason: str | None
    rule: str | None


class Failover(NamedTuple):
    """The router moved from one provider to the next for one message."""

    message_id: str
    from_provider: str
    to_provider: str
    reason: str


class BreakerTransition(NamedTuple):
    """A circuit breaker changed state.  ``country`` is None for a provider-wide breaker."""

    provider: str
    country: str | None
    from_state: str
    to_state: str

    @property
    def scope(self) -> str:
        """``provider`` or ``provider_country``."""
        return "provider" if self.country is None else "provider_country"


class RateLimitWait(NamedTuple):
    """The router waited for a provider's rate limit (or skipped it: ``waited`` False)."""

    provider: str
    seconds: float
    waited: bool


class ConcurrencySkip(NamedTuple):
    """The router skipped a provider: every ``max_concurrency`` slot of it stayed taken
    for its ``timeout`` (no request was made; the next provider of the plan is tried)."""

    provider: str


class ConfigReloaded(NamedTuple):
    """``router.reload()`` ran; ``result`` is ``success`` or ``error``."""

    source: str
    result: str
    error: str | None = None


class DeliveryReceived(NamedTuple):
    """A delivery receipt for a message we sent arrived.

    ``status`` is a :data:`~smsroute.message.DeliveryStatus` (``delivered``,
    ``undelivered``, ``failed`` are final); ``latency`` is seconds from the
    provider accepting the message to this receipt, when known.
    """

    provider: str
    country: str
    status: str
    latency: float | None = None


class WebhookRefused(NamedTuple):
    """A webhook request was refused.  ``kind`` is ``status`` or ``inbound``;
    ``reason`` says why in one word (``signature``, ``malformed``, ``too_large``,
    ``unknown_message``...)."""

    provider: str
    kind: str
    reason: str


class StateBackendError(NamedTuple):
    """A call to the shared state backend (Redis) failed; the router went on with
    local state.  ``operation`` is what was being done: ``sync``, ``breaker``,
    ``ratelimit``, ``pause``, ``optouts``, ``receipts``, ``status``..."""

    operation: str


class GuardRefused(NamedTuple):
    """The fraud and spend guards refused a message before any provider was called.
    ``guard`` is ``geo``, ``velocity``, ``anomaly`` or ``budget``; ``country`` an ISO code."""

    guard: str
    category: str
    country: str
    rule: str


class GuardOverrun(NamedTuple):
    """With ``state.guard_checks: local``: a replica accepted a message to a velocity log
    that other replicas' messages had already filled (Redis counted it past the limit, and
    the replica now holds the log full).  ``per`` is ``number``, ``prefix`` or
    ``country``; ``country`` an ISO code (empty when not known)."""

    per: str
    country: str


class AnomalyTransition(NamedTuple):
    """The anomaly guard of a category and country tripped or was released (``to_state``:
    ``tripped`` or ``released``); ``recent`` messages in its window, ``baseline`` before."""

    category: str
    country: str
    to_state: str
    recent: int
    baseline: int


class BudgetSpent(NamedTuple):
    """An accepted message's cost was counted against a budget: ``scope`` is its label
    (``provider:twilio-main``), ``spent`` the total of the current period."""

    scope: str
    spent: float
    limit: float
    currency: str


Event = (
    AttemptFinished
    | MessageFinished
    | Failover
    | BreakerTransition
    | RateLimitWait
    | ConcurrencySkip
    | ConfigReloaded
    | DeliveryReceived
    | WebhookRefused
    | StateBackendError
    | GuardRefused
    | GuardOverrun
    | AnomalyTransition
    | BudgetSpent
)
Hook = Callable[[Event], None]
