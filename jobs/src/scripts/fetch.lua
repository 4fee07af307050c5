-- Promotes due scheduled jobs (bounded) and leases up to N ready jobs, highest
-- priority first; within a priority, tenants take turns (round-robin over the ring of
-- tenants with ready work, each served a share of the batch) and each tenant's jobs
-- run in order. A tenant at its concurrency cap is parked until one of its jobs stops.
-- Suspects (jobs that were running when their worker stopped, see heartbeat.lua) wait in
-- their own list and are leased only to a worker that holds nothing else in this queue,
-- one at a time and alone (token suffix `i`). While suspects wait and no worker holding
-- nothing comes for them, one worker at a time (the holder of the `drain` claim, for at
-- most ten leases) is told to drain (flag 1): it leases nothing until it holds nothing,
-- then comes back for one.
-- KEYS: jobs state att r0 r1 r2 sched leases stats wake conf suspects drain
-- ARGV: max jobs, lease ms, promote limit, 1 if the caller holds no job of this queue,
--       the caller's instance id
-- Returns: { now, next due ms or -1, paused 0/1, flags, id, envelope, attempt, token, ... }
-- flags: 0, or 1 suspects wait for a worker holding nothing, or 2 the one job returned
-- is a suspect, to run alone (lease nothing else until it finishes).
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], ready = { KEYS[4], KEYS[5], KEYS[6] },
            sched = KEYS[7], leases = KEYS[8], stats = KEYS[9], wake = KEYS[10], conf = KEYS[11],
            suspects = KEYS[12], drain = KEYS[13] }
local want, lease_ms, promote_limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local holds_nothing, instance = ARGV[4] == '1', ARGV[5]
-- At least this many jobs per tenant turn, but never more than half the batch, so two
-- tenants always share a fetch of two or more.
local QUANTUM = math.min(4, math.ceil(want / 2))
local now = now_ms()
local DEDUP = dedup_on(K)

-- A held keep-last job found due (see prelude): held again while its key's job runs.
local function still_held(id)
  local f = redis.call('HGET', qkey(K, 'dkey'), id)
  if not f or string.sub(f, 1, 2) ~= 'h:' then return false end
  local r = redis.call('HGET', qkey(K, 'dedup'), 'r:' .. string.sub(f, 3))
  if r and code_of(redis.call('HGET', K.state, r) or 'c') == 'r' then
    redis.call('ZADD', K.sched, now + DEDUP_HOLD_MS, id)
    return true
  end
  redis.call('HSET', qkey(K, 'dkey'), id, 'w:' .. string.sub(f, 3))
  return false
end

local function next_due()
  local first = redis.call('ZRANGE', K.sched, 0, 0, 'WITHSCORES')
  if #first == 0 then return -1 end
  return tonumber(first[2])
end

-- 1. Promote due jobs, at most promote_limit per call.
local due = redis.call('ZRANGEBYSCORE', K.sched, '-inf', now, 'LIMIT', 0, promote_limit)
if #due > 0 then
  local moved, from_sched, from_retry = 0, 0, 0
  for _, id in ipairs(due) do
    redis.call('ZREM', K.sched, id)
    local st = redis.call('HGET', K.state, id)
    if st then
      local c, p = code_of(st), pri_of(st)
      if (c == 's' or c == 'y') and not (DEDUP and c == 's' and still_held(id)) then
        if c == 's' then from_sched = from_sched + 1 else from_retry = from_retry + 1 end
        push_ready(K, p, tenant_of(K, id), id, false)
        -- Keeps the token of the completion that scheduled it (`:<token>`), so a
        -- duplicate of that completion is still recognised (see ack.lua).
        redis.call('HSET', K.state, id, 'q' .. string.sub(st, 2))
        moved = moved + 1
      end
    end
  end
  if moved > 0 then
    redis.call('HINCRBY', K.stats, 'ready', moved)
    if from_sched > 0 then redis.call('HINCRBY', K.stats, 'scheduled', -from_sched) end
    if from_retry > 0 then redis.call('HINCRBY', K.stats, 'retrying', -from_retry) end
  end
end

if redis.call('HGET', K.conf, 'paused') == '1' then
  return { now, next_due(), 1, 0 }
end

