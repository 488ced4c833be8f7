"""The outbox in Redis: one store for workers on many hosts.

Same guarantees as the SQLite store (:mod:`smsroute.outbox.sqlite`), each
operation one Lua script, so atomic: at-least-once delivery (a message
leaves the queue only when acked, dead-lettered or purged), leases that come
back to the queue when the worker holding them dies (at the next ``lease``
after ``lease_until``), idempotency keys, dead letters with their attempts,
and the status history that receipts extend.  Durability is Redis's: run it
with ``appendonly yes`` (``appendfsync everysec`` can lose the last second
on a power cut; ``always`` loses nothing).  Not for Redis Cluster: a script
touches keys it derives.

Keys, under ``key_prefix`` + ``outbox:`` (``P``)::

    P m:<id>              hash  the message: state, priority, due, expires, ttl, tries,
                                owner, until, status, provider, ..., to, body, sender, ...
    P pending:<priority>  zset  "seq(12 digits)" + id, scored by due: due, then enqueue order
    P leased              zset  id by lease_until
    P dead, P sent        zset  id by the time it got there (dead letters, purge)
    P idem                hash  idempotency key -> id
    P h:<id>              list  history, JSON [at, status, provider, detail]
    P a:<id>              list  attempts, JSON [try, provider, outcome, latency, ...]
    P seq                 int   enqueue counter
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from smsroute.errors import OutboxUnavailable
from smsroute.message import Attempt, DeliveryReport, MessageState, SendResult
from smsroute.outbox import records
from smsroute.outbox.records import RecordDamaged
from smsroute.outbox.store import (
    PRIORITY_LEVELS,
    DeadLetter,
    NewMessage,
    QueuedMessage,
    State,
    attempt_fields,
    encode_json,
)
from smsroute.redact import redact
from smsroute.status import RANK

log = logging.getLogger("smsroute.outbox")

#: Sent messages purged per script call (a long script blocks Redis).
PURGE_BATCH = 500

_COMMON = """
local P = KEYS[1]
-- A list smsroute appends to, unless another program left something else there.
local function appendable(key)
  local t = redis.call('TYPE', key).ok
  return t == 'list' or t == 'none'
end
local function history(id, at, status, provider, detail)
  if not appendable(P .. 'h:' .. id) then return end
  local p = cjson.null
  if provider and provider ~= '' then p = provider end
  local d = cjson.null
  if detail and detail ~= '' then d = detail end
  redis.call('RPUSH', P .. 'h:' .. id, '[' .. at .. ',' .. cjson.encode(status) .. ','
    .. cjson.encode(p) .. ',' .. cjson.encode(d) .. ']')
end
local function attempts(id, tries, first)
  if not appendable(P .. 'a:' .. id) then return end
  for i = first, #ARGV do
    redis.call('RPUSH', P .. 'a:' .. id, '[' .. tries .. ',' .. string.sub(ARGV[i], 2))
  end
end
-- A sorted set smsroute keeps (a queue, an index), or nil when another program left a key
-- of another type there: the caller skips it, and the script returns its name (skipped)
-- for the store to log.  Checked before the script writes anything: Redis does not undo
-- what a script wrote before a command failed, so a failure must come first, or never.
local skipped = {}
local function zset(key)
  local t = redis.call('TYPE', key).ok
  if t == 'zset' or t == 'none' then return key end
  skipped[#skipped + 1] = key
  return nil
end
-- The error naming ``key`` when it is neither of type ``want`` nor missing; or nil.
local function bad_key(key, want)
  local t = redis.call('TYPE', key).ok
  if t == want or t == 'none' then return nil end
  return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. want)
end
-- The error naming the first queue that is not a sorted set; or nil.
local function bad_queue()
  for level = 0, 3 do
    local bad = bad_key(P .. 'pending:' .. level, 'zset')
    if bad then return bad end
  end
  return nil
end
-- The queue of a priority; a record another program garbled goes to the last one.
local function queue_of(prio)
  if prio == '0' or prio == '1' or prio == '2' or prio == '3' then return P .. 'pending:' .. prio end
  return P .. 'pending:3'
