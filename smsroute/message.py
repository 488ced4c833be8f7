"""The data that flows through smsroute: messages in, results out.

``Message`` is what a user hands to :meth:`Router.send`; ``SendResult`` is what
comes back, with one :class:`Attempt` per provider tried.  ``Outcome`` is the
taxonomy every provider answer is mapped to (see ``smsroute.providers.base``).
"""

from __future__ import annotations

import datetime
import enum
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import attrs

from smsroute.errors import SmsrouteError

#: Categories every config knows; a config may declare more.
BUILTIN_CATEGORIES = ("otp", "transactional", "marketing")

Encoding = Literal["GSM-7", "UCS-2"]
SendStatus = Literal["accepted", "failed"]


class Outcome(enum.Enum):
    """What one attempt at one provider came to.  Decides what the router does next.

    ========== ======================================== ============= ==================
    outcome    example                                  next provider counts against health
    ========== ======================================== ============= ==================
    accepted   201 with a message id                    stop: success success
    rejected   invalid number, blocked, opted out       stop: failed  no
    unroutable provider cannot reach that country       yes           no
    throttled  429, Retry-After                         yes (paused)  no
    auth       401/403, bad credentials                 yes           yes: opens breaker
    transient  5xx, refused, reset, malformed reply     yes           yes
    timeout    no answer in time: may have been sent    per rule      yes
    ========== ======================================== ============= ==================
    """

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNROUTABLE = "unroutable"
    THROTTLED = "throttled"
    AUTH = "auth"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"

    @property
    def is_health_failure(self) -> bool:
        """Whether this outcome says the provider is unwell (feeds breakers)."""
        return self in _HEALTH_FAILURES


_HEALTH_FAILURES = frozenset({Outcome.AUTH, Outcome.TRANSIENT, Outcome.TIMEOUT})


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen(slots=True)
class Message:
    """One SMS to send.

    >>> Message(to="+49 151 23456789", text="Your code is 123456", category="otp")

    ``to`` may be written in any format phonenumbers understands; a number
    without ``+country`` uses the config's ``default_region``.  ``category`` is
    ``otp``, ``transactional``, ``marketing`` or one the config declares.
    ``tags`` can be matched by rules; ``metadata`` is carried through untouched.
    ``sender`` None or empty: the provider's configured sender (or the account's).
    """

    to: str
    text: str
    sender: str | None = None
    category: str = "transactional"
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tags)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    def __repr__(self) -> str:
        # Never show the number or the text: reprs end up in logs and tracebacks.
        from smsroute.numbers import mask

        return (
            f"Message(to={mask(self.to)!r}, text=<{len(self.text)} chars>, "
            f"sender={self.sender!r}, category={self.category!r}, tags={self.tags!r})"
        )


# -- the send path's constructors -------------------------------------------------------
#
# attrs' frozen __init__ sets each field through ``object.__setattr__`` (a
# method-wrapper call per field): under callgrind an Attempt cost 9.1k
# instructions and a SendResult 14-15k.  The send path builds them with
# new_attempt/new_send_result instead: each class's slots live in a plain
# base class (attrs adds none of its own when a base has them), whose
# instance is filled by ordinary attribute stores and then becomes the frozen
# class by ``__class__`` assignment, which CPython allows between a class and
# a subclass that adds no slot.  What comes out is an ordinary Attempt or
# SendResult (tests/test_hot_path.py compares every field with one made by
# attrs' __init__).


class _AttemptSlots:
    __slots__ = (
        "__weakref__",
        "detail",
        "error_code",
        "latency",
        "outcome",
        "provider",
        "provider_message_id",
        "retry_after",
        "status_code",
    )
    provider: str
    outcome: Outcome
    latency: float
    status_code: int | None
    error_code: str | None
    detail: str | None
    provider_message_id: str | None
    retry_after: float | None


@attrs.frozen(slots=True)
class Attempt(_AttemptSlots):
    """One try at one provider, as recorded in :attr:`SendResult.attempts`.

    ``latency`` is seconds from sending the request to its outcome (0.0 when the
    router skipped the provider without calling it, e.g. locally rate-limited).
    ``detail`` is a short, privacy-safe explanation from the adapter.
    """

    provider: str
    outcome: Outcome
    latency: float
    status_code: int | None = None
    error_code: str | None = None
    detail: str | None = None
    provider_message_id: str | None = None
    retry_after: float | None = None


