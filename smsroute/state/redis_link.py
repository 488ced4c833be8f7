"""The connection to Redis, and what happens when Redis goes away and comes back.

Every Redis call of the shared state goes through :meth:`RedisLink.run`: an
error or a timeout never reaches the send path.  It marks the link down (one
loud log line), counts ``smsroute_state_backend_errors_total`` through the
router's hooks, and returns None; the callers then run on local state.  The
periodic sync keeps trying and, when a call succeeds again, the link is up
and the replica rejoins (one more log line).

A call Redis *answers* with an error about the data it met (:func:`bad_data`: a key
of another type than smsroute keeps there, a value that is not a number; the
scripts name the key, see :data:`~smsroute.state.redis_scripts.KEYED`) does not
take the link down: Redis is there, and every other part of the shared state goes
on sharing.  That call returns None like a failed one (its caller runs on local
state for it), it is counted the same, and :meth:`RedisLink.bad_data` logs what,
where and what to do, once per key (or kind of error) every
:data:`BAD_DATA_LOG_EVERY` seconds while it lasts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from smsroute.config import StateSettings
from smsroute.errors import StateBackendUnavailable
from smsroute.instrument.events import Event, StateBackendError
from smsroute.redact import redact

log = logging.getLogger("smsroute.state")

T = TypeVar("T")

#: Seconds between two log lines about the same bad data (a key, or one kind of error).
BAD_DATA_LOG_EVERY = 300.0
#: What Redis answers when a command or script meets data smsroute did not write: a
#: key of another type, a value that is not a number (Redis's own words, or the
#: scripts' ``[key ...]``), a script's arithmetic on such a value.
_BAD_DATA = re.compile(
    r"^WRONGTYPE|\[key |value is not an? (?:integer|valid float)|^ERR not a finite number"
    r"|user_script:\d+: attempt to"
)
_KEY = re.compile(r"\[key ([^\]]*)\]")
_SCRIPT_TAIL = re.compile(r"\s*script: [0-9a-f]{40}, on @user_script:\d+\.?$")


def bad_data(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis answering that a call met data smsroute did not write
    (Redis is up; the data is not smsroute's), not Redis failing."""
    return isinstance(exc, ResponseError) and bool(_BAD_DATA.search(str(exc)))


class RedisLink:
    """One Redis client for one router, and whether Redis answers."""

    def __init__(
        self, settings: StateSettings, emit: Callable[[Event], None] | None = None
    ) -> None:
        self.settings = settings
        self.url = redact(settings.url)
        self._emit = emit
        #: False from the first failed call until a call succeeds again.
        self.up = True
        #: (operation, key or error) -> when bad data there was last logged.
        self._bad_data: dict[tuple[str, str], float] = {}
        self._blocking: redis.Redis | None = None
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.url,
            decode_responses=True,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 0),  # the sync loop is the retry: a call fails fast
            health_check_interval=0,
        )

    def script(self, source: str) -> Any:
        """A script object that runs by SHA and loads itself again after a Redis restart."""
        return self.client.register_script(source)

    async def connect(self) -> None:
        """Check that Redis answers; raise :class:`StateBackendUnavailable` if not."""
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise StateBackendUnavailable(
                f"state.backend is redis but Redis at {self.url} cannot be reached "
                f"({type(exc).__name__}: {exc}): start Redis there, fix state.url in the "
                "config, or remove the 'state' section to keep breakers, health and rate "
                "limits in this process's memory"
            ) from None
        self.up = True

    async def run(
        self, operation: str, call: Callable[[], Awaitable[T]], key: str | None = None
    ) -> T | None:
        """``await call()``; on a Redis error count it, mark the link down and return None
        (on an error about the data of ``key``, or of the key a script names: count it,
        log it, return None; the link stays up)."""
        try:
            result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            if bad_data(exc):
                self.bad_data(operation, exc, key)
            else:
                self.failed(operation, exc)
            return None
        if not self.up:
            self.answered()
        return result

    def run_now(self, operation: str, call: Callable[[redis.Redis], T]) -> T | None:
        """``call(client)`` with a blocking client of its own (made on first use), for a
        synchronous caller (``explain``): at most ``state.timeout`` per command.  On a
        Redis error: counted, the link marked down, None."""
        if self._blocking is None:
            self._blocking = redis.Redis.from_url(
                self.settings.url,
                decode_responses=True,
                socket_timeout=self.settings.timeout,
                socket_connect_timeout=self.settings.timeout,
                health_check_interval=0,
            )
        try:
            result = call(self._blocking)
        except (RedisError, OSError) as exc:
            if bad_data(exc):
                self.bad_data(operation, exc)
            else:
                self.failed(operation, exc)
            return None
        if not self.up:
            self.answered()
        return result

    def answered(self) -> None:
        """A call succeeded while the link was down: it is up again (one log line)."""
        self.up = True
        log.warning(
            "Redis at %s answers again: shared breakers, health and rate limits resume",
            self.url,
        )

    def failed(self, operation: str, exc: BaseException) -> None:
        """Record a failed Redis call (the link goes down; the first failure is logged loudly)."""
        if self.up:
            self.up = False
            log.error(
                "Redis at %s failed during %s (%s: %s): sending goes on with this "
                "replica's local breakers, health and rate limits (each provider's rate "
                "limit divided among the replicas last seen) until Redis answers again",
                self.url,
                operation,
                type(exc).__name__,
                exc,
            )
        if self._emit is not None:
            self._emit(StateBackendError(operation))

    def bad_data(self, operation: str, exc: BaseException | str, key: str | None = None) -> None:
        """Redis answered a call of ``operation`` with an error about data smsroute did not
        write (or the caller found such data in a reply: ``exc`` says what, ``key``
        where): counted like a failed call; the link stays up.  Logged once per key (or
        kind of error) every :data:`BAD_DATA_LOG_EVERY` seconds."""
        if not self.up:  # it answered
            self.answered()
        text = _SCRIPT_TAIL.sub("", str(exc).strip())
        if key is None:
            found = _KEY.search(text)
            key = found.group(1) if found else None
        if self._emit is not None:
            self._emit(StateBackendError(operation))
        now = time.monotonic()
        seen = (operation, key if key is not None else text.split(" [key ")[0])
        last = self._bad_data.get(seen)
        if last is not None and now - last < BAD_DATA_LOG_EVERY:
            return
        if len(self._bad_data) > 1000:
            self._bad_data.clear()
        self._bad_data[seen] = now
        prefix = self.settings.key_prefix
        where = (
            f"the key '{key}'" if key is not None else f"a key under state.key_prefix '{prefix}'"
        )
        fix = (
            f"delete it (redis-cli -u <state.url> DEL '{key}')"
            if key is not None
            else f"find it with redis-cli -u <state.url> --scan --pattern '{prefix}*' and delete it"
        )
        log.error(
            "Redis at %s answered smsroute's %s call with an error about its data (%s): "
            "%s holds something smsroute did not write there (another program, a manual "
            "write, or another smsroute version under the same key_prefix). Redis is up "
            "and the rest of the shared state stays shared; what meets that key is kept "
            "in this replica's memory until it is fixed: %s, or give this config a "
            "key_prefix of its own. (Said again every %d minutes while it lasts.)",
            self.url,
            operation,
            text,
            where,
            fix,
            BAD_DATA_LOG_EVERY // 60,
        )

    async def aclose(self) -> None:
        """Close the clients' connections."""
        await self.client.aclose()
        if self._blocking is not None:
            self._blocking.close()
            self._blocking = None


