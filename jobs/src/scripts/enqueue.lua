-- Enqueues a chunk of jobs.
-- KEYS: jobs state r0 r1 r2 sched stats wake
-- ARGV: groups of 5: id, envelope JSON, priority digit, delay ms, absolute run-at ms (0 = none)
-- Returns one flag per job: 1 created, 0 an existing job already had that id.
local K = { jobs = KEYS[1], state = KEYS[2], ready = { KEYS[3], KEYS[4], KEYS[5] },
            sched = KEYS[6], stats = KEYS[7], wake = KEYS[8] }
local now = now_ms()
local created, nready, nsched = {}, 0, 0
for i = 1, #ARGV, 5 do
  local id, pri = ARGV[i], ARGV[i + 2]
  local delay, at = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local run_at = now + delay
  if at > 0 then run_at = at end
  if redis.call('HSETNX', K.jobs, id, ARGV[i + 1]) == 1 then
    if run_at > now then
      redis.call('ZADD', K.sched, run_at, id)
      redis.call('HSET', K.state, id, 's' .. pri)
      nsched = nsched + 1
    else
      redis.call('RPUSH', ready_key(K, pri), id)
      redis.call('HSET', K.state, id, 'q' .. pri)
      nready = nready + 1
    end
    created[#created + 1] = 1
  else
    created[#created + 1] = 0
  end
end
if nready > 0 then redis.call('HINCRBY', K.stats, 'ready', nready) end
if nsched > 0 then redis.call('HINCRBY', K.stats, 'scheduled', nsched) end
if nready + nsched > 0 then
  redis.call('HINCRBY', K.stats, 'enqueued', nready + nsched)
  wake(K)
end
return created
