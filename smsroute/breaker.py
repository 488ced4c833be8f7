"""The circuit breaker: a state machine driven by attempt outcomes and an injected clock.

    CLOSED --(failure rate over the window >= failure_rate after min_calls,
              or consecutive_failures in a row, or an AUTH answer)--> OPEN
    OPEN   --(clock reaches reopen_at)--> HALF_OPEN
    HALF_OPEN --(half_open_probes successes)--> CLOSED
    HALF_OPEN --(any failure)--> OPEN, for longer: open_for * 2**(opens-1), capped at max_open_for

The reopen time is stored as an absolute time, never a duration that each
reader restarts.  The router's send path feeds a breaker with attempt
outcomes; delivery receipts feed it through :meth:`CircuitBreaker.record_receipt`
when ``min_delivery_ratio`` is set:

    judged:  only receipts for messages accepted since the breaker last opened
             (older ones describe the provider before it was judged), once
             min_receipts of them are in; a receipt that says delivered never opens
    CLOSED/HALF_OPEN --(an undelivered receipt, ratio < min_delivery_ratio)--> OPEN
    recovered: the ratio reaches halfway from min_delivery_ratio to 100% (hysteresis);
             until then a breaker that closed after a delivery trip keeps its open
             count, so opening again on delivery waits twice as long
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable

from smsroute.clock import Clock
from smsroute.config import BreakerSettings

#: Receipts a breaker judges its delivery ratio over (or min_receipts when larger).
DELIVERY_WINDOW = 100


class BreakerState(enum.Enum):
    """A breaker's state; ``value`` is how it is written in plans and metrics."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


#: What :meth:`CircuitBreaker.allow` hands out: a normal call or a half-open probe.
ALLOWED = 1
PROBE = 2

