"""The router: ``send()`` walks a plan of providers with failover, deadline and budget.

One message's path: validate and normalise -> first matching rule -> the
rule's strategy orders its providers (open breakers skipped) -> for each
provider in turn: rate-limit token, concurrency slot, one request under the
per-attempt timeout and the overall deadline -> classify the answer, feed
the breaker and health, emit events -> stop or move on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from smsroute import __version__
from smsroute.breaker import PROBE, BreakerState, CircuitBreaker
from smsroute.clock import Clock, SystemClock
from smsroute.config import Config, ProviderConfig, Rule, load_config
from smsroute.encoding import TextInfo, analyze
from smsroute.errors import ConfigError, InvalidMessage, InvalidNumber
from smsroute.ids import new_message_id
from smsroute.instrument.events import (
    AttemptFinished,
    BreakerTransition,
    ConfigReloaded,
    Event,
    Failover,
    Hook,
    MessageFinished,
    RateLimitWait,
)
from smsroute.instrument.prometheus import CollectorRegistry, PrometheusHook, exposition
from smsroute.message import (
    Attempt,
    DeliveryReport,
    Encoding,
    Message,
    MessageState,
    Outcome,
    SendResult,
)
from smsroute.numbers import Destination, NumberType, mask, normalize, normalizer
from smsroute.outbox import (
    TTL,
    DeadLetter,
    NewMessage,
    OutboxSettings,
    OutboxStore,
    OutboxWorker,
    SendAt,
    make_id,
    new_message,
    open_store,
    outbox_clock,
)
from smsroute.outbox.worker import STORE_WAIT
from smsroute.providers import load_provider_class
from smsroute.providers.base import HttpProvider, OutboundSMS, Provider, Reply
from smsroute.rules import RuleIndex
from smsroute.selection import Candidate, Option, bests, observe, order, score
from smsroute.state.backend import StateBackend, open_state
from smsroute.webhooks import DeliveryCallback, InboundCallback, WebhookResponse, Webhooks

log = logging.getLogger("smsroute")

#: How long a provider is paused after a throttling answer that gave no Retry-After.
DEFAULT_THROTTLE_PAUSE = 1.0

Sleep = Callable[[float], Awaitable[None]]


@attrs.frozen(slots=True)
class RoutePlan:
    """What :meth:`Router.explain` tells: the rule, and the providers in the order tried.

    ``candidates`` lists the providers that would be tried first, in order,
    then those skipped with ``skipped`` saying why.  ``last_resort`` is true
    when every breaker is open and the soonest to reopen is tried anyway.
    """

    rule: str
    strategy: str
    candidates: tuple[Candidate, ...]
    country: str
    number_type: NumberType
    encoding: Encoding
    segments: int
    to: str
    last_resort: bool = False

    @property
    def providers(self) -> tuple[str, ...]:
        """Names of the providers that would be tried, in order."""
        return tuple(c.provider for c in self.candidates if c.skipped is None)


@attrs.define(slots=True)  # internal and short-lived: mutable is cheaper to build
class _Prepared:
    destination: Destination
    info: TextInfo
    rule: Rule


class _Runtime:
    """A config made ready to route: adapters built, rules indexed.  Swapped whole on reload."""

    __slots__ = ("callbacks", "config", "index", "normalize", "providers", "self_timed")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.index = RuleIndex(config.rules)
        self.normalize = normalizer(config.defaults.default_region)
        self.providers: dict[str, Provider] = {}
        self.callbacks: dict[str, str | None] = {}
        webhook = config.defaults.webhook_url
        for name, pcfg in config.providers.items():
            cls = load_provider_class(pcfg.type)
            self.providers[name] = cls(pcfg)
            self.callbacks[name] = pcfg.status_callback or (
                f"{webhook.rstrip('/')}/{name}/status" if webhook else None
            )
        # Providers sending through HttpProvider.send, which hands sms.timeout to
        # aiohttp: the router needs no timer of its own around their requests.
        self.self_timed = frozenset(
            name for name, p in self.providers.items() if type(p).send is HttpProvider.send
        )


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
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._sleep: Sleep = sleep or asyncio.sleep
        self._hooks: tuple[Hook, ...] = tuple(hooks)
        self._state: StateBackend = open_state(
            config.state, self._clock, self._breaker_changed, self._emit
        )
        self._state_started: asyncio.Future[None] | None = None
        self._state_ready = False
        self._runtime = _Runtime(config)
        self._registry = registry
        self._metrics = (
            PrometheusHook(registry, config=lambda: self._runtime.config) if metrics else None
        )
        if self._metrics is not None:
            self._hooks = (self._metrics, *self._hooks)
        self._direct = self._direct_metrics()
        self._session = session
        self._own_session = session is None
        self._closed = False
        self._status = self._state.status_store()
        self._optouts = self._state.optout_store()
        self._webhooks = Webhooks(self)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._awaiting_receipt: deque[tuple[float, str, str, str]] = deque()
        self._resendable: OrderedDict[str, tuple[Message, frozenset[str], float]] = OrderedDict()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Router:
        """Load the config at ``path`` (raising :class:`ConfigError`) and build a router."""
        return cls(load_config(path), **kwargs)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The config in force now."""
        return self._runtime.config

    @property
    def state(self) -> StateBackend:
        """Live breaker, health and rate-limit state."""
        return self._state

    def add_hook(self, hook: Hook) -> None:
        """Add an event hook."""
        self._hooks = (*self._hooks, hook)
        self._direct = self._direct_metrics()

    def _direct_metrics(self) -> PrometheusHook | None:
        """The Prometheus hook when it is the only hook: the two events of every
        message then go to it as plain calls, with no event objects built."""
        metrics = self._metrics
        return metrics if metrics is not None and self._hooks == (metrics,) else None

    async def __aenter__(self) -> Router:
        await self._start_state()  # first: a router that cannot start leaves no session open
        self._get_session()
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
        self._closed = True
        await self._close_outbox()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._state_started is not None:
            self._state_started = None
            self._state_ready = False
            await self._state.aclose()
        for provider in self._runtime.providers.values():
            await provider.aclose()
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def _start_state(self) -> None:
        """Connect the state backend once (Redis: raises StateBackendUnavailable if down)."""
        started = self._state_started
        if started is None or (started.done() and (started.cancelled() or started.exception())):
            started = self._state_started = asyncio.ensure_future(self._state.start())
        await asyncio.shield(started)
        self._state_ready = True

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": f"smsroute/{__version__}"},
            )
            self._session = session
            self._own_session = True
        return session

    def reload(self, path: str | os.PathLike[str] | None = None) -> Config:
        """Load a new config (default: the current file) and swap it in atomically.

        On any error the old config stays in force and :class:`ConfigError` is
        raised.  Sends already under way finish on the config they started with;
        breaker and health state carry over for providers of the same name.
        """
        source = os.fspath(path) if path is not None else self._runtime.config.source
        try:
            runtime = _Runtime(load_config(source))
        except ConfigError as exc:
            self._emit(ConfigReloaded(source=source, result="error", error=str(exc)))
            raise
        if runtime.config.state != self._runtime.config.state:
            log.warning(
                "the reloaded config changes the 'state' section: it takes effect when the "
                "router is restarted (breakers, health and rate limits stay where they are)"
            )
        self._runtime = runtime
        self._emit(ConfigReloaded(source=source, result="success"))
        return runtime.config

    # -- planning -----------------------------------------------------------------------

    def _prepare(self, rt: _Runtime, message: Message) -> _Prepared:
        config = rt.config
        text = message.text
        if not isinstance(text, str) or not text.strip():
            raise InvalidMessage("message text is empty: give the text to send")
        if message.category not in config.categories:
            raise InvalidMessage(
                f"unknown category '{message.category}': use one of "
                f"{', '.join(sorted(config.categories))}, or declare it under 'categories' "
                f"in {config.source}"
            )
        info = analyze(text)
        limit = config.defaults.max_segments
        if info.segments > limit:
            raise InvalidMessage(
                f"message text needs {info.segments} {info.encoding} segments "
                f"({info.units} units) but max_segments is {limit}: shorten it, or raise "
                f"defaults.max_segments in {config.source}"
            )
        destination = rt.normalize(message.to)
        rule = rt.index.find(destination, message.category, message.sender, message.tags)
        if rule is None:  # a validated config always has a catch-all
            raise InvalidMessage(f"no rule matches this message in {config.source}")
        return _Prepared(destination, info, rule)

    def _options(self, rt: _Runtime, p: _Prepared, full: bool) -> list[Option]:
        """What the strategy needs of each provider (``full``: everything, for explain)."""
        providers = rt.config.providers
        state = self._state
        country = p.destination.country
        segments = p.info.segments
        strategy = p.rule.strategy
        prices = full or strategy == "cheapest" or strategy == "score"
        speeds = full or strategy == "fastest" or strategy == "score"
        now = self._clock.now() if speeds else 0.0
        out: list[Option] = []
        for name in p.rule.providers:
            pcfg = providers[name]
            breaker = state.breaker(pcfg, country)
            option = Option(
                name,
                None,
                None,
                None,
                breaker.state.value,
                breaker.available(),
                breaker.reopen_at,
            )
            if prices:
                per_segment = pcfg.prices.price_for(country)
                option.price = None if per_segment is None else per_segment * segments
            if speeds:
                observe(option, state.health(name), state.health(name, country), now)
            out.append(option)
        return out

    def _plan(
        self, rt: _Runtime, p: _Prepared, full: bool = False
    ) -> tuple[list[Option], list[Option], bool]:
        """(options in order, options skipped, last resort?)."""
        options = self._options(rt, p, full)
        ordered = order(p.rule, options, self._rng)
        if len(ordered) == len(options) and not full:
            return ordered, [], False  # nothing skipped (the usual case): no list to build
        skipped = [o for o in options if not o.available]
        if ordered:
            return ordered, skipped, False
        soonest = min(skipped, key=lambda o: o.reopen_at if o.reopen_at is not None else 0.0)
        return [soonest], [o for o in skipped if o is not soonest], True

    def explain(self, message: Message) -> RoutePlan:
        """Which rule matches ``message`` and in what order providers would be tried.

        No I/O and no side effects on breakers or limits; raises
        :class:`InvalidNumber` or :class:`InvalidMessage` as :meth:`send` would.
        """
        rt = self._runtime
        p = self._prepare(rt, message)
        ordered, skipped, last_resort = self._plan(rt, p, full=True)
        everyone = [*ordered, *skipped]
        best_price, best_latency = bests(everyone)
        now = self._clock.now()
        max_wait = rt.config.defaults.max_rate_wait
        candidates: list[Candidate] = []
        for o in everyone:
            why: str | None = None
            if o in skipped:
                if o.breaker == BreakerState.OPEN.value and o.reopen_at is not None:
                    why = f"breaker open, half-opens in {max(0.0, o.reopen_at - now):.1f}s"
                else:
                    why = "breaker half-open with all probes in flight"
            else:
                pause = self._state.bucket(rt.config.providers[o.provider]).paused_for()
                if pause > max_wait:
                    why = f"throttled by the provider, paused for {pause:.1f}s more"
            if last_resort and o is ordered[0]:
                why = None
            candidates.append(
                Candidate(
                    provider=o.provider,
                    price=o.price,
                    breaker=o.breaker,
                    score=round(score(p.rule, o, best_price, best_latency), 4),
                    skipped=why,
                    latency=o.latency,
                    success_rate=o.success_rate,
                    delivery_ratio=o.delivery_ratio,
                )
            )
        return RoutePlan(
            rule=p.rule.name,
            strategy=p.rule.strategy,
            candidates=tuple(sorted(candidates, key=lambda c: c.skipped is not None)),
            country=p.destination.country,
            number_type=p.destination.number_type,
            encoding=p.info.encoding,
            segments=p.info.segments,
            to=mask(p.destination.e164),
            last_resort=last_resort,
        )

    # -- sending ------------------------------------------------------------------------

    async def send(self, message: Message) -> SendResult:
        """Send ``message`` through the first provider of its plan that accepts it.

        Raises :class:`InvalidNumber` or :class:`InvalidMessage` before any
        provider is called when the message cannot be sent as written.
        Provider failures never raise: they are attempts in the result.
        """
        return await self._send(message, new_message_id(), frozenset())

    async def _send(
        self,
        message: Message,
        message_id: str,
        exclude: frozenset[str],
        reserved: str | None = None,
    ) -> SendResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if not self._state_ready:
            await self._start_state()
        rt = self._runtime
        p = self._prepare(rt, message)
        config = rt.config
        defaults = config.defaults
        rule = p.rule
        country = p.destination.country
        emit = self._emit if self._hooks else None
        direct = self._direct
        if (
            self._optouts
            and message.category in defaults.opt_out_categories
            and p.destination.e164 in self._optouts
        ):
            return self._opted_out(message, message_id, p, emit, loop.time() - t0)
        ordered, _, last_resort = self._plan(rt, p)
        if exclude:
            ordered = [o for o in ordered if o.provider not in exclude]
        if reserved is not None:  # the outbox worker holds a token of this provider: start there
            ordered.sort(key=lambda o: o.provider != reserved)
        deadline_at = t0 + (rule.deadline or defaults.deadline)
        max_attempts = rule.max_attempts or defaults.max_attempts
        on_timeout = rule.on_timeout or config.categories[message.category].on_timeout
        session = self._get_session()
        state = self._state
        clock = self._clock

        attempts: list[Attempt] = []
        called = 0
        reason: str | None = None
        previous: tuple[str, Outcome] | None = None
        for option in ordered:
            name = option.provider
            if called >= max_attempts:
                reason = f"gave up after max_attempts={max_attempts} providers"
                break
            now = loop.time()
            if now >= deadline_at:
                reason = "deadline exceeded before a provider accepted the message"
                break
            pcfg = config.providers[name]
            breaker = state.breaker(pcfg, country)
            ticket = PROBE if last_resort else breaker.allow()
            if not ticket:  # the breaker opened while earlier providers were tried
                attempts.append(
                    Attempt(name, Outcome.TRANSIENT, 0.0, detail="skipped: breaker open")
                )
                continue
            if name == reserved:
                wait: float | None = 0.0
            else:
                bucket = state.bucket(pcfg)
                limit = min(defaults.max_rate_wait, deadline_at - now)
                wait = bucket.reserve(limit)
                if wait is None:  # a shared bucket leases more tokens: the one await here
                    try:  # bounded whatever the shared store does: a send never hangs
                        async with asyncio.timeout_at(loop.time() + limit + 0.05):
                            wait = await state.refill(bucket, limit)
                    except TimeoutError:
                        wait = None
                    except BaseException:  # cancelled: give the probe ticket back
                        if not last_resort:
                            breaker.release(ticket)
                        raise
                    now = loop.time()
            if wait is None:
                if not last_resort:
                    breaker.release(ticket)
                attempts.append(
                    Attempt(
                        name,
                        Outcome.THROTTLED,
                        0.0,
                        detail="skipped: rate limit or Retry-After pause",
                    )
                )
                if emit:
                    emit(RateLimitWait(name, state.bucket(pcfg).wait_time(), waited=False))
                    emit(
                        AttemptFinished(
                            message_id, name, country, Outcome.THROTTLED, 0.0, called, skipped=True
                        )
                    )
                continue
            if wait > 0:
                if emit:
                    emit(RateLimitWait(name, wait, waited=True))
                try:
                    await self._sleep(wait)
                except BaseException:  # cancelled: the token and the ticket go back unused
                    state.bucket(pcfg).refund(clock.now() + max(0.0, now + wait - loop.time()))
                    if not last_resort:
                        breaker.release(ticket)
                    raise
                now = loop.time()

            called += 1
            if previous is not None and emit:
                emit(Failover(message_id, previous[0], name, previous[1].value))
            budget = pcfg.timeout if now + pcfg.timeout <= deadline_at else deadline_at - now
            sms = OutboundSMS(
                message_id,
                p.destination.e164,
                country,
                message.text,
                message.sender or pcfg.sender,
                p.info.encoding,
                p.info.segments,
                message.category,
                called,
                self._callback_url(rt, name, message_id),
                budget,
            )
            try:
                reply, latency = await self._attempt(
                    rt.providers[name], pcfg, sms, session, now + budget, name in rt.self_timed
                )
            except BaseException:  # cancelled mid-request: the probe ticket goes back
                if not last_resort:
                    breaker.release(ticket)
                raise
            outcome = reply.outcome
            health = state.health(name)
            if (
                outcome is Outcome.ACCEPTED
                or outcome is Outcome.REJECTED
                or outcome is Outcome.UNROUTABLE
            ):
                if not last_resort:
                    breaker.record_success(ticket)
                health.record(True, latency)
            elif outcome is Outcome.THROTTLED:
                if not last_resort:
                    breaker.release(ticket)
                pause = (
                    reply.retry_after if reply.retry_after is not None else DEFAULT_THROTTLE_PAUSE
                )
                state.bucket(pcfg).pause_until(clock.now() + pause)
            else:
                if not last_resort:
                    breaker.record_failure(ticket, trip=outcome is Outcome.AUTH)
                health.record(False, latency if outcome is Outcome.TIMEOUT else None)
            attempts.append(
                Attempt(
                    provider=name,
                    outcome=outcome,
                    latency=latency,
                    status_code=reply.status_code,
                    error_code=reply.error_code,
                    detail=reply.detail,
                    provider_message_id=reply.provider_message_id,
                    retry_after=reply.retry_after,
                )
            )
            if direct is not None:
                try:
                    direct.attempt_finished(name, country, outcome, latency)
                except Exception:
                    log.exception("smsroute's Prometheus hook failed on an attempt")
            elif emit:
                emit(
                    AttemptFinished(
                        message_id,
                        name,
                        country,
                        outcome,
                        latency,
                        called,
                        reply.status_code,
                        reply.error_code,
                    )
                )
            if outcome is Outcome.ACCEPTED:
                per_segment = pcfg.prices.price_for(country)
                result = SendResult(
                    message_id=message_id,
                    status="accepted",
                    provider=name,
                    provider_message_id=reply.provider_message_id,
                    attempts=tuple(attempts),
                    segments=p.info.segments,
                    encoding=p.info.encoding,
                    cost=None if per_segment is None else per_segment * p.info.segments,
                    currency=pcfg.prices.currency,
                    rule=rule.name,
                    last_resort=last_resort,
                    outcome=Outcome.ACCEPTED,
                )
                self._accepted(rt, rule, message, result, country, exclude, reply.part_ids)
                if emit:
                    self._finished(emit, message, result, country, loop.time() - t0)
                return result
            if outcome is Outcome.REJECTED:
                reason = f"rejected by {name}" + (f": {reply.detail}" if reply.detail else "")
                break
            if outcome is Outcome.TIMEOUT and on_timeout == "stop":
                reason = (
                    f"timeout at {name}: the message may have been sent, and rule "
                    f"'{rule.name}' says on_timeout: stop, so no other provider was tried"
                )
                break
            previous = (name, outcome)

        if reason is None:
            if not attempts:
                reason = f"no provider of rule '{rule.name}' could be tried"
            else:
                tried = ", ".join(f"{a.provider}: {a.outcome.value}" for a in attempts)
                reason = f"every provider of rule '{rule.name}' failed ({tried})"
        if last_resort:
            reason += " (every breaker was open; the soonest to reopen was tried as a last resort)"
        result = SendResult(
            message_id=message_id,
            status="failed",
            provider=None,
            provider_message_id=None,
            attempts=tuple(attempts),
            segments=p.info.segments,
            encoding=p.info.encoding,
            reason=reason,
            rule=rule.name,
            last_resort=last_resort,
            outcome=attempts[-1].outcome if attempts else None,
        )
        self._status.record_send(message_id, "failed", None, None, country)
        if emit:
            self._finished(emit, message, result, country, loop.time() - t0)
        return result

    def _callback_url(self, rt: _Runtime, provider: str, message_id: str) -> str | None:
        url = rt.callbacks[provider]
        if url is None or rt.providers[provider].echoes_message_id:
            return url
        # Providers that do not echo a reference get ours in the callback's query.
        return f"{url}{'&' if '?' in url else '?'}smsroute_id={message_id}"

    def _opted_out(
        self,
        message: Message,
        message_id: str,
        p: _Prepared,
        emit: Callable[[Event], None] | None,
        duration: float,
    ) -> SendResult:
        result = SendResult(
            message_id=message_id,
            status="failed",
            provider=None,
            provider_message_id=None,
            attempts=(),
            segments=p.info.segments,
            encoding=p.info.encoding,
            reason="opted_out",
            rule=p.rule.name,
            outcome=Outcome.REJECTED,
        )
        self._status.record_send(message_id, "failed", None, None, p.destination.country)
        if emit:
            self._finished(emit, message, result, p.destination.country, duration)
        return result

    def _accepted(
        self,
        rt: _Runtime,
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
        )
        for report in early:  # receipts that beat the provider's own answer
            task = asyncio.ensure_future(
                self._webhooks.deliver(attrs.evolve(report, message_id=result.message_id))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
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
        timeout = self.config.defaults.receipt_timeout
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
        pcfg = self.config.providers.get(provider)
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

    def _delivery_outcome(
        self, report: DeliveryReport, country: str, seconds: float | None
    ) -> None:
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
        task = asyncio.ensure_future(self._resend(report.message_id or "", message, tried))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resend(self, message_id: str, message: Message, tried: frozenset[str]) -> None:
        try:
            result = await self._send(message, message_id, tried)
        except Exception:  # the message was valid when first sent; log, never raise from a task
            log.exception("resend of %s failed", message_id)
            return
        if not result.ok:
            log.warning("resend of %s found no other provider: %s", message_id, result.reason)
            self._resendable.pop(message_id, None)

    async def _attempt(
        self,
        provider: Provider,
        pcfg: ProviderConfig,
        sms: OutboundSMS,
        session: aiohttp.ClientSession,
        attempt_deadline: float,
        self_timed: bool,
    ) -> tuple[Reply, float]:
        loop = asyncio.get_running_loop()
        slots = self._state.slots(pcfg)
        inflight = self._metrics.inflight(pcfg.name) if self._metrics is not None else None
        started = loop.time()
        holding = counted = False
        try:
            if self_timed and slots is None:
                # The adapter's aiohttp request enforces sms.timeout: a second
                # timer here would cost a tenth of the router's own CPU per message.
                if inflight is not None:
                    inflight.inc()
                    counted = True
                reply = await provider.send(sms, session)
            else:
                async with asyncio.timeout_at(attempt_deadline):
                    if slots is not None:
                        await slots.acquire()
                        holding = True
                        started = loop.time()
                    if inflight is not None:
                        inflight.inc()
                        counted = True
                    reply = await provider.send(sms, session)
        except TimeoutError:
            if slots is not None and not holding:
                reply = Reply(
                    Outcome.THROTTLED, detail="no free slot under max_concurrency in time"
                )
                return reply, 0.0
            waited = loop.time() - started
            reply = Reply(Outcome.TIMEOUT, detail=f"no answer within {waited:.3g}s")
        except aiohttp.ClientConnectorError as exc:
            reply = Reply(Outcome.TRANSIENT, detail=f"cannot connect to {exc.host}:{exc.port}")
        except (aiohttp.ClientError, OSError) as exc:
            reply = Reply(Outcome.TRANSIENT, detail=f"connection error: {type(exc).__name__}")
        except Exception as exc:  # an adapter bug must not lose the message
            log.exception("provider %s (type %s) raised instead of answering", pcfg.name, pcfg.type)
            reply = Reply(Outcome.TRANSIENT, detail=f"adapter error: {type(exc).__name__}")
        finally:
            if counted and inflight is not None:
                inflight.dec()
            if holding and slots is not None:
                slots.release()
        return reply, loop.time() - started

    # -- events -------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                log.exception("smsroute hook %r failed on %s", hook, type(event).__name__)

    def _finished(
        self,
        emit: Callable[[Event], None],
        message: Message,
        result: SendResult,
        country: str,
        duration: float,
    ) -> None:
        direct = self._direct
        if direct is not None:
            try:
                direct.message_finished(
                    message.category,
                    result.status,
                    duration,
                    result.provider,
                    country,
                    result.segments,
                    result.cost,
                    result.currency,
                )
            except Exception:
                log.exception("smsroute's Prometheus hook failed on a finished message")
            return
        emit(
            MessageFinished(  # positional: a third cheaper than keywords, once per message
                result.message_id,
                message.category,
                country,
                result.status,
                duration,
                result.provider,
                result.segments,
                result.cost,
                result.currency,
                result.reason,
                result.rule,
            )
        )

    def _breaker_changed(
        self, breaker: CircuitBreaker, before: BreakerState, after: BreakerState
    ) -> None:
        provider, country = breaker.key
        if after is BreakerState.OPEN:
            log.warning(
                "circuit breaker for %s%s opened (open #%d in a row)",
                provider,
                f" [{country}]" if country else "",
                breaker.opens,
            )
        if self._hooks:
            self._emit(BreakerTransition(provider, country, before.value, after.value))

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
        return await self._webhooks.handle(provider_name, kind, method, url, headers, body)

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
        self._webhooks.delivery_callbacks.append(callback)
        return callback

    def on_inbound(self, callback: InboundCallback) -> InboundCallback:
        """Call ``callback(message)`` (sync or async) for every inbound message."""
        self._webhooks.inbound_callbacks.append(callback)
        return callback

    async def status(self, message_id: str) -> MessageState | None:
        """The latest known state of ``message_id`` (None when unknown or forgotten).

        With an outbox, its durable record: every status since enqueue, receipts included.
        """
        durable = await self._outbox_status(message_id)
        return durable if durable is not None else self._status.get(message_id)

    def is_opted_out(self, number: str) -> bool:
        """Whether ``number`` replied STOP (and not START since)."""
        return normalize(number, self.config.defaults.default_region).e164 in self._optouts

    def breaker_states(self) -> Mapping[tuple[str, str | None], BreakerState]:
        """The state of every breaker created so far, by (provider, country or None)."""
        return {b.key: b.state for b in self._state.breakers()}

    # -- metrics ------------------------------------------------------------------------

    async def metrics_handler(self, request: web.Request) -> web.StreamResponse:
        """An aiohttp handler answering a scrape with this router's metrics.

        Mount it in your own application::

            app.router.add_get("/metrics", router.metrics_handler)

        It serves the router's registry (prometheus_client's global one unless
        ``registry=`` was given), so your own metrics there are served too; with
        ``PROMETHEUS_MULTIPROC_DIR`` set, every worker process's metrics.
        """
        self.breaker_states()  # an open breaker whose time is up reads as half-open from now
        body, content_type = exposition(self._registry, request.headers.get("Accept"))
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    def metrics_app(self) -> web.Application:
        """An aiohttp application serving ``GET /metrics`` for Prometheus to scrape.

        >>> runner = web.AppRunner(router.metrics_app())
        >>> await runner.setup()
        >>> await web.TCPSite(runner, "0.0.0.0", 9464).start()
        """
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_handler)
        return app

    # -- the outbox: durable send-later -------------------------------------------------

    _outbox: OutboxStore | None = None
    _outbox_workers: frozenset[OutboxWorker] = frozenset()

    @property
    def outbox(self) -> OutboxStore:
        """The durable store behind :meth:`enqueue` (``outbox:`` in the config), opened on first use."""
        return self._outbox_store()

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
        item = self._outbox_item(message, self._outbox_now(), send_at, ttl, idempotency_key)
        message_id = await self._outbox_store().enqueue(item)
        self._outbox_wake()
        return message_id

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
        batch = list(messages)
        keys = [None] * len(batch) if idempotency_keys is None else list(idempotency_keys)
        if len(keys) != len(batch):
            raise ValueError(f"{len(keys)} idempotency keys for {len(batch)} messages")
        now = self._outbox_now()
        items: list[NewMessage] = []
        for i, (message, key) in enumerate(zip(batch, keys, strict=True)):
            try:
                items.append(self._outbox_item(message, now, send_at, ttl, key))
            except (InvalidNumber, InvalidMessage) as exc:
                raise type(exc)(f"messages[{i}]: {exc}") from None
        if not items:
            return []
        ids = await self._outbox_store().enqueue_many(items)
        self._outbox_wake()
        return ids

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
        return await self._outbox_store().dead_letters(limit)

    async def requeue(self, message_id: str) -> bool:
        """Put a dead letter back in the queue, due now, its tries and ttl reset.

        Returns False when ``message_id`` is not a dead letter.
        """
        done = await self._outbox_store().requeue(message_id, self._outbox_now())
        if done:
            self._outbox_wake()
        return done

    def _outbox_settings(self) -> OutboxSettings:
        return self.config.outbox or OutboxSettings()

    def _outbox_store(self) -> OutboxStore:
        if self._outbox is None:
            if self._closed:
                raise RuntimeError("the router is closed")
            self._outbox = open_store(self._outbox_settings(), self.config.state)
        return self._outbox

    def _outbox_now(self) -> float:
        return outbox_clock(self._clock).now()

    def _outbox_item(
        self,
        message: Message,
        now: float,
        send_at: SendAt | None,
        ttl: TTL | None,
        idempotency_key: str | None,
    ) -> NewMessage:
        self._prepare(self._runtime, message)
        return new_message(
            message,
            make_id(now),
            now=now,
            send_at=send_at,
            ttl=ttl,
            default_ttl=self._outbox_settings().ttl,
            idempotency_key=idempotency_key,
        )

    def _outbox_wake(self) -> None:
        for worker in self._outbox_workers:
            worker.wake()

    def _outbox_register(self, worker: OutboxWorker, *, running: bool) -> None:
        workers = self._outbox_workers
        self._outbox_workers = workers | {worker} if running else workers - {worker}

    async def _outbox_status(self, message_id: str) -> MessageState | None:
        """The durable state, when this router uses an outbox (opened here, or configured)."""
        if self._closed or (self._outbox is None and self.config.outbox is None):
            return None
        return await self._outbox_store().status(message_id)

    async def _outbox_receipt(self, report: DeliveryReport) -> bool:
        """Record a receipt in the outbox, when this router uses one (see Webhooks.deliver).

        True when the outbox knows the message (it may have been sent by a worker
        in another process).
        """
        if self._closed or (self._outbox is None and self.config.outbox is None):
            return False
        try:
            return await self._outbox_store().record_receipt(report, self._outbox_now())
        except Exception:  # the receipt was applied in memory; losing its record is not fatal
            log.exception("could not record a delivery receipt in the outbox")
            return False

    async def _close_outbox(self) -> None:
        """Stop this router's workers (together: each within its bound), then close the store."""
        workers = self._outbox_workers
        if workers:
            await asyncio.gather(*(worker.stop() for worker in workers))
        if self._outbox is not None:
            try:  # a store that hangs must not hang aclose(): what it holds is durable already
                async with asyncio.timeout(STORE_WAIT):
                    await self._outbox.close()
            except TimeoutError:
                log.warning(
                    "the outbox store %r did not close in %g s; left behind",
                    self._outbox,
                    STORE_WAIT,
                )
