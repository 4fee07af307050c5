-- Promotes due scheduled jobs (bounded) and leases up to N ready jobs,
-- highest priority first, FIFO within a priority.
-- KEYS: jobs state att r0 r1 r2 sched leases stats wake conf
-- ARGV: max jobs, lease ms, promote limit
-- Returns: { now, next due ms or -1, paused 0/1, id, envelope, attempt, token, ... }
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], ready = { KEYS[4], KEYS[5], KEYS[6] },
            sched = KEYS[7], leases = KEYS[8], stats = KEYS[9], wake = KEYS[10], conf = KEYS[11] }
local want, lease_ms, promote_limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()

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
      if c == 's' or c == 'y' then
        if c == 's' then from_sched = from_sched + 1 else from_retry = from_retry + 1 end
        redis.call('RPUSH', ready_key(K, p), id)
        redis.call('HSET', K.state, id, 'q' .. p)
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
  return { now, next_due(), 1 }
end

-- 2. Lease ready jobs. Entries whose state is no longer "ready" (cancelled
-- while queued) are dropped as they surface; pops are bounded by 2 * want.
local out = { now, 0, 0 }
local got, popped = 0, 0
local seq = nil
local deadline = now + lease_ms
for p = 1, 3 do
  while got < want and popped < 2 * want do
    local ids = redis.call('LPOP', K.ready[p], want - got)
    if not ids then break end
    popped = popped + #ids
    for _, id in ipairs(ids) do
      local st = redis.call('HGET', K.state, id)
      if st and code_of(st) == 'q' then
        if not seq then seq = redis.call('HINCRBY', K.stats, 'fseq', 1) end
        got = got + 1
        local tok = seq .. '.' .. got
        local a = redis.call('HINCRBY', K.att, id, 1)
        redis.call('HSET', K.state, id, 'r' .. pri_of(st) .. ':' .. tok)
        redis.call('ZADD', K.leases, deadline, id)
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGET', K.jobs, id)
        out[#out + 1] = a
        out[#out + 1] = tok
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
    if redis.call('LLEN', K.ready[p]) > 0 then wake(K) break end
  end
end
out[2] = next_due()
return out