def resp(parts: Iterable[bytes]) -> bytes:
    """``parts`` as RESP bulk strings, without the array header (see :class:`Channel`)."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


class Channel:
    """A connection of its own for one caller that packs its commands itself (RESP), so
    that a call costs one write and one read: the guards' batches (their arguments
    are mostly packed once and reused, see :mod:`smsroute.state.redis_guards`).

    It connects as the link's client does (the same URL: password, TLS, database) and
    shares the link's up/down state; a call that fails or times out (``state.timeout``
    for the whole call) drops the connection, counts as a failed Redis call and
    returns None.  A script not in Redis's cache (after a restart or ``SCRIPT
    FLUSH``) is loaded and the call made again."""

    def __init__(self, link: RedisLink, operation: str, script: str) -> None:
        self._link = link
        self._operation = operation
        self._script = script.encode()
        #: Redis names a script by its SHA-1: known here, loaded only when Redis lacks it.
        self._sha = hashlib.sha1(self._script).hexdigest().encode()
        self._pool = ConnectionPool.from_url(
            link.settings.url,
            decode_responses=True,
            socket_timeout=None,  # the call's own timeout bounds it (no wait_for per write)
            socket_connect_timeout=link.settings.timeout,
            health_check_interval=0,
        )
        self._conn: AbstractConnection | None = None

    async def evalsha(self, args: list[bytes], count: int) -> Any:
        """``EVALSHA <script> 0 *args`` where ``args`` is ``count`` arguments already
        packed by :func:`resp`; the reply, or None when Redis failed."""
        link = self._link
        try:
            async with asyncio.timeout(link.settings.timeout):
                conn = self._conn
                if conn is None:
                    conn = self._conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    reply = await self._exchange(conn, self._head(count), args)
                except NoScriptError:  # Redis restarted, or its scripts were flushed
                    await self._load(conn)
                    reply = await self._exchange(conn, self._head(count), args)
        except (RedisError, OSError, TimeoutError) as exc:
            if bad_data(exc):  # Redis answered (the reply is read): the connection is fine
                link.bad_data(self._operation, exc)
                return None
            await self._drop()
            link.failed(self._operation, exc)
            return None
        except BaseException:  # cancelled mid-call: its reply must not meet the next call
            await self._drop()
            raise
        if not link.up:
            link.answered()
        return reply

    def _head(self, count: int) -> bytes:
        sha = self._sha
        return b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (count + 3, len(sha), sha)

    async def _load(self, conn: AbstractConnection) -> None:
        command = [b"SCRIPT", b"LOAD", self._script]
        await self._exchange(conn, b"*3\r\n", [resp(command)])

    @staticmethod
    async def _exchange(conn: AbstractConnection, head: bytes, args: list[bytes]) -> Any:
        await conn.send_packed_command([head, *args], check_health=False)
        return await conn.read_response(timeout=math.inf)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)
            await self._pool.release(conn)

    async def aclose(self) -> None:
        """Close the connection."""
        await self._drop()
        await self._pool.disconnect()
