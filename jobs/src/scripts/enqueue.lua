-- Enqueues a chunk of jobs.
-- KEYS: jobs state r0 r1 r2 sched stats wake uniq uniqexp
-- ARGV: groups of 7: id, envelope JSON, priority digit, delay ms, absolute run-at ms (0 = none),
--       unique key ('' = none), unique window ms
-- Returns, per job, the id of the job that holds it: its own id when created, or the
-- id of the existing job (same id enqueued before, or same unique key inside its window).
local K = { jobs = KEYS[1], state = KEYS[2], ready = { KEYS[3], KEYS[4], KEYS[5] },
            sched = KEYS[6], stats = KEYS[7], wake = KEYS[8], uniq = KEYS[9], uniqexp = KEYS[10] }
local now = now_ms()
local created, nready, nsched = {}, 0, 0

-- Forget a few expired unique keys per call (bounded; keeps pace with new ones).
local stale = redis.call('ZRANGEBYSCORE', K.uniqexp, '-inf', now, 'LIMIT', 0, 16)
for _, u in ipairs(stale) do
  redis.call('ZREM', K.uniqexp, u)
  redis.call('HDEL', K.uniq, u)
end

for i = 1, #ARGV, 7 do
  local id, pri = ARGV[i], ARGV[i + 2]
  local delay, at = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local ukey, uwindow = ARGV[i + 5], tonumber(ARGV[i + 6])
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
      redis.call('ZADD', K.uniqexp, now + uwindow, ukey)
    end
    if run_at > now then
      redis.call('ZADD', K.sched, run_at, id)
      redis.call('HSET', K.state, id, 's' .. pri)
      nsched = nsched + 1
    else
      redis.call('RPUSH', ready_key(K, pri), id)
      redis.call('HSET', K.state, id, 'q' .. pri)
      nready = nready + 1
    end
    created[#created + 1] = id
  else
    created[#created + 1] = id
  end
end
if nready > 0 then redis.call('HINCRBY', K.stats, 'ready', nready) end
if nsched > 0 then redis.call('HINCRBY', K.stats, 'scheduled', nsched) end
if nready + nsched > 0 then
  redis.call('HINCRBY', K.stats, 'enqueued', nready + nsched)
  wake(K)
end
return created
