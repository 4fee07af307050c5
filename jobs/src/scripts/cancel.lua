-- Cancels a job that has not finished. A queued job's list entry stays behind and is
-- dropped when a fetch reaches it; a running job loses its lease, so its worker
-- learns of it at its next heartbeat, stops the handler, and any completion it
-- still sends is refused.
-- KEYS: state sched leases stats done jobs batches batchdone
-- ARGV: id, retention ms
-- Returns { outcome, previous state }: outcome 1 cancelled, 0 unknown job, 2 already final.
local K = { state = KEYS[1], sched = KEYS[2], leases = KEYS[3], stats = KEYS[4], done = KEYS[5],
            jobs = KEYS[6], batches = KEYS[7], batchdone = KEYS[8] }
K.ready = { qkey(K, 'ready:0'), qkey(K, 'ready:1'), qkey(K, 'ready:2') }
local id, retention = ARGV[1], tonumber(ARGV[2])
local st = redis.call('HGET', K.state, id)
if not st then return { 0, '' } end
local c, p = code_of(st), pri_of(st)
if c == 's' or c == 'y' then
  redis.call('ZREM', K.sched, id)
elseif c == 'r' then
  redis.call('ZREM', K.leases, id)
elseif c ~= 'q' then
  return { 2, st }
end
local t = tenant_of(K, id)
if c == 'r' then left_running(t, true, st) else finished_only(t) end
redis.call('HINCRBY', K.stats, GAUGE[c], -1)
redis.call('HINCRBY', K.stats, 'cancelled', 1)
redis.call('HSET', K.state, id, 'c' .. p)
local now = now_ms()
-- A keyed job lets its key go; a keep-last key's waiting job goes on (see prelude).
if dedup_on(K) then dedup_settle(K, id, true, now) end
tenants_settle(K)
redis.call('ZADD', K.done, now + math.max(retention, 3600000), id)
archive(K, id, 'c', now)
wf_finished(K, id, 'cancel')
-- A cancelled job of a batch counts as finished (not succeeded).
local env = redis.call('HGET', K.jobs, id)
if env then
  local ok, decoded = pcall(cjson.decode, env)
  if ok and type(decoded) == 'table' and type(decoded.batch) == 'string' then
    batch_finished(K, decoded.batch, false)
  end
end
return { 1, st }
