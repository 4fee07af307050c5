-- Enqueues a chunk of jobs.
-- KEYS: jobs state r0 r1 r2 sched stats wake uniq uniqexp
-- ARGV: groups of 8: id, envelope JSON, priority digit, delay ms, absolute run-at ms (0 = none),
--       unique key ('' = none), unique window ms, tenant ('' = none)
-- Returns, per job, the id of the job that holds it: its own id when created, or the
-- id of the existing job (same id enqueued before, or same unique key inside its window).
-- When the chunk would take a tenant past its queued-job quota nothing is written and
-- the reply is { '!quota', tenant, jobs open, quota }.
local K = { jobs = KEYS[1], state = KEYS[2], ready = { KEYS[3], KEYS[4], KEYS[5] },
            sched = KEYS[6], stats = KEYS[7], wake = KEYS[8], uniq = KEYS[9], uniqexp = KEYS[10] }
local now = now_ms()
local created, nready, nsched = {}, 0, 0

-- Quotas first, so a refused chunk writes nothing. The count is of jobs this call may
-- create; only when that crosses the quota are ids already enqueued (a retried request)
-- taken off, at one HEXISTS each.
local asked = {}
for i = 1, #ARGV, 8 do
  local t = ARGV[i + 7]
  if t ~= '' then asked[t] = (asked[t] or 0) + 1 end
end
for t, n in pairs(asked) do
  local quota = tenant_setting(K, 'quota', t)
  if quota > 0 then
    local open = tonumber(redis.call('HGET', qkey(K, 'topen'), t) or '0')
    if open + n > quota then
      local fresh = 0
      for i = 1, #ARGV, 8 do
        if ARGV[i + 7] == t and redis.call('HEXISTS', K.jobs, ARGV[i]) == 0 then fresh = fresh + 1 end
      end
      if fresh > 0 and open + fresh > quota then return { '!quota', t, open, quota } end
    end
  end
end

-- Forget a few expired unique keys per call (bounded; keeps pace with new ones).
local stale = redis.call('ZRANGEBYSCORE', K.uniqexp, '-inf', now, 'LIMIT', 0, 16)
for _, u in ipairs(stale) do
  redis.call('ZREM', K.uniqexp, u)
  redis.call('HDEL', K.uniq, u)
end

local opened = {}
for i = 1, #ARGV, 8 do
  local id, pri = ARGV[i], ARGV[i + 2]
  local delay, at = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local ukey, uwindow, t = ARGV[i + 5], tonumber(ARGV[i + 6]), ARGV[i + 7]
  local run_at = now + delay
  if at > 0 then run_at = at end
  local holder = nil
  if ukey ~= '' then
    local until_ms = redis.call('ZSCORE', K.uniqexp, ukey)
    if until_ms and tonumber(until_ms) > now then
      holder = redis.call('HGET', K.uniq, ukey)
    end
  end
  if holder then
    created[#created + 1] = holder
  elseif redis.call('HSETNX', K.jobs, id, ARGV[i + 1]) == 1 then
    if ukey ~= '' then
      redis.call('HSET', K.uniq, ukey, id)
      -- now_ms() drops the microseconds, so +1 keeps the window at least as long as asked.
      redis.call('ZADD', K.uniqexp, now + uwindow + 1, ukey)
    end
    if t ~= '' then
      redis.call('HSET', qkey(K, 'ten'), id, t)
      opened[t] = (opened[t] or 0) + 1
    end
    if run_at > now then
      redis.call('ZADD', K.sched, run_at, id)
      redis.call('HSET', K.state, id, 's' .. pri)
      nsched = nsched + 1
    else
      push_ready(K, pri, t, id, false)
      redis.call('HSET', K.state, id, 'q' .. pri)
      nready = nready + 1
    end
    created[#created + 1] = id
  else
    created[#created + 1] = id
  end
end
for t, n in pairs(opened) do redis.call('HINCRBY', qkey(K, 'topen'), t, n) end
if nready > 0 then redis.call('HINCRBY', K.stats, 'ready', nready) end
if nsched > 0 then redis.call('HINCRBY', K.stats, 'scheduled', nsched) end
if nready + nsched > 0 then
  redis.call('HINCRBY', K.stats, 'enqueued', nready + nsched)
  wake(K)
end
return created
