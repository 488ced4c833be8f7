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
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import attrs

from smsroute import __version__
from smsroute.breaker import PROBE, BreakerState, CircuitBreaker
from smsroute.clock import Clock, SystemClock
from smsroute.config import Config, ProviderConfig, Rule, load_config
from smsroute.encoding import TextInfo, analyze
from smsroute.errors import ConfigError, InvalidMessage
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
from smsroute.message import Attempt, Encoding, Message, Outcome, SendResult
from smsroute.numbers import Destination, NumberType, mask, normalize
from smsroute.providers import load_provider_class
from smsroute.providers.base import OutboundSMS, Provider, Reply
from smsroute.rules import RuleIndex, Subject
from smsroute.selection import Candidate, Option, order, score
from smsroute.state.memory import MemoryState

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


@attrs.frozen(slots=True)
class _Prepared:
    destination: Destination
    info: TextInfo
    rule: Rule


class _Runtime:
    """A config made ready to route: adapters built, rules indexed.  Swapped whole on reload."""

    __slots__ = ("callbacks", "config", "index", "providers")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.index = RuleIndex(config.rules)
        self.providers: dict[str, Provider] = {}
        self.callbacks: dict[str, str | None] = {}
        webhook = config.defaults.webhook_url
        for name, pcfg in config.providers.items():
            cls = load_provider_class(pcfg.type)
            self.providers[name] = cls(pcfg)
            self.callbacks[name] = pcfg.status_callback or (
                f"{webhook.rstrip('/')}/{name}/status" if webhook else None
            )


class Router:
    """Sends messages through the providers a config names.

    >>> async with Router.from_yaml("config/routing.yaml") as router:
    ...     result = await router.send(Message(to="+4915123456789", text="Code 123456", category="otp"))
    ...     result.ok, result.provider, [a.outcome for a in result.attempts]

    ``hooks`` receive every event (see :mod:`smsroute.instrument`).  ``clock``,
    ``rng`` and ``sleep`` are for tests: with a :class:`ManualClock` and its
    ``sleep``, nothing in the router waits in real time except network I/O.
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
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._sleep: Sleep = sleep or asyncio.sleep
        self._hooks: tuple[Hook, ...] = tuple(hooks)
        self._state = MemoryState(self._clock, on_transition=self._breaker_changed)
        self._runtime = _Runtime(config)
        self._session = session
        self._own_session = session is None
        self._closed = False

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
    def state(self) -> MemoryState:
        """Live breaker, health and rate-limit state."""
        return self._state

    def add_hook(self, hook: Hook) -> None:
        """Add an event hook."""
        self._hooks = (*self._hooks, hook)

    async def __aenter__(self) -> Router:
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
        for provider in self._runtime.providers.values():
            await provider.aclose()
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

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
        destination = normalize(message.to, config.defaults.default_region)
        subject = Subject(destination, message.category, message.sender, message.tags)
        rule = rt.index.first(subject)
        if rule is None:  # a validated config always has a catch-all
            raise InvalidMessage(f"no rule matches this message in {config.source}")
        return _Prepared(destination, info, rule)

    def _options(self, rt: _Runtime, p: _Prepared) -> list[Option]:
        providers = rt.config.providers
        state = self._state
        country = p.destination.country
        segments = p.info.segments
        out: list[Option] = []
        for name in p.rule.providers:
            pcfg = providers[name]
            breaker = state.breaker(pcfg, country)
            health = state.health(name)
            per_segment = pcfg.prices.price_for(country)
            out.append(
                Option(
                    provider=name,
                    price=None if per_segment is None else per_segment * segments,
                    latency=health.latency,
                    success_rate=health.success_rate,
                    breaker=breaker.state.value,
                    available=breaker.available(),
                    reopen_at=breaker.reopen_at,
                )
            )
        return out

    def _plan(self, rt: _Runtime, p: _Prepared) -> tuple[list[Option], list[Option], bool]:
        """(options in order, options skipped, last resort?)."""
        options = self._options(rt, p)
        ordered = order(p.rule, options, self._rng)
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
        ordered, skipped, last_resort = self._plan(rt, p)
        everyone = [*ordered, *skipped]
        prices = [o.price for o in everyone if o.price is not None]
        latencies = [o.latency for o in everyone if o.latency is not None]
        best_price = min(prices) if prices else None
        best_latency = min(latencies) if latencies else None
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
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rt = self._runtime
        p = self._prepare(rt, message)
        config = rt.config
        defaults = config.defaults
        rule = p.rule
        country = p.destination.country
        emit = self._emit if self._hooks else None
        message_id = secrets.token_hex(16)
        ordered, _, last_resort = self._plan(rt, p)
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
            wait = state.bucket(pcfg).reserve(min(defaults.max_rate_wait, deadline_at - now))
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
                await self._sleep(wait)

            called += 1
            if previous is not None and emit:
                emit(Failover(message_id, previous[0], name, previous[1].value))
            sms = OutboundSMS(
                message_id=message_id,
                to=p.destination.e164,
                country=country,
                text=message.text,
                sender=message.sender or pcfg.sender,
                encoding=p.info.encoding,
                segments=p.info.segments,
                category=message.category,
                attempt=called,
                status_callback=rt.callbacks[name],
            )
            reply, latency = await self._attempt(
                rt.providers[name], pcfg, sms, session, min(loop.time() + pcfg.timeout, deadline_at)
            )
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
            if emit:
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
                )
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
        )
        if emit:
            self._finished(emit, message, result, country, loop.time() - t0)
        return result

    async def _attempt(
        self,
        provider: Provider,
        pcfg: ProviderConfig,
        sms: OutboundSMS,
        session: aiohttp.ClientSession,
        attempt_deadline: float,
    ) -> tuple[Reply, float]:
        loop = asyncio.get_running_loop()
        slots = self._state.slots(pcfg)
        started = loop.time()
        holding = False
        try:
            async with asyncio.timeout_at(attempt_deadline):
                if slots is not None:
                    await slots.acquire()
                    holding = True
                    started = loop.time()
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
        emit(
            MessageFinished(
                message_id=result.message_id,
                category=message.category,
                country=country,
                status=result.status,
                duration=duration,
                provider=result.provider,
                segments=result.segments,
                cost=result.cost,
                currency=result.currency,
                reason=result.reason,
                rule=result.rule,
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

    def breaker_states(self) -> Mapping[tuple[str, str | None], BreakerState]:
        """The state of every breaker created so far, by (provider, country or None)."""
        return {b.key: b.state for b in self._state.breakers()}
