-- Shared helpers, prepended to every Fleet script.
--
-- A job's state lives in the `state` hash as one short string:
--   <code><priority>[:<lease token>]
-- codes: q ready, s scheduled, y retrying, r running, k succeeded, d dead,
--        c cancelled, x expired.  The priority is one digit (0 high .. 2 low).
-- Keeping the priority in the state lets every move put a job back on the
-- right ready list without decoding its envelope.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function code_of(st) return string.sub(st, 1, 1) end
local function pri_of(st) return string.sub(st, 2, 2) end

-- Counter field names in the stats hash, by state code.
local GAUGE = { q = 'ready', s = 'scheduled', y = 'retrying', r = 'running', d = 'dead' }

-- Removes every trace of a job record.
local function purge(K, id)
  redis.call('HDEL', K.jobs, id)
  redis.call('HDEL', K.state, id)
  redis.call('HDEL', K.att, id)
  redis.call('HDEL', K.hist, id)
end

-- Appends one attempt record (a JSON object) to the job's history, keeping
-- only the newest `cap` records.
local function append_history(K, id, entry, cap)
  local h = redis.call('HGET', K.hist, id)
  local list
  if h then list = cjson.decode(h) else list = {} end
  list[#list + 1] = cjson.decode(entry)
  while #list > cap do table.remove(list, 1) end
  redis.call('HSET', K.hist, id, cjson.encode(list))
end

-- Bounds the dead-letter set by count and by age. Each call evicts at most
-- `limit` records, so its cost is bounded whatever the backlog; every eviction
-- is counted in stats.evicted.
local function trim_dead(K, now, max_count, max_age, limit)
  local evicted = 0
  if max_age > 0 then
    local old = redis.call('ZRANGEBYSCORE', K.dead, '-inf', now - max_age, 'LIMIT', 0, limit)
    for _, id in ipairs(old) do
      redis.call('ZREM', K.dead, id)
      purge(K, id)
      evicted = evicted + 1
    end
  end
  local n = redis.call('ZCARD', K.dead)
  if max_count >= 0 and n > max_count and evicted < limit then
    local over = math.min(n - max_count, limit - evicted)
    local ids = redis.call('ZRANGE', K.dead, 0, over - 1)
    for _, id in ipairs(ids) do
      redis.call('ZREM', K.dead, id)
      purge(K, id)
      evicted = evicted + 1
    end
  end
  if evicted > 0 then
    redis.call('HINCRBY', K.stats, 'dead', -evicted)
    redis.call('HINCRBY', K.stats, 'evicted', evicted)
  end
end

-- Moves a job into the dead-letter set.
local function to_dead(K, id, pri, now)
  redis.call('HSET', K.state, id, 'd' .. pri)
  redis.call('ZADD', K.dead, now, id)
  redis.call('HINCRBY', K.stats, 'dead', 1)
  redis.call('HINCRBY', K.stats, 'died', 1)
end

-- Leaves at most one wake-up token for an idle worker blocked on the list.
local function wake(K)
  if redis.call('LLEN', K.wake) == 0 then
    redis.call('RPUSH', K.wake, '1')
  end
end

-- Batches this call finished (returned to the worker, which enqueues their callbacks).
local FIRED = {}

-- Counts a finished job of a batch; the call that finishes the batch (and only
-- that one) queues it for its callbacks.
local function batch_finished(K, batch, ok)
  if (not batch) or batch == '' then return end
  local field = batch .. ':fail'
  if ok then field = batch .. ':ok' end
  redis.call('HINCRBY', K.batches, field, 1)
  local total = tonumber(redis.call('HGET', K.batches, batch .. ':total') or '-1')
  local okc = tonumber(redis.call('HGET', K.batches, batch .. ':ok') or '0')
  local failc = tonumber(redis.call('HGET', K.batches, batch .. ':fail') or '0')
  if total >= 0 and okc + failc >= total and redis.call('HSETNX', K.batches, batch .. ':fired', '1') == 1 then
    redis.call('RPUSH', K.batchdone, batch)
    FIRED[#FIRED + 1] = batch
  end
end

local function ready_key(K, pri)
  return K.ready[tonumber(pri) + 1]
end
