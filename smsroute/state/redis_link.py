"""The connection to Redis, and what happens when Redis goes away and comes back.

Every Redis call of the shared state goes through :meth:`RedisLink.run`: an
error or a timeout never reaches the send path.  It marks the link down (one
loud log line), counts ``smsroute_state_backend_errors_total`` through the
router's hooks, and returns None; the callers then run on local state.  The
periodic sync keeps trying and, when a call succeeds again, the link is up
and the replica rejoins (one more log line).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from smsroute.config import StateSettings
from smsroute.errors import StateBackendUnavailable
from smsroute.instrument.events import Event, StateBackendError

log = logging.getLogger("smsroute.state")

T = TypeVar("T")


def redact(url: str) -> str:
    """``url`` with its password (and user) replaced by ``***``.

    >>> redact("redis://:s3cret@redis.internal:6379/0")
    'redis://***@redis.internal:6379/0'
    """
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


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

    async def run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """``await call()``; on a Redis error count it, mark the link down and return None."""
        try:
            result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(operation, exc)
            return None
        if not self.up:
            self.up = True
            log.warning(
                "Redis at %s answers again: shared breakers, health and rate limits resume",
                self.url,
            )
        return result

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

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()
