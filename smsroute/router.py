"""The router: the public façade that composes smsroute's parts.

    Router
    ├── dispatcher      smsroute.dispatch.Dispatcher: one message's plan and attempts
    ├── receipts        smsroute.receipts.Receipts: acceptances, receipts, resends
    ├── webhooks        smsroute.webhooks.Webhooks: webhook requests in, answers out
    ├── outbox_service  smsroute.outbox.service.OutboxService: enqueue, dead letters
    └── (metrics)       smsroute.metrics_http.MetricsServer: scrapes

Each part owns one job and talks to the others through the public methods
and callables wired here; :meth:`Router.reload` swaps the dispatcher's
:class:`~smsroute.runtime.Runtime`, which the others read through it.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from smsroute.breaker import BreakerState
from smsroute.clock import Clock, SystemClock
from smsroute.config import Config, OutboxSettings, StateSettings
from smsroute.configload import load_config
from smsroute.dispatch import DEFAULT_THROTTLE_PAUSE, Dispatcher, Sleep
from smsroute.explain import RoutePlan, explain
from smsroute.ids import new_message_id
from smsroute.instrument.events import Hook
from smsroute.instrument.prometheus import CollectorRegistry, PrometheusHook
from smsroute.message import Message, MessageState, SendResult
from smsroute.metrics_http import MetricsServer, metrics_app
from smsroute.optout_io import OptOuts
from smsroute.outbox import TTL, DeadLetter, OutboxStore, OutboxWorker, SendAt, open_store
from smsroute.outbox.service import OutboxService
from smsroute.receipts import Receipts
from smsroute.runtime import Runtime
from smsroute.state.backend import StateBackend
from smsroute.webhooks import DeliveryCallback, InboundCallback, WebhookResponse, Webhooks

__all__ = ["DEFAULT_THROTTLE_PAUSE", "RoutePlan", "Router", "Sleep"]


def _open_outbox_store(settings: OutboxSettings, state: StateSettings) -> OutboxStore:
    # Looked up here at call time: tests point this module's open_store elsewhere.
    return open_store(settings, state)


class Router:
    """Sends messages through the providers a config names.

    >>> async with Router.from_yaml("config/routing.yaml") as router:
    ...     result = await router.send(Message(to="+4915123456789", text="Code 123456", category="otp"))
    ...     result.ok, result.provider, [a.outcome for a in result.attempts]

    ``hooks`` receive every event (see :mod:`smsroute.instrument`).  Prometheus
    metrics are on by default, in ``registry`` (prometheus_client's global
    registry unless given; ``metrics=False`` turns them off); serve them with
    :meth:`metrics_app` or :meth:`metrics_handler`.  ``clock``, ``rng`` and
    ``sleep`` are for tests: with a :class:`ManualClock` and its ``sleep``,
    nothing in the router waits in real time except network I/O.
    """

    def __init__(
        self,
        config: Config,
        *,
        hooks: Iterable[Hook] = (),
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Sleep | None = None,
        session: aiohttp.ClientSession | None = None,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
    ) -> None:
        clock = clock or SystemClock()
        runtime = Runtime(config)
        #: Plans and sends one message; owns the runtime, the live state and the hooks.
        self.dispatcher = dispatch = Dispatcher(
            runtime,
            clock=clock,
            rng=rng or random.Random(),
            sleep=sleep or asyncio.sleep,
            hooks=hooks,
            session=session,
        )
        if metrics:
            dispatch.use_metrics(PrometheusHook(registry, config=lambda: self.config))
        self._send = dispatch.send
        #: The outbox: its store, enqueueing, dead letters, the durable record.
        self.outbox_service = OutboxService(
            config=lambda: self.config,
            clock=clock,
            validate=dispatch.admit,
            open_store=_open_outbox_store,
        )
        #: Acceptances and their receipts: status, health, delivery-ratio breakers, resends.
        self.receipts = Receipts(
            status=dispatch.status_store,
            state=dispatch.state,
            clock=clock,
            config=lambda: self.config,
            emit=dispatch.emit,
            resend=dispatch.send,
            durable=self.outbox_service,
        )
        dispatch.on_accepted(self.receipts.accepted)
        #: Webhook requests: verified, parsed, correlated, de-duplicated, answered.
        self.webhooks = Webhooks(
            providers=lambda: self.dispatcher.runtime.providers,
            config=lambda: self.config,
            clock=clock,
            emit=dispatch.emit,
            status=dispatch.status_store,
            state=dispatch.state,
            optouts=dispatch.optouts,
            receipts=self.receipts,
        )
        dispatch.use_sink(self.webhooks)
        self._metrics_server = MetricsServer(registry, self.breaker_states)
        #: The opt-out list: ``in``, ``add``, ``remove``, ``list``, ``import_csv``, ``export_csv``.
        self.optouts = OptOuts(dispatch.optouts, lambda: self.config)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Router:
        """Load the config at ``path`` (raising :class:`ConfigError`) and build a router."""
        return cls(load_config(path), **kwargs)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The config in force now."""
        return self.dispatcher.runtime.config

    @property
    def state(self) -> StateBackend:
        """Live breaker, health and rate-limit state."""
        return self.dispatcher.state

    def add_hook(self, hook: Hook) -> None:
        """Add an event hook."""
        self.dispatcher.add_hook(hook)

    async def __aenter__(self) -> Router:
        await self.dispatcher.start()  # first: a router that cannot start leaves no session open
        self.dispatcher.session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session (if the router made it) and the adapters."""
        self.receipts.close()
        await self.outbox_service.aclose()
        await self.receipts.aclose()
        await self.dispatcher.aclose()

    def reload(self, path: str | os.PathLike[str] | None = None) -> Config:
        """Load a new config (default: the current file) and swap it in atomically.

        On any error the old config stays in force and :class:`ConfigError` is
        raised.  Sends already under way finish on the config they started with;
        breaker and health state carry over for providers of the same name.
        """
        return self.dispatcher.reload(path)

    # -- sending ------------------------------------------------------------------------

    def explain(self, message: Message) -> RoutePlan:
        """Which rule matches ``message`` and in what order providers would be tried.

        No side effects; I/O only for guards' counts in Redis (one blocking read, at most
        ``state.timeout``); raises InvalidNumber or InvalidMessage as :meth:`send` would."""
        return explain(self.dispatcher, message)

    async def send(self, message: Message) -> SendResult:
        """Send ``message`` through the first provider of its plan that accepts it.

        Raises :class:`InvalidNumber` or :class:`InvalidMessage` before any
        provider is called when the message cannot be sent as written.
        Provider failures never raise: they are attempts in the result.
        """
        return await self._send(message, new_message_id(), frozenset())

    # -- receiving: receipts, inbound, status ---------------------------------------------

    async def handle_webhook(
        self,
        provider_name: str,
        kind: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> WebhookResponse:
        """Process a provider's webhook call from any web framework.

        ``kind`` is ``status`` (delivery receipts) or ``inbound``; ``url`` is the
        full public URL the provider called (signatures cover it).  Returns the
        :class:`WebhookResponse` to answer: its ``status``, ``content_type`` and
        ``body``.  Never raises for anything the caller sent.
        """
        return await self.webhooks.handle(provider_name, kind, method, url, headers, body)

    def webhook_app(self) -> web.Application:
        """An aiohttp application serving ``/{provider}/status`` and ``/{provider}/inbound``.

        Mount it under the path of ``defaults.webhook_url``, e.g.
        ``app.add_subapp("/sms", router.webhook_app())``.
        """
        from smsroute.webhook_app import make_webhook_app

        return make_webhook_app(self)

    def on_delivery_report(self, callback: DeliveryCallback) -> DeliveryCallback:
        """Call ``callback(report)`` (sync or async) for every new delivery receipt.

        Usable as a decorator.  A callback that raises is logged and skipped.
        """
        self.receipts.delivery_callbacks.append(callback)
        return callback

    def on_inbound(self, callback: InboundCallback) -> InboundCallback:
        """Call ``callback(message)`` (sync or async) for every inbound message."""
        self.webhooks.inbound_callbacks.append(callback)
        return callback

    async def status(self, message_id: str) -> MessageState | None:
        """The latest known state of ``message_id`` (None when unknown or forgotten).

        With an outbox, its durable record: every status since enqueue, receipts included.
        """
        return await self.receipts.status(message_id)

    def is_opted_out(self, number: str) -> bool:
        """Whether ``number`` opted out: STOP (and no START since), a provider, an import."""
        return number in self.optouts

    def breaker_states(self) -> Mapping[tuple[str, str | None], BreakerState]:
        """The state of every breaker created so far, by (provider, country or None)."""
        return {b.key: b.state for b in self.dispatcher.state.breakers()}

    # -- metrics ------------------------------------------------------------------------

    async def metrics_handler(self, request: web.Request) -> web.StreamResponse:
        """An aiohttp handler answering a scrape with this router's metrics.

        Mount it in your own application::

            app.router.add_get("/metrics", router.metrics_handler)

        It serves the router's registry (prometheus_client's global one unless
        ``registry=`` was given), so your own metrics there are served too; with
        ``PROMETHEUS_MULTIPROC_DIR`` set, every worker process's metrics.
        """
        return await self._metrics_server.handle(request)

    def metrics_app(self) -> web.Application:
        """An aiohttp application serving ``GET /metrics`` for Prometheus to scrape.

        >>> runner = web.AppRunner(router.metrics_app())
        >>> await runner.setup()
        >>> await web.TCPSite(runner, "0.0.0.0", 9464).start()
        """
        return metrics_app(self.metrics_handler)

    # -- the outbox: durable send-later -------------------------------------------------

    @property
    def outbox(self) -> OutboxStore:
        """The durable store behind :meth:`enqueue` (``outbox:`` in the config), opened on first use."""
        return self.outbox_service.store()

    async def enqueue(
        self,
        message: Message,
        *,
        send_at: SendAt | None = None,
        ttl: TTL | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Validate ``message`` and store it durably for the outbox worker; returns its id.

        A bad number or text raises :class:`InvalidNumber` or
        :class:`InvalidMessage` here, and nothing is stored.  ``send_at`` (an
        aware datetime, or a timedelta from now) holds the message until then;
        ``ttl`` (seconds or a timedelta; default ``outbox.ttl``) is how long
        after that it may still be sent before it becomes a dead letter.
        Enqueueing an ``idempotency_key`` again returns the first message's id
        and stores nothing.  A worker sends it: :meth:`worker` in this process,
        or ``python -m smsroute.outbox CONFIG`` in another.

        >>> message_id = await router.enqueue(
        ...     Message(to="+4915123456789", text="Your parcel ships today"),
        ...     idempotency_key="order-1234-shipped",
        ... )
        >>> (await router.status(message_id)).status
        'pending'
        """
        return await self.outbox_service.enqueue(message, send_at, ttl, idempotency_key)

    async def enqueue_many(
        self,
        messages: Iterable[Message],
        *,
        send_at: SendAt | None = None,
        ttl: TTL | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[str]:
        """:meth:`enqueue` for a batch, in one transaction; returns the ids in order.

        Every message is validated first: one bad message raises (saying its
        index) and none is stored.  ``idempotency_keys``, when given, holds one
        key (or None) per message.
        """
        return await self.outbox_service.enqueue_many(messages, send_at, ttl, idempotency_keys)

    def worker(
        self, *, concurrency: int | None = None, rng: random.Random | None = None
    ) -> OutboxWorker:
        """A worker that sends this router's queued messages; use it with ``async with``.

        >>> async with router.worker(concurrency=16):
        ...     await shutdown.wait()

        See :class:`OutboxWorker`.  ``python -m smsroute.outbox CONFIG`` runs one
        as a process of its own.
        """
        return OutboxWorker(self, concurrency=concurrency, rng=rng)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages the outbox gave up on, most recent first, each with its attempts."""
        return await self.outbox_service.dead_letters(limit)

    async def requeue(self, message_id: str) -> bool:
        """Put a dead letter back in the queue, due now, its tries and ttl reset.

        Returns False when ``message_id`` is not a dead letter.
        """
        return await self.outbox_service.requeue(message_id)
