-- A worker's periodic call: renews the leases of all its running jobs in one
-- call, records the worker as alive, and returns expired leases of any worker
-- to ready (attempt counted) or to the dead letters when out of attempts.
-- KEYS: jobs state att r0 r1 r2 leases stats dead hist workers wake batches batchdone workerjobs
-- ARGV: lease ms, instance id, reap limit, dead max count, dead max age ms,
--       history cap, then pairs: id, token
-- Returns: { reaped count, lost id, lost id, ... } where a lost id is a job
-- this worker holds whose lease is no longer its own.
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], ready = { KEYS[4], KEYS[5], KEYS[6] },
            leases = KEYS[7], stats = KEYS[8], dead = KEYS[9], hist = KEYS[10],
            workers = KEYS[11], wake = KEYS[12], batches = KEYS[13], batchdone = KEYS[14],
            workerjobs = KEYS[15] }
local lease_ms, instance, reap_limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local dead_max, dead_age, hist_cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local out = { 0 }

for i = 7, #ARGV, 2 do
  local id, tok = ARGV[i], ARGV[i + 1]
  local st = redis.call('HGET', K.state, id)
  if st and code_of(st) == 'r' and string.sub(st, 4) == tok then
    redis.call('ZADD', K.leases, 'XX', now + lease_ms, id)
  else
    out[#out + 1] = id
  end
end

redis.call('ZADD', K.workers, now, instance)
local held, shown = 0, {}
for i = 7, #ARGV, 2 do
  held = held + 1
  if #shown < 20 then shown[#shown + 1] = ARGV[i] end
end
local info = '{"count":' .. held .. ',"ids":' .. (#shown > 0 and cjson.encode(shown) or '[]') .. '}'
redis.call('HSET', K.workerjobs, instance, info)
-- Forget workers silent for ten leases (bounded per call).
local gone = redis.call('ZRANGEBYSCORE', K.workers, '-inf', now - 10 * lease_ms, 'LIMIT', 0, 100)
for _, w in ipairs(gone) do
  redis.call('ZREM', K.workers, w)
  redis.call('HDEL', K.workerjobs, w)
end

local expired = redis.call('ZRANGEBYSCORE', K.leases, '-inf', now, 'LIMIT', 0, reap_limit)
local back = 0
for _, id in ipairs(expired) do
  redis.call('ZREM', K.leases, id)
  local st = redis.call('HGET', K.state, id)
  if st and code_of(st) == 'r' then
    local p = pri_of(st)
    local t = tenant_of(K, id)
    local a = tonumber(redis.call('HGET', K.att, id) or '1')
    local env = redis.call('HGET', K.jobs, id)
    local max, batch = 1, nil
    if env then
      local ok, decoded = pcall(cjson.decode, env)
      if ok and type(decoded) == 'table' then
        if tonumber(decoded.max_attempts) then max = tonumber(decoded.max_attempts) end
        if type(decoded.batch) == 'string' then batch = decoded.batch end
      end
    end
    local entry = cjson.encode({ attempt = a, at = now, error = 'lease expired: the worker holding the job stopped renewing it' })
    append_history(K, id, entry, hist_cap)
    redis.call('HINCRBY', K.stats, 'running', -1)
    redis.call('HINCRBY', K.stats, 'lease_expired', 1)
    redis.call('HINCRBY', K.stats, 'failed', 1)
    left_running(t, a >= max, st)
    if a >= max then
      to_dead(K, id, p, now)
      batch_finished(K, batch, false)
    else
      push_ready(K, p, t, id, true)
      redis.call('HSET', K.state, id, 'q' .. p)
      redis.call('HINCRBY', K.stats, 'ready', 1)
      back = back + 1
    end
    out[1] = out[1] + 1
  end
end
tenants_settle(K)
if back > 0 then wake(K) end
if #expired > 0 then trim_dead(K, now, dead_max, dead_age, reap_limit) end
return out
