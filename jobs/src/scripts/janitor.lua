-- Time-based expiry, independent of traffic: every worker calls it once per heartbeat
-- interval (again at once while more remains), so an idle queue returns to its baseline
-- memory. Each call does at most `limit` removals per structure:
--   * finished records (succeeded, expired, cancelled) past their retention (`done`);
--   * dead letters past their age, or over the count cap (trim_dead, which reads the
--     queue's own caps from `conf` when set);
--   * unique keys past their window (`uniqexp` -> `uniq`);
--   * counters of batches whose callbacks were enqueued more than `batch keep ms` ago;
--   * dedup slots of jobs that are gone or ended without their scripts (a record removed
--     by hand): 20 sampled per call; a keep-last key's waiting job is let go at once.
-- KEYS: jobs state att stats dead done hist uniq uniqexp batches batchfin
-- ARGV: limit, dead max count, dead max age ms, batch keep ms
-- Returns { records expired, dead letters evicted, unique keys forgotten,
--           batches forgotten, 1 if more remains else 0 }.
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], stats = KEYS[4], dead = KEYS[5],
            done = KEYS[6], hist = KEYS[7], uniq = KEYS[8], uniqexp = KEYS[9], batches = KEYS[10],
            batchfin = KEYS[11] }
local limit, dead_max, dead_age, batch_keep =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local more = 0

-- Finished records past their retention.
local old = redis.call('ZRANGEBYSCORE', K.done, '-inf', now, 'LIMIT', 0, limit)
local expired = 0
for _, id in ipairs(old) do
  redis.call('ZREM', K.done, id)
  purge(K, id)
  expired = expired + 1
end
if #old == limit then more = 1 end

local evicted = trim_dead(K, now, dead_max, dead_age, limit)
if evicted == limit then more = 1 end

local ukeys = redis.call('ZRANGEBYSCORE', K.uniqexp, '-inf', now, 'LIMIT', 0, limit)
for _, u in ipairs(ukeys) do
  redis.call('ZREM', K.uniqexp, u)
  redis.call('HDEL', K.uniq, u)
end
if #ukeys == limit then more = 1 end

local bl = math.min(limit, 100)
local batches = redis.call('ZRANGEBYSCORE', K.batchfin, '-inf', now - batch_keep, 'LIMIT', 0, bl)
for _, b in ipairs(batches) do
  redis.call('HDEL', K.batches, b .. ':total', b .. ':ok', b .. ':fail', b .. ':cb', b .. ':fired', b .. ':done')
  redis.call('ZREM', K.batchfin, b)
end
if #batches == bl then more = 1 end

if dedup_on(K) then
  for _, id in ipairs(redis.call('HRANDFIELD', qkey(K, 'dkey'), 20)) do
    local st = redis.call('HGET', K.state, id)
    if (not st) or string.find('kdcx', code_of(st), 1, true) then dedup_settle(K, id, true, now) end
  end
end

return { expired, evicted, #ukeys, #batches, more }
