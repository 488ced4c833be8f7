"""What happens to a message after a provider accepted it: receipts, health, resends.

:class:`Receipts` is the receiving half's core, below the webhooks (which
verify, parse, correlate and de-duplicate requests) and beside the
dispatcher (which sends).  It records each acceptance and what it awaits
(:meth:`Receipts.accepted`, called by the dispatcher), applies correlated
receipts (:meth:`Receipts.deliver`): the status store, the provider's health
and delivery-ratio breaker, a resend through another provider when the rule
says ``on_undelivered: resend``, the durable record of the outbox, the
delivery callbacks; and it counts receipts that never came as not delivered.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs

from smsroute.clock import Clock
from smsroute.config import Config, Rule
from smsroute.instrument.events import DeliveryReceived, Event
from smsroute.message import DeliveryReport, Message, MessageState, SendResult
from smsroute.numbers import mask, normalize
from smsroute.optout import OptOutStore
from smsroute.runtime import Runtime
from smsroute.state.backend import StateBackend
from smsroute.status import StatusStore

log = logging.getLogger("smsroute")

DeliveryCallback = Callable[[DeliveryReport], Awaitable[None] | None]

#: Seconds a receipt for an outbox message waits for the worker that sent it to record the
#: provider's id (a provider may call back before the worker's write lands), and how
#: often it looks.
DURABLE_WAIT = 2.0
DURABLE_POLL = 0.05

#: Sends a message again under its id, avoiding the providers given.
Resend = Callable[[Message, str, frozenset[str]], Awaitable[SendResult]]


class DurableRecord(Protocol):
    """The outbox's durable record of messages, as receipts use it
    (:class:`~smsroute.outbox.service.OutboxService` is one)."""

    async def status(self, message_id: str) -> MessageState | None:
        """The durable state of ``message_id``; None when unknown or when no outbox is used."""
        ...

    async def record_receipt(self, report: DeliveryReport) -> bool:
        """Record ``report``; True when the outbox knows its message.  Never raises."""
        ...

    async def record_accepted(
        self, message_id: str, provider: str, provider_message_id: str | None
    ) -> bool:
        """A resend was accepted by ``provider``: its attempt is now the current one.
        True when the outbox knows the message.  Never raises."""
        ...

    async def recipient(self, message_id: str) -> str | None:
        """The number the message was enqueued for; None when unknown.  Never raises."""
        ...


class _NoDurableRecord:
    async def status(self, message_id: str) -> MessageState | None:
        return None

    async def record_receipt(self, report: DeliveryReport) -> bool:
        return False

    async def record_accepted(
        self, message_id: str, provider: str, provider_message_id: str | None
    ) -> bool:
        return False

    async def recipient(self, message_id: str) -> str | None:
        return None


async def run_callback(callback: Callable[[Any], Awaitable[None] | None], arg: Any) -> None:
    """Call a user's callback (sync or async); one that raises is logged and skipped."""
    try:
        result = callback(arg)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("smsroute callback %r failed", callback)


