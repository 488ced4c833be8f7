"""The Lua script that answers the guards' checks in Redis, and its arguments.

:mod:`smsroute.state.redis_guards` packs a batch of checks into the arguments below and
reads the reply; this script applies the rules of :mod:`smsroute.guardcounts` to each
check atomically (budgets at their cap, the anomaly slots, the velocity logs, then the
counting).  What a batch shares is read and written once per batch, per key: a lane's
budget caps and provider spends, an anomaly key's slot sums (incremented once, at the
end), a velocity log's count (``ZCARD``, every time in the log possibly still in the
window; trimmed and counted again only at the limit, so a refusal is exact) and its new
times (one ``ZADD``).
"""

from __future__ import annotations

from smsroute.state.redis_scripts import KEYED

#: ARGV: mode ('check': answer and count; 'peek': answer, change nothing; 'back': take
#: the queries' members out of their velocity logs; 'record': count what the replica
#: decided, see below), n spends, n x (key, amount, ttl
#: ms), n lanes, per lane: its id, n caps, n x (key, limit), n spends read, keys, has
#: anomaly (0/1) [key, since key, window, baseline, slot, factor, min count, blocks
#: (0/1)], n velocity, n x (key prefix, window, max, ident or '': the query's next),
#: then the queries, one line each: '<lane id> <ident>... <member>', and their times, one
#: little-endian double each (their member in the logs is '<member>:<time in µs>').
#: Returns {spend totals, per lane {spends read, tripped, recent, base} (the anomaly
#: as its last query in the batch saw it; recent -1: none did), {query number, its
#: answer, ...} for the queries with something to report (all when peeking): '<refused
#: or -> <index> <count> <tripped> <recent> <base> <velocity counts...>'}.  A query
#: left out passed, and its anomaly guard was not tripped, nor did it change from the
#: lane's query before in the batch (the first of a lane in a batch with an anomaly
#: guard is always reported: a release tells its own counts).
#:
#: In 'record' mode (``state.guard_checks: local``) the replica has decided already: a
#: query's member starts with ``p`` (passed: counted everywhere) or ``r`` (refused: a
#: request of the anomaly guard only) and nothing is refused.  Per lane: {cap spends,
#: spends read, recent, base (as its last record in the batch left them), since (''
#: without an anomaly guard), the anomaly slot of that record (-1 without)}; per query
#: whose velocity logs are at their limit after it: {query number, '<limit index>:<when
#: the log falls below its max>[:over] ...'} (``over``: this message took the log past
#: its max).
GUARDS = (
    KEYED
    + """
local mode = ARGV[1]
local commit = mode == 'check'
local record = mode == 'record'
local counting = commit or record
local i = 2
local totals = {}
local nspend = tonumber(ARGV[i]); i = i + 1
for s = 1, nspend do
  totals[s] = call('INCRBYFLOAT', ARGV[i], ARGV[i + 1])
  call('PEXPIRE', ARGV[i], ARGV[i + 2])
  i = i + 3
end
-- the lanes; what they share is counted once per batch, per key
local anomalies, akeys = {}, {}
local lanes, order = {}, {}
local nl = tonumber(ARGV[i]); i = i + 1
for l = 1, nl do
  local lane = {v = {}, free = 0, recent = -1, tripped = 0, base = 0}
  lanes[ARGV[i]] = lane; i = i + 1
  order[l] = lane
  local ncaps = tonumber(ARGV[i]); i = i + 1
  local capvals = {}
  for c = 1, ncaps do
    if record then
      capvals[c] = string.format('%.17g', num(call('GET', ARGV[i]), ARGV[i]) or 0)
    elseif not lane.capped then
      local spent = num(call('GET', ARGV[i]), ARGV[i]) or 0
      if spent >= tonumber(ARGV[i + 1]) then
        lane.capped = {c - 1, string.format('%.17g', spent)}
      end
    end
    i = i + 2
  end
  lane.capvals = capvals
  local spends = {}
  local nread = tonumber(ARGV[i]); i = i + 1
  for r = 1, nread do
    spends[r] = string.format('%.17g', num(call('GET', ARGV[i]), ARGV[i]) or 0)
    i = i + 1
  end
  lane.spends = spends
  if ARGV[i] == '1' then
    local key = ARGV[i + 1]
    local a = anomalies[key]
    if a == nil then
      a = {key = key, since_key = ARGV[i + 2], window = tonumber(ARGV[i + 3]),
           baseline = tonumber(ARGV[i + 4]), slot = tonumber(ARGV[i + 5])}
      a.nb = math.floor(a.baseline / a.slot + 0.5)
      anomalies[key] = a
      akeys[#akeys + 1] = key
    end
    lane.a = a
    lane.factor, lane.mincount = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
    lane.blocks = ARGV[i + 8] == '1'
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
end

-- an anomaly key's slots: the sums read once per slot, this batch's counts added at the end
local function aflush(a)
  if a.cur ~= nil then
    if a.r > 0 then call('HINCRBY', a.key, 'r' .. a.cur, a.r) end
    if a.p > 0 then call('HINCRBY', a.key, 'p' .. a.cur, a.p) end
  end
end
local function aslot(a, slot, now)
  if a.since == nil then
    if counting then
      -- to 17 digits: the time itself (to the µs it could be later, and the guard
      -- armed a baseline after it later than in memory); kept with no expiry, as in
      -- memory: a category idle for a while is no new deployment, the guard stays armed
      call('SET', a.since_key, string.format('%.17g', now), 'NX')
    end
    a.since = num(call('GET', a.since_key), a.since_key) or now
  end
  if a.cur ~= slot then
    aflush(a)
    local fields = {}
    for n = slot - 4, slot do fields[#fields + 1] = 'r' .. n end
    for n = slot - 4 - a.nb, slot - 5 do fields[#fields + 1] = 'p' .. n end
    local values = call('HMGET', a.key, unpack(fields))
    local recent, base = 0, 0
    for n = 1, #fields do
      local value = num(values[n], a.key) or 0
      if n <= 5 then recent = recent + value else base = base + value end
    end
    a.cur, a.recent, a.base, a.r, a.p = slot, recent, base, 0, 0
  end
end

-- a velocity log's count in the window: ZCARD once per batch (every time in the log may
-- still be in the window); trimmed and counted again only at the limit, so the count
-- that refuses is exact.  This batch's times are added at the end.
local logs, lkeys = {}, {}
local function vlog(key, window, most, now)
  local c = logs[key]
  if c == nil then
    c = {n = call('ZCARD', key), adds = {}, window = window, exact = nil}
    logs[key] = c
    lkeys[#lkeys + 1] = key
  end
  if c.n >= most and c.exact ~= now then
    call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local n = call('ZCARD', key)
    for k = 1, #c.adds, 2 do
      if c.adds[k] > now - window then n = n + 1 end
    end
    c.n, c.exact = n, now
  end
  return c
end

local out = {}
local text, times = ARGV[i], ARGV[i + 1]
local at, q = 1, 0
while at <= #text do
  local stop = string.find(text, '\\n', at, true) or (#text + 1)
  local s = string.sub(text, at, stop - 1)
  at = stop + 1
  q = q + 1
  local now = struct.unpack('<d', times, 8 * q - 7)
  local e = string.find(s, ' ', 1, true)
  local lane = lanes[string.sub(s, 1, e - 1)]
  local pos = e + 1
  local keys = {}
  for v, lim in ipairs(lane.v) do
    local ident = lim[4]
    if ident == '' then
      e = string.find(s, ' ', pos, true)
      ident = string.sub(s, pos, e - 1); pos = e + 1
    end
    keys[v] = lim[1] .. ident
  end
  -- its member in the logs: unique (a message's id, and its time for a resend's)
  local member = string.sub(s, pos) .. ':' .. string.format('%.0f', now * 1000000)
  if mode == 'back' then
    for v = 1, #keys do call('ZREM', keys[v], member) end
  elseif record then
    -- decided by the replica: counted whatever the counts say; the logs that are at
    -- their limit now are reported with when they fall below it again
    local flag = string.sub(member, 1, 1)
    member = string.sub(member, 2)
    local a = lane.a
    if a then
      aslot(a, math.floor(now / a.slot), now)
      a.r = a.r + 1
      if flag == 'p' then a.p = a.p + 1 end
      -- and the slot they are of (the key's may move on with a later record in the batch)
      lane.recent, lane.base, lane.slot = a.recent + a.r, a.base, a.cur
    end
    if flag == 'p' then
      local full = {}
      for v, lim in ipairs(lane.v) do
        local c = vlog(keys[v], lim[2], lim[3] - 1, now)  -- exact from max - 1 on
        c.n = c.n + 1
        c.adds[#c.adds + 1] = now
        c.adds[#c.adds + 1] = member
        if c.n >= lim[3] then
          -- the count falls below max when its (n - max + 1)th oldest time leaves
          local k = c.n - lim[3]
          local z = call('ZCARD', keys[v])
          local t
          if k < z then
            t = tonumber(call('ZRANGE', keys[v], k, k, 'WITHSCORES')[2])
          else
            t = c.adds[2 * (k - z) + 1]
          end
          -- when it leaves, to 17 digits: the time itself (to the µs it could be later
          -- than memory's log lets the next message in, and hold the log full too long)
          local item = (v - 1) .. ':' .. string.format('%.17g', t + lim[2])
          if c.n > lim[3] then item = item .. ':over' end  -- this message passed the limit
          full[#full + 1] = item
        end
      end
      if #full > 0 then
        out[#out + 1] = q
        out[#out + 1] = table.concat(full, ' ')
      end
    end
  else
    local refused, index, count = '-', 0, '0'
    if lane.capped then refused, index, count = 'budget', lane.capped[1], lane.capped[2] end
    local tripped, recent, base = 0, 0, 0
    local report = false
    local a = lane.a
    if a and refused == '-' then
      aslot(a, math.floor(now / a.slot), now)
      if commit then a.r = a.r + 1 end
      recent, base = a.recent + a.r, a.base
      if not commit then recent = recent + 1 end  -- as a check would count this message
      if now - a.since >= a.baseline and recent >= lane.mincount
          and recent * a.baseline > lane.factor * base * a.window then
        tripped = 1
        if lane.blocks then refused = 'anomaly'; count = tostring(recent) end
      end
      if lane.last ~= tripped then report = true end  -- the lane's first, or a change
      lane.last = tripped
      lane.tripped, lane.recent, lane.base = tripped, recent, base
    end
    local counts = {}
    if refused == '-' then
      for v, lim in ipairs(lane.v) do
        local n
        if commit then
          n = vlog(keys[v], lim[2], lim[3], now).n
        else
          -- the bound as text of its own: '..' would write the number to 14 digits only
          n = call('ZCOUNT', keys[v], string.format('(%.17g', now - lim[2]), '+inf')
        end
        if n >= lim[3] then
          refused = 'velocity'; index = v - 1; count = tostring(n); counts[#counts + 1] = n
          break
        end
        counts[#counts + 1] = n + 1
      end
    end
    if refused == '-' and commit then
      for v = 1, #keys do
        local c = logs[keys[v]]
        c.n = c.n + 1
        c.adds[#c.adds + 1] = now
        c.adds[#c.adds + 1] = member
      end
      if a then a.p = a.p + 1 end
    end
    if refused ~= '-' or tripped == 1 or report or not commit then
      out[#out + 1] = q
      out[#out + 1] = refused .. ' ' .. index .. ' ' .. count .. ' ' .. tripped .. ' '
                      .. recent .. ' ' .. base .. ' ' .. table.concat(counts, ' ')
    end
  end
end
if counting then
  for _, key in ipairs(lkeys) do
    local c = logs[key]
    local adds = c.adds
    for k = 1, #adds, 2000 do
      call('ZADD', key, unpack(adds, k, math.min(k + 1999, #adds)))
    end
    if #adds > 0 then call('PEXPIRE', key, math.ceil(c.window * 1000) + 1000) end
  end
  for _, key in ipairs(akeys) do
    local a = anomalies[key]
    if a.cur ~= nil then
      aflush(a)
      call('PEXPIRE', key, math.ceil((a.window + a.baseline + 2 * a.slot) * 1000))
      if call('HLEN', key) > 2 * (a.nb + 10) then
        for _, name in ipairs(call('HKEYS', key)) do
          local n = tonumber(string.sub(name, 2))
          if n and n < a.cur - 5 - a.nb then call('HDEL', key, name) end
        end
      end
    end
  end
end
local lanes_out = {}
for l = 1, nl do
  local lane = order[l]
  if record then
    local a = lane.a
    lanes_out[l] = {lane.capvals, lane.spends, lane.recent, lane.base,
                    a and a.since and string.format('%.17g', a.since) or '',
                    lane.slot or -1}
  else
    lanes_out[l] = {lane.spends, lane.tripped, lane.recent, lane.base}
  end
end
return {totals, lanes_out, out}
"""
)
