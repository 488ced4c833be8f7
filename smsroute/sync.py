"""A synchronous face for code that does not run an event loop: Django and Flask
views, Celery tasks, management commands, cron scripts.

    from smsroute import Message, SyncRouter

    with SyncRouter.from_yaml("config/routing.yaml") as router:
        result = router.send(Message(to="+49 151 23456789", text="Code 123456"))

A :class:`SyncRouter` runs one :class:`~smsroute.router.Router` on a private
event loop, started on first use.  Any number of threads call it at once and
share that router's connection pool, breakers and limits; each call blocks its
own thread until the router answers.  The calling threads drive the loop while
they call (see :class:`_Engine`), a daemon thread between calls.

Fork safety: a process forked after the router started (gunicorn ``--preload``,
Celery's prefork pool, ``multiprocessing``) does not touch the parent's loop or
sockets: its first call starts a fresh loop and router there.  The loop polls
with ``poll(2)``, whose registrations live in the process's own memory, so
whatever the child does with the objects it inherited cannot unregister the
parent's sockets (an inherited epoll instance is shared with the parent).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import selectors
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from smsroute.config import Config
from smsroute.configload import load_config
from smsroute.explain import RoutePlan
from smsroute.message import Message, MessageState, SendResult
from smsroute.outbox import TTL, DeadLetter, SendAt
from smsroute.router import Router
from smsroute.webhooks import DeliveryCallback, InboundCallback, WebhookResponse

if TYPE_CHECKING:
    from collections.abc import Mapping

    from smsroute.wsgi import WebhookWSGIApp

__all__ = ["SyncRouter"]

T = TypeVar("T")

#: What a call from inside a running event loop raises (blocking there would stall it).
IN_EVENT_LOOP = (
    "SyncRouter.{method}() was called from inside a running asyncio event loop, which it "
    "would block: in async code use smsroute.Router and 'await router.{method}(...)' instead "
    "(or call this SyncRouter from a thread: 'await asyncio.to_thread(router.{method}, ...)')"
)
#: What a call after :meth:`SyncRouter.close` raises.
CLOSED = "this SyncRouter was closed: make a new one (SyncRouter.from_yaml(path)) to send again"

#: Every SyncRouter alive, for interpreter exit.
_LIVE: weakref.WeakSet[SyncRouter] = weakref.WeakSet()
#: What each live SyncRouter does in a forked child (weak: a router may go away).
_FORK_HOOKS: list[weakref.WeakMethod[Callable[[], None]]] = []
#: What a forked child inherited from its parent's routers: kept alive and never run,
#: so that no finaliser of the parent's session or loop runs in the child.
_INHERITED: list[object] = []


def _in_child_after_fork() -> None:
    for hook in list(_FORK_HOOKS):
        forget = hook()
        if forget is not None:
            forget()


def _at_exit() -> None:
    for router in list(_LIVE):
        router.close()


os.register_at_fork(after_in_child=_in_child_after_fork)
atexit.register(_at_exit)


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


#: How long the loop may go undriven after a call before the engine's own thread drives
#: it again (for the router's background work: timers, Redis sync, receipt timeouts).
IDLE_GRACE = 0.005

#: The longest the daemon thread sleeps between two looks while callers drive the loop:
#: background work waits at most this (plus :data:`IDLE_GRACE`) after the last call.
MAX_NAP = 0.1

#: The engine's own thread, as the one driving the loop (callers are their `_Waiter`).
_DAEMON = object()


class _Waiter:
    """One call: its answer, and the lock its thread sleeps on.

    ``wake`` is released when the call is finished, or when the thread is handed
    the loop to drive (``finished`` tells which).
    """

    __slots__ = ("error", "finished", "value", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = False


class _Engine:
    """One process's loop, the Router running on it, and who drives the loop.

    The loop runs in the calling threads themselves.  A call whose thread finds
    the loop undriven drives it (``run_forever`` in that thread) until its own
    call is done, so a caller sending one message after another never waits for
    another thread: a hand-off between threads (a wake-up through the loop's
    self-pipe, a lock released for the caller) costs more CPU than the send's own
    work in smsroute (bench/bench_sync.py).  A call that finds the loop driven
    hands its coroutine to the loop (``call_soon_threadsafe``) and sleeps until it
    is done, or until the driver, finished with its own call, hands it the loop.
    When no call is running the engine's daemon thread drives the loop, after
    :data:`IDLE_GRACE`, for the router's background work; a call that arrives
    then asks it to stop and takes the loop over.

    Only the driver runs loop code; ``_mutex`` guards ``_driver`` and ``_queue``.
    """

    def __init__(self, config: Config, kwargs: Mapping[str, Any]) -> None:
        self.loop = asyncio.SelectorEventLoop(selectors.PollSelector())
        self._mutex = threading.Lock()
        self._daemon_wait = threading.Condition(self._mutex)
        self._driver: object | None = None
        self._queue: deque[_Waiter] = deque()
        self._released_at = 0.0
        self._closing = False
        try:
            self.router: Router = self.loop.run_until_complete(self._open(config, kwargs))
        except BaseException:
            self.loop.close()
            raise
        self.thread = threading.Thread(
            target=self._daemon, name="smsroute-sync-router", daemon=True
        )
        self.thread.start()

    @staticmethod
    async def _open(config: Config, kwargs: Mapping[str, Any]) -> Router:
        router = Router(config, **kwargs)
        await router.__aenter__()
        return router

    # -- calls --------------------------------------------------------------------------

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the loop and return its value (or raise its error)."""
        waiter = _Waiter()
        coro = self._run(waiter, make)
        with self._mutex:
            if self._driver is None:
                self._driver = waiter
                queued = False
            else:
                self._queue.append(waiter)
                queued = True
        if queued:
            self.loop.call_soon_threadsafe(self._start, coro)
            try:
                waiter.wake.acquire()
            except BaseException:  # interrupted (KeyboardInterrupt): leave the line
                self._leave(waiter)
                raise
            if not waiter.finished:  # handed the loop: drive it until our call is done
                self._drive()
        else:
            self.loop.create_task(coro)
            self._drive()
        if waiter.error is not None:
            raise waiter.error
        value: T = waiter.value
        return value

    async def _run(self, waiter: _Waiter, make: Callable[[], Awaitable[Any]]) -> None:
        try:
            waiter.value = await make()
        except asyncio.CancelledError:
            waiter.error = RuntimeError(
                "the call was cancelled because the SyncRouter was closed while it ran"
            )
        except BaseException as exc:  # handed to the calling thread, raised there
            waiter.error = exc
        finally:
            with self._mutex:
                waiter.finished = True
                if self._driver is waiter:
                    self.loop.stop()  # its thread's run_forever returns after this step
                else:
                    if waiter in self._queue:
                        self._queue.remove(waiter)
                    waiter.wake.release()

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        """On the loop: start a queued call; a daemon driving the loop gives it up."""
        self.loop.create_task(coro)
        if self._driver is _DAEMON:
            self.loop.stop()

    def _drive(self) -> None:
        """Run the loop in this thread until it is stopped, then hand it on."""
        try:
            self.loop.run_forever()
        finally:
            self._hand_on()

    def _leave(self, waiter: _Waiter) -> None:
        """A queued caller gives up waiting: out of the line, or on with the loop."""
        with self._mutex:
            if waiter in self._queue:
                self._queue.remove(waiter)
                return
            handed = self._driver is waiter and not waiter.finished
        if handed:
            self._hand_on()

    def _hand_on(self) -> None:
        with self._mutex:
            if self._queue:
                nxt = self._queue.popleft()
                self._driver = nxt
                nxt.wake.release()
            else:
                self._driver = None
                self._released_at = time.monotonic()

    # -- the daemon thread --------------------------------------------------------------

    def _daemon(self) -> None:
        nap = IDLE_GRACE
        while True:
            with self._mutex:
                while not self._closing:
                    if self._driver is None and time.monotonic() - self._released_at >= IDLE_GRACE:
                        break
                    # Callers drive the loop themselves: look again later, and less
                    # often the longer they keep it busy (each look wakes this thread,
                    # which then wants the GIL the caller holds).
                    self._daemon_wait.wait(nap)
                    nap = min(nap * 2, MAX_NAP)
                if self._closing:
                    return
                self._driver = _DAEMON
            nap = IDLE_GRACE
            self._drive()

    def _stop_daemon(self) -> None:
        """On the loop: the daemon's run_forever returns (a call wants the loop)."""
        if self._driver is _DAEMON:
            self.loop.stop()

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        router = self.router

        async def shut() -> None:
            try:
                await router.aclose()
            finally:
                # Calls still running (other threads') end now, each told why.
                me = asyncio.current_task()
                rest = [t for t in asyncio.all_tasks() if t is not me]
                for task in rest:
                    task.cancel()
                await asyncio.gather(*rest, return_exceptions=True)
                await self.loop.shutdown_asyncgens()
                await self.loop.shutdown_default_executor()

        try:
            self.call(shut)
        finally:
            with self._mutex:
                self._closing = True
                self._daemon_wait.notify_all()
                daemon_driving = self._driver is _DAEMON
            if daemon_driving:
                self.loop.call_soon_threadsafe(self._stop_daemon)
            self.thread.join()
            self.loop.close()