class Receipts:
    """Acceptances, their receipts, and what receipts change (one per router).

    ``config`` gives the config in force; ``resend`` sends a message again
    (the dispatcher's :meth:`~smsroute.dispatch.Dispatcher.send`);
    ``durable`` is the outbox's record (none by default); ``optouts`` is where a
    receipt's opt-out is recorded (the dispatcher's store, which the router's
    :class:`~smsroute.webhooks.Webhooks` hands over; none: not recorded).
    """

    def __init__(
        self,
        *,
        status: StatusStore,
        state: StateBackend,
        clock: Clock,
        config: Callable[[], Config],
        emit: Callable[[Event], None],
        resend: Resend,
        durable: DurableRecord | None = None,
        optouts: OptOutStore | None = None,
    ) -> None:
        self._status = status
        self._state = state
        self._clock = clock
        self._config = config
        self._emit = emit
        self._send = resend
        self._durable: DurableRecord = durable or _NoDurableRecord()
        #: Where an opt-out a correlated receipt reports is recorded (None: nowhere).
        self.optouts: OptOutStore | None = optouts
        self.delivery_callbacks: list[DeliveryCallback] = []
        self._closed = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._awaiting_receipt: deque[tuple[float, str, str, str]] = deque()
        self._resendable: OrderedDict[str, tuple[Message, frozenset[str], float]] = OrderedDict()

    @property
    def config(self) -> Config:
        """The config in force now."""
        return self._config()

    @property
    def awaiting(self) -> int:
        """How many accepted messages still await a final receipt (bounded)."""
        return len(self._awaiting_receipt)

    async def status(self, message_id: str) -> MessageState | None:
        """The latest known state of ``message_id``: the durable one when the outbox
        knows it, else this process's (None when unknown or forgotten)."""
        durable = await self._durable.status(message_id)
        return durable if durable is not None else self._status.get(message_id)

    async def aclose(self) -> None:
        """Start no more resends and cancel those (and early receipts) under way."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def close(self) -> None:
        """Start no more resends (:meth:`aclose` then cancels those under way)."""
        self._closed = True

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- applying a receipt ----------------------------------------------------------

    async def deliver(self, report: DeliveryReport) -> None:
        """Apply a correlated receipt: state, health, breaker, resend, callbacks.

        Nothing happens unless it moves the message's current attempt forward
        (a replaced attempt's receipt is kept in the history only); for a message
        sent in parts, what is applied is the status of the whole.  A receipt that
        says the recipient opted out records the opt-out first, whatever it moves.
        """
        if report.opted_out:
            self._opted_out(report)
        applied = self._status.apply(report)
        if applied is None:
            return  # stale, duplicate in effect or another attempt's: never move back
        report = applied
        assert report.message_id is not None
        await self._durable.record_receipt(report)
        country = self._status.country(report.message_id) or "unknown"
        latency = None
        if report.final:
            accepted = self._status.accepted_at(report.message_id)
            if accepted is not None:
                latency = max(0.0, (report.at - accepted).total_seconds())
            self.delivery_outcome(report, country, latency)
        self._emit(DeliveryReceived(report.provider, country, report.status, latency))
        for callback in self.delivery_callbacks:
            await run_callback(callback, report)

    def _opted_out(self, report: DeliveryReport) -> None:
        """Record the opt-out a correlated receipt reports.

        The number is the one our message was sent to, from the status store, and
        only when the store says ``report.provider`` sent that message under the
        receipt's id: the receipt's own body never names whom to opt out.
        """
        if self.optouts is None or report.message_id is None:
            return
        raw = self._status.number(report.message_id, report.provider, report.provider_message_id)
        if raw is not None:  # else not a message of ours through that provider (or forgotten)
            self._record_opt_out(report, raw)

    def _record_opt_out(self, report: DeliveryReport, raw: str) -> None:
        """Opt ``raw`` (the number our message went to, as written) out."""
        optouts = self.optouts
        if optouts is None:
            return
        try:
            number = normalize(raw, self._config().defaults.default_region).e164
        except ValueError:
            return  # it was sent, so it normalised then: a reload changed the region
        if number not in optouts:
            log.info(
                "%s reports in a receipt (error %s) that %s opted out: recorded",
                report.provider,
                report.error_code,
                mask(number),
            )
            optouts.opt_out(number)

    async def deliver_durable(self, report: DeliveryReport) -> bool:
        """A receipt for a message only the outbox knows; True when it was handled.

        Recorded only when the outbox's record says this provider sent the
        message under the receipt's id (the record knows no part ids: a part's
        own receipt is not recorded).
        """
        assert report.message_id is not None
        state = await self._durable.status(report.message_id)
        sent_as = (report.provider, report.provider_message_id)
        if state is not None and (state.provider, state.provider_message_id) != sent_as:
            # Perhaps sent just now: the provider called back before the worker that sent it
            # recorded its id.  Look again for a moment (a message it never sent waits too,
            # then counts as unknown or as another attempt's, below).
            loop = asyncio.get_running_loop()
            until = loop.time() + DURABLE_WAIT
            while loop.time() < until:
                await asyncio.sleep(DURABLE_POLL)
                state = await self._durable.status(report.message_id)
                if state is None or (state.provider, state.provider_message_id) == sent_as:
                    break
        if state is None or state.provider is None:
            return False  # not known, or not sent yet: nothing to check it against
        if (state.provider, state.provider_message_id) != sent_as:
            log.warning(
                "receipt at the %s endpoint names an outbox message that provider did not "
                "send under that id: ignored",
                report.provider,
            )
            return True
        if not await self._durable.record_receipt(report):
            return False
        if report.opted_out and self.optouts is not None:  # checked against the record above
            raw = await self._durable.recipient(report.message_id)
            if raw is not None:
                self._record_opt_out(report, raw)
        self._emit(DeliveryReceived(report.provider, "unknown", report.status, None))
        for callback in self.delivery_callbacks:
            await run_callback(callback, report)
        return True

    # -- acceptances and what they await --------------------------------------------

    def accepted(
        self,
        rt: Runtime,
        rule: Rule,
        message: Message,
        result: SendResult,
        country: str,
        exclude: frozenset[str],
        part_ids: tuple[str, ...] = (),
    ) -> None:
        """Record an acceptance (a new attempt of a resent message) and what it awaits."""
        assert result.provider is not None
        early = self._status.record_send(
            result.message_id,
            "accepted",
            result.provider,
            result.provider_message_id,
            country,
            None,
            part_ids,
            message.to,
        )
        for report in early:  # receipts that beat the provider's own answer
            self._spawn(self.deliver(attrs.evolve(report, message_id=result.message_id)))
        if rt.callbacks[result.provider] is not None and rt.config.defaults.receipt_timeout:
            waiting = self._awaiting_receipt
            waiting.append((self._clock.now(), result.message_id, result.provider, country))
            self._expire_receipts()
            # Bounded by count too: past max_messages the status store has forgotten
            # the oldest message anyway, so its overdue receipt could not be judged.
            while len(waiting) > self._status.max_messages:
                waiting.popleft()
        if rule.on_undelivered == "resend":
            tried = exclude | {a.provider for a in result.attempts}
            resend = self._resendable
            resend[result.message_id] = (
                message,
                tried,
                self._clock.now() + rt.config.defaults.resend_ttl,
            )
            while len(resend) > self._status.max_messages:
                resend.popitem(last=False)

    def _expire_receipts(self) -> None:
        """Count accepted messages whose final receipt never came as not delivered.

        Each attempt is judged for its own provider: a resent message's first
        provider is not blamed for the second one's silence, nor the other way round.
        """
        timeout = self._config().defaults.receipt_timeout
        if timeout is None:
            return
        horizon = self._clock.now() - timeout
        waiting = self._awaiting_receipt
        while waiting and waiting[0][0] <= horizon:
            accepted, message_id, provider, country = waiting.popleft()
            if self._status.pending(message_id, provider):
                seconds = self._clock.now() - accepted
                self._record_delivery(provider, country, delivered=False, seconds=seconds)

    def _record_delivery(
        self, provider: str, country: str, *, delivered: bool, seconds: float | None
    ) -> None:
        """A final receipt (or one overdue: not delivered) ``seconds`` after the
        message was accepted (None: unknown): feed health, and the breaker when
        the provider has a ``min_delivery_ratio``."""
        state = self._state
        state.health(provider).record_delivery(delivered, seconds)
        state.health(provider, country).record_delivery(delivered, seconds)
        pcfg = self._config().providers.get(provider)
        if pcfg is None or pcfg.breaker.min_delivery_ratio is None:
            return
        breaker = state.breaker(pcfg, country)
        accepted_at = None if seconds is None else self._clock.now() - seconds
        if breaker.record_receipt(delivered, accepted_at):
            log.warning(
                "%s delivered %.0f%% of the %d messages%s sent since its breaker last opened "
                "(minimum %.0f%%): opening its breaker",
                provider,
                (breaker.delivery_ratio or 0.0) * 100,
                breaker.receipts,
                f" to {country}" if pcfg.breaker_scope == "provider_country" else "",
                pcfg.breaker.min_delivery_ratio * 100,
            )

    def delivery_outcome(self, report: DeliveryReport, country: str, seconds: float | None) -> None:
        """A final receipt: feed health and breaker; resend a failed delivery if the rule says so."""
        if report.status == "delivered":
            self._record_delivery(report.provider, country, delivered=True, seconds=seconds)
            self._resendable.pop(report.message_id or "", None)
            return
        if report.retryable is not False:  # a permanent failure is the number's, not the provider's
            self._record_delivery(report.provider, country, delivered=False, seconds=seconds)
        entry = self._resendable.get(report.message_id or "")
        if entry is None or report.retryable is False:
            return
        message, tried, until = entry
        if self._clock.now() > until or self._closed:
            self._resendable.pop(report.message_id or "", None)
            return
        self._spawn(self._resend(report.message_id or "", message, tried))

    async def _resend(self, message_id: str, message: Message, tried: frozenset[str]) -> None:
        try:
            result = await self._send(message, message_id, tried)
        except Exception:  # the message was valid when first sent; log, never raise from a task
            log.exception("resend of %s failed", message_id)
            return
        if not result.ok:
            log.warning("resend of %s found no other provider: %s", message_id, result.reason)
            self._resendable.pop(message_id, None)
            return
        assert result.provider is not None
        await self._durable.record_accepted(message_id, result.provider, result.provider_message_id)