class Culprit(NamedTuple):
    """A character that forced UCS-2, and where it stands in the text (0-based indexes).

    ``str(culprit)`` reads ``U+201C LEFT DOUBLE QUOTATION MARK at 0, 14``.
    """

    char: str
    positions: tuple[int, ...]

    def __str__(self) -> str:
        name = unicodedata.name(self.char, "")
        where = ", ".join(map(str, self.positions))
        return f"U+{ord(self.char):04X}{' ' + name if name else ''} at {where}"


class _SendResultSlots:
    __slots__ = (
        "__weakref__",
        "attempts",
        "cost",
        "culprits",
        "currency",
        "encoding",
        "last_resort",
        "message_id",
        "outcome",
        "provider",
        "provider_message_id",
        "quiet_until",
        "reason",
        "rule",
        "segments",
        "status",
        "transliterated",
    )
    message_id: str
    status: SendStatus
    provider: str | None
    provider_message_id: str | None
    attempts: tuple[Attempt, ...]
    segments: int
    encoding: Encoding
    cost: float | None
    currency: str | None
    reason: str | None
    rule: str | None
    last_resort: bool
    outcome: Outcome | None
    culprits: tuple[Culprit, ...]
    transliterated: bool
    quiet_until: datetime.datetime | None


@attrs.frozen(slots=True)
class SendResult(_SendResultSlots):
    """The outcome of :meth:`Router.send`.

    ``status`` is ``"accepted"`` when a provider took the message, else
    ``"failed"`` with ``reason`` saying why.  ``attempts`` lists every provider
    tried in order.  ``cost`` is the configured price per segment of the
    accepting provider times ``segments`` (None when the price is unknown).
    ``last_resort`` is true when every provider's breaker was open and the
    router tried the one reopening soonest anyway.  ``reason`` is
    ``"opted_out"`` when the number opted out and the category is refused.

    ``culprits`` names the characters that made the text UCS-2, with their
    positions (empty for GSM-7; not in the repr, they are the text's);
    ``transliterated`` is true when ``encoding: transliterate`` replaced look-alike
    characters before sending (``segments`` and ``cost`` count what was sent).
    ``quiet_until`` is set when the send was refused in its category's quiet
    hours: the first moment (UTC) the message may go.
    """

    message_id: str
    status: SendStatus
    provider: str | None
    provider_message_id: str | None
    attempts: tuple[Attempt, ...]
    segments: int
    encoding: Encoding
    cost: float | None = None
    currency: str | None = None
    reason: str | None = None
    rule: str | None = None
    last_resort: bool = False
    #: The final outcome: the last attempt's, or REJECTED for an opted-out number.
    outcome: Outcome | None = None
    culprits: tuple[Culprit, ...] = attrs.field(default=(), repr=False)
    transliterated: bool = False
    quiet_until: datetime.datetime | None = None

    @property
    def ok(self) -> bool:
        """True when a provider accepted the message."""
        return self.status == "accepted"

    def raise_for_status(self) -> SendResult:
        """Raise :class:`SendFailed` if the send failed; return ``self`` otherwise."""
        if self.status != "accepted":
            raise SendFailed(self)
        return self


def new_attempt(
    provider: str,
    outcome: Outcome,
    latency: float,
    status_code: int | None = None,
    error_code: str | None = None,
    detail: str | None = None,
    provider_message_id: str | None = None,
    retry_after: float | None = None,
) -> Attempt:
    """``Attempt(...)`` with the same arguments, in under a third of the instructions."""
    self = _AttemptSlots()
    self.provider = provider
    self.outcome = outcome
    self.latency = latency
    self.status_code = status_code
    self.error_code = error_code
    self.detail = detail
    self.provider_message_id = provider_message_id
    self.retry_after = retry_after
    self.__class__ = Attempt
    return self  # type: ignore[return-value]  # it is an Attempt now


