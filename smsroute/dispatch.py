"""The dispatch of one message: prepare, plan, the attempts, the result.

One message's path: validate and normalise -> first matching rule -> the
rule's strategy orders its providers (open breakers skipped) -> for each
provider in turn: rate-limit token, concurrency slot, one request under the
per-attempt timeout and the overall deadline -> classify the answer, feed
the breaker and health, emit events -> stop or move on.

:class:`Dispatcher` owns what that path reads and changes: the runtime (a
config made ready, swapped by :meth:`Router.reload`), the live state
(breakers, health, buckets, slots), the HTTP session, and the event hooks.
It knows nothing of receipts or of the outbox: an accepted message is
handed to the ``on_accepted`` callback the router wires to its
:class:`~smsroute.receipts.Receipts`.  :meth:`Dispatcher.send` is the hot
path (measured in instructions per message by ``bench/callgrind_send.py``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, cast

import aiohttp

from smsroute.breaker import PROBE, BreakerState, CircuitBreaker
from smsroute.clock import Clock, wall_clock
from smsroute.config import Config, ProviderConfig, Rule
from smsroute.configload import load_config
from smsroute.errors import ConfigError
from smsroute.guardquery import GuardAnswer, GuardCounts, Lane, SharedGuardCounts
from smsroute.guards import PASSED, Guards, Refusal
from smsroute.instrument.events import (
    AttemptFinished,
    BreakerTransition,
    ConcurrencySkip,
    ConfigReloaded,
    Event,
    Failover,
    GuardRefused,
    Hook,
    MessageFinished,
    RateLimitWait,
)
from smsroute.instrument.prometheus import PrometheusHook
from smsroute.message import Attempt, Message, Outcome, SendResult, new_attempt, new_send_result
from smsroute.numbers import mask
from smsroute.optout import OptOutStore
from smsroute.providers.base import (
    LinkState,
    OutboundSMS,
    Provider,
    ProviderSink,
    Reply,
    new_outbound_sms,
)
from smsroute.quiet import opens_at, quiet_reason
from smsroute.runtime import Prepared, Runtime
from smsroute.selection import Option, observe, order
from smsroute.state.backend import StateBackend, open_state
from smsroute.state.slots import ConcurrencySlot
from smsroute.status import StatusStore
from smsroute.version import __version__

log = logging.getLogger("smsroute")

#: How long a provider is paused after a throttling answer that gave no Retry-After.
DEFAULT_THROTTLE_PAUSE = 1.0

Sleep = Callable[[float], Awaitable[None]]


class OnAccepted(Protocol):
    """Called once a provider accepted a message (see :meth:`Receipts.accepted`)."""

    def __call__(
        self,
        rt: Runtime,
        rule: Rule,
        message: Message,
        result: SendResult,
        country: str,
        exclude: frozenset[str],
        part_ids: tuple[str, ...] = (),
        /,
    ) -> None: ...


def _nothing_awaited(
    rt: Runtime,
    rule: Rule,
    message: Message,
    result: SendResult,
    country: str,
    exclude: frozenset[str],
    part_ids: tuple[str, ...] = (),
    /,
) -> None:
    """The default ``on_accepted``: record nothing beyond the status store."""


class Dispatcher:
    """Sends one message at a time through the providers of its rule.

    ``runtime`` is swapped whole by :meth:`swap`; ``state`` is opened from
    the config's ``state`` section here and started by :meth:`start` (or the
    first :meth:`send`).  :meth:`use_metrics` names the Prometheus hook when
    metrics are on; the callback given to :meth:`on_accepted` is called after
    each acceptance, before the result is returned.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        clock: Clock,
        rng: random.Random,
        sleep: Sleep,
        hooks: Iterable[Hook],
        session: aiohttp.ClientSession | None,
    ) -> None:
        self._runtime = runtime
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._metrics: PrometheusHook | None = None
        self._hooks: tuple[Hook, ...] = tuple(hooks)
        self._direct: PrometheusHook | None = None
        self._state: StateBackend = open_state(
            runtime.config.state, clock, self.breaker_changed, self.emit
        )
        self._state_started: asyncio.Future[None] | None = None
        self._state_ready = False
        self._session = session
        self._own_session = session is None
        self._status: StatusStore = self._state.status_store()
        self._optouts: OptOutStore = self._state.optout_store()
        self._on_accepted: OnAccepted = _nothing_awaited
        #: Where providers with their own connections (SMPP) hand receipts and inbound.
        self._sink: ProviderSink | None = None
        self._providers_started: Runtime | None = None
        #: Starting the providers of ``_providers_started`` (shielded: a send cancelled
        #: while it waits for it leaves it running, for the next send to wait on).
        self._providers_starting: asyncio.Future[None] | None = None
        #: Every provider start not ended yet (one a runtime swapped out may have left).
        self._starts: set[asyncio.Future[None]] = set()
        #: Runtimes swapped out whose retirement is still to begin, and the tasks closing them.
        self._retiring: list[Runtime] = []
        #: Runtimes swapped out whose adapters are not closed yet (in their grace): an adapter
        #: carried over from one to the next closes when the last of them is done with it.
        self._graced: list[Runtime] = []
        self._background: set[asyncio.Task[None]] = set()
        self._wall = wall_clock(clock)
        #: The guards' counts, once the send path has asked the state for them.
        self._counts: GuardCounts | None = None

    def _guard_counts(self) -> GuardCounts:
        """The state's guard counts (made on the first guarded send), kept for the next."""
        counts = self._counts = self._state.guard_counts()
        return counts

    # -- what the other parts read ------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """The runtime in force now (sends under way keep the one they started with)."""
        return self._runtime

    def swap(self, runtime: Runtime) -> None:
        """Put ``runtime`` in force for the sends that start from now on.

        Once providers were started, the new runtime's are started now (on the
        next send when no event loop runs here), and the old runtime's adapters
        are closed (SMPP binds unbound) when every send that may still use them
        has ended: after the old config's longest ``deadline``.  An SMPP provider
        whose config did not change is carried over, binds and all
        (:meth:`Runtime.adopt`).
        """
        runtime.adopt(self._runtime)  # unchanged SMPP providers keep their binds
        old, self._runtime = self._runtime, runtime
        if self._providers_started is not None:
            self._state_ready = False  # the next send starts the new runtime's providers
            self._retiring.append(old)
            self._graced.append(old)
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop here (a thread without one): the next send does it
            self._spawn(self._start_after_swap())

    def reload(self, path: str | os.PathLike[str] | None = None) -> Config:
        """Load the config at ``path`` (default: the current file) and :meth:`swap` to it,
        emitting :class:`ConfigReloaded`; on error the old one stays (see :meth:`Router.reload`)."""
        source = os.fspath(path) if path is not None else self._runtime.config.source
        try:
            runtime = Runtime(load_config(source))
        except ConfigError as exc:
            self.emit(ConfigReloaded(source=source, result="error", error=str(exc)))
            raise
        if runtime.config.state != self._runtime.config.state:
            log.warning(
                "the reloaded config changes the 'state' section: it takes effect when the "
                "router is restarted (breakers, health and rate limits stay where they are)"
            )
        self.swap(runtime)
        self.emit(ConfigReloaded(source=source, result="success"))
        return runtime.config

    @property
    def state(self) -> StateBackend:
        """Live breaker, health and rate-limit state."""
        return self._state

    @property
    def status_store(self) -> StatusStore:
        """The record of each message's state (from the state backend)."""
        return self._status

    @property
    def optouts(self) -> OptOutStore:
        """Numbers that replied STOP (from the state backend)."""
        return self._optouts

    @property
    def clock(self) -> Clock:
        """The clock every part reads."""
        return self._clock

    @property
    def rng(self) -> random.Random:
        """The random numbers of weighted strategies (and the outbox's default jitter)."""
        return self._rng

    @property
    def sleep(self) -> Sleep:
        """How the dispatcher waits (``asyncio.sleep``, or a test clock's)."""
        return self._sleep

    @property
    def direct_metrics(self) -> PrometheusHook | None:
        """The Prometheus hook when it is the only hook (then fed by plain calls)."""
        return self._direct

    def on_accepted(self, callback: OnAccepted) -> None:
        """Call ``callback`` after every acceptance (the router's receipts part)."""
        self._on_accepted = callback

    def use_sink(self, sink: ProviderSink) -> None:
        """Give ``sink`` to every provider's :meth:`Provider.start` (the router's webhooks)."""
        self._sink = sink

    def use_metrics(self, hook: PrometheusHook) -> None:
        """Feed ``hook`` first of all hooks, count requests in flight with it, and let it
        read the providers' connections (SMPP binds) at scrape time."""
        self._metrics = hook
        hook.watch_links(self.links)
        self._hooks = (hook, *self._hooks)
        self._direct = self._direct_metrics()

    def add_hook(self, hook: Hook) -> None:
        """Add an event hook."""
        self._hooks = (*self._hooks, hook)
        self._direct = self._direct_metrics()

    def _direct_metrics(self) -> PrometheusHook | None:
        """The Prometheus hook when it is the only hook: the two events of every
        message then go to it as plain calls, with no event objects built."""
        metrics = self._metrics
        return metrics if metrics is not None and self._hooks == (metrics,) else None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the state backend once (Redis: raises StateBackendUnavailable if down)."""
        await self._start_state()

    async def _start_state(self) -> None:
        started = self._state_started
        if started is None or (started.done() and (started.cancelled() or started.exception())):
            started = self._state_started = asyncio.ensure_future(self._state.start())
        await asyncio.shield(started)
        while True:  # a swap while the providers started: the new runtime's start too
            rt = self._runtime
            await self._start_providers()
            if self._runtime is rt:
                break
        self._state_ready = True
        while self._retiring:
            self._spawn(self._retire(self._retiring.pop()))

    async def _start_after_swap(self) -> None:
        try:
            await self._start_state()
        except Exception as exc:  # the state backend is down: the next send raises it
            log.warning("after a reload, the router could not start: %s", type(exc).__name__)

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retire(self, rt: Runtime) -> None:
        """Close the adapters of ``rt``, swapped out, once no send can still use them: a
        send never outlives its ``deadline`` (attempts are cut to it)."""
        if rt is self._runtime:
            return
        config = rt.config
        grace = max([config.defaults.deadline, *(r.deadline or 0.0 for r in config.rules)])
        try:
            await self._sleep(grace)
        finally:  # not those carried over into the runtime in force (it closes them), nor
            # into one swapped out later whose sends may still use them (its own retirement)
            if rt in self._graced:
                self._graced.remove(rt)
            keep = [*self._runtime.providers.values()]
            for other in self._graced:
                keep += other.providers.values()
            await _close_providers(rt, keep=keep)

    def links(self) -> dict[str, LinkState]:
        """The connections of the providers in force that keep some (``type: smpp``: binds
        up and down, the window in use), by provider name; HTTP providers are not listed.
        ``router.dispatcher.links()``; also in ``explain`` and the ``smsroute_smpp_*`` gauges."""
        out: dict[str, LinkState] = {}
        for name, provider in self._runtime.providers.items():
            state = provider.links()
            if state is not None:
                out[name] = state
        return out

    async def _start_providers(self) -> None:
        """Call every provider's ``start`` once per runtime (an SMPP provider binds); a
        provider that raises is logged and never keeps the others from starting.  A
        caller cancelled meanwhile leaves the start running (the next call waits for it)."""
        rt = self._runtime
        starting = self._providers_starting
        if self._providers_started is not rt or starting is None:
            self._providers_started = rt
            starting = self._providers_starting = asyncio.ensure_future(self._start_all(rt))
            self._starts.add(starting)
            starting.add_done_callback(self._starts.discard)
        if not starting.done():
            await asyncio.shield(starting)

    async def _start_all(self, rt: Runtime) -> None:
        providers = list(rt.providers.values())
        results = await asyncio.gather(
            *(p.start(self._sink) for p in providers), return_exceptions=True
        )
        for provider, result in zip(providers, results, strict=True):
            if isinstance(result, Exception):
                log.error(
                    "provider %s could not start: %s (an adapter bug: report it)",
                    provider.name,
                    type(result).__name__,
                )

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session (made here, and remade after a close, unless one was given)."""
        return self._get_session()

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

    async def aclose(self) -> None:
        """Close the state backend, the adapters and the session (if made here)."""
        if self._state_started is not None:
            self._state_started = None
            self._state_ready = False
            await self._state.aclose()
        self._providers_started = None
        self._providers_starting = None
        starts = list(self._starts)  # closing before they ended (the runtime in force's,
        for starting in starts:  # and one a runtime swapped out meanwhile left running)
            starting.cancel()
        if starts:
            await asyncio.gather(*starts, return_exceptions=True)
        for task in list(self._background):  # retiring runtimes close now
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        # Runtimes swapped out whose retirement never began (or that kept an adapter for
        # another), then the one in force: each adapter closes once.
        self._retiring.clear()
        left = [provider for rt in self._graced for provider in rt.providers.values()]
        self._graced.clear()
        closing: dict[int, Provider] = {}
        for provider in (*left, *self._runtime.providers.values()):
            closing.setdefault(id(provider), provider)
        for provider in closing.values():  # one that raises does not keep the others open
            try:
                await provider.aclose()
            except Exception:
                log.exception(
                    "provider %s could not close (an adapter bug: report it)", provider.name
                )
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    # -- planning -----------------------------------------------------------------------

    def _options(self, rt: Runtime, p: Prepared, full: bool) -> list[Option]:
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
            current = breaker.state
            option = Option(
                name,
                None,
                None,
                None,
                current.value,
                # A closed breaker is available: skip the second read of its state.
                current is BreakerState.CLOSED or breaker.available(),
                breaker.reopen_at,
            )
            if prices:
                per_segment = pcfg.prices.price_for(country)
                option.price = None if per_segment is None else per_segment * segments
            if speeds:
                observe(option, state.health(name), state.health(name, country), now)
            out.append(option)
        return out

    def plan(
        self, rt: Runtime, p: Prepared, full: bool = False
    ) -> tuple[list[Option], list[Option], bool]:
        """(options in order, options skipped, last resort?) for a prepared message.

        ``full`` fills in every price and health figure (for :func:`explain`);
        otherwise only what the rule's strategy reads.  No I/O.
        """
        options = self._options(rt, p, full)
        ordered = order(p.rule, options, self._rng)
        if len(ordered) == len(options) and not full:
            return ordered, [], False  # nothing skipped (the usual case): no list to build
        skipped = [o for o in options if not o.available]
        if ordered:
            return ordered, skipped, False
        soonest = min(skipped, key=lambda o: o.reopen_at if o.reopen_at is not None else 0.0)
        return [soonest], [o for o in skipped if o is not soonest], True

    def _steady_order(self, rt: Runtime, p: Prepared) -> tuple[str, ...] | None:
        """The providers in the order :meth:`plan` gives when it depends on nothing
        that changes: a ``priority`` or ``cheapest`` rule whose breakers are all
        closed (nothing skipped, no last resort).  None otherwise: then :meth:`plan`.

        Saves building an Option per provider and ordering them on every message:
        under callgrind (bench/breakdown.py, RESULTS.md, "a realistic config") the plan of a
        two-provider ``cheapest`` rule went from 28.2k to 11.2k instructions.
        """
        rule = p.rule
        strategy = rule.strategy
        if strategy != "priority" and strategy != "cheapest":
            return None
        country = p.destination.country
        providers = rt.config.providers
        breaker = self._state.breaker
        closed = BreakerState.CLOSED
        for name in rule.providers:
            if breaker(providers[name], country).state is not closed:
                return None
        if strategy == "priority":
            return rule.providers
        key = (id(rule), country, p.info.segments)
        names = rt.orders.get(key)
        if names is None:
            ordered, _, _ = self.plan(rt, p)
            names = rt.orders[key] = tuple(o.provider for o in ordered)
        return names

    async def send(
        self,
        message: Message,
        message_id: str,
        exclude: frozenset[str],
        reserved: str | None = None,
    ) -> SendResult:
        """Send ``message`` as ``message_id``: :meth:`Router.send` (with a new id), a
        resend (``exclude``: the providers tried already) or the outbox worker
        (``reserved``: the provider it holds a rate-limit token of, tried first)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if not self._state_ready:
            await self._start_state()
        rt = self._runtime
        p = rt.prepare(message)
        config = rt.config
        defaults = config.defaults
        rule = p.rule
        country = p.destination.country
        emit = self.emit if self._hooks else None
        direct = self._direct
        if (
            self._optouts
            and message.category in defaults.opt_out_categories
            and p.destination.e164 in self._optouts
        ):
            return self._refused(message, message_id, p, emit, t0, "opted_out")
        if rt.quiet and message.category in rt.quiet:  # quiet hours: one check when none
            opens = self.quiet_opens(rt, message, p)
            if opens is not None:
                why, until = quiet_reason(rt.config, message.category, opens)
                return self._refused(message, message_id, p, emit, t0, why, None, until)
        names: Sequence[str] | None = None
        last_resort = False
        guards = rt.guards
        if (
            guards
            and (  # fraud and spend guards (smsroute.guards): one check when none
                checked := guards.check_now(
                    (counts := self._counts or self._guard_counts()),
                    message,
                    p.destination.e164,
                    country,
                    rule,
                    message_id,
                    (checked_at := self._wall.now()),
                    emit,
                )
            )
            is not PASSED
        ):  # refused, a provider at its budget cap, or counted in Redis
            if isinstance(checked, Lane):  # counted in Redis: the check waits for its batch
                asked = guards.ask(
                    cast(SharedGuardCounts, counts), checked, message, p.destination.e164,
                    rule, message_id, checked_at,
                )  # fmt: skip
                try:
                    answer = await asked
                except BaseException:  # cancelled as its answer came: the count goes back
                    if _passed(asked):
                        self._uncount(guards, counts, message, p, message_id, checked_at)
                    raise
                checked = guards.answered(counts, message, country, rule, answer, emit)
            if checked is not PASSED:
                planned = self._guarded(guards, rt, p, message, message_id, emit, t0, checked)
                if isinstance(planned, SendResult):
                    return planned
                names, last_resort = planned
        if names is None:
            names = self._steady_order(rt, p)
            if names is None:
                ordered, _, last_resort = self.plan(rt, p)
                names = [o.provider for o in ordered]
        if exclude:
            names = [n for n in names if n not in exclude]
        if reserved is not None:  # the outbox worker holds a token of this provider: start there
            names = sorted(names, key=lambda n: n != reserved)
        picked: dict[str, str | None] | None = None  # None: message.sender or pcfg.sender
        refused: list[str] | None = None
        # `from` maps, a caller's sender (an empty one is none: the configured sender goes)
        if rt.senders.active or message.sender:
            picked, names, refused = rt.senders.for_send(
                rule, names, config.providers, p.destination, message.sender
            )
            if refused and not names:  # no provider has a sender it may use: none is called
                why = f"no usable sender for {country}: {'; '.join(refused)}"
                return self._refused(message, message_id, p, emit, t0, why)
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
        for name in names:
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
                        if guards and not called:  # and the guards' count: never sent
                            self._uncount(guards, counts, message, p, message_id, checked_at)
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
                    if guards and not called:  # and the guards' count: never sent
                        self._uncount(guards, counts, message, p, message_id, checked_at)
                    raise
                now = loop.time()
            slots = state.slots(pcfg)
            if slots is not None and not slots.try_acquire():  # every slot taken: wait for one
                try:  # within the attempt's time; no provider is called meanwhile
                    async with asyncio.timeout_at(min(now + pcfg.timeout, deadline_at)):
                        await slots.acquire()
                except TimeoutError:
                    slots = None
                except BaseException:  # cancelled: the token and the ticket go back unused
                    state.bucket(pcfg).refund(clock.now())
                    if not last_resort:
                        breaker.release(ticket)
                    if guards and not called:  # and the guards' count: never sent
                        self._uncount(guards, counts, message, p, message_id, checked_at)
                    raise
                else:
                    now = loop.time()
                if slots is None:
                    state.bucket(pcfg).refund(clock.now())
                    if not last_resort:
                        breaker.release(ticket)
                    attempts.append(
                        Attempt(
                            name,
                            Outcome.THROTTLED,
                            0.0,
                            detail="skipped: no free max_concurrency slot in time",
                        )
                    )
                    if emit:
                        emit(ConcurrencySkip(name))
                        emit(
                            AttemptFinished(
                                message_id, name, country, Outcome.THROTTLED, 0.0, called,
                                skipped=True,
                            )
                        )  # fmt: skip
                    continue

            called += 1
            if previous is not None and emit:
                emit(Failover(message_id, previous[0], name, previous[1].value))
            budget = pcfg.timeout if now + pcfg.timeout <= deadline_at else deadline_at - now
            sms = new_outbound_sms(  # OutboundSMS(...) at a third of the cost
                message_id,
                p.destination.e164,
                country,
                p.text,
                message.sender or pcfg.sender if picked is None else picked[name],
                p.info.encoding,
                p.info.segments,
                message.category,
                called,
                rt.callback_url(name, message_id),
                budget,
            )
            try:
                reply, latency = await self._attempt(
                    rt.providers[name], pcfg, sms, session, now + budget, name in rt.self_timed,
                    slots,
                )  # fmt: skip
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
                new_attempt(  # Attempt(...) at a third of the cost (message.py)
                    name,
                    outcome,
                    latency,
                    reply.status_code,
                    reply.error_code,
                    reply.detail,
                    reply.provider_message_id,
                    reply.retry_after,
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
                prices = pcfg.prices
                per_segment = prices.price_for(country)
                segments = p.info.segments
                result = new_send_result(  # SendResult(...) at a third of the cost
                    message_id,
                    "accepted",
                    name,
                    reply.provider_message_id,
                    tuple(attempts),
                    segments,
                    p.info.encoding,
                    None if per_segment is None else per_segment * segments,
                    prices.currency,
                    None,  # reason
                    rule.name,
                    last_resort,
                    Outcome.ACCEPTED,
                    p.info.culprits,
                    p.text is not message.text,
                )
                self._on_accepted(rt, rule, message, result, country, exclude, reply.part_ids)
                if guards:  # count the spend against the budgets, in the checked period
                    guards.spent(counts, message, country, name, result.cost, checked_at, emit)
                if emit:
                    self._finished(emit, message, result, country, loop.time() - t0)
                return result
            if outcome is Outcome.REJECTED:
                reason = f"rejected by {name}" + (f": {reply.detail}" if reply.detail else "")
                if reply.opted_out:  # the provider says the recipient opted out: remember it
                    self.provider_opt_out(name, p)
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
        if refused:
            reason += f" (not called for want of a usable sender: {'; '.join(refused)})"
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
            culprits=p.info.culprits,
            transliterated=p.text is not message.text,
        )
        self._status.record_send(message_id, "failed", None, None, country)
        if emit:
            self._finished(emit, message, result, country, loop.time() - t0)
        return result

    def _refused(
        self,
        message: Message,
        message_id: str,
        p: Prepared,
        emit: Callable[[Event], None] | None,
        t0: float,
        reason: str,
        outcome: Outcome | None = Outcome.REJECTED,
        quiet_until: datetime.datetime | None = None,
    ) -> SendResult:
        """The failed result of a message refused before any provider was called
        (opted out, quiet hours, no usable sender, a guard), recorded and reported."""
        country = p.destination.country
        result = SendResult(
            message_id=message_id,
            status="failed",
            provider=None,
            provider_message_id=None,
            attempts=(),
            segments=p.info.segments,
            encoding=p.info.encoding,
            reason=reason,
            rule=p.rule.name,
            outcome=outcome,
            culprits=p.info.culprits,
            transliterated=p.text is not message.text,
            quiet_until=quiet_until,
        )
        self._status.record_send(message_id, "failed", None, None, country)
        if emit:
            loop = asyncio.get_running_loop()
            self._finished(emit, message, result, country, loop.time() - t0)
        return result

    def _guarded(
        self,
        guards: Guards,
        rt: Runtime,
        p: Prepared,
        message: Message,
        message_id: str,
        emit: Callable[[Event], None] | None,
        t0: float,
        checked: tuple[Refusal | None, frozenset[str]],
    ) -> SendResult | tuple[Sequence[str], bool]:
        """After the guards' check (``checked``), the plan without providers at their
        budget cap: (providers in order, last resort?), or the failed result of a refusal."""
        country = p.destination.country
        refusal, over = checked
        names: Sequence[str] | None = None
        last_resort = False
        if refusal is None:
            names = self._steady_order(rt, p)
            if names is None:
                ordered, _, last_resort = self.plan(rt, p)
                names = [o.provider for o in ordered]
            if over:
                planned = guards.within_budget(names, over, p.rule, country)
                if isinstance(planned, Refusal):
                    refusal = planned
                else:
                    names = planned
        if refusal is None and names is not None:
            return names, last_resort
        assert refusal is not None
        if emit:
            emit(GuardRefused(refusal.guard, message.category, country, p.rule.name))
        return self._refused(message, message_id, p, emit, t0, refusal.reason)

    @staticmethod
    def _uncount(
        guards: Guards,
        counts: GuardCounts,
        message: Message,
        p: Prepared,
        message_id: str,
        checked_at: float,
    ) -> None:
        """A send the guards passed was cancelled before any provider was called: it
        leaves their velocity windows (:meth:`Guards.give_back`)."""
        d = p.destination
        guards.give_back(counts, message, d.e164, d.country, p.rule, message_id, checked_at)

    def admit(self, message: Message, due: float) -> float | None:
        """Check ``message`` as :meth:`send` would (raising :class:`InvalidNumber` or
        :class:`InvalidMessage`; the outbox's check before it stores a message).
        None when it may go at ``due`` (epoch seconds), else when its category's quiet
        hours end (``inf``: never)."""
        rt = self._runtime
        p = rt.prepare(message)
        window = rt.quiet.get(message.category) if rt.quiet else None
        return None if window is None else opens_at(window, p.destination.e164, due)

    def quiet_opens(self, rt: Runtime, message: Message, p: Prepared) -> float | None:
        """None when ``message``'s category has no quiet hours now for its number;
        else when they end (epoch seconds, ``inf``: never within days)."""
        window = rt.quiet.get(message.category)
        if window is None:
            return None
        return opens_at(window, p.destination.e164, self._wall.now())

    def provider_opt_out(self, provider: str, p: Prepared) -> None:
        """``provider`` answered that the recipient opted out (Twilio 21610, Telnyx 40300,
        ...): record it, so the next message of an opted-out category is refused here."""
        number = p.destination.e164
        if number not in self._optouts:
            log.info("%s says %s opted out: recorded", provider, mask(number))
            self._optouts.opt_out(number)

    async def _attempt(
        self,
        provider: Provider,
        pcfg: ProviderConfig,
        sms: OutboundSMS,
        session: aiohttp.ClientSession,
        attempt_deadline: float,
        self_timed: bool,
        slot: ConcurrencySlot | None,
    ) -> tuple[Reply, float]:
        """One request to ``provider``, holding its ``max_concurrency`` ``slot`` (released
        here; None: uncapped), under the attempt's deadline."""
        loop = asyncio.get_running_loop()
        inflight = self._metrics.inflight(pcfg.name) if self._metrics is not None else None
        started = loop.time()
        counted = False
        try:
            if inflight is not None:
                inflight.inc()
                counted = True
            if self_timed:
                # The adapter's aiohttp request enforces sms.timeout: a second
                # timer here would cost a tenth of the router's own CPU per message.
                reply = await provider.send(sms, session)
            else:
                async with asyncio.timeout_at(attempt_deadline):
                    reply = await provider.send(sms, session)
        except TimeoutError:
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
            if slot is not None:
                slot.release()
        return reply, loop.time() - started

    # -- events -------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every hook (a hook that raises is logged and skipped)."""
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

    def breaker_changed(
        self, breaker: CircuitBreaker, before: BreakerState, after: BreakerState
    ) -> None:
        """Log an opening breaker and emit a :class:`BreakerTransition` (the state's hook)."""
        provider, country = breaker.key
        if after is BreakerState.OPEN:
            log.warning(
                "circuit breaker for %s%s opened (open #%d in a row)",
                provider,
                f" [{country}]" if country else "",
                breaker.opens,
            )
        if self._hooks:
            self.emit(BreakerTransition(provider, country, before.value, after.value))


def _passed(asked: Awaitable[GuardAnswer]) -> bool:
    """Whether ``asked`` (a guards' check in Redis) was answered, and let the message
    pass: counted there (a check still waiting was cancelled with its send: the batch
    gives its count back)."""
    return (
        isinstance(asked, asyncio.Future)
        and asked.done()
        and not asked.cancelled()
        and asked.exception() is None
        and asked.result().refused is None
    )


async def _close_providers(rt: Runtime, keep: Iterable[Provider] = ()) -> None:
    """``aclose`` every adapter of ``rt`` but those in ``keep``; one that raises is logged,
    the others still close."""
    kept = {id(p) for p in keep}
    for provider in rt.providers.values():
        if id(provider) in kept:
            continue
        try:
            await provider.aclose()
        except Exception:
            log.exception("provider %s did not close cleanly", provider.name)
