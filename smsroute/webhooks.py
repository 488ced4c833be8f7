"""Delivery receipts and inbound messages: verify, parse, correlate, dedupe, dispatch.

One entry point, :meth:`Webhooks.handle`, takes a request as any framework
sees it and returns what to answer:

    too big (> 64 KiB)                   413
    unknown provider or kind             404
    wrong method                         405
    forged, stale or unsigned            403   (when a secret is configured)
    malformed                            400
    the outbox cannot take it now        503   (the provider retries; the retry is not
                                                dropped as a duplicate)
    accepted                             2xx   (also for a receipt of a message we do
                                                not know, so the provider stops retrying)

Nothing a caller sends can raise out of here or change state before the
signature is checked.  What a correlated receipt changes is the business of
:class:`~smsroute.receipts.Receipts` (:meth:`Receipts.deliver`).
"""

from __future__ import annotations

import datetime
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from smsroute.clock import Clock
from smsroute.config import Config
from smsroute.errors import SmsrouteError
from smsroute.instrument.events import DeliveryReceived, Event, WebhookRefused
from smsroute.message import DeliveryReport, InboundMessage
from smsroute.numbers import normalize
from smsroute.optout import OptOutStore, keyword
from smsroute.providers.base import Inbound, Provider, Receipt, WebhookError, WebhookRequest
from smsroute.receipts import DeliveryCallback, Receipts, run_callback
from smsroute.state.backend import StateBackend
from smsroute.status import StatusStore

log = logging.getLogger("smsroute.webhooks")

MAX_BODY = 64 * 1024
KINDS = ("status", "inbound")
#: The ``reason`` of a WebhookRefused event (a metric label): one word per answer.
REFUSAL_REASONS = {
    400: "malformed",
    403: "forbidden",
    404: "not_found",
    405: "method",
    413: "too_large",
    503: "unavailable",
}

#: At most this many receipts, and as many inbound messages, are remembered in
#: memory to drop the provider's retries (besides ``state.receipt_ttl``).
DEDUPE_SIZE = 100_000

__all__ = [
    "DEDUPE_SIZE",
    "KINDS",
    "MAX_BODY",
    "REFUSAL_REASONS",
    "DeliveryCallback",
    "InboundCallback",
    "WebhookResponse",
    "Webhooks",
]

InboundCallback = Callable[[InboundMessage], Awaitable[None] | None]


@attrs.frozen(slots=True)
class WebhookResponse:
    """What to answer a webhook request."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class _Seen:
    """Keys seen lately: at most ``size`` of them, none older than the ``ttl`` given."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[tuple[Any, ...], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def first_time(self, key: tuple[Any, ...], now: float, ttl: float) -> bool:
        """Remember ``key``; False when it was seen within the last ``ttl`` seconds."""
        keys = self._keys
        horizon = now - ttl
        while keys:
            oldest, at = next(iter(keys.items()))
            if at > horizon:
                break
            del keys[oldest]
        if key in keys:
            return False
        keys[key] = now
        while len(keys) > self.size:
            keys.popitem(last=False)
        return True

    def forget(self, key: tuple[Any, ...]) -> None:
        """``key`` was not processed after all: the next time it comes is its first."""
        self._keys.pop(key, None)


