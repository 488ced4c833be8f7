"""The guards' counts shared by every replica: sliding logs, anomaly slots and spend in Redis.

A guard's check must see every replica's messages, so each check is answered in Redis
by one script (:data:`GUARDS`) that applies the rules of :mod:`smsroute.guardcounts`
atomically: budgets at their cap, the anomaly slots, the velocity logs, then the
counting.  Checks are batched: the messages that reach the guards while a script call
is under way wait for the next one, which carries them all (and the spend of messages
accepted meanwhile), so a busy router makes one round trip per batch, not per message.

    P guard:v|<scope>|<per>|<window>|<hash>   zset   send times (score) of the last max messages
    P guard:a|<scope>|<window>|<baseline>|CC  hash   r<slot>: requests, p<slot>: passed messages
    P guard:a|<scope>|since                   str    when the category was first counted
    P guard:b|<scope:name>|<per>|<period>     str    spend of the period (expires after it)

Numbers and prefixes appear in keys only hashed (BLAKE2b).  Times are the replicas'
wall clocks (UTC epoch seconds), which must agree (NTP) to well within a window.

While Redis is down, checks are answered by a :class:`MemoryGuardCounts` in this
process (each replica counts alone), and spend waits to be written when Redis is back.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from smsroute.guardcounts import GuardAnswer, GuardQuery, MemoryGuardCounts

if TYPE_CHECKING:
    from smsroute.state.redis_shared import SharedBackend

log = logging.getLogger("smsroute.state")

#: Counts remembered for explain() before the memory is cleared.
SEEN_MAX = 100_000

#: ARGV: n spends, n x (key, amount, ttl ms), n queries, per query: now, member,
#: n caps, n x (key, limit), n spends read, keys, has anomaly (0/1) [key, since key,
#: window, baseline, slot, factor, min count, blocks (0/1)], n velocity, n x (key,
#: window, max).  Returns {spend totals, per query {refused or '', index, count,
#: spends, tripped, recent, baseline, velocity counts}}.
GUARDS = """
local i = 1
local totals = {}
local nspend = tonumber(ARGV[i]); i = i + 1
for s = 1, nspend do
  totals[s] = redis.call('INCRBYFLOAT', ARGV[i], ARGV[i + 1])
  redis.call('PEXPIRE', ARGV[i], ARGV[i + 2])
  i = i + 3
