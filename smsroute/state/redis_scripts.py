"""The Lua scripts that change shared state in Redis, each one atomic.

Every time in Redis is absolute: seconds since the epoch on the Redis
server's clock, read with ``TIME`` inside the script.  No replica's own clock
is ever written, so replicas whose monotonic clocks differ agree on when a
breaker reopens or when a rate-limit slot comes.  Times travel as strings
(Lua numbers would be truncated to integers in a reply).

Keys, all under the config's ``key_prefix`` (``P``)::

    P breakers              hash  "provider|country" -> "version,state,opens,reopen_at"
    P breakers:version      int   bumped on every breaker write: a sync skips the hash when unchanged
    P replicas              zset  replica id -> last sync (Redis time): live replicas
    P rate:<provider>       str   GCRA theoretical arrival time of the provider's next slot
    P pause:<provider>      str   Retry-After: no slot before this time (expires by itself)
    P health:<id>:<slot>    hash  ok fail lat latn dlv und ttd ttdn, per time slot (expires)

Not Redis Cluster safe: the health keys are derived inside :data:`SYNC`.
"""

from __future__ import annotations

#: Two Lua functions every script below starts with (``KEYED .. script``), so that data
#: smsroute did not write (a key of another type, a value that is not a number: another
#: program, a manual write, an older layout under the same ``key_prefix``) fails the
#: call with an error that names its key (``... [key <name>]``), which
#: :mod:`smsroute.state.redis_link` reports as such, not as Redis being down.
#: ``call(command, key, ...)``: ``redis.call`` on a key; ``num(value, key)``: a value
#: read from ``key`` as a finite number (nil when absent; ``inf`` is not smsroute's).
KEYED = """
local function call(command, key, ...)
  local r = redis.pcall(command, key, ...)
  if type(r) == 'table' and r.err then error({err = r.err .. ' [key ' .. key .. ']'}) end
  return r
end
local function num(value, key)
  if not value then return nil end
  local n = tonumber(value)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then
    error({err = 'ERR not a finite number [key ' .. key .. ']'})
  end
  return n
end
"""

#: Compare-and-set one breaker.
#: KEYS: breakers hash, breakers version counter.
#: ARGV: field, expected version, "open" or "closed", open_for, max_open_for.
#: Returns {1 if applied else 0, the breaker's packed state after the call, now}.
#: Opening counts ``opens`` up and stores an absolute ``reopen_at``; a caller whose
#: expected version is stale changes nothing and adopts what it gets back.
BREAKER_SET = (
    KEYED
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cur = call('HGET', KEYS[1], ARGV[1])
local version, opens = 0, 0
if cur then
  local v, state, o = string.match(cur, '^(%d+),(%a+),(%d+),%d+%.?%d*$')
  if v and (state == 'open' or state == 'closed') then
    version, opens = tonumber(v), tonumber(o)
  else
    cur = nil  -- not smsroute's: the breaker starts anew
  end
end
local nowtext = string.format('%.6f', now)
if version ~= tonumber(ARGV[2]) then
  return {0, cur or '0,closed,0,0', nowtext}
end
local packed
if ARGV[3] == 'open' then
  opens = opens + 1
  local duration = tonumber(ARGV[4]) * 2 ^ (opens - 1)
  local cap = tonumber(ARGV[5])
  if duration > cap then duration = cap end
  packed = string.format('%d,open,%d,%.6f', version + 1, opens, now + duration)
else
  packed = string.format('%d,closed,0,0', version + 1)
end
call('HSET', KEYS[1], ARGV[1], packed)
call('INCR', KEYS[2])
return {1, packed, nowtext}
"""
)

#: Reserve up to ARGV[1] consecutive slots of a provider's GCRA schedule.
#: KEYS: rate key, pause key.
#: ARGV: count, interval (1/rate), tau ((burst-1)*interval), max_wait, lead.
#: ``lead`` is how late the caller usually reads a reply: its slots start no sooner
#: than now + lead, so they reach it before their time.  Slot i is usable at
#: max(now + lead, start + i*interval); only slots within max_wait of that are
#: granted.  Returns {granted, now + lead, paused_until or "0", start}.
RESERVE = (
    KEYED
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = num(call('GET', KEYS[2]), KEYS[2]) or 0
if paused > now then
  return {0, string.format('%.6f', now), string.format('%.6f', paused), '0'}
end
local real = now
now = now + tonumber(ARGV[5])
local interval = tonumber(ARGV[2])
local tat = num(call('GET', KEYS[1]), KEYS[1]) or 0
if tat < now then tat = now end
local start = tat - tonumber(ARGV[3])
local n = math.floor((now + tonumber(ARGV[4]) - start) / interval) + 1
local want = tonumber(ARGV[1])
if n > want then n = want end
if n < 1 then
  return {0, string.format('%.6f', now), '0', string.format('%.6f', start)}
end
tat = tat + n * interval
call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - real + 60) * 1000))
return {n, string.format('%.6f', now), '0', string.format('%.6f', start)}
"""
)

