-- Shared helpers, prepended to every Fleet script.
--
-- A job's state lives in the `state` hash as one short string:
--   <code><priority>[:<token>]
-- where the token is the lease token of a running job, or, once a completion was
-- applied, that completion's token (kept until the job is leased again), so a
-- completion sent twice is recognised (see ack.lua).
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

-- A key of this queue by name, derived from K.jobs (`<prefix>:{<queue>}:jobs`), so it
-- shares the queue's hash tag: the tenant structures below are found this way.
local function qkey(K, name) return string.sub(K.jobs, 1, -5) .. name end

-- Removes every trace of a job record.
local function purge(K, id)
  redis.call('HDEL', qkey(K, 'ten'), id)
  redis.call('HDEL', K.jobs, id)
  redis.call('HDEL', K.state, id)
  redis.call('HDEL', K.att, id)
  redis.call('HDEL', K.hist, id)
  redis.call('HDEL', qkey(K, 'crashes'), id)
  redis.call('HDEL', qkey(K, 'progress'), id)
  redis.call('HDEL', qkey(K, 'results'), id)
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

-- The queue's own dead-letter caps, when an operator set them (`conf` fields
-- dead_max_count and dead_max_age_ms), else the worker's.
local function dead_caps(K, max_count, max_age)
  local own = redis.call('HMGET', qkey(K, 'conf'), 'dead_max_count', 'dead_max_age_ms')
  if own[1] and tonumber(own[1]) then max_count = tonumber(own[1]) end
  if own[2] and tonumber(own[2]) then max_age = tonumber(own[2]) end
  return max_count, max_age
end

-- Bounds the dead-letter set by count and by age. Each call evicts at most
-- `limit` records, so its cost is bounded whatever the backlog; every eviction
-- is counted in stats.evicted. Returns the number evicted.
local function trim_dead(K, now, max_count, max_age, limit)
  max_count, max_age = dead_caps(K, max_count, max_age)
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
  return evicted
end

-- Most finished jobs waiting for the archive per queue; past it an ending is counted
-- (stats.archive_dropped) instead of queued, so the list stays bounded when no scheduler
-- drains it for a long time.
local ARCHIVE_CAP = 1000000
-- Whether a scheduler archives this queue (conf field `archive` = 1), read once per call.
local ARCHIVING = nil

-- Queues a job that just finished (code k, d, c or x) for the archive: one list entry
-- `<code>:<attempt>:<now ms>:<id>`, which the scheduler reads with the job's record,
-- copies into PostgreSQL and only then removes (see jobs/src/archive.rs). Nothing at all
-- when no scheduler archives the queue.
local function archive(K, id, code, now)
  if ARCHIVING == nil then
    ARCHIVING = redis.call('HGET', qkey(K, 'conf'), 'archive') == '1'
  end
  if not ARCHIVING then return end
  local key = qkey(K, 'archive')
  if redis.call('LLEN', key) >= ARCHIVE_CAP then
    redis.call('HINCRBY', K.stats, 'archive_dropped', 1)
    return
  end
  local att = redis.call('HGET', qkey(K, 'att'), id) or '0'
  redis.call('RPUSH', key, code .. ':' .. att .. ':' .. now .. ':' .. id)
end

-- Moves a job into the dead-letter set.
local function to_dead(K, id, pri, now)
  archive(K, id, 'd', now)
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

-- Tenants. A job of a tenant waits in its tenant's list of its priority,
-- `<ready:p>:t:<tenant>`; jobs without a tenant wait in the plain `<ready:p>` list, the
-- tenant '' here. Per priority, a ring (a LIST, `<ready:p>:ring`) holds the tenants that
-- have ready work and a SET (`<ready:p>:rset`) mirrors its members, so fetch serves the
-- tenants round-robin and a tenant is never in the ring twice. Per queue:
--   ten    hash job id -> tenant (jobs of a tenant only)
--   trun   hash tenant -> jobs running (leased) now that count against its cap
--   topen  hash tenant -> jobs not finished (ready, scheduled, retrying, running)
--   tpark  hash tenant -> priority digits it was parked at (at its concurrency cap)
-- Settings in `conf`: tcap / tquota (every tenant), tcap:<t> / tquota:<t> (one tenant,
-- with town = 1 once any tenant has its own); 0 or absent means no limit.
local function tenant_of(K, id)
  local t = redis.call('HGET', qkey(K, 'ten'), id)
  if t then return t end
  return ''
end

local function tenant_list(K, pri, t)
  local base = ready_key(K, pri)
  if t == '' then return base end
  return base .. ':t:' .. t
end

-- Puts tenant t in the ring of priority pri unless it is there already.
local function ring_add(K, pri, t, front)
  local base = ready_key(K, pri)
  if redis.call('SADD', base .. ':rset', t) == 1 then
    if front then redis.call('LPUSH', base .. ':ring', t) else redis.call('RPUSH', base .. ':ring', t) end
  end