end
local function to_pending(key, id)
  redis.call('ZREM', P .. 'leased', id)
  if redis.call('TYPE', key).ok ~= 'hash' then return end  -- lease() names it
  local prio, due, pm = unpack(redis.call('HMGET', key, 'priority', 'due', 'pm'))
  redis.call('HSET', key, 'state', 'pending')
  redis.call('HDEL', key, 'owner', 'until')
  -- a due that is not a number: due now, and lease() dead-letters the record naming it
  redis.call('ZADD', queue_of(prio), tonumber(due) or 0, pm or (string.rep('0', 12) .. id))
end
"""

#: ARGV: count, then per message: id idem priority due expires ttl enqueued to body
#: sender category tags metadata ('' for none).  Returns the ids.
ENQUEUE = (
    _COMMON
    + """
-- every key the batch writes is checked first: a batch is stored whole, or not at all
local bad = bad_queue() or bad_key(P .. 'idem', 'hash') or bad_key(P .. 'seq', 'string')
if bad then return bad end
local out = {}
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  local id, idem = ARGV[i], ARGV[i + 1]
  local found = false
  if idem ~= '' then found = redis.call('HGET', P .. 'idem', idem) end
  if found then
    out[#out + 1] = found
  else
    local key = P .. 'm:' .. id
    if redis.call('EXISTS', key) == 0 then
      local pm = string.format('%012d', redis.call('INCR', P .. 'seq')) .. id
      redis.call('HSET', key, 'state', 'pending', 'status', 'pending', 'tries', 0, 'pm', pm,
        'priority', ARGV[i + 2], 'due', ARGV[i + 3], 'enq', ARGV[i + 6], 'upd', ARGV[i + 6],
        'to', ARGV[i + 7], 'body', ARGV[i + 8], 'cat', ARGV[i + 10])
      local optional = {idem = i + 1, expires = i + 4, ttl = i + 5, sender = i + 9,
                        tags = i + 11, meta = i + 12}
      for field, at in pairs(optional) do
        if ARGV[at] ~= '' then redis.call('HSET', key, field, ARGV[at]) end
      end
      redis.call('ZADD', P .. 'pending:' .. ARGV[i + 2], ARGV[i + 3], pm)
      if idem ~= '' then redis.call('HSET', P .. 'idem', idem, id) end
    end
    out[#out + 1] = id
  end
  i = i + 13
end
return out
"""
)

#: ARGV: owner, limit, now, until.  Expired leases go back first.  Returns one
#: list per message leased: id priority due expires tries enq to body sender cat tags meta.
LEASE = (
    _COMMON
    + """
local owner, limit, now, untl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local bad = bad_queue()
if bad then return bad end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leased', '-inf', now)) do
  local key = P .. 'm:' .. id
  if redis.call('TYPE', key).ok == 'hash' then
    local holder = redis.call('HGET', key, 'owner') or '?'
    to_pending(key, id)
    history(id, now, 'lease_expired', false, 'the lease of ' .. holder .. ' expired')
  else
    redis.call('ZREM', P .. 'leased', id)  -- nothing to send: no history of nothing either
  end
end
local out = {}
for level = 0, 3 do
  local want = limit - #out
  if want <= 0 then break end
  local queue = P .. 'pending:' .. level
  for _, pm in ipairs(redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'LIMIT', 0, want)) do
    local id = string.sub(pm, 13)
    local key = P .. 'm:' .. id
    redis.call('ZREM', queue, pm)
    if redis.call('TYPE', key).ok ~= 'hash' then
      out[#out + 1] = {id}  -- no record to send (gone, or not smsroute's): lease() names it
    else
      redis.call('ZADD', P .. 'leased', untl, id)
      redis.call('HSET', key, 'state', 'leased', 'owner', owner, 'until', untl)
      out[#out + 1] = redis.call('HMGET', key, 'priority', 'due', 'expires', 'tries', 'enq',
        'to', 'body', 'sender', 'cat', 'tags', 'meta')
      table.insert(out[#out], 1, id)
    end
  end
end
return out
"""
)

#: ARGV: owner, until, ids...  Returns how many leases the owner held.
RENEW = (
    _COMMON
    + """
local held = 0
for i = 3, #ARGV do
  local key = P .. 'm:' .. ARGV[i]
  local state, owner = nil, nil
  if redis.call('TYPE', key).ok == 'hash' then
    state, owner = unpack(redis.call('HMGET', key, 'state', 'owner'))
  end
  if state == 'leased' and owner == ARGV[1] then
    redis.call('HSET', key, 'until', ARGV[2])
    redis.call('ZADD', P .. 'leased', ARGV[2], ARGV[i])
    held = held + 1
  end
end
return held
"""
)

#: ARGV: owner, "all" or "ids", ids...  Returns how many leases went back.
RELEASE = (
    _COMMON
    + """
local bad = bad_queue()
if bad then return bad end
local ids = {}
if ARGV[2] == 'all' then
  ids = redis.call('ZRANGE', P .. 'leased', 0, -1)
else
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local released = 0
for _, id in ipairs(ids) do
  local key = P .. 'm:' .. id
  local state, owner = nil, nil
  if redis.call('TYPE', key).ok == 'hash' then
    state, owner = unpack(redis.call('HMGET', key, 'state', 'owner'))
  end
  if state == 'leased' and owner == ARGV[1] then
    to_pending(key, id)
    released = released + 1
  end
end
return released
"""
)

#: ARGV: id, provider, provider message id, now, attempts (JSON each)...  Returns {1} if
#: this ack made the message sent, {0} if it already was final (a duplicate send) or is
#: gone, {-1, type} when its key is not a hash; then the keys skipped (not sorted sets).
ACK = (
    _COMMON
    + """
local id, now = ARGV[1], ARGV[4]
local key = P .. 'm:' .. id
local kind = redis.call('TYPE', key).ok
if kind ~= 'hash' then  -- gone, or another program's: out of the leases, never sent again
  local leased = zset(P .. 'leased')
  if leased then redis.call('ZREM', leased, id) end
  if kind == 'none' then return {0, unpack(skipped)} end
  return {-1, kind, unpack(skipped)}
end
local state, status, prio, pm = unpack(redis.call('HMGET', key, 'state', 'status', 'priority', 'pm'))
if not state then return {0} end
local applied, tries, detail = 0, 0, false
if state == 'pending' or state == 'leased' then
  local queue, leased, sent = zset(queue_of(prio)), zset(P .. 'leased'), zset(P .. 'sent')
  if pm and queue then redis.call('ZREM', queue, pm) end
  if leased then redis.call('ZREM', leased, id) end
  tries = redis.call('HINCRBY', key, 'tries', 1)
  if status == 'pending' or status == 'retrying' then status = 'accepted' end
  redis.call('HSET', key, 'state', 'sent', 'status', status, 'outcome', 'accepted', 'upd', now)
  redis.call('HDEL', key, 'reason', 'owner', 'until', 'provider', 'pmid')
  if ARGV[2] ~= '' then redis.call('HSET', key, 'provider', ARGV[2]) end
  if ARGV[3] ~= '' then redis.call('HSET', key, 'pmid', ARGV[3]) end
  if sent then redis.call('ZADD', sent, now, id) end
  applied = 1
else
  tries = tonumber(redis.call('HGET', key, 'tries') or '0') + 1
  detail = 'sent again: the message was already final'
end
history(id, now, 'accepted', ARGV[2], detail)
attempts(id, tries, 5)
return {applied, unpack(skipped)}
"""
)

#: Retry or dead-letter.  ARGV: id, owner, "pending" or "dead", due (''), tried (0/1),
#: reason, outcome (''), provider (''), now, attempts...  Returns {1} if the owner held
#: it, {0} if not, {-1, type} when its key is not a hash; then the keys skipped.
FINISH = (
    _COMMON
    + """
local id, owner, target, due, tried = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local reason, outcome, provider, now = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local key = P .. 'm:' .. id
local kind = redis.call('TYPE', key).ok
if kind ~= 'hash' then
  if kind == 'none' then return {0} end  -- gone: whoever removed it decided
  local leased = zset(P .. 'leased')  -- another program's: out of the leases, never sent again
  if leased then redis.call('ZREM', leased, id) end
  return {-1, kind, unpack(skipped)}
end
local state, holder, prio, pm = unpack(redis.call('HMGET', key, 'state', 'owner', 'priority', 'pm'))
if not state then return {0} end
local applied, tries = 0, 0
if state == 'leased' and holder == owner then
  -- a retry needs its queue (else the message would be in none): refused before any write
  if target == 'pending' and not zset(queue_of(prio)) then
    return redis.error_reply('WRONGTYPE ' .. queue_of(prio) .. ' is not a sorted set')
  end
  local leased, dead = zset(P .. 'leased'), zset(P .. 'dead')
  local status = 'dead'
  if target == 'pending' then status = 'retrying' end
  tries = redis.call('HINCRBY', key, 'tries', tried)
  redis.call('HSET', key, 'state', target, 'status', status, 'reason', reason, 'upd', now)
  if due ~= '' then redis.call('HSET', key, 'due', due) end
  if outcome ~= '' then redis.call('HSET', key, 'outcome', outcome) end
  redis.call('HDEL', key, 'owner', 'until')
  if leased then redis.call('ZREM', leased, id) end
  if target == 'pending' then
    redis.call('ZADD', queue_of(prio), tonumber(redis.call('HGET', key, 'due')) or 0,
      pm or (string.rep('0', 12) .. id))
  elseif dead then
    redis.call('ZADD', dead, now, id)
  end
  history(id, now, status, provider, reason)
  applied = 1
else
  tries = tonumber(redis.call('HGET', key, 'tries') or '0') + tried
  history(id, now, 'lease_lost', provider, reason)
end
attempts(id, tries, 10)
return {applied, unpack(skipped)}
"""
)

#: ARGV: id, now.  A dead letter back to pending, due now, tries and ttl reset.  Returns
#: {1} when it was a dead letter, {0} if not, {-1, type} when its key is not a hash.
REQUEUE = (
    _COMMON
    + """
local id, now = ARGV[1], ARGV[2]
local key = P .. 'm:' .. id
local kind = redis.call('TYPE', key).ok
if kind == 'none' then return {0} end
if kind ~= 'hash' then return {-1, kind} end
local state, ttl, prio, pm = unpack(redis.call('HMGET', key, 'state', 'ttl', 'priority', 'pm'))
if state ~= 'dead' then return {0} end
if not zset(queue_of(prio)) then  -- else it would be pending in no queue: refused, unchanged
  return redis.error_reply('WRONGTYPE ' .. queue_of(prio) .. ' is not a sorted set')
end
local dead = redis.call('TYPE', P .. 'dead').ok == 'zset'
redis.call('HSET', key, 'state', 'pending', 'status', 'pending', 'due', now, 'tries', 0, 'upd', now)
redis.call('HDEL', key, 'reason')
if tonumber(ttl) then
  redis.call('HSET', key, 'expires', string.format('%.6f', tonumber(now) + tonumber(ttl)))
end
if dead then redis.call('ZREM', P .. 'dead', id) end
redis.call('ZADD', queue_of(prio), now, pm or (string.rep('0', 12) .. id))
history(id, now, 'requeued', false, false)
return {1}
"""
)

#: ARGV: id, status, provider, provider message id, error code (''), now, at, then
#: the rank table as status rank pairs.  Returns {1} when the message is known here, {0}
#: if not, {-1, type} when its key is not a hash.
RECEIPT = (
    _COMMON
    + """
local id, status, now = ARGV[1], ARGV[2], ARGV[6]
local key = P .. 'm:' .. id
local kind = redis.call('TYPE', key).ok
if kind == 'none' then return {0} end
if kind ~= 'hash' then return {-1, kind} end
local current = redis.call('HGET', key, 'status')
if not current then return {0} end
local sender = redis.call('HGET', key, 'provider')
local rank = {}
for i = 8, #ARGV, 2 do rank[ARGV[i]] = tonumber(ARGV[i + 1]) end
-- Only the current attempt's provider moves the message; others are history.
if (not sender or sender == ARGV[3]) and (rank[status] or -1) > (rank[current] or -1) then
  redis.call('HSET', key, 'status', status, 'provider', ARGV[3], 'pmid', ARGV[4], 'upd', now)
  if ARGV[5] ~= '' then redis.call('HSET', key, 'err', ARGV[5]) else redis.call('HDEL', key, 'err') end
end
history(id, ARGV[7], status, ARGV[3], ARGV[5])
return {1}
"""
)

#: ARGV: id, provider, provider message id, now.  A resend was accepted: the new attempt
#: is current (status accepted), whatever the last one's state.  {1} when known here,
#: {0} if not, {-1, type} when its key is not a hash.
ACCEPTED = (
    _COMMON
    + """
local id, now = ARGV[1], ARGV[4]
local key = P .. 'm:' .. id
local kind = redis.call('TYPE', key).ok
if kind == 'none' then return {0} end
if kind ~= 'hash' then return {-1, kind} end
if not redis.call('HGET', key, 'status') then return {0} end
redis.call('HSET', key, 'status', 'accepted', 'provider', ARGV[2], 'pmid', ARGV[3], 'upd', now)
redis.call('HDEL', key, 'err')
history(id, now, 'accepted', ARGV[2], '')
return {1}
"""
)

#: ARGV: before, batch.  Forgets up to batch sent messages last changed before ``before``.
PURGE = (
    _COMMON
    + """
local ids = redis.call('ZRANGEBYSCORE', P .. 'sent', '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = P .. 'm:' .. id
  local idem = redis.call('HGET', key, 'idem')
  if idem and redis.call('HGET', P .. 'idem', idem) == id then
    redis.call('HDEL', P .. 'idem', idem)
  end
  redis.call('DEL', key, P .. 'h:' .. id, P .. 'a:' .. id)
  redis.call('ZREM', P .. 'sent', id)
end
return #ids
"""
)


#: ARGV: id, reason, now.  A leased record that cannot be read: a dead letter, for a person.
#: Returns {1} (or {0}: not a hash), then the keys skipped.
DAMAGED = (
    _COMMON
    + """
local id, reason, now = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 'm:' .. id
local leased, dead = zset(P .. 'leased'), zset(P .. 'dead')
if leased then redis.call('ZREM', leased, id) end
if redis.call('TYPE', key).ok ~= 'hash' then return {0, unpack(skipped)} end
redis.call('HSET', key, 'state', 'dead', 'status', 'dead', 'reason', reason, 'upd', now)
redis.call('HDEL', key, 'owner', 'until')
if dead then redis.call('ZADD', dead, now, id) end
history(id, now, 'dead', false, reason)
return {1, unpack(skipped)}
"""
)


def _text(value: float | int | str | None) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _attempt_rows(attempts: Sequence[Attempt]) -> list[str]:
    """Attempts as JSON lists; the scripts put the try number in front."""
    return [encode_json(list(attempt_fields(a))) for a in attempts]


def _json_list(raw: object) -> list[Any] | None:
    """A JSON list stored in a history or attempts list; None when it is not one."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


class RedisOutbox:
    """The outbox in Redis (see the module docstring).

    >>> store = RedisOutbox("redis://127.0.0.1:6379/0", key_prefix="smsroute:")
    >>> await store.counts()          # {'pending': 12, 'leased': 0, 'sent': 3400, 'dead': 1}
    >>> await store.close()
    """

    def __init__(self, url: str, *, key_prefix: str = "smsroute:", timeout: float = 5.0) -> None:
        self.url = redact(url)
        self.prefix = f"{key_prefix}outbox:"
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            # bytes another program left that are not UTF-8: kept, so a record is named
            # damaged instead of every read failing (and written back unchanged)
            encoding_errors="surrogateescape",
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        register = self._client.register_script
        self._enqueue = register(ENQUEUE)
        self._lease = register(LEASE)
        self._renew = register(RENEW)
        self._release = register(RELEASE)
        self._ack = register(ACK)
        self._finish = register(FINISH)
        self._requeue = register(REQUEUE)
        self._receipt = register(RECEIPT)
        self._accepted = register(ACCEPTED)
        self._purge = register(PURGE)
        self._damaged = register(DAMAGED)
        self._closed = False
        #: Index keys found not to be sorted sets and logged at ERROR (then at DEBUG).
        self._told: set[str] = set()

    def __repr__(self) -> str:
        return f"RedisOutbox({self.url!r}, key_prefix={self.prefix[: -len('outbox:')]!r})"

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError(f"the outbox store {self!r} is closed")

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Redis not answering (refused, timed out, a wrong password) as one clear error.

        Also gives back a cancellation redis-py lost: on Python 3.11 its
        ``asyncio.wait_for`` around a socket write returns instead of raising when the
        cancellation arrives as the write completes (gh-86296, see :mod:`smsroute.aio`),
        and the caller's ``task.cancel()`` or ``asyncio.timeout()`` would do nothing.
        The call went through (a script is one transaction): it is raised after it.
        """
        self._check()
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            yield
        except ResponseError as exc:  # Redis answered: the data under the prefix is not ours
            what = "a key of the wrong type" if "WRONGTYPE" in str(exc) else "a value"
            named = re.search(re.escape(self.prefix) + r"\S+", str(exc))  # a script's own error
            if named is not None:
                what += f" ({named.group()})"
            raise OutboxUnavailable(
                f"the outbox in Redis at {self.url} answered with an error about its data: "
                f"{what} under '{self.prefix}' that smsroute did not write (another program, "
                "a manual write, or another smsroute version under the same key_prefix); find "
                f"it with redis-cli --scan --pattern '{self.prefix}*' and TYPE, and delete it, "
                "or give this config a key_prefix of its own"
            ) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise OutboxUnavailable(
                f"the outbox in Redis at {self.url} cannot be reached ({type(exc).__name__}: "
                f"{exc}): start Redis there or fix state.url in the config; the next call "
                "tries again"
            ) from None
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError

    async def _run(self, script: Any, args: Sequence[object]) -> Any:
        with self._reaching():
            return await script(keys=[self.prefix], args=list(args))

    def _answer(self, reply: Any, message_id: str, what: str, then: str) -> bool:
        """A script's ``{code, ...}``: True when it applied (1).  A record that is not a
        hash (-1, its type) and the index keys the script skipped are logged at ERROR:
        ``what`` happened to the message, and ``then`` what follows."""
        code, *rest = reply
        if code == -1:
            kind, *rest = rest
            key = f"{self.prefix}m:{message_id}"
            log.error(
                "outbox: message %s %s: its record %s in Redis at %s is a %s, not a hash "
                "(another program, a manual write or another smsroute version wrote it); %s. "
                "Look at the key (redis-cli TYPE '%s') and delete it.",
                message_id,
                what,
                key,
                self.url,
                records.text(kind),
                then,
                key,
            )
        for key in dict.fromkeys(str(k) for k in rest):
            self._skipped(key, message_id)
        return bool(code == 1)

    def _skipped(self, key: str, message_id: str) -> None:
        """A script left ``key`` (an index or queue that is not a sorted set) alone: say so."""
        name = key.removeprefix(self.prefix)
        if name == "dead":  # each dead letter needs a person: every one is named
            log.error(
                "outbox: message %s is a dead letter, but %s in Redis at %s is not a sorted "
                "set (another program, a manual write or another smsroute version wrote it): "
                "router.dead_letters() cannot list it; requeue it by id "
                "(router.requeue(%r)). Look at the key (redis-cli TYPE '%s') and delete it.",
                message_id,
                key,
                self.url,
                message_id,
                key,
            )
            return
        if key in self._told:
            log.debug("outbox: %s in Redis at %s is still not a sorted set", key, self.url)
            return
        self._told.add(key)
        then = (
            "messages are marked sent without it, so the purge (outbox.retention) cannot "
            "find them; those marked sent meanwhile stay until deleted by hand"
            if name == "sent"
            else "the outbox cannot use it (lease() says so) and went on without it"
        )
        log.error(
            "outbox: %s in Redis at %s is not a sorted set (another program, a manual write or "
            "another smsroute version wrote it): %s. Look at the key (redis-cli TYPE '%s') and "
            "delete it.",
            key,
            self.url,
            then,
            key,
        )

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    # -- writing messages in ---------------------------------------------------------

    async def enqueue(self, item: NewMessage) -> str:
        (found,) = await self.enqueue_many([item])
        return found

    async def enqueue_many(self, items: Sequence[NewMessage]) -> list[str]:
        args: list[object] = [len(items)]
        for item in items:
            m = item.message
            args += [
                item.message_id,
                item.idempotency_key or "",
                item.priority,
                _text(item.due),
                _text(item.expires),
                _text(item.ttl),
                _text(item.enqueued_at),
                m.to,
                m.text,
                m.sender or "",
                m.category,
                encode_json(list(m.tags)) if m.tags else "",
                encode_json(dict(m.metadata)) if m.metadata else "",
            ]
        return [str(i) for i in await self._run(self._enqueue, args)] if items else []

    # -- leases ------------------------------------------------------------------------

    async def lease(self, owner: str, limit: int, now: float, until: float) -> list[QueuedMessage]:
        rows = await self._run(self._lease, [owner, limit, _text(now), _text(until)])
        leased: list[QueuedMessage] = []
        for row in rows:
            mid = records.text(row[0]) or "?"
            if len(row) == 1:
                log.error(
                    "outbox: message %s was in the queue of the outbox in Redis at %s, but its "
                    "record %sm:%s is gone or not a hash: nothing to send. It left the queue; "
                    "look at the key (TYPE) and enqueue the message anew if it is still needed.",
                    mid,
                    self.url,
                    self.prefix,
                    mid,
                )
                continue
            try:
                leased.append(records.queued(*row))
            except RecordDamaged as exc:
                reply = await self._run(self._damaged, [row[0], exc.reason(), _text(now)])
                self._answer(reply, mid, "", "")
                log.error(
                    "outbox: message %s in Redis at %s cannot be sent: %s. It is a dead letter "
                    "now: %s (router.requeue(%r)).",
                    mid,
                    self.url,
                    exc,
                    records.REMEDY,
                    mid,
                )
        return leased

    async def renew(self, owner: str, message_ids: Collection[str], until: float) -> int:
        if not message_ids:
            return 0
        return int(await self._run(self._renew, [owner, _text(until), *message_ids]))

    async def release(self, owner: str, message_ids: Collection[str] | None, now: float) -> int:
        if message_ids is None:
            return int(await self._run(self._release, [owner, "all"]))
        if not message_ids:
            return 0
        return int(await self._run(self._release, [owner, "ids", *message_ids]))

    # -- outcomes ----------------------------------------------------------------------

    async def ack(self, message_id: str, owner: str, result: SendResult, now: float) -> bool:
        # A first provider's acceptance says all there is to say; keep attempts that failed.
        attempts = _attempt_rows(result.attempts) if len(result.attempts) > 1 else []
        args = [message_id, result.provider or "", result.provider_message_id or "", _text(now)]
        return self._answer(
            await self._run(self._ack, [*args, *attempts]),
            message_id,
            "was accepted by a provider but cannot be marked sent",
            "it left the leases, so it is not sent again",
        )

    async def retry(
        self,
        message_id: str,
        owner: str,
        due: float,
        reason: str,
        result: SendResult | None,
        now: float,
    ) -> bool:
        return await self._settle(message_id, owner, "pending", due, reason, result, now)

    async def dead(
        self, message_id: str, owner: str, reason: str, result: SendResult | None, now: float
    ) -> bool:
        return await self._settle(message_id, owner, "dead", None, reason, result, now)

    async def _settle(
        self,
        message_id: str,
        owner: str,
        state: str,
        due: float | None,
        reason: str,
        result: SendResult | None,
        now: float,
    ) -> bool:
        outcome = result.outcome.value if result is not None and result.outcome else ""
        provider = result.attempts[-1].provider if result is not None and result.attempts else ""
        args = [
            message_id,
            owner,
            state,
            _text(due),
            1 if result is not None else 0,
            reason,
            outcome,
            provider,
            _text(now),
            *(_attempt_rows(result.attempts) if result is not None else []),
        ]
        return self._answer(
            await self._run(self._finish, args),
            message_id,
            "was not sent and the outcome cannot be recorded",
            "it left the leases, and there is nothing to send; enqueue the message anew if "
            "it is still needed",
        )

    async def requeue(self, message_id: str, now: float) -> bool:
        return self._answer(
            await self._run(self._requeue, [message_id, _text(now)]),
            message_id,
            "cannot be requeued",
            "nothing changed; enqueue the message anew if it is still needed",
        )

    # -- receipts and status -----------------------------------------------------------

    async def record_receipt(self, report: DeliveryReport, now: float) -> bool:
        if report.message_id is None:
            return False
        ranks = [x for status, rank in RANK.items() for x in (status, rank)]
        args = [
            report.message_id,
            report.status,
            report.provider,
            report.provider_message_id,
            report.error_code or "",
            _text(now),
            _text(report.at.timestamp()),
            *ranks,
        ]
        return self._answer(
            await self._run(self._receipt, args),
            report.message_id,
            "has a delivery receipt that cannot be recorded",
            "the receipt was not kept",
        )

    async def record_accepted(
        self, message_id: str, provider: str, provider_message_id: str | None, now: float
    ) -> bool:
        args = [message_id, provider, provider_message_id or "", _text(now)]
        return self._answer(
            await self._run(self._accepted, args),
            message_id,
            "was resent, and the resend cannot be recorded",
            "the resend was not kept",
        )

    async def recipient(self, message_id: str) -> str | None:
        key = f"{self.prefix}m:{message_id}"
        with self._reaching():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.type(key)
                pipe.hget(key, "to")
                kind, number = await pipe.execute(raise_on_error=False)
        if isinstance(number, Exception):  # a key not smsroute's: not a record
            self._answer([-1, kind], message_id, "has no recipient to read", "it is unknown")
            return None
        return records.text(number)

    async def status(self, message_id: str) -> MessageState | None:
        p = self.prefix
        with self._reaching():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(
                    f"{p}m:{message_id}", ["status", "provider", "pmid", "err", "upd", "enq"]
                )
                pipe.lrange(f"{p}h:{message_id}", 0, -1)
                row, history = await pipe.execute(raise_on_error=False)
        if isinstance(row, Exception) or row[0] is None:  # a key not smsroute's: not a record
            return None
        status, provider, pmid, err, upd, enq = row
        entries = [] if isinstance(history, Exception) else [_json_list(h) for h in history]
        return MessageState(
            message_id=message_id,
            status=records.text(status) or "unknown",
            provider=records.text(provider),
            provider_message_id=records.text(pmid),
            error_code=records.text(err),
            updated_at=records.moment(upd),
            history=(
                ("pending", None, records.moment(enq)),
                *(
                    (records.text(e[1]) or "unknown", records.text(e[2]), records.moment(e[0]))
                    for e in entries
                    if e is not None and len(e) == 4
                ),
            ),
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        p = self.prefix
        with self._reaching():
            ids = [str(i) for i in await self._client.zrevrange(f"{p}dead", 0, limit - 1)]
            if not ids:
                return []
            fields = ["reason", "tries", "outcome", "enq", "upd", "to", "body", "sender", "cat"]
            async with self._client.pipeline(transaction=True) as pipe:
                for message_id in ids:
                    pipe.hmget(f"{p}m:{message_id}", [*fields, "tags", "meta"])
                    pipe.lrange(f"{p}a:{message_id}", 0, -1)
                replies = await pipe.execute(raise_on_error=False)
        out: list[DeadLetter] = []
        for i, message_id in enumerate(ids):
            row, rows = replies[2 * i], replies[2 * i + 1]
            if isinstance(row, Exception) or (row[0] is None and row[5] is None):
                continue  # purged or requeued between the two reads, or not smsroute's
            attempts = []
            for raw in [] if isinstance(rows, Exception) else rows:
                fields_of = _json_list(raw)
                read = records.attempt(fields_of[1:]) if fields_of else None
                if read is not None:  # one another program garbled is left out
                    attempts.append(read)
            out.append(
                DeadLetter(
                    message_id=message_id,
                    message=records.readable_message(*row[5:11]),
                    reason=records.text(row[0]) or "",
                    tries=records.whole(row[1] or 0),
                    attempts=tuple(attempts),
                    outcome=records.outcome(row[2]),
                    enqueued_at=records.moment(row[3]),
                    dead_at=records.moment(row[4]),
                )
            )
        return out

    async def next_due(self) -> float | None:
        with self._reaching():
            async with self._client.pipeline(transaction=False) as pipe:
                for level in PRIORITY_LEVELS:
                    pipe.zrange(f"{self.prefix}pending:{level}", 0, 0, withscores=True)
                heads = await pipe.execute()
        dues = [float(head[0][1]) for head in heads if head]
        return min(dues) if dues else None

    async def counts(self) -> Mapping[State, int]:
        p = self.prefix
        with self._reaching():
            async with self._client.pipeline(transaction=True) as pipe:
                for level in PRIORITY_LEVELS:
                    pipe.zcard(f"{p}pending:{level}")
                for state in ("leased", "sent", "dead"):
                    pipe.zcard(f"{p}{state}")
                *pending, leased, sent, dead = await pipe.execute()
        return {"pending": sum(pending), "leased": leased, "sent": sent, "dead": dead}

    async def purge(self, before: float) -> int:
        purged = 0
        while True:
            n = int(await self._run(self._purge, [_text(before), PURGE_BATCH]))
            purged += n
            if n < PURGE_BATCH:
                return purged