#: Pause a provider for ARGV[1] seconds from now (a 429's Retry-After), keeping a
#: later pause.  KEYS: pause key.  Returns the pause's end.
PAUSE = (
    KEYED
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untl = now + tonumber(ARGV[1])
local cur = num(call('GET', KEYS[1]), KEYS[1]) or 0
if cur >= untl then return string.format('%.6f', cur) end
call('SET', KEYS[1], string.format('%.6f', untl), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1)
return string.format('%.6f', untl)
"""
)

#: One replica's periodic sync: heartbeat, breakers (when changed), pauses, and
#: health (flush this replica's counters, read everyone's merged).
#: KEYS: breakers hash, breakers version, replicas zset, then one pause key per bucket.
#: ARGV: known breakers version, replica id, liveness horizon, health key prefix,
#:       slot length, slots per window, n flushed, n x (id + 8 deltas), n read, ids.
#: Returns {now, breakers version, breakers hash as a flat list or {}, live replicas,
#:          pauses (a time or "0" per pause key), health sums (8 per id read)}.
SYNC = (
    KEYED
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
call('ZADD', KEYS[3], now, ARGV[2])
call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]))
local live = call('ZCARD', KEYS[3])
local version = call('GET', KEYS[2]) or '0'
num(version, KEYS[2])
local breakers = {}
if version ~= ARGV[1] then breakers = call('HGETALL', KEYS[1]) end
local pauses = {}
for i = 4, #KEYS do
  pauses[#pauses + 1] = string.format('%.6f', num(call('GET', KEYS[i]), KEYS[i]) or 0)
end
local prefix = ARGV[4]
local slotlen = tonumber(ARGV[5])
local nslots = tonumber(ARGV[6])
local slot = math.floor(now / slotlen)
local ttl = math.ceil(slotlen * (nslots + 1))
local fields = {'ok', 'fail', 'lat', 'latn', 'dlv', 'und', 'ttd', 'ttdn'}
local i = 7
local nflush = tonumber(ARGV[i]); i = i + 1
for _ = 1, nflush do
  local key = prefix .. ARGV[i] .. ':' .. slot
  for f = 1, 8 do
    local delta = ARGV[i + f]
    if delta ~= '0' then
      if f == 3 or f == 7 then
        call('HINCRBYFLOAT', key, fields[f], delta)
      else
        call('HINCRBY', key, fields[f], delta)
      end
    end
  end
  call('EXPIRE', key, ttl)
  i = i + 9
end
local nread = tonumber(ARGV[i]); i = i + 1
local sums = {}
for r = 1, nread do
  local acc = {0, 0, 0, 0, 0, 0, 0, 0}
  for s = slot - nslots + 1, slot do
    local key = prefix .. ARGV[i] .. ':' .. s
    local values = call('HMGET', key, unpack(fields))
    for f = 1, 8 do
      if values[f] then acc[f] = acc[f] + num(values[f], key) end
    end
  end
  for f = 1, 8 do sums[#sums + 1] = string.format('%.17g', acc[f]) end
  i = i + 1
end
return {string.format('%.6f', now), version, breakers, live, pauses, sums}
"""
)