end
local out = {}
local nq = tonumber(ARGV[i]); i = i + 1
for q = 1, nq do
  local now = tonumber(ARGV[i]); local member = ARGV[i + 1]; i = i + 2
  local refused, index, count = '', 0, '0'
  local ncaps = tonumber(ARGV[i]); i = i + 1
  for c = 1, ncaps do
    if refused == '' then
      local spent = tonumber(redis.call('GET', ARGV[i]) or '0')
      if spent >= tonumber(ARGV[i + 1]) then
        refused = 'budget'; index = c - 1; count = string.format('%.17g', spent)
      end
    end
    i = i + 2
  end
  local spends = {}
  local nread = tonumber(ARGV[i]); i = i + 1
  for s = 1, nread do
    spends[s] = redis.call('GET', ARGV[i]) or '0'
    i = i + 1
  end
  local tripped, recent, base = 0, 0, 0
  local hasa = tonumber(ARGV[i]); i = i + 1
  local akey, slot
  if hasa == 1 then
    akey = ARGV[i]
    local since_key = ARGV[i + 1]
    local window, baseline = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local slotlen, factor = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
    local mincount, blocks = tonumber(ARGV[i + 6]), ARGV[i + 7] == '1'
    i = i + 8
    if refused == '' then
      slot = math.floor(now / slotlen)
      redis.call('HINCRBY', akey, 'r' .. slot, 1)
      redis.call('SET', since_key, string.format('%.6f', now), 'NX')
      redis.call('PEXPIRE', since_key, math.ceil(4 * (window + baseline) * 1000))
      local since = tonumber(redis.call('GET', since_key))
      local nb = math.floor(baseline / slotlen + 0.5)
      local fields = {}
      for s = slot - 4, slot do fields[#fields + 1] = 'r' .. s end
      for s = slot - 4 - nb, slot - 5 do fields[#fields + 1] = 'p' .. s end
      local values = redis.call('HMGET', akey, unpack(fields))
      for f = 1, #fields do
        local v = tonumber(values[f] or '0')
        if f <= 5 then recent = recent + v else base = base + v end
      end
      redis.call('PEXPIRE', akey, math.ceil((window + baseline + 2 * slotlen) * 1000))
      if redis.call('HLEN', akey) > 2 * (nb + 10) then
        for _, name in ipairs(redis.call('HKEYS', akey)) do
          local n = tonumber(string.sub(name, 2))
          if n and n < slot - 5 - nb then redis.call('HDEL', akey, name) end
        end
      end
      if now - since >= baseline and recent >= mincount
          and recent * baseline > factor * base * window then
        tripped = 1
        if blocks then refused = 'anomaly'; count = tostring(recent) end
      end
    end
  end
  local counts = {}
  local nv = tonumber(ARGV[i]); i = i + 1
  local first = i
  for v = 1, nv do
    if refused == '' then
      local key, window, most = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
      local n = redis.call('ZCARD', key)
      if n >= most then
        refused = 'velocity'; index = v - 1; count = tostring(n); counts[#counts + 1] = n
      else
        counts[#counts + 1] = n + 1
      end
    end
    i = i + 3
  end
  if refused == '' then
    for v = 1, nv do
      local j = first + (v - 1) * 3
      redis.call('ZADD', ARGV[j], now, member)
      redis.call('PEXPIRE', ARGV[j], math.ceil(tonumber(ARGV[j + 1]) * 1000) + 1000)
    end
    if hasa == 1 then redis.call('HINCRBY', akey, 'p' .. slot, 1) end
  end
  out[q] = {refused, index, count, spends, tripped, recent, base, counts}
end
return {totals, out}
"""


def _hashed(ident: str) -> str:
    """A number or prefix (or country) hashed: Redis never sees the digits."""
    return hashlib.blake2b(ident.encode(), digest_size=12).hexdigest()


class RedisGuardCounts:
    """:class:`~smsroute.guardcounts.GuardCounts` shared through Redis, checks batched."""

    def __init__(self, backend: SharedBackend) -> None:
        self._backend = backend
        self._prefix = f"{backend.settings.key_prefix}guard:"
        self._script = backend.link.script(GUARDS)
        #: Answers checks while Redis is down.
        self.local = MemoryGuardCounts()
        self.tripped: dict[str, bool] = {}
        self._pending: list[tuple[GuardQuery, asyncio.Future[GuardAnswer]]] = []
        #: Spend not yet written: key -> [amount, ttl seconds].
        self._unwritten: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._seq = 0
        #: What Redis said last, for peek(): key -> (count or spend, when).
        self._seen: dict[str, tuple[float, float]] = {}
        self._anomaly_seen: dict[str, tuple[int, int, bool]] = {}

    # -- the guards' side ------------------------------------------------------------

    async def check(self, query: GuardQuery) -> GuardAnswer:
        """Answer ``query`` in Redis with the other checks waiting now (one script call)."""
        if not self._backend.link.up:
            return self.local.evaluate(query, True)
        future: asyncio.Future[GuardAnswer] = asyncio.get_running_loop().create_future()
        self._pending.append((query, future))
        self._start()
        return await future

    def spend(self, keys: Sequence[tuple[str, float]], amount: float, now: float) -> list[float]:
        """Add ``amount`` to each key's spend; written with the next script call."""
        out = []
        for key, ttl in keys:
            entry = self._unwritten.get(key)
            if entry is None:
                self._unwritten[key] = [amount, ttl]
            else:
                entry[0] += amount
                entry[1] = max(entry[1], ttl)
            if not self._backend.link.up:
                self.local.add_spend(key, amount, now + ttl)
            seen = self._seen.get(key)
            total = (seen[0] if seen is not None else 0.0) + amount
            self._seen[key] = (total, now)
            out.append(total)
        if self._backend.link.up:
            self._start()
        return out

    def peek(self, query: GuardQuery) -> GuardAnswer:
        """What the last answers from Redis say, changing nothing (for explain)."""
        if not self._backend.link.up:
            return self.local.peek(query)
        seen = self._seen
        for i, (key, limit) in enumerate(query.caps):
            spent = seen.get(key, (0.0, 0.0))[0]
            if spent >= limit:
                return GuardAnswer("budget", i, spent)
        spends = tuple(seen.get(k, (0.0, 0.0))[0] for k in query.spends)
        recent = base = 0
        tripped = False
        a = query.anomaly
        if a is not None:
            recent, base, tripped = self._anomaly_seen.get(a.key, (0, 0, False))
            recent += 1
            if tripped and a.blocks:
                return GuardAnswer("anomaly", 0, recent, spends, True, recent, base)
        counts: list[int] = []
        for i, (key, ident, window, most) in enumerate(query.velocity):
            count, at = seen.get(key + ident, (0.0, 0.0))
            n = int(count) if query.now - at < window else 0
            if n >= most:
                return GuardAnswer("velocity", i, n, spends, tripped, recent, base, (*counts, n))
            counts.append(n + 1)
        return GuardAnswer(None, 0, 0.0, spends, tripped, recent, base, tuple(counts))

    # -- the batches -----------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self._pending or self._unwritten:
                batch, self._pending = self._pending, []
                members: list[str] = []
                try:
                    answers = await self._call(batch, members)
                except Exception:  # a bug must not leave sends waiting
                    log.exception("smsroute: checking guards in Redis failed")
                    answers = None
                given_back: list[tuple[str, str]] = []
                for i, (query, future) in enumerate(batch):
                    if future.done():  # its send was cancelled while it waited
                        if answers is not None and answers[i].refused is None:
                            given_back += self._counted(query, members[i])
                        continue
                    future.set_result(
                        answers[i] if answers is not None else self.local.evaluate(query, True)
                    )
                if given_back:
                    await self._give_back(given_back)
                if answers is None:  # Redis is down: checks go local; spend waits for it
                    waiting, self._pending = self._pending, []
                    for query, future in waiting:
                        if not future.done():
                            future.set_result(self.local.evaluate(query, True))
                    return
        finally:
            self._task = None

    def _counted(self, query: GuardQuery, member: str) -> list[tuple[str, str]]:
        """The (velocity key, member) entries the script added for ``query``."""
        prefix = self._prefix
        return [(prefix + key + _hashed(ident), member) for key, ident, _, _ in query.velocity]

    async def _give_back(self, entries: list[tuple[str, str]]) -> None:
        """Take a cancelled send's entries out of the velocity windows: a send cancelled
        while its check waited for Redis counts for nothing (the anomaly guard's
        request count keeps it: it counts requests, refused ones included)."""
        client = self._backend.link.client

        async def remove() -> None:
            pipe = client.pipeline(transaction=False)
            for key, member in entries:
                pipe.zrem(key, member)
            await pipe.execute()

        await self._backend.link.run("guards", remove)

    async def _call(
        self, batch: list[tuple[GuardQuery, Any]], members: list[str]
    ) -> list[GuardAnswer] | None:
        prefix = self._prefix
        unwritten, self._unwritten = self._unwritten, {}
        args: list[Any] = [len(unwritten)]
        for key, (amount, ttl) in unwritten.items():
            args += [prefix + key, repr(amount), int(ttl * 1000) + 1]
        args.append(len(batch))
        for query, _ in batch:
            self._seq += 1
            member = f"{query.member}:{self._seq}"
            members.append(member)
            args += [repr(query.now), member, len(query.caps)]
            for key, limit in query.caps:
                args += [prefix + key, repr(limit)]
            args.append(len(query.spends))
            args += [prefix + key for key in query.spends]
            a = query.anomaly
            if a is None:
                args.append(0)
            else:
                args += [
                    1,
                    prefix + a.key,
                    prefix + a.armed_key,
                    repr(a.window),
                    repr(a.baseline),
                    repr(a.slot),
                    repr(a.factor),
                    a.min_count,
                    1 if a.blocks else 0,
                ]
            args.append(len(query.velocity))
            for key, ident, window, most in query.velocity:
                args += [prefix + key + _hashed(ident), repr(window), most]
        call = functools.partial(self._script, keys=[], args=args)
        reply = await self._backend.link.run("guards", call)
        if reply is None:
            for key, (amount, ttl) in unwritten.items():  # written when Redis is back
                entry = self._unwritten.setdefault(key, [0.0, ttl])
                entry[0] += amount
            return None
        totals, outs = reply
        seen = self._seen
        if len(seen) > SEEN_MAX:
            seen.clear()
            self._anomaly_seen.clear()
        for key, total in zip(unwritten, totals, strict=True):
            seen[key] = (float(total), batch[0][0].now if batch else 0.0)
        answers = []
        for (query, _), out in zip(batch, outs, strict=True):
            refused, index, count, spends, tripped, recent, base, counts = out
            answer = GuardAnswer(
                refused or None,
                int(index),
                float(count),
                tuple(float(s) for s in spends),
                bool(tripped),
                int(recent),
                int(base),
                tuple(int(c) for c in counts),
            )
            answers.append(answer)
            now = query.now
            for key, spent in zip(query.spends, answer.spends, strict=True):
                seen[key] = (spent, now)
            for (key, ident, _, _), n in zip(query.velocity, answer.counts, strict=False):
                seen[key + ident] = (float(n), now)
            if query.anomaly is not None and answer.refused != "budget":
                self._anomaly_seen[query.anomaly.key] = (answer.recent, answer.base, answer.tripped)
        return answers