TransitionHook = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class CircuitBreaker:
    """One breaker, for one provider (or one provider and one country).

    >>> b = CircuitBreaker(BreakerSettings(consecutive_failures=2), ManualClock())
    >>> ticket = b.allow(); b.record_failure(ticket)
    >>> ticket = b.allow(); b.record_failure(ticket)
    >>> b.state
    <BreakerState.OPEN: 'open'>
    """

    __slots__ = (
        "_calls",
        "_consecutive",
        "_failures",
        "_probe_successes",
        "_probes_in_flight",
        "_receipts",
        "_state",
        "_undelivered",
        "clock",
        "key",
        "on_probation",
        "on_transition",
        "opened_at",
        "opens",
        "reopen_at",
        "settings",
    )

    def __init__(
        self,
        settings: BreakerSettings,
        clock: Clock,
        *,
        key: tuple[str, str | None] = ("", None),
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.key = key
        self.on_transition = on_transition
        self._state = BreakerState.CLOSED
        # (time, failed) per call; the time matters only for a time-based window.
        self._calls: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._consecutive = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        #: How many times in a row the breaker opened without closing in between
        #: (after a delivery trip: without the receipts showing delivery again).
        self.opens = 0
        #: Absolute clock time at which an open breaker lets probes through.
        self.reopen_at: float | None = None
        #: Clock time the breaker last opened: receipts for messages accepted
        #: before it are not judged.
        self.opened_at = -math.inf
        #: Receipts (True: delivered) for messages accepted since ``opened_at``.
        self._receipts: deque[bool] = deque()
        self._undelivered = 0
        #: Opened on the delivery ratio and not yet seen to deliver again.
        self.on_probation = False

    # -- reading ---------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose time is up reads as HALF_OPEN."""
        if (
            self._state is BreakerState.OPEN
            and self.reopen_at is not None
            and self.clock.now() >= self.reopen_at
        ):
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def available(self) -> bool:
        """Whether :meth:`allow` would let a call through now (no side effects on slots)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._probes_in_flight < self.settings.half_open_probes
        return False

    @property
    def failure_rate(self) -> float | None:
        """Failures / calls over the window, or None with no calls."""
        self._expire()
        return self._failures / len(self._calls) if self._calls else None

    # -- the send path -----------------------------------------------------------------

    def allow(self) -> int:
        """Ask to make a call: ``ALLOWED``, ``PROBE`` (half-open) or 0 (refused).

        A granted ticket must be handed back to exactly one of
        :meth:`record_success`, :meth:`record_failure` or :meth:`release`.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return ALLOWED
        if state is BreakerState.HALF_OPEN and (
            self._probes_in_flight < self.settings.half_open_probes
        ):
            self._probes_in_flight += 1
            return PROBE
        return 0

    def release(self, ticket: int) -> None:
        """Give back a ticket whose call said nothing about health (throttled, skipped)."""
        if ticket == PROBE and self._probes_in_flight > 0:
            self._probes_in_flight -= 1

    def record_success(self, ticket: int) -> None:
        """The provider answered sanely (accepted, or a definitive rejection)."""
        if ticket == PROBE:
            self.release(ticket)
            if self._state is BreakerState.HALF_OPEN:
                self._probe_successes += 1
                if self._probe_successes >= self.settings.half_open_probes:
                    self._close()
            return
        if self._state is not BreakerState.CLOSED:
            return  # a call from before the breaker opened: says nothing about now
        self._consecutive = 0
        self._push(False)
        # Evaluated on every call, as the window can reach min_calls on a success.
        self._check_rate()

    def record_failure(self, ticket: int, *, trip: bool = False) -> None:
        """The provider failed (transient, timeout, auth).  ``trip`` opens at once."""
        if ticket == PROBE:
            self.release(ticket)
            if self._state is BreakerState.HALF_OPEN:
                self._open()
            return
        if self._state is not BreakerState.CLOSED:
            return
        self._consecutive += 1
        self._push(True)
        s = self.settings
        if trip or (
            s.consecutive_failures is not None and self._consecutive >= s.consecutive_failures
        ):
            self._open()
            return
        self._check_rate()

    def _check_rate(self) -> None:
        calls = len(self._calls)
        s = self.settings
        if calls >= s.min_calls and self._failures and self._failures / calls >= s.failure_rate:
            self._open()

    def trip(self) -> None:
        """Open now, whatever the state (e.g. the delivery ratio fell too low)."""
        if self.state is not BreakerState.OPEN:
            self._open()

    # -- delivery receipts ---------------------------------------------------------------

    def record_receipt(self, delivered: bool, accepted_at: float | None) -> bool:
        """A final receipt for a message accepted at ``accepted_at`` (clock time;
        None: unknown, taken as recent).  True when it opened the breaker.

        Does nothing unless ``min_delivery_ratio`` is set.  Receipts for messages
        accepted before the breaker last opened are ignored.  The ratio is judged
        over the last :data:`DELIVERY_WINDOW` receipts once ``min_receipts`` are in;
        only a receipt saying undelivered can open the breaker.
        """
        s = self.settings
        minimum = s.min_delivery_ratio
        if minimum is None or (accepted_at is not None and accepted_at <= self.opened_at):
            return False
        window = self._receipts
        window.append(delivered)
        if not delivered:
            self._undelivered += 1
        if len(window) > max(DELIVERY_WINDOW, s.min_receipts) and not window.popleft():
            self._undelivered -= 1
        n = len(window)
        if n < s.min_receipts:
            return False
        ratio = (n - self._undelivered) / n
        if self.on_probation and ratio >= (1.0 + minimum) / 2:
            self.on_probation = False  # delivering again: the next trip starts at open_for
            if self._state is BreakerState.CLOSED:
                self.opens = 0
        if delivered or ratio >= minimum or self.state is BreakerState.OPEN:
            return False
        self.on_probation = True
        self._open()
        return True

    @property
    def delivery_ratio(self) -> float | None:
        """Share of the judged receipts that said delivered, or None before any."""
        n = len(self._receipts)
        return (n - self._undelivered) / n if n else None

    @property
    def receipts(self) -> int:
        """How many receipts the breaker judges its delivery ratio over now."""
        return len(self._receipts)

    # -- internals -----------------------------------------------------------------------

    def _push(self, failed: bool) -> None:
        calls = self._calls
        now = self.clock.now() if self.settings.window_seconds is not None else 0.0
        calls.append((now, failed))
        if failed:
            self._failures += 1
        if self.settings.window_seconds is None:
            while len(calls) > self.settings.window:
                if calls.popleft()[1]:
                    self._failures -= 1
        else:
            self._expire()

    def _expire(self) -> None:
        if self.settings.window_seconds is None:
            return
        horizon = self.clock.now() - self.settings.window_seconds
        calls = self._calls
        while calls and calls[0][0] < horizon:
            if calls.popleft()[1]:
                self._failures -= 1

    def _open(self) -> None:
        self.opens += 1
        s = self.settings
        duration = min(s.open_for * (2 ** (self.opens - 1)), s.max_open_for)
        self.reopen_at = self.clock.now() + duration
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._transition(BreakerState.OPEN)

    def _close(self) -> None:
        if not self.on_probation:  # after a delivery trip: until receipts show delivery
            self.opens = 0
        self.reopen_at = None
        self._calls.clear()
        self._failures = 0
        self._consecutive = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._transition(BreakerState.CLOSED)

    def _transition(self, to: BreakerState) -> None:
        before = self._state
        if before is to:
            return
        self._state = to
        if to is BreakerState.OPEN:  # a new epoch: judge only messages sent from now on
            self.opened_at = self.clock.now()
            self._receipts.clear()
            self._undelivered = 0
        elif to is BreakerState.HALF_OPEN:
            self._probes_in_flight = 0
            self._probe_successes = 0
        if self.on_transition is not None:
            self.on_transition(self, before, to)
