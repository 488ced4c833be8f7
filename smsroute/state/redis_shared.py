"""What the parts of the Redis state (buckets, opt-outs, the receipt log) use of
:class:`~smsroute.state.redis.RedisState`: the :class:`SharedBackend` protocol,
and the Lua scripts registered once per client (:class:`Scripts`).

The parts depend on this protocol, not on ``RedisState`` itself, so that
``redis.py`` (which builds them) is the only module that knows them all.
"""

from __future__ import annotations

from typing import Protocol

from smsroute.clock import Clock
from smsroute.config import StateSettings
from smsroute.state import redis_scripts
from smsroute.state.redis_link import RedisLink


class Scripts:
    """The Lua scripts, registered once per client."""

    def __init__(self, link: RedisLink) -> None:
        self.breaker_set = link.script(redis_scripts.BREAKER_SET)
        self.reserve = link.script(redis_scripts.RESERVE)
        self.pause = link.script(redis_scripts.PAUSE)
        self.sync = link.script(redis_scripts.SYNC)


class SharedBackend(Protocol):
    """The shared state's connection, settings and clocks, as its parts use them."""

    settings: StateSettings
    clock: Clock
    link: RedisLink
    scripts: Scripts
    #: Live replicas seen at the last sync (this one included).
    replicas: int

    def wake(self) -> None:
        """Have the background task write local changes now rather than at the next sync."""
        ...

    def offset(self, redis_now: float) -> float:
        """Redis time minus this replica's clock."""
        ...
