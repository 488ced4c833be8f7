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

What a message costs here is kept small, because every message of a guarded category
makes one (issue 19: "the Redis state keeps its ratio"): a :class:`~smsroute.guardcounts.Lane`
(the messages of one category, rule and country) is packed into the script's arguments
once per budget period (:class:`_Spec`), and a message adds one argument, ``<lane> <time>
<hashed numbers and prefixes> <member>``; the script answers a message that passed with
nothing to report by an empty string, and the lane once per batch (its provider spends,
the anomaly counts).  The batch goes over a connection of its own
(:class:`~smsroute.state.redis_link.Channel`): one write, one read.

While Redis is down, checks are answered by a :class:`MemoryGuardCounts` in this
process (each replica counts alone), and spend waits to be written when Redis is back.
``explain`` reads the counts in Redis with a blocking call (:meth:`RedisGuardCounts.peek`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from smsroute.guardcounts import AnomalyQuery, GuardAnswer, GuardQuery, Lane, MemoryGuardCounts
from smsroute.state.redis_link import Channel, resp

if TYPE_CHECKING:
    from smsroute.state.redis_shared import SharedBackend

log = logging.getLogger("smsroute.state")

#: Prefix hashes remembered (prefixes repeat; numbers rarely do).
PREFIXES_MAX = 50_000
#: Spend totals remembered (for BudgetSpent events between two script calls).
SEEN_MAX = 100_000
#: Seconds a replica's spend may wait for a batch of checks to carry it to Redis
#: (other replicas see it this much later: a cap is overrun by at most what the
#: replica accepts meanwhile).
SPEND_DELAY = 0.01

#: ARGV: mode ('check': answer and count; 'peek': answer, change nothing; 'back': take
#: the queries' members out of their velocity logs), n spends, n x (key, amount, ttl
#: ms), n lanes, per lane: n caps, n x (key, limit), n spends read, keys, has anomaly
#: (0/1) [key, since key, window, baseline, slot, factor, min count, blocks (0/1)], n
#: velocity, n x (key prefix, window, max, ident or '': the query's next), then n
#: queries, each one string: '<lane> <now> <ident>... <member>'.
#: Returns {spend totals, per lane {spends read, tripped, recent, base} (the anomaly
#: as its last query in the batch saw it; recent -1: none did), per query '' (passed,
#: nothing to report; always reported when peeking) or '<refused or -> <index> <count>
#: <tripped> <recent> <base> <velocity counts...>'}.
GUARDS = """
local mode = ARGV[1]
local commit = mode == 'check'
local i = 2
local totals = {}
local nspend = tonumber(ARGV[i]); i = i + 1
for s = 1, nspend do
  totals[s] = redis.call('INCRBYFLOAT', ARGV[i], ARGV[i + 1])
  redis.call('PEXPIRE', ARGV[i], ARGV[i + 2])
  i = i + 3
end
local lanes, lanes_out = {}, {}
local nl = tonumber(ARGV[i]); i = i + 1
for l = 1, nl do
  local lane = {caps = {}, v = {}, free = 0, recent = -1, tripped = 0, base = 0}
  local ncaps = tonumber(ARGV[i]); i = i + 1
  for c = 1, ncaps do
    lane.caps[c] = {ARGV[i], tonumber(ARGV[i + 1])}
    i = i + 2
  end
  local spends = {}
  local nread = tonumber(ARGV[i]); i = i + 1
  for r = 1, nread do
    spends[r] = redis.call('GET', ARGV[i]) or '0'
    i = i + 1
  end
  lane.spends = spends
  if ARGV[i] == '1' then
    lane.a = {key = ARGV[i + 1], since = ARGV[i + 2], window = tonumber(ARGV[i + 3]),
              baseline = tonumber(ARGV[i + 4]), slot = tonumber(ARGV[i + 5]),
              factor = tonumber(ARGV[i + 6]), mincount = tonumber(ARGV[i + 7]),
              blocks = ARGV[i + 8] == '1'}
    i = i + 9
  else
    i = i + 1
  end
  local nv = tonumber(ARGV[i]); i = i + 1
  for v = 1, nv do
    if ARGV[i + 3] == '' then lane.free = lane.free + 1 end
    lane.v[v] = {ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]}
    i = i + 4
  end
  lanes[l] = lane
end
local out = {}
local nq = tonumber(ARGV[i]); i = i + 1
for q = 1, nq do
  local s = ARGV[i]; i = i + 1
  local e = string.find(s, ' ', 1, true)
  local lane = lanes[tonumber(string.sub(s, 1, e - 1))]
  local pos = e + 1
  e = string.find(s, ' ', pos, true)
  local now = tonumber(string.sub(s, pos, e - 1)); pos = e + 1
  local keys, f = {}, 0
  for v, lim in ipairs(lane.v) do
    local ident = lim[4]
    if ident == '' then
      e = string.find(s, ' ', pos, true)
      ident = string.sub(s, pos, e - 1); pos = e + 1
    end
    keys[v] = lim[1] .. ident
  end
  local member = string.sub(s, pos)
  if mode == 'back' then
    for v = 1, #keys do redis.call('ZREM', keys[v], member) end
    out[q] = ''
  else
    local refused, index, count = '-', 0, '0'
    for c, cap in ipairs(lane.caps) do
      local spent = tonumber(redis.call('GET', cap[1]) or '0')
      if spent >= cap[2] then
        refused = 'budget'; index = c - 1; count = string.format('%.17g', spent)
        break
      end
    end
    local tripped, recent, base = 0, 0, 0
    local a, slot = lane.a, 0
    if a and refused == '-' then
      slot = math.floor(now / a.slot)
      local since
      if commit then
        redis.call('HINCRBY', a.key, 'r' .. slot, 1)
        redis.call('SET', a.since, string.format('%.6f', now), 'NX')
        redis.call('PEXPIRE', a.since, math.ceil(4 * (a.window + a.baseline) * 1000))
        since = tonumber(redis.call('GET', a.since))
      else
        since = tonumber(redis.call('GET', a.since) or now)
      end
      local nb = math.floor(a.baseline / a.slot + 0.5)
      local fields = {}
      for n = slot - 4, slot do fields[#fields + 1] = 'r' .. n end
      for n = slot - 4 - nb, slot - 5 do fields[#fields + 1] = 'p' .. n end
      local values = redis.call('HMGET', a.key, unpack(fields))
      for n = 1, #fields do
        local value = tonumber(values[n] or '0')
        if n <= 5 then recent = recent + value else base = base + value end
      end
      if commit then
        redis.call('PEXPIRE', a.key, math.ceil((a.window + a.baseline + 2 * a.slot) * 1000))
        if redis.call('HLEN', a.key) > 2 * (nb + 10) then
          for _, name in ipairs(redis.call('HKEYS', a.key)) do
            local n = tonumber(string.sub(name, 2))
            if n and n < slot - 5 - nb then redis.call('HDEL', a.key, name) end
          end
        end
      else
        recent = recent + 1  -- as a check would count this message
      end
      if now - since >= a.baseline and recent >= a.mincount
          and recent * a.baseline > a.factor * base * a.window then
        tripped = 1
        if a.blocks then refused = 'anomaly'; count = tostring(recent) end
      end
      lane.tripped, lane.recent, lane.base = tripped, recent, base
    end
    local counts = {}
    if refused == '-' then
      for v, lim in ipairs(lane.v) do
        local key, window, most = keys[v], lim[2], lim[3]
        if commit then redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window) end
        local n = redis.call('ZCOUNT', key, '(' .. (now - window), '+inf')
        if n >= most then
          refused = 'velocity'; index = v - 1; count = tostring(n); counts[#counts + 1] = n
          break
        end
        counts[#counts + 1] = n + 1
      end
    end
    if refused == '-' and commit then
      for v, lim in ipairs(lane.v) do
        redis.call('ZADD', keys[v], now, member)
        redis.call('PEXPIRE', keys[v], math.ceil(lim[2] * 1000) + 1000)
      end
      if a then redis.call('HINCRBY', a.key, 'p' .. slot, 1) end
    end
    if refused == '-' and tripped == 0 and commit then
      out[q] = ''
    else
      out[q] = refused .. ' ' .. index .. ' ' .. count .. ' ' .. tripped .. ' ' .. recent
               .. ' ' .. base .. ' ' .. table.concat(counts, ' ')
    end
  end
end
for l = 1, nl do
  local lane = lanes[l]
  lanes_out[l] = {lane.spends, lane.tripped, lane.recent, lane.base}
end
return {totals, lanes_out, out}
"""


def _hashed(ident: str) -> str:
    """A number or prefix (or country) hashed: Redis never sees the digits."""
    return hashlib.blake2b(ident.encode(), digest_size=12).hexdigest()


def _num(value: float) -> bytes:
    return repr(value).encode()


class _Spec:
    """One lane's (or one unusual query's) part of the script's arguments, packed.

    ``free`` says how a message's idents are found: (0 its number / 1 its prefix, the
    prefix's end) per velocity limit whose ident is not fixed (a country's is)."""

    __slots__ = (
        "anomaly", "count", "free", "lane", "names", "owner", "packed", "query", "start", "until"
    )  # fmt: skip

    def __init__(
        self,
        owner: RedisGuardCounts,
        caps: Sequence[tuple[str, float]],
        reads: Sequence[str],
        names: tuple[str, ...],
        anomaly: AnomalyQuery | None,
        velocity: Sequence[tuple[str, str | None, float, int]],
        free: tuple[tuple[int, int], ...],
    ) -> None:
        prefix = owner.prefix
        fields: list[bytes] = [b"%d" % len(caps)]
        for key, limit in caps:
            fields += [(prefix + key).encode(), _num(limit)]
        fields.append(b"%d" % len(reads))
        fields += [(prefix + key).encode() for key in reads]
        if anomaly is None:
            fields.append(b"0")
        else:
            a = anomaly
            fields += [
                b"1",
                (prefix + a.key).encode(),
                (prefix + a.armed_key).encode(),
                _num(a.window),
                _num(a.baseline),
                _num(a.slot),
                _num(a.factor),
                b"%d" % a.min_count,
                b"1" if a.blocks else b"0",
            ]
        fields.append(b"%d" % len(velocity))
        for key, ident, window, most in velocity:
            fixed = b"" if ident is None else _hashed(ident).encode()
            fields += [(prefix + key).encode(), _num(window), b"%d" % most, fixed]
        self.owner = owner
        self.packed = resp(fields)
        self.count = len(fields)
        #: The names of the provider budgets read (their spends answer in this order).
        self.names = names
        self.anomaly = anomaly
        self.free = free
        #: The clock's span in which the budget keys packed here are current.
        self.start, self.until = float("-inf"), float("inf")
        self.lane: Lane | None = None
        #: The query the spec was made of (an unusual message's, see check()).
        self.query: GuardQuery | None = None


class RedisGuardCounts:
    """:class:`~smsroute.guardcounts.SharedGuardCounts` in Redis, checks batched."""

    def __init__(self, backend: SharedBackend) -> None:
        self._backend = backend
        self.prefix = f"{backend.settings.key_prefix}guard:"
        self._channel = Channel(backend.link, "guards", GUARDS)
        #: Answers checks while Redis is down.
        self.local = MemoryGuardCounts()
        self.tripped: dict[str, bool] = {}
        #: (spec, '<time> <idents> <member>', its answer, the number; None: a query).
        self._pending: list[tuple[_Spec, str, asyncio.Future[GuardAnswer], str | None]] = []
        #: Spend not yet written: key -> [amount, ttl seconds].
        self._unwritten: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self._prefixes: dict[str, str] = {}
        #: The spend totals Redis answered last: key -> total.
        self._seen: dict[str, float] = {}

    # -- the guards' side ------------------------------------------------------------

    def ask(self, lane: Lane, e164: str, member: str, now: float) -> asyncio.Future[GuardAnswer]:
        """Check and count a message of ``lane`` to ``e164`` with the next batch."""
        future: asyncio.Future[GuardAnswer] = asyncio.get_running_loop().create_future()
        if not self._backend.link.up:
            future.set_result(self.local.evaluate(self._lane_query(lane, e164, member, now), True))
            return future
        spec = lane.shared
        if spec is None or spec.owner is not self or not spec.start <= now < spec.until:
            spec = self._lane_spec(lane, now)
        idents = []
        for kind, end in spec.free:
            if kind == 0:
                idents.append(_hashed(e164))
            else:
                part = e164[1:end]
                hashed = self._prefixes.get(part)
                if hashed is None:
                    if len(self._prefixes) > PREFIXES_MAX:
                        self._prefixes.clear()
                    hashed = self._prefixes[part] = _hashed(part)
                idents.append(hashed)
        self._seq += 1
        self._pending.append(
            (spec, f"{now!r} {' '.join(idents)} {member}:{self._seq}", future, e164)
        )
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return future

    async def check(self, query: GuardQuery) -> GuardAnswer:
        """Answer ``query`` (any message: tag budgets, an override) with the next batch."""
        if not self._backend.link.up:
            return self.local.evaluate(query, True)
        future: asyncio.Future[GuardAnswer] = asyncio.get_running_loop().create_future()
        self._seq += 1
        spec = self._query_spec(query)
        self._pending.append((spec, f"{query.now!r} {query.member}:{self._seq}", future, None))
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return await future

    def spend(self, keys: Sequence[tuple[str, float]], amount: float, now: float) -> list[float]:
        """Add ``amount`` to each key's spend; written with the next batch of checks, or
        on its own after :data:`SPEND_DELAY` (the totals returned count what Redis said
        last and this replica's spend since)."""
        out = []
        up = self._backend.link.up
        seen = self._seen
        for key, ttl in keys:
            entry = self._unwritten.get(key)
            if entry is None:
                self._unwritten[key] = [amount, ttl]
            else:
                entry[0] += amount
                entry[1] = max(entry[1], ttl)
            if not up:
                self.local.add_spend(key, amount, now + ttl)
            total = seen[key] = seen.get(key, 0.0) + amount
            out.append(total)
        if up and self._task is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SPEND_DELAY, self._flush)
        return out

    def _flush(self) -> None:
        """Write the spend no batch has carried since :data:`SPEND_DELAY`."""
        self._timer = None
        if self._unwritten and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def peek(self, query: GuardQuery) -> GuardAnswer:
        """What a check would answer now, changing nothing: read in Redis with a blocking
        call (at most ``state.timeout``; for ``explain``), or in this process's counts
        while Redis is down."""
        if not self._backend.link.up:
            return self.local.peek(query)
        spec = self._query_spec(query)
        args = [b"peek", b"0", b"1", *self._unpacked(spec), b"1", f"1 {query.now!r} peek".encode()]

        def call(client: Any) -> Any:
            return client.register_script(GUARDS)(keys=[], args=args)

        reply = self._backend.link.run_now("guards", call)
        if reply is None:
            return self.local.peek(query)
        _, lanes, outs = reply
        spends = tuple(float(s) for s in lanes[0][0])
        return self._answer(outs[0], spends)

    # -- the specs -------------------------------------------------------------------

    def _lane_spec(self, lane: Lane, now: float) -> _Spec:
        """``lane``'s spec for the budget periods ``now`` falls in (kept on the lane)."""
        keys = [sk.at(now) for sk in lane.budgets]
        n = lane.ncaps
        spec = _Spec(
            self,
            [(key, sk.limit) for key, sk in zip(keys[:n], lane.budgets[:n], strict=True)],
            keys[n:],
            tuple(sk.budget.name for sk in lane.budgets[n:]),
            lane.anomaly,
            [
                (key, lane.country if kind == 2 else None, window, most)
                for key, kind, _, window, most in lane.velocity
            ],
            tuple((kind, end) for _, kind, end, _, _ in lane.velocity if kind != 2),
        )
        if lane.budgets:
            spec.start = max(sk.start for sk in lane.budgets)
            spec.until = min(sk.end for sk in lane.budgets)
        spec.lane = lane
        lane.shared = spec
        return spec

    def _query_spec(self, query: GuardQuery) -> _Spec:
        spec = _Spec(
            self,
            query.caps,
            query.spends,
            (),
            query.anomaly,
            [(key, ident, window, most) for key, ident, window, most in query.velocity],
            (),
        )
        spec.query = query
        return spec

    @staticmethod
    def _unpacked(spec: _Spec) -> list[bytes]:
        """The spec's fields one by one (for a client that packs them itself)."""
        out, data, pos = [], spec.packed, 0
        while pos < len(data):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : end])
            out.append(data[end + 2 : end + 2 + size])
            pos = end + 4 + size
        return out

    def _lane_query(self, lane: Lane, e164: str, member: str, now: float) -> GuardQuery:
        """The query of a lane's message, for the counts in this process."""
        return GuardQuery(
            now,
            member,
            [(sk.at(now), sk.limit) for sk in lane.budgets[: lane.ncaps]],
            [sk.at(now) for sk in lane.budgets[lane.ncaps :]],
            lane.anomaly,
            [
                (key, e164 if kind == 0 else e164[1:end] if kind == 1 else lane.country, w, most)
                for key, kind, end, w, most in lane.velocity
            ],
        )

    # -- the batches -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._pending or self._unwritten:
                batch, self._pending = self._pending, []
                try:
                    answers = await self._call(batch)
                except Exception:  # a bug must not leave sends waiting
                    log.exception("smsroute: checking guards in Redis failed")
                    answers = None
                given_back: list[tuple[_Spec, str]] = []
                for i, (spec, text, future, e164) in enumerate(batch):
                    if future.done():  # its send was cancelled while it waited
                        if answers is not None and answers[i].refused is None:
                            given_back.append((spec, text))
                        continue
                    future.set_result(
                        answers[i] if answers is not None else self._local(spec, text, e164)
                    )
                if given_back:
                    await self._give_back(given_back)
                if answers is None:  # Redis is down: checks go local; spend waits for it
                    waiting, self._pending = self._pending, []
                    for spec, text, future, e164 in waiting:
                        if not future.done():
                            future.set_result(self._local(spec, text, e164))
                    return
        finally:
            self._task = None

    def _local(self, spec: _Spec, text: str, e164: str | None) -> GuardAnswer:
        """The answer of the counts in this process (Redis is down)."""
        now_text, _, rest = text.partition(" ")
        member = rest.rpartition(" ")[2]
        if spec.query is not None:
            return self.local.evaluate(spec.query, True)
        assert spec.lane is not None
        assert e164 is not None
        return self.local.evaluate(self._lane_query(spec.lane, e164, member, float(now_text)), True)

    def _pack(
        self,
        mode: bytes,
        spends: dict[str, list[float]],
        batch: Sequence[tuple[_Spec, str, Any, Any]],
    ) -> tuple[list[bytes], int]:
        """The script's arguments (packed) for writing ``spends`` and answering ``batch``
        in ``mode``, and how many there are."""
        prefix = self.prefix
        head = [mode, b"%d" % len(spends)]
        for key, (amount, ttl) in spends.items():
            head += [(prefix + key).encode(), _num(amount), b"%d" % (int(ttl * 1000) + 1)]
        lanes: dict[int, int] = {}
        specs: list[bytes] = []
        count = 0
        texts = []
        for spec, text, _, _ in batch:
            n = lanes.get(id(spec))
            if n is None:
                n = lanes[id(spec)] = len(lanes) + 1
                specs.append(spec.packed)
                count += spec.count
            texts.append(f"{n} {text}".encode())
        head.append(b"%d" % len(lanes))
        tail = resp([b"%d" % len(texts), *texts])
        return [resp(head), *specs, tail], len(head) + count + 1 + len(texts)

    async def _call(self, batch: list[tuple[_Spec, str, Any, Any]]) -> list[GuardAnswer] | None:
        unwritten, self._unwritten = self._unwritten, {}
        parts, count = self._pack(b"check", unwritten, batch)
        reply = await self._channel.evalsha(parts, count)
        if reply is None:
            for key, (amount, ttl) in unwritten.items():  # written when Redis is back
                entry = self._unwritten.setdefault(key, [0.0, ttl])
                entry[0] += amount
            return None
        totals, lanes, outs = reply
        seen = self._seen
        if len(seen) > SEEN_MAX:
            seen.clear()
        for key, total in zip(unwritten, totals, strict=True):
            seen[key] = float(total)
        # one answer per lane for its messages that passed with nothing to report
        passed = [
            GuardAnswer(None, 0, 0.0, tuple([float(s) for s in spends]), False, recent, base)
            for spends, _, recent, base in lanes
        ]
        order: dict[int, int] = {}
        answers = []
        for (spec, _, _, _), text in zip(batch, outs, strict=True):
            n = order.get(id(spec))
            if n is None:
                n = order[id(spec)] = len(order)
            answer = passed[n]
            answers.append(self._answer(text, answer.spends) if text else answer)
        return answers

    @staticmethod
    def _answer(text: str, spends: tuple[float, ...]) -> GuardAnswer:
        refused, index, count, tripped, recent, base, *counts = text.split(" ")
        return GuardAnswer(
            None if refused == "-" else refused,
            int(index),
            float(count),
            spends,
            tripped == "1",
            int(recent),
            int(base),
            tuple(int(c) for c in counts if c),
        )

    async def _give_back(self, entries: list[tuple[_Spec, str]]) -> None:
        """Take cancelled sends' times out of the velocity windows: a send cancelled while
        its check waited for Redis counts for nothing (the anomaly guard's request count
        keeps it: it counts requests, refused ones included)."""
        parts, count = self._pack(b"back", {}, [(spec, text, None, None) for spec, text in entries])
        await self._channel.evalsha(parts, count)

    async def aclose(self) -> None:
        """Let the batch under way (and the spend it writes) finish, briefly; close the
        batches' connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._flush()
        task = self._task
        if task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(1.0, 2 * self._backend.settings.timeout)):
                    await asyncio.shield(task)
        await self._channel.aclose()