def new_send_result(
    message_id: str,
    status: SendStatus,
    provider: str | None,
    provider_message_id: str | None,
    attempts: tuple[Attempt, ...],
    segments: int,
    encoding: Encoding,
    cost: float | None = None,
    currency: str | None = None,
    reason: str | None = None,
    rule: str | None = None,
    last_resort: bool = False,
    outcome: Outcome | None = None,
    culprits: tuple[Culprit, ...] = (),
    transliterated: bool = False,
    quiet_until: datetime.datetime | None = None,
) -> SendResult:
    """``SendResult(...)`` with the same arguments, in under a third of the instructions."""
    self = _SendResultSlots()
    self.message_id = message_id
    self.status = status
    self.provider = provider
    self.provider_message_id = provider_message_id
    self.attempts = attempts
    self.segments = segments
    self.encoding = encoding
    self.cost = cost
    self.currency = currency
    self.reason = reason
    self.rule = rule
    self.last_resort = last_resort
    self.outcome = outcome
    self.culprits = culprits
    self.transliterated = transliterated
    self.quiet_until = quiet_until
    self.__class__ = SendResult
    return self  # type: ignore[return-value]  # it is a SendResult now


class SendFailed(SmsrouteError):
    """Raised by :meth:`SendResult.raise_for_status` when a send failed.

    Part of the :mod:`smsroute.errors` hierarchy; defined here, beside the
    result it carries, so that the errors module depends on nothing.
    """

    def __init__(self, result: SendResult) -> None:
        self.result = result
        tried = ", ".join(f"{a.provider}={a.outcome.value}" for a in result.attempts) or "none"
        super().__init__(f"message {result.message_id} failed: {result.reason} (attempts: {tried})")


DeliveryStatus = Literal["queued", "sent", "delivered", "undelivered", "failed", "unknown"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = (
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "unknown",
)


@attrs.frozen(slots=True)
class DeliveryReport:
    """A provider's delivery receipt, normalised.

    ``status`` is ``queued``, ``sent``, ``delivered``, ``undelivered`` (handed to
    the carrier, not delivered), ``failed`` (never handed over) or ``unknown``.
    ``message_id`` is ours (None when the receipt matches no message we know);
    ``at`` is when the provider says the status happened (UTC), or when we got it.
    ``opted_out`` is true when the provider's error code means the recipient opted
    out (Vonage err-code 9, Plivo 200, ...): the router records the opt-out of the
    number its message went to.
    """

    message_id: str | None
    provider: str
    provider_message_id: str
    status: DeliveryStatus
    error_code: str | None
    at: datetime.datetime
    retryable: bool | None = None
    opted_out: bool = False

    @property
    def final(self) -> bool:
        """Whether no later receipt is expected (delivered, undelivered, failed)."""
        return self.status in ("delivered", "undelivered", "failed")


@attrs.frozen(slots=True)
class InboundMessage:
    """A message someone sent to one of our numbers.

    STOP-words opt the sender out (and START opts back in) before callbacks run;
    ``keyword`` tells the callback which, and surfaces HELP.
    """

    provider: str
    sender: str
    recipient: str
    text: str
    received_at: datetime.datetime
    provider_message_id: str | None = None
    #: ``STOP``, ``START`` or ``HELP`` when the whole text is such a keyword.
    keyword: str | None = None

    def __repr__(self) -> str:
        from smsroute.numbers import mask

        return (
            f"InboundMessage(provider={self.provider!r}, sender={mask(self.sender)!r}, "
            f"recipient={mask(self.recipient)!r}, text=<{len(self.text)} chars>)"
        )


@attrs.frozen(slots=True)
class MessageState:
    """What :meth:`Router.status` knows of one message.

    ``status`` starts as the send's outcome (``accepted`` or ``failed``) and
    then follows delivery receipts (``queued`` ... ``delivered``), never going
    backwards.  A resend through another provider is a new attempt: the
    message is ``accepted`` by that provider again, and only that provider's
    receipts move it from then on.  ``history`` holds every change as
    (status, provider, at), a replaced attempt's late receipts included.
    """

    message_id: str
    status: str
    provider: str | None
    provider_message_id: str | None
    error_code: str | None
    updated_at: datetime.datetime
    history: tuple[tuple[str, str | None, datetime.datetime], ...] = ()
