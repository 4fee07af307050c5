-- Applies a batch of job completions. A completion whose lease token is not
-- the job's current one (its lease expired and the job moved on) is refused
-- and counted in stats.stale.
-- KEYS: jobs state att r0 r1 r2 sched leases stats dead done hist wake batches batchdone
-- ARGV: retention ms (0 = delete finished records), dead max count, dead max age ms,
--       history cap, then groups of 6: id, token, op, delay ms, attempt record JSON, batch id
-- ops: ok, retry, dead, snooze, defer, release, expire, lost (the worker gave the job up
-- because its lease was taken back or it was cancelled: nothing to apply, not counted)
-- Returns one flag per completion: 1 applied, 0 refused as stale.
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], ready = { KEYS[4], KEYS[5], KEYS[6] },
            sched = KEYS[7], leases = KEYS[8], stats = KEYS[9], dead = KEYS[10], done = KEYS[11],
            hist = KEYS[12], wake = KEYS[13], batches = KEYS[14], batchdone = KEYS[15] }
local retention, dead_max, dead_age, hist_cap =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local res = {}
local n_ok, n_running, n_stale, n_failed, n_released, n_later = 0, 0, 0, 0, 0, 0
local released = {}

local function finish(id, code, pri)
  if retention > 0 then
    redis.call('HSET', K.state, id, code .. pri)
    redis.call('ZADD', K.done, now + retention, id)
  else
    purge(K, id)
  end
end

for i = 5, #ARGV, 6 do
  local id, tok, op = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local delay, entry, batch = tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local st = redis.call('HGET', K.state, id)
  if op == 'lost' then
    res[#res + 1] = 0
  elseif (not st) or code_of(st) ~= 'r' or string.sub(st, 4) ~= tok then
    n_stale = n_stale + 1
    res[#res + 1] = 0
  else
    local p = pri_of(st)
    local t = tenant_of(K, id)
    redis.call('ZREM', K.leases, id)
    n_running = n_running + 1
    left_running(t, op == 'ok' or op == 'expire' or op == 'dead', st)
    if op == 'ok' then
      n_ok = n_ok + 1
      finish(id, 'k', p)
      batch_finished(K, batch, true)
    elseif op == 'expire' then
      redis.call('HINCRBY', K.stats, 'expired', 1)
      finish(id, 'x', p)
      batch_finished(K, batch, false)
    elseif op == 'retry' then
      n_failed = n_failed + 1
      append_history(K, id, entry, hist_cap)
      redis.call('ZADD', K.sched, now + delay, id)
      n_later = n_later + 1
      redis.call('HSET', K.state, id, 'y' .. p)
      redis.call('HINCRBY', K.stats, 'retrying', 1)
    elseif op == 'dead' then
      n_failed = n_failed + 1
      append_history(K, id, entry, hist_cap)
      to_dead(K, id, p, now)
      batch_finished(K, batch, false)
    elseif op == 'snooze' or op == 'defer' then
      -- defer: held back by a limit, a cap or a breaker; like a snooze, no attempt counted.
      redis.call('HINCRBY', K.att, id, -1)
      redis.call('ZADD', K.sched, now + delay, id)
      n_later = n_later + 1
      redis.call('HSET', K.state, id, 's' .. p)
      redis.call('HINCRBY', K.stats, 'scheduled', 1)
      if op == 'snooze' then
        redis.call('HINCRBY', K.stats, 'snoozed', 1)
      else
        redis.call('HINCRBY', K.stats, 'deferred', 1)
      end
    else -- release: back to the front of its ready list, attempt not counted
      redis.call('HINCRBY', K.att, id, -1)
      released[#released + 1] = { id, p, t }
      redis.call('HSET', K.state, id, 'q' .. p)
      n_released = n_released + 1
    end
    res[#res + 1] = 1
  end
end
-- Released jobs go back in their original order: push the last one first.
for j = #released, 1, -1 do
  push_ready(K, released[j][2], released[j][3], released[j][1], true)
end
if n_released > 0 then
  redis.call('HINCRBY', K.stats, 'ready', n_released)
end
tenants_settle(K)
-- An idle worker must learn of jobs released or rescheduled soon, so it can wait
-- for exactly their due time instead of its idle timeout.
if n_released + n_later > 0 then wake(K) end
if n_running > 0 then redis.call('HINCRBY', K.stats, 'running', -n_running) end
if n_ok > 0 then redis.call('HINCRBY', K.stats, 'succeeded', n_ok) end
if n_failed > 0 then redis.call('HINCRBY', K.stats, 'failed', n_failed) end
if n_stale > 0 then redis.call('HINCRBY', K.stats, 'stale', n_stale) end

-- Expire finished records and bound the dead letters; at most a few per
-- completion, so the work per call stays bounded and keeps up with the flow.
local limit = 2 * (#ARGV - 4) / 6 + 10
local old = redis.call('ZRANGEBYSCORE', K.done, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(old) do
  redis.call('ZREM', K.done, id)
  purge(K, id)
end
trim_dead(K, now, dead_max, dead_age, limit)
-- After the flags: the batches this call finished.
for _, b in ipairs(FIRED) do res[#res + 1] = b end
return res
