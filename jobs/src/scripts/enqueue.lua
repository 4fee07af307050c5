-- Enqueues a chunk of jobs.
-- KEYS: jobs state r0 r1 r2 sched stats wake uniq uniqexp
-- ARGV: groups of 11: id, envelope JSON, priority digit, delay ms, absolute run-at ms (0 = none),
--       unique key ('' = none), unique window ms, tenant ('' = none),
--       dedup mode ('' none, 'd' debounce, 'p' replace, 'k' keep-last), dedup key,
--       debounce max wait ms (the debounce delay is the delay)
-- Returns, per job, the id of the job that holds it: its own id when created, or the
-- id of the existing job (same id enqueued before); or, when a key collapsed it,
-- { id, outcome, replaced id or '', running id or '' } where outcome is
--   throttled  the job holding the unique key inside its window (nothing created)
--   debounced  the pending job of the key, now with these args and a later start
--   replaced   created; the pending job of the key (third) was cancelled for it
--   waiting    created, held until the running job of the key (fourth) ends; a waiting
--              job it replaced, if any, is third
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
for i = 1, #ARGV, 11 do
  local t = ARGV[i + 7]
  if t ~= '' then asked[t] = (asked[t] or 0) + 1 end
end
for t, n in pairs(asked) do
  local quota = tenant_setting(K, 'quota', t)
  if quota > 0 then
    local open = tonumber(redis.call('HGET', qkey(K, 'topen'), t) or '0')
    if open + n > quota then
      local fresh = 0
      for i = 1, #ARGV, 11 do
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
local D, DK = qkey(K, 'dedup'), qkey(K, 'dkey')

-- Writes a new job; held: waits (scheduled) until its key's running job ends.
local function create(i, run_at, held)
  local id, pri, t = ARGV[i], ARGV[i + 2], ARGV[i + 7]
  if redis.call('HSETNX', K.jobs, id, ARGV[i + 1]) == 0 then return false end
  if t ~= '' then
    redis.call('HSET', qkey(K, 'ten'), id, t)
    opened[t] = (opened[t] or 0) + 1
  end
  if held then run_at = now + DEDUP_HOLD_MS end
  if run_at > now then
    redis.call('ZADD', K.sched, run_at, id)
    redis.call('HSET', K.state, id, 's' .. pri)
    nsched = nsched + 1
  else
    push_ready(K, pri, t, id, false)
    redis.call('HSET', K.state, id, 'q' .. pri)
    nready = nready + 1
  end
  return true
end

-- Sets the run-at (ms) in an envelope: its last `,"run_at":` (a string's quotes are
-- escaped, and the envelope's own field comes after the args).
local function with_run_at(env, at)
  local a, b, pos = nil, nil, 1
  while true do
    local x, y = string.find(env, ',"run_at":%d+', pos)
    if not x then break end
    a, b, pos = x, y, y + 1
  end
  if not a then return env end
  return string.sub(env, 1, a - 1) .. ',"run_at":' .. string.format('%d', at) .. string.sub(env, b + 1)
end

-- The collapse of one job with a dedup mode; returns its reply element.
local function dedup(i, run_at)
  local id, mode, key = ARGV[i], ARGV[i + 8], ARGV[i + 9]
  if redis.call('HEXISTS', K.jobs, id) == 1 then return id end
  if mode == 'd' then
    local f = 'd:' .. key
    local v = redis.call('HGET', D, f)
    if v then
      local bar = string.find(v, '|', 1, true)
      local bound, hid = tonumber(string.sub(v, 1, bar - 1)), string.sub(v, bar + 1)
      local hst = redis.call('HGET', K.state, hid)
      if hst and #hst == 2 and (code_of(hst) == 's' or code_of(hst) == 'q') then
        -- The last args win; the start moves to a delay from now, never past the max wait.
        local env = ARGV[i + 1]
        -- The envelope names the job first (ids of keyed jobs need no JSON escapes).
        local head = '{"id":"' .. id .. '"'
        if string.sub(env, 1, #head) == head then
          env = '{"id":"' .. hid .. '"' .. string.sub(env, #head + 1)
        end
        if code_of(hst) == 's' then
          local at = math.min(run_at, bound)
          redis.call('ZADD', K.sched, at, hid)
          redis.call('HSET', K.state, hid, 's' .. ARGV[i + 2])
          env = with_run_at(env, at)
        end
        redis.call('HSET', K.jobs, hid, env)
        redis.call('HINCRBY', K.stats, 'debounced', 1)
        return { hid, 'debounced', '', '' }
      end
    end
    create(i, run_at, false)
    redis.call('HSET', D, f, string.format('%d', now + tonumber(ARGV[i + 10])) .. '|' .. id)
    redis.call('HSET', DK, id, f)
    return id
  elseif mode == 'p' then
    local f = 'p:' .. key
    local old = redis.call('HGET', D, f)
    local ost = old and redis.call('HGET', K.state, old)
    local replaced = ''
    if ost and #ost == 2 and (code_of(ost) == 's' or code_of(ost) == 'q') then
      dedup_supersede(K, old, ost, now)
      replaced = old
    end
    create(i, run_at, false)
    redis.call('HSET', D, f, id)
    redis.call('HSET', DK, id, f)
    if replaced == '' then return id end
    return { id, 'replaced', replaced, '' }
  else -- keep-last
    local wf, rf = 'w:' .. key, 'r:' .. key
    local replaced = ''
    local old = redis.call('HGET', D, wf)
    local ost = old and redis.call('HGET', K.state, old)
    if ost and dedup_waits(ost) then
      dedup_supersede(K, old, ost, now)
      replaced = old
    end
    local r = redis.call('HGET', D, rf)
    local running = r and code_of(redis.call('HGET', K.state, r) or 'c') == 'r'
    if r and not running then redis.call('HDEL', D, rf) end
    create(i, run_at, running)
    redis.call('HSET', D, wf, id)
    if running then
      redis.call('HSET', DK, id, 'h:' .. key)
      return { id, 'waiting', replaced, r }
    end
    redis.call('HSET', DK, id, wf)
    if replaced == '' then return id end
    return { id, 'replaced', replaced, '' }
  end
end

for i = 1, #ARGV, 11 do
  local id = ARGV[i]
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
    if ARGV[i + 8] == '' then
      created[#created + 1] = holder
    else
      created[#created + 1] = { holder, 'throttled', '', '' }
    end
  else
    local fresh, reply = redis.call('HEXISTS', K.jobs, id) == 0, id
    if ARGV[i + 8] ~= '' then
      reply = dedup(i, run_at)
    else
      create(i, run_at, false)
    end
    if fresh and ukey ~= '' then
      local holder_id = reply
      if type(reply) == 'table' then holder_id = reply[1] end
      redis.call('HSET', K.uniq, ukey, holder_id)
      -- now_ms() drops the microseconds, so +1 keeps the window at least as long as asked.
      redis.call('ZADD', K.uniqexp, now + uwindow + 1, ukey)
    end
    created[#created + 1] = reply
  end
end
for t, n in pairs(opened) do redis.call('HINCRBY', qkey(K, 'topen'), t, n) end
if nready > 0 then redis.call('HINCRBY', K.stats, 'ready', nready) end
if nsched > 0 then redis.call('HINCRBY', K.stats, 'scheduled', nsched) end
tenants_settle(K)
if nready + nsched > 0 then
  redis.call('HINCRBY', K.stats, 'enqueued', nready + nsched)
  wake(K)
end
return created