end

-- Makes a job ready: at the end of its tenant's list (the front for a job handed back).
local RINGED = {}
local function push_ready(K, pri, t, id, front)
  if front then
    redis.call('LPUSH', tenant_list(K, pri, t), id)
    ring_add(K, pri, t, true)
  else
    redis.call('RPUSH', tenant_list(K, pri, t), id)
    local mark = pri .. '|' .. t
    if not RINGED[mark] then
      ring_add(K, pri, t, false)
      RINGED[mark] = true
    end
  end
end

-- A tenant's setting ('cap' or 'quota'): its own, else the queue's default; 0 = none.
-- The defaults and whether any tenant has its own values (`town`) are read once per
-- call; a tenant's own value only when some tenant has one.
local TSET = {}
local TDEF = nil
local function tenant_setting(K, name, t)
  if not TDEF then
    local d = redis.call('HMGET', qkey(K, 'conf'), 'tcap', 'tquota', 'town')
    TDEF = { cap = tonumber(d[1] or '0') or 0, quota = tonumber(d[2] or '0') or 0, own = d[3] == '1' }
  end
  if not TDEF.own then return TDEF[name] end
  local mark = name .. '|' .. t
  local v = TSET[mark]
  if v == nil then
    local own = redis.call('HGET', qkey(K, 'conf'), 't' .. name .. ':' .. t)
    if own then v = tonumber(own) or 0 else v = TDEF[name] end
    TSET[mark] = v
  end
  return v
end

-- Counts jobs that stopped running, per tenant, applied once per call by tenants_settle.
-- Only jobs leased while their tenant had a cap count as running (their lease token
-- ends in 'c', see fetch): an uncapped tenant costs no running counter at all.
local LEFT = {}
local FINISHED = {}
local function left_running(t, finished, st)
  if t == '' then return end
  if st and string.sub(st, -1) == 'c' then LEFT[t] = (LEFT[t] or 0) + 1 end
  if finished then FINISHED[t] = (FINISHED[t] or 0) + 1 end
end

local function finished_only(t)
  if t == '' then return end
  FINISHED[t] = (FINISHED[t] or 0) + 1
end

-- Applies the counts: running and open jobs go down, and a tenant parked at its cap
-- goes back in the rings it left, to be looked at again by the next fetch.
local function tenants_settle(K)
  local any_parked = next(LEFT) ~= nil and redis.call('HLEN', qkey(K, 'tpark')) > 0
  for t, n in pairs(LEFT) do
    if redis.call('HINCRBY', qkey(K, 'trun'), t, -n) <= 0 then redis.call('HDEL', qkey(K, 'trun'), t) end
    local parked = any_parked and redis.call('HGET', qkey(K, 'tpark'), t)
    if parked then
      redis.call('HDEL', qkey(K, 'tpark'), t)
      for i = 1, #parked do ring_add(K, string.sub(parked, i, i), t, false) end
      local wk = qkey(K, 'wake')
      if redis.call('LLEN', wk) == 0 then redis.call('RPUSH', wk, '1') end
    end
  end
  for t, n in pairs(FINISHED) do
    if redis.call('HINCRBY', qkey(K, 'topen'), t, -n) <= 0 then redis.call('HDEL', qkey(K, 'topen'), t) end
  end
end

-- Dedup modes (see dedup.rs). Per queue, `dedup` maps a key's slot to a job id and
-- `dkey` maps a job of a keyed mode to its slot, while that slot is the job's:
--   dedup  'd:<key>' -> '<max wait end ms>|<id>'  debounce: the pending job of the burst
--          'p:<key>' -> id                        replace: the pending job
--          'w:<key>' -> id                        keep-last: the waiting job
--          'r:<key>' -> id                        keep-last: the running job
--   dkey   id -> 'd:<key>' | 'p:<key>' | 'w:<key>' | 'h:<key>' (waiting, held until the
--          running job of its key ends) | 'r:<key>' (running)
-- A slot is let go when its job is leased (debounce, replace) or ends (keep-last), so
-- both hashes hold only live jobs. Scripts that lease or end jobs test `dkey` once per
-- call (DEDUP_ON): a queue that never used the modes pays one EXISTS.
-- A held job waits in `sched` until DEDUP_HOLD_MS from now; its key's run ending
-- moves it to now. Should that never happen (a record removed by hand), fetch finds it
-- due, sees no running job for its key, and lets it run: a key is never stuck.
local DEDUP_HOLD_MS = 60000

local function dedup_on(K) return redis.call('EXISTS', qkey(K, 'dkey')) == 1 end