-- 2. Suspects first, one at a time to a worker holding nothing (at most 3 entries looked
-- at: stale entries, of jobs cancelled meanwhile, are dropped; a suspect whose tenant is
-- at its cap goes to the back).
local flags = 0
if redis.call('LLEN', K.suspects) > 0 then
  local drainer = redis.call('GET', K.drain)
  if (not drainer) or drainer == instance then
    flags = 1
    if not holds_nothing then redis.call('SET', K.drain, instance, 'PX', 10 * lease_ms) end
  end
  if holds_nothing then
    if drainer == instance then redis.call('DEL', K.drain) end
    for _ = 1, 3 do
      local id = redis.call('LPOP', K.suspects)
      if not id then break end
      local st = redis.call('HGET', K.state, id)
      if st and code_of(st) == 'q' then
        local t = tenant_of(K, id)
        local cap = 0
        if t ~= '' then cap = tenant_setting(K, 'cap', t) end
        if cap > 0 and tonumber(redis.call('HGET', qkey(K, 'trun'), t) or '0') >= cap then
          -- Draining would not help: its tenant must finish a job first.
          redis.call('RPUSH', K.suspects, id)
          flags = 0
          break
        end
        local seq = redis.call('HINCRBY', K.stats, 'fseq', 1)
        local tok = seq .. '.i'
        -- Capped: it counts against the cap ('c', see left_running).
        if cap > 0 then tok = tok .. 'c' end
        local a = redis.call('HINCRBY', K.att, id, 1)
        redis.call('HSET', K.state, id, 'r' .. pri_of(st) .. ':' .. tok)
        redis.call('ZADD', K.leases, now + lease_ms, id)
        if DEDUP then dedup_leased(K, id) end
        if cap > 0 then redis.call('HINCRBY', qkey(K, 'trun'), t, 1) end
        redis.call('HINCRBY', K.stats, 'ready', -1)
        redis.call('HINCRBY', K.stats, 'running', 1)
        -- Others may lease the rest of the queue meanwhile.
        wake(K)
        return { now, next_due(), 0, 2, id, redis.call('HGET', K.jobs, id), a, tok }
      end
    end
    flags = 0
  end
end

-- 3. Lease ready jobs. Entries whose state is no longer "ready" (cancelled while
-- queued) are dropped as they surface. Work is bounded: at most 2 * want entries
-- popped and 2 * want + 3 tenant turns.
local out = { now, 0, 0, flags }
local got, popped, turns = 0, 0, 0
local seq = nil
local deadline = now + lease_ms
local running = {}
for p = 1, 3 do
  local pri = tostring(p - 1)
  local base = K.ready[p]
  local ring = base .. ':ring'
  -- Jobs left in the plain list by an older version, with no ring entry yet.
  if redis.call('LLEN', ring) == 0 and redis.call('LLEN', base) > 0 then ring_add(K, pri, '', false) end
  -- Each turn takes the tenant's fair share of what is left of the batch, and at least
  -- QUANTUM jobs (fewer turns per job when many tenants have work; the ring goes on
  -- where this fetch stopped, so every tenant still has its turn within a few fetches).
  local in_ring = redis.call('LLEN', ring)
  while got < want and popped < 2 * want and turns < 2 * want + 3 do
    local t = redis.call('LPOP', ring)
    if not t then break end
    turns = turns + 1
    local share = math.min(math.max(math.ceil((want - got) / math.max(in_ring, 1)), QUANTUM), want - got)
    in_ring = math.max(in_ring - 1, 1)
    local cap = 0
    if t ~= '' then
      cap = tenant_setting(K, 'cap', t)
      if cap > 0 then
        if running[t] == nil then running[t] = tonumber(redis.call('HGET', qkey(K, 'trun'), t) or '0') end
        share = math.min(share, cap - running[t])
      end
    end
    local list = tenant_list(K, pri, t)
    if share <= 0 then
      -- At its cap: out of the ring until one of its jobs stops (see tenants_settle).
      redis.call('SREM', base .. ':rset', t)
      local parked = redis.call('HGET', qkey(K, 'tpark'), t) or ''
      if not string.find(parked, pri, 1, true) then redis.call('HSET', qkey(K, 'tpark'), t, parked .. pri) end
    else
      local ids = redis.call('LPOP', list, share)
      local taken = 0
      if ids then
        popped = popped + #ids
        for _, id in ipairs(ids) do
          local st = redis.call('HGET', K.state, id)
          if st and code_of(st) == 'q' then
            if not seq then seq = redis.call('HINCRBY', K.stats, 'fseq', 1) end
            got = got + 1
            taken = taken + 1
            local tok = seq .. '.' .. got
            if cap > 0 then tok = tok .. 'c' end
            local a = redis.call('HINCRBY', K.att, id, 1)
            redis.call('HSET', K.state, id, 'r' .. pri_of(st) .. ':' .. tok)
            redis.call('ZADD', K.leases, deadline, id)
            if DEDUP then dedup_leased(K, id) end
            out[#out + 1] = id
            out[#out + 1] = redis.call('HGET', K.jobs, id)
            out[#out + 1] = a
            out[#out + 1] = tok
          end
        end
      end
      if cap > 0 and taken > 0 then
        redis.call('HINCRBY', qkey(K, 'trun'), t, taken)
        if running[t] then running[t] = running[t] + taken end
      end
      -- Back to the end of the ring while it has work, else out of it (a short pop
      -- means the list is empty: no need to ask).
      if ids and #ids == share and redis.call('LLEN', list) > 0 then
        redis.call('RPUSH', ring, t)
      else
        redis.call('SREM', base .. ':rset', t)
      end
    end
  end
end
if got > 0 then
  redis.call('HINCRBY', K.stats, 'ready', -got)
  redis.call('HINCRBY', K.stats, 'running', got)
end
-- Chain wake-up: jobs remain after a full batch, so let another idle worker know.
if got == want then
  for p = 1, 3 do
    if redis.call('LLEN', K.ready[p] .. ':ring') > 0 then wake(K) break end
  end
end
out[2] = next_due()
return out
