"""A synchronous face for code that does not run an event loop: Django and Flask
views, Celery tasks, management commands, cron scripts.

    from smsroute import Message, SyncRouter

    with SyncRouter.from_yaml("config/routing.yaml") as router:
        result = router.send(Message(to="+49 151 23456789", text="Code 123456"))

A :class:`SyncRouter` runs one :class:`~smsroute.router.Router` on a private
event loop in a daemon thread, started on first use.  Any number of threads call
it at once and share that router's connection pool, breakers and limits; each
call blocks its own thread until the router answers.

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
import weakref
from collections.abc import Awaitable, Callable, Iterable
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


class _Waiter:
    """One call's answer, handed from the loop thread to the caller's thread."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    async def run(self, make: Callable[[], Awaitable[Any]]) -> None:
        """Await ``make()`` and hand its value or error over.

        The coroutine settles the waiter itself rather than through a done callback
        on its task: a done callback runs one loop iteration later, and each
        iteration is a poll and a GIL hand-off between the two threads (measured:
        the hand-off, not smsroute, is most of what a sync call costs).
        """
        try:
            self.value = await make()
        except asyncio.CancelledError:
            self.error = RuntimeError(
                "the call was cancelled because the SyncRouter was closed while it ran"
            )
        except BaseException as exc:  # handed to the calling thread, raised there
            self.error = exc
        finally:
            self.done.release()


class _Engine:
    """One process's loop, its thread and the Router running on it."""

    def __init__(self, config: Config, kwargs: Mapping[str, Any]) -> None:
        self.loop = asyncio.SelectorEventLoop(selectors.PollSelector())
        self.router: Router | None = None
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.router = self.loop.run_until_complete(self._open(config, kwargs))
            except BaseException as exc:  # handed to the thread that started us
                failure.append(exc)
                self.loop.close()
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="smsroute-sync-router", daemon=True)
        self.thread.start()
        ready.wait()
        if failure:
            self.thread.join()
            raise failure[0]

    @staticmethod
    async def _open(config: Config, kwargs: Mapping[str, Any]) -> Router:
        router = Router(config, **kwargs)
        await router.__aenter__()
        return router

    def submit(self, make: Callable[[], Awaitable[T]]) -> _Waiter:
        waiter = _Waiter()
        self.loop.call_soon_threadsafe(self.loop.create_task, waiter.run(make))
        return waiter

    def close(self) -> None:
        router = self.router
        if router is not None and self.thread.is_alive():

            async def shut() -> None:
                await router.aclose()
                await self.loop.shutdown_asyncgens()
                await self.loop.shutdown_default_executor()

            waiter = self.submit(shut)
            waiter.done.acquire()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            if waiter.error is not None:
                self.loop.close()
                raise waiter.error
        if not self.loop.is_closed() and not self.thread.is_alive():
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
    run on the router's thread: keep them short.
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
        waiter = engine.submit(lambda: make(router))
        waiter.done.acquire()
        if waiter.error is not None:
            raise waiter.error
        value: T = waiter.value
        return value

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
        """Call ``callback(report)`` for every new delivery receipt (on the router's thread)."""
        with self._lock:
            self._delivery_callbacks.append(callback)
            engine = self._engine
        if engine is not None and engine.router is not None:
            engine.router.on_delivery_report(callback)
        return callback

    def on_inbound(self, callback: InboundCallback) -> InboundCallback:
        """Call ``callback(message)`` for every inbound message (on the router's thread)."""
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