-- Ends a job that a newer one of its key replaces: like a cancel (counted as
-- cancelled and superseded). st: its state, neither running nor final. A ready job's
-- list entry is dropped when a fetch reaches it.
local function dedup_supersede(K, id, st, now)
  local c = code_of(st)
  if c == 's' or c == 'y' then redis.call('ZREM', qkey(K, 'sched'), id) end
  redis.call('HINCRBY', K.stats, GAUGE[c], -1)
  redis.call('HINCRBY', K.stats, 'cancelled', 1)
  redis.call('HINCRBY', K.stats, 'superseded', 1)
  redis.call('HSET', K.state, id, 'c' .. pri_of(st))
  redis.call('ZADD', qkey(K, 'done'), now + 3600000, id)
  redis.call('HDEL', qkey(K, 'dkey'), id)
  finished_only(tenant_of(K, id))
  archive(K, id, 'c', now)
end

-- A live state that is neither running nor final: the job has yet to (re)start.
local function dedup_waits(st)
  if not st then return false end
  local c = code_of(st)
  return c == 'q' or c == 's' or c == 'y'
end

-- Lets the waiting job of a keep-last key start now if it was held.
local function dedup_release(K, key, now)
  local w = redis.call('HGET', qkey(K, 'dedup'), 'w:' .. key)
  if not w then return end
  if redis.call('HGET', qkey(K, 'dkey'), w) == 'h:' .. key then
    redis.call('HSET', qkey(K, 'dkey'), w, 'w:' .. key)
    if code_of(redis.call('HGET', K.state, w) or 'c') == 's' then
      redis.call('ZADD', qkey(K, 'sched'), now, w)
      local wk = qkey(K, 'wake')
      if redis.call('LLEN', wk) == 0 then redis.call('RPUSH', wk, '1') end
    end
  end
end

-- A job of a keyed mode was leased: its pending slot is let go (a new enqueue makes a
-- new job); a keep-last job becomes its key's running job.
local function dedup_leased(K, id)
  local f = redis.call('HGET', qkey(K, 'dkey'), id)
  if not f then return end
  local slot, key = string.sub(f, 1, 1), string.sub(f, 3)
  local D = qkey(K, 'dedup')
  if slot == 'w' or slot == 'h' then
    if redis.call('HGET', D, 'w:' .. key) == id then redis.call('HDEL', D, 'w:' .. key) end
    redis.call('HSET', D, 'r:' .. key, id)
    redis.call('HSET', qkey(K, 'dkey'), id, 'r:' .. key)
  elseif slot ~= 'r' then
    local v = redis.call('HGET', D, f)
    if v and (v == id or string.sub(v, -(#id + 1)) == '|' .. id) then redis.call('HDEL', D, f) end
    redis.call('HDEL', qkey(K, 'dkey'), id)
  end
end

-- A job of a keyed mode stopped running (any completion, a lost lease) or ended
-- (final: succeeded, dead, expired, cancelled); st is its state now. When a keep-last
-- job's run ends, the waiting job of its key (if any) is released; a run that ends
-- without finishing (retry, snooze, lease lost) is superseded by that waiting job, which
-- carries newer args, or else becomes the waiting job itself.
local function dedup_settle(K, id, final, now)
  local f = redis.call('HGET', qkey(K, 'dkey'), id)
  if not f then return end
  local slot, key = string.sub(f, 1, 1), string.sub(f, 3)
  local D = qkey(K, 'dedup')
  if slot == 'r' then
    if redis.call('HGET', D, 'r:' .. key) == id then redis.call('HDEL', D, 'r:' .. key) end
    if final then
      redis.call('HDEL', qkey(K, 'dkey'), id)
      dedup_release(K, key, now)
      return
    end
    local w = redis.call('HGET', D, 'w:' .. key)
    if w and w ~= id and dedup_waits(redis.call('HGET', K.state, w)) then
      local st = redis.call('HGET', K.state, id)
      if dedup_waits(st) then dedup_supersede(K, id, st, now) end
      dedup_release(K, key, now)
    else
      redis.call('HSET', D, 'w:' .. key, id)
      redis.call('HSET', qkey(K, 'dkey'), id, 'w:' .. key)
    end
  elseif final then
    local field = f
    if slot == 'h' then field = 'w:' .. key end
    local v = redis.call('HGET', D, field)
    if v and (v == id or string.sub(v, -(#id + 1)) == '|' .. id) then redis.call('HDEL', D, field) end
    redis.call('HDEL', qkey(K, 'dkey'), id)
  end
end

-- Workflow steps (job ids `wf:<workflow>:<step>`, see `crate::workflows`): a step's
-- job that ends (outcome ok, dead, expire or cancel) leaves an entry in its queue's
-- workflow outbox (`wfout`, hash id -> {o, t, r}: outcome, tenant, result), written
-- in the same call that ends it; the workers' pump applies it to the workflow, in the
-- workflow's own slot, and removes it last. Any other job costs one string compare.
local function wf_finished(K, id, outcome)
  if string.sub(id, 1, 3) ~= 'wf:' then return end
  local r = redis.call('HGET', qkey(K, 'results'), id) or ''
  redis.call('HSET', qkey(K, 'wfout'), id, cjson.encode({ o = outcome, t = tenant_of(K, id), r = r }))
end
