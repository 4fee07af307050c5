-- A worker's periodic call: renews the leases of all its running jobs in one
-- call, records the worker as alive, and takes back expired leases of any worker.
--
-- An expired lease means the job's worker stopped (it died, hung or was cut off) while
-- the job was running: the job is a suspect, not guilty. Its crash count (`crashes`)
-- goes up and it waits in the `suspects` list, which fetch leases one at a time to a
-- worker holding nothing else (token suffix `i`, "isolated"). So a job reaped beside
-- others is not charged an attempt; a job reaped while it ran alone is (it is the cause,
-- or its worker hung or was cut off with it alone: max attempts stays the bound). A job
-- whose crash count reaches the limit ends in the dead letters, "crashed its worker N
-- times", and one reaped alone on its last attempt ends there too.
-- KEYS: jobs state att r0 r1 r2 leases stats dead hist workers wake batches batchdone workerjobs
--       crashes suspects conf
-- ARGV: lease ms, instance id, reap limit, dead max count, dead max age ms,
--       history cap, crash limit (conf `crash_limit` overrides it), then pairs: id, token
-- Returns: { reaped count, lost id, lost id, ... } where a lost id is a job
-- this worker holds whose lease is no longer its own.
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], ready = { KEYS[4], KEYS[5], KEYS[6] },
            leases = KEYS[7], stats = KEYS[8], dead = KEYS[9], hist = KEYS[10],
            workers = KEYS[11], wake = KEYS[12], batches = KEYS[13], batchdone = KEYS[14],
            workerjobs = KEYS[15], crashes = KEYS[16], suspects = KEYS[17], conf = KEYS[18] }
local lease_ms, instance, reap_limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local dead_max, dead_age, hist_cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local crash_limit = tonumber(ARGV[7])
local now = now_ms()
local out = { 0 }
local DEDUP = dedup_on(K)

for i = 8, #ARGV, 2 do
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
for i = 8, #ARGV, 2 do
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
if #expired > 0 then
  local set = tonumber(redis.call('HGET', K.conf, 'crash_limit') or '')
  if set and set >= 1 then crash_limit = set end
end
local back, charged = 0, 0
for _, id in ipairs(expired) do
  redis.call('ZREM', K.leases, id)
  local st = redis.call('HGET', K.state, id)
  if st and code_of(st) == 'r' then
    local p = pri_of(st)
    local t = tenant_of(K, id)
    -- A suspect's token ends in '.i' ('.ic' when it counts against its tenant's cap).
    local alone = string.match(st, '%.ic?$') ~= nil
    local a = tonumber(redis.call('HGET', K.att, id) or '1')
    local crashes = redis.call('HINCRBY', K.crashes, id, 1)
    local env = redis.call('HGET', K.jobs, id)
    local max, batch = 1, nil
    if env then
      local ok, decoded = pcall(cjson.decode, env)
      if ok and type(decoded) == 'table' then
        if tonumber(decoded.max_attempts) then max = tonumber(decoded.max_attempts) end
        if type(decoded.batch) == 'string' then batch = decoded.batch end
      end
    end
    local what
    if alone then
      what = 'lease expired: its worker stopped while running it alone (crash ' .. crashes .. ' of ' .. crash_limit
        .. ', attempt ' .. a .. ' of ' .. max .. ')'
      charged = charged + 1
    else
      -- Not charged: the attempt is handed back, the job runs next alone.
      what = 'lease expired: its worker stopped (crash ' .. crashes .. ' of ' .. crash_limit
        .. ', attempt not counted)'
      redis.call('HINCRBY', K.att, id, -1)
    end
    local to_the_dead = crashes >= crash_limit or (alone and a >= max)
    if crashes >= crash_limit then
      what = 'crashed its worker ' .. crashes .. ' times (' .. what .. ')'
    elseif to_the_dead then
      what = what .. ': no attempts left'
    end
    append_history(K, id, cjson.encode({ attempt = a, at = now, error = what }), hist_cap)
    redis.call('HINCRBY', K.stats, 'running', -1)
    redis.call('HINCRBY', K.stats, 'lease_expired', 1)
    left_running(t, to_the_dead, st)
    if to_the_dead then
      to_dead(K, id, p, now)
      batch_finished(K, batch, false)
      wf_finished(K, id, 'dead')
    else
      -- Suspects wait apart from the tenants' ready lists; fetch hands them out alone.
      redis.call('RPUSH', K.suspects, id)
      -- 'q<p>!<token>': ready again, reaped from that lease, so a completion of that very
      -- lease arriving late (before another attempt is leased) is still recognised.
      redis.call('HSET', K.state, id, 'q' .. p .. '!' .. string.sub(st, 4))
      redis.call('HINCRBY', K.stats, 'ready', 1)
      back = back + 1
    end
    -- A keep-last key's run ended: its waiting job goes on (see prelude).
    if DEDUP then dedup_settle(K, id, to_the_dead, now) end
    out[1] = out[1] + 1
  end
end
if charged > 0 then redis.call('HINCRBY', K.stats, 'failed', charged) end
tenants_settle(K)
if back > 0 then wake(K) end
if #expired > 0 then trim_dead(K, now, dead_max, dead_age, reap_limit) end
return out