class Webhooks:
    """The receiving half of a router (one per router): requests in, answers out.

    ``providers`` gives the adapters in force (by name), ``config`` the config;
    correlated receipts go to ``receipts``, opt-outs to ``optouts``.
    """

    def __init__(
        self,
        *,
        providers: Callable[[], Mapping[str, Provider]],
        config: Callable[[], Config],
        clock: Clock,
        emit: Callable[[Event], None],
        status: StatusStore,
        state: StateBackend,
        optouts: OptOutStore,
        receipts: Receipts,
        dedupe_size: int = DEDUPE_SIZE,
    ) -> None:
        self._providers = providers
        self._config = config
        self._clock = clock
        self._emit = emit
        self._status = status
        self._state = state
        self._optouts = optouts
        self._receipts = receipts
        if receipts.optouts is None:  # the opt-outs receipts report go where STOPs go
            receipts.optouts = optouts
        self.inbound_callbacks: list[InboundCallback] = []
        #: Receipts and inbound messages processed here lately (providers retry).
        self._seen = _Seen(dedupe_size)
        self._seen_inbound = _Seen(dedupe_size)

    async def handle(
        self,
        provider_name: str,
        kind: str,
        method: str,
        url: str,
        headers: Mapping[str, str] | CIMultiDictProxy[str],
        body: bytes,
    ) -> WebhookResponse:
        """Process one webhook call; never raises for anything the caller sent."""
        if len(body) > MAX_BODY:
            return self._refuse(provider_name, kind, 413, f"body over {MAX_BODY} bytes")
        provider = self._providers().get(provider_name)
        if provider is None or kind not in KINDS:
            return self._refuse(provider_name, kind, 404, "no such webhook")
        allowed = provider.webhook_methods.get(kind, frozenset())
        if method.upper() not in allowed:
            return self._refuse(provider_name, kind, 405, f"method {method} not allowed")
        if not isinstance(headers, CIMultiDictProxy):
            headers = CIMultiDictProxy(CIMultiDict(headers))
        request = WebhookRequest(method.upper(), url, headers, body)
        try:
            request.check_url()
            provider.verify_webhook(kind, request, _utcnow().timestamp())
        except WebhookError as exc:
            return self._refuse(provider_name, kind, exc.status, exc.reason)
        except Exception as exc:  # an adapter's bug: neither a 500 nor a way in
            # The type only: an exception's text may quote the request (a number).
            log.error(
                "%s webhook of %s: the signature check raised %s (an adapter bug: report it)",
                kind,
                provider_name,
                type(exc).__name__,
            )
            return self._refuse(
                provider_name, kind, 403, "the signature check failed in the adapter: refused"
            )
        try:
            if kind == "status":
                receipts = provider.parse_receipts(request)
            else:
                messages = provider.parse_inbound(request)
        except WebhookError as exc:
            return self._refuse(provider_name, kind, exc.status, exc.reason)
        except Exception as exc:  # an adapter choking on garbage is a malformed request
            log.warning(
                "%s webhook of %s could not be parsed: %s", kind, provider_name, type(exc).__name__
            )
            return self._refuse(provider_name, kind, 400, "malformed body")
        try:
            if kind == "status":
                for receipt in receipts:
                    await self._receipt(provider_name, request, receipt)
            else:
                for message in messages:
                    await self._inbound(provider_name, message)
        except SmsrouteError as exc:  # a store it needs cannot be used now (the outbox's)
            log.error("%s webhook of %s could not be applied now: %s", kind, provider_name, exc)
            return self._refuse(
                provider_name, kind, 503, "cannot be applied now: retry later (see the log)"
            )
        status, content_type, answer = provider.webhook_response(kind)
        return WebhookResponse(status, answer, content_type)

    # -- what a provider's own connection brings (SMPP's deliver_sm) ------------------

    @property
    def clock(self) -> Clock:
        """The router's clock (a :class:`~smsroute.providers.base.ProviderSink` reads it)."""
        return self._clock

    async def accept_receipts(self, provider_name: str, receipts: list[Receipt]) -> None:
        """Receipts ``provider_name`` received over its own connection, after its parse
        step: de-duplicated, correlated and delivered exactly as a webhook's."""
        for receipt in receipts:
            await self._receipt(provider_name, None, receipt)

    async def accept_inbound(self, provider_name: str, messages: list[Inbound]) -> None:
        """Inbound messages ``provider_name`` received over its own connection: opt-outs
        and ``on_inbound`` callbacks exactly as a webhook's."""
        for message in messages:
            await self._inbound(provider_name, message)

    def _refuse(self, provider: str, kind: str, status: int, reason: str) -> WebhookResponse:
        # Anyone can call a webhook URL: labels come from closed sets, never from the request.
        known = provider in self._providers()
        log.warning(
            "refused %s webhook for %r: %d %s",
            kind if kind in KINDS else "?",
            provider if known else "?",
            status,
            reason,
        )
        self._emit(
            WebhookRefused(
                provider if known else "unknown",
                kind if kind in KINDS else "unknown",
                REFUSAL_REASONS.get(status, "refused"),
            )
        )
        return WebhookResponse(status, reason.encode())

    # -- receipts ----------------------------------------------------------------------

    def _first_time(self, seen: _Seen, key: tuple[Any, ...]) -> bool:
        return seen.first_time(key, self._clock.now(), self._config().state.receipt_ttl)

    async def _receipt(
        self, provider: str, request: WebhookRequest | None, receipt: Receipt
    ) -> None:
        """Correlate one receipt that reached ``provider``'s endpoint, and apply it.

        It may move only a message this provider sent, under the id this
        provider gave it (see :meth:`StatusStore.correlate`): our id in the
        callback URL or a client reference is checked against that, never
        trusted alone, so the endpoint of one provider (perhaps one that signs
        nothing) cannot move what another provider sent.
        """
        key = (
            provider,
            receipt.provider_message_id,
            receipt.status,
            receipt.error_code,
            receipt.event_id,
        )
        if not self._first_time(self._seen, key):
            return  # providers retry: process each receipt once
        try:
            await self._correlated(provider, request, receipt, key)
        except BaseException:  # not applied (a store it needs failed): its retry must be
            self._seen.forget(key)
            raise

    async def _correlated(
        self,
        provider: str,
        request: WebhookRequest | None,
        receipt: Receipt,
        key: tuple[Any, ...],
    ) -> None:
        """:meth:`_receipt` for a receipt seen the first time (``key``: its dedupe key)."""
        store = self._status
        claimed = receipt.message_id or (
            request.query.get("smsroute_id") if request is not None else None
        )
        claimed = claimed or None
        message_id = store.correlate(provider, receipt.provider_message_id, claimed)
        if message_id is False:
            log.warning(
                "receipt at the %s endpoint names a message %s did not send under that id: ignored",
                provider,
                provider,
            )
            return
        report = DeliveryReport(
            message_id=message_id,
            provider=provider,
            provider_message_id=receipt.provider_message_id,
            status=receipt.status,
            error_code=receipt.error_code,
            at=receipt.at or _utcnow(),
            retryable=receipt.retryable,
            opted_out=receipt.opted_out,
        )
        if (
            message_id is None
            and claimed is not None
            and not store.knows(claimed)
            # Sent by another process (an outbox worker): its durable record knows it.
            and await self._receipts.deliver_durable(attrs.evolve(report, message_id=claimed))
        ):
            return
        if message_id is None:
            # Not (yet) ours: perhaps send() has not recorded the provider's id.  Kept
            # with the id it claims, so that it can apply to that message only.
            store.park(attrs.evolve(report, message_id=claimed))
            self._emit(DeliveryReceived(provider, "unknown", report.status, None))
            log.info("receipt from %s for an unknown message id (parked)", provider)
            return
        shared = self._state.receipt_log
        if shared is not None and not await shared.first_time(key):
            return  # a retry another replica received and applied first
        await self._receipts.deliver(report)

    # -- inbound -----------------------------------------------------------------------

    async def _inbound(self, provider: str, data: Inbound) -> None:
        """Opt-outs and callbacks for one inbound message, once per provider and its
        id (providers retry; with state in Redis, once across replicas) within
        ``state.receipt_ttl``.  A message without a provider id cannot be told
        from a retry and is always processed: never judged by sender and text."""
        if data.provider_message_id:
            key = ("inbound", provider, data.provider_message_id)
            if not self._first_time(self._seen_inbound, key):
                return
            shared = self._state.receipt_log
            if shared is not None and not await shared.first_time(key):
                return  # a retry another replica received first
        region = self._config().defaults.default_region
        try:
            sender = normalize(data.sender, region).e164
        except ValueError:
            sender = data.sender
        word = keyword(data.text)
        if word == "STOP":
            self._optouts.opt_out(sender)
        elif word == "START":
            self._optouts.opt_in(sender)
        message = InboundMessage(
            provider=provider,
            sender=sender,
            recipient=data.recipient,
            text=data.text,
            received_at=data.at or _utcnow(),
            provider_message_id=data.provider_message_id,
            keyword=word,
        )
        for callback in self.inbound_callbacks:
            await run_callback(callback, message)
