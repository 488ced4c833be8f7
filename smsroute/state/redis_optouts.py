"""Opt-outs shared by every replica: a set in Redis, a log of changes, a local copy.

``number in store`` is on the send path, so it reads a local copy of the set.
A STOP (or START) received by any replica changes its local copy at once and
is written to Redis at once by the background task: the set and a stream of
changes, in one script.  Every sync, each replica reads the changes since
the last one it saw and applies them, so a STOP received anywhere is obeyed
everywhere within ``sync_interval``.  A replica that starts, or that lost
track for longer than the log keeps (:data:`LOG_KEEP`), reads the whole set.

    P optouts        set     E.164 numbers that opted out
    P optouts:log    stream  {n: number, op: out|in}, trimmed to LOG_KEEP

While Redis is down, changes received here wait and are written when it is back.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from smsroute.optout import OptOutStore
from smsroute.state.redis_scripts import KEYED

if TYPE_CHECKING:
    from smsroute.state.redis_shared import SharedBackend

#: Seconds of changes the log keeps; a replica out of touch for longer reads the whole set.
LOG_KEEP = 3600.0
#: Changes read per sync at most (the rest come at the next one).
READ_BATCH = 10_000

#: KEYS: set, log.  ARGV: keep (ms), then (number, "out"|"in") pairs.
WRITE = (
    KEYED
    + """
local t = redis.call('TIME')
local minid = (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) - tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == 'out' then
    call('SADD', KEYS[1], ARGV[i])
  else
    call('SREM', KEYS[1], ARGV[i])
  end
  call('XADD', KEYS[2], 'MINID', '~', minid, '*', 'n', ARGV[i], 'op', ARGV[i + 1])
end
return 1
"""
)

#: KEYS: set, log.  Returns {last log id or "0-0", every member}.
LOAD = (
    KEYED
    + """
local last = call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {id, call('SMEMBERS', KEYS[1])}
"""
)


class RedisOptOuts(OptOutStore):
    """An :class:`OptOutStore` kept in step with every replica's through Redis."""

    def __init__(self, backend: SharedBackend) -> None:
        super().__init__()
        self._backend = backend
        prefix = backend.settings.key_prefix
        self._keys = [f"{prefix}optouts", f"{prefix}optouts:log"]
        self._write = backend.link.script(WRITE)
        self._load = backend.link.script(LOAD)
        #: Changes made here not yet written: number -> opted out?
        self._pending: dict[str, bool] = {}
        self._last_id: str | None = None
        self._read_at = 0.0

    def opt_out(self, number: str) -> None:
        super().opt_out(number)
        self._pending[number] = True
        self._backend.wake()

    def opt_in(self, number: str) -> None:
        super().opt_in(number)
        self._pending[number] = False
        self._backend.wake()

    @property
    def pending(self) -> bool:
        """Whether changes made here wait to be written."""
        return bool(self._pending)

    async def flush(self) -> bool:
        """Write the changes made here; False when Redis failed (they stay pending)."""
        pending = dict(self._pending)
        if not pending:
            return True
        args: list[Any] = [int(LOG_KEEP * 1000)]
        for number, out in pending.items():
            args += [number, "out" if out else "in"]
        call = functools.partial(self._write, keys=self._keys, args=args)
        if await self._backend.link.run("optouts", call) is None:
            return False
        for number, out in pending.items():
            if self._pending.get(number) is out:
                del self._pending[number]
        return True

    async def refresh(self) -> None:
        """Apply the changes other replicas made since the last refresh (all of it if lost)."""
        link = self._backend.link
        now = self._backend.clock.now()
        if self._last_id is None or now - self._read_at > LOG_KEEP / 2:
            reply = await link.run("optouts", functools.partial(self._load, keys=self._keys))
            if reply is None:
                return
            last_id, members = reply
            numbers = set(members)
            for number, out in self._pending.items():
                (numbers.add if out else numbers.discard)(number)
            self._numbers = numbers
            self._last_id, self._read_at = last_id, now
            return
        read = functools.partial(
            link.client.xrange, self._keys[1], min=f"({self._last_id}", count=READ_BATCH
        )
        entries = await link.run("optouts", read, self._keys[1])
        if entries is None:
            return
        self._read_at = now
        for entry_id, fields in entries:
            raw = fields.get("n") if fields else None
            if isinstance(raw, str) and raw not in self._pending:
                if fields and fields.get("op") == "out":
                    self._numbers.add(raw)
                else:
                    self._numbers.discard(raw)
            self._last_id = str(entry_id)