class SyncRouter:
    """A :class:`~smsroute.router.Router` for code without an event loop.

    >>> with SyncRouter.from_yaml("config/routing.yaml") as router:
    ...     result = router.send(Message(to="+4915123456789", text="Code 123456", category="otp"))
    ...     router.status(result.message_id)

    Takes the keyword arguments of :class:`~smsroute.router.Router` (``hooks``,
    ``clock``, ``rng``, ``registry``, ``metrics``...) except ``session``: the
    router makes its HTTP session on its own loop.  Methods mirror the router's
    and return the same types; each blocks the calling thread until it is done.
    Bad input raises :class:`InvalidNumber` or :class:`InvalidMessage` in the
    calling thread.  Callbacks (:meth:`on_delivery_report`, :meth:`on_inbound`)
    run on whichever thread drives the loop then: keep them short.
    """

    def __init__(self, config: Config, **kwargs: Any) -> None:
        if "session" in kwargs:
            raise TypeError(
                "SyncRouter(session=...) is not supported: the session must belong to the "
                "router's own event loop, which SyncRouter makes; leave session out"
            )
        self._config = config
        self._kwargs = dict(kwargs)
        self._delivery_callbacks: list[DeliveryCallback] = []
        self._inbound_callbacks: list[InboundCallback] = []
        self._lock = threading.Lock()
        self._engine: _Engine | None = None
        self._closed = False
        _LIVE.add(self)
        _FORK_HOOKS[:] = [hook for hook in _FORK_HOOKS if hook() is not None]
        _FORK_HOOKS.append(weakref.WeakMethod(self._forget_parent))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **kwargs: Any) -> SyncRouter:
        """Load the config at ``path`` (raising :class:`ConfigError`) and build a router."""
        return cls(load_config(path), **kwargs)

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> SyncRouter:
        self._started("__enter__")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the router (its session, adapters, outbox) and stop its thread.

        Idempotent; called at interpreter exit for a router still open.
        """
        if self._engine is not None and _in_running_loop():
            raise RuntimeError(IN_EVENT_LOOP.format(method="close"))
        with self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def _forget_parent(self) -> None:
        """In a forked child: leave the parent's loop and router alone, start afresh."""
        # The lock may have been held by another thread of the parent at the fork.
        self._lock = threading.Lock()
        engine, self._engine = self._engine, None
        if engine is not None:
            # The parent's session and loop must never be finalised here: their
            # sockets are the parent's too.  Nothing will report on them either.
            engine.loop.set_exception_handler(lambda _loop, _context: None)
            _INHERITED.append(engine)

    def _started(self, method: str) -> _Engine:
        engine = self._engine
        if engine is not None:
            return engine
        if _in_running_loop():
            raise RuntimeError(IN_EVENT_LOOP.format(method=method))
        with self._lock:
            if self._closed:
                raise RuntimeError(CLOSED)
            engine = self._engine
            if engine is None:
                engine = self._engine = _Engine(self._config, self._kwargs)
                router = engine.router
                assert router is not None
                for callback in self._delivery_callbacks:
                    router.on_delivery_report(callback)
                for inbound in self._inbound_callbacks:
                    router.on_inbound(inbound)
            return engine

    def _call(self, method: str, make: Callable[[Router], Awaitable[T]]) -> T:
        if _in_running_loop():
            raise RuntimeError(IN_EVENT_LOOP.format(method=method))
        engine = self._started(method)
        router = engine.router
        assert router is not None
        return engine.call(lambda: make(router))

    async def _now(self, value: T) -> T:
        return value

    @property
    def async_router(self) -> Router:
        """The :class:`~smsroute.router.Router` this one runs (on its own loop and thread)."""
        router = self._started("async_router").router
        assert router is not None
        return router

    @property
    def config(self) -> Config:
        """The config in force now."""
        engine = self._engine
        return engine.router.config if engine is not None and engine.router else self._config

    # -- sending ------------------------------------------------------------------------

    def send(self, message: Message) -> SendResult:
        """Send ``message``; see :meth:`Router.send`.  Blocks until the send is done."""
        return self._call("send", lambda router: router.send(message))

    def explain(self, message: Message) -> RoutePlan:
        """Which rule matches ``message`` and the order providers would be tried in."""
        return self._call("explain", lambda router: self._now(router.explain(message)))

    def reload(self, path: str | os.PathLike[str] | None = None) -> Config:
        """Load a new config (default: the current file) and swap it in atomically."""
        config = self._call("reload", lambda router: self._now(router.reload(path)))
        self._config = config  # what a forked child starts with
        return config

    # -- receiving ----------------------------------------------------------------------

    def status(self, message_id: str) -> MessageState | None:
        """The latest known state of ``message_id`` (None when unknown or forgotten)."""
        return self._call("status", lambda router: router.status(message_id))

    def handle_webhook(
        self,
        provider_name: str,
        kind: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> WebhookResponse:
        """Process one webhook call; see :meth:`Router.handle_webhook`."""
        return self._call(
            "handle_webhook",
            lambda router: router.handle_webhook(provider_name, kind, method, url, headers, body),
        )

    def wsgi_app(self, prefix: str = "") -> WebhookWSGIApp:
        """A WSGI application serving ``{prefix}/{provider}/status`` and ``/inbound``."""
        from smsroute.wsgi import WebhookWSGIApp

        return WebhookWSGIApp(self, prefix)

    def on_delivery_report(self, callback: DeliveryCallback) -> DeliveryCallback:
        """Call ``callback(report)`` for every new delivery receipt (on the thread driving the loop)."""
        with self._lock:
            self._delivery_callbacks.append(callback)
            engine = self._engine
        if engine is not None and engine.router is not None:
            engine.router.on_delivery_report(callback)
        return callback

    def on_inbound(self, callback: InboundCallback) -> InboundCallback:
        """Call ``callback(message)`` for every inbound message (on the thread driving the loop)."""
        with self._lock:
            self._inbound_callbacks.append(callback)
            engine = self._engine
        if engine is not None and engine.router is not None:
            engine.router.on_inbound(callback)
        return callback

    # -- the outbox -----------------------------------------------------------------------

    def enqueue(
        self,
        message: Message,
        *,
        send_at: SendAt | None = None,
        ttl: TTL | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Store ``message`` durably for the outbox worker; see :meth:`Router.enqueue`."""
        return self._call(
            "enqueue",
            lambda router: router.enqueue(
                message, send_at=send_at, ttl=ttl, idempotency_key=idempotency_key
            ),
        )

    def enqueue_many(
        self,
        messages: Iterable[Message],
        *,
        send_at: SendAt | None = None,
        ttl: TTL | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[str]:
        """:meth:`enqueue` for a batch, in one transaction; see :meth:`Router.enqueue_many`."""
        batch = list(messages)
        keys = None if idempotency_keys is None else list(idempotency_keys)
        return self._call(
            "enqueue_many",
            lambda router: router.enqueue_many(
                batch, send_at=send_at, ttl=ttl, idempotency_keys=keys
            ),
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages the outbox gave up on, most recent first."""
        return self._call("dead_letters", lambda router: router.dead_letters(limit))

    def requeue(self, message_id: str) -> bool:
        """Put a dead letter back in the queue; False when it is not one."""
        return self._call("requeue", lambda router: router.requeue(message_id))
