-- Fleet-wide protection of one outside service, by limit key: rate (GCRA with
-- reservations, plus a one-second admission log), concurrency cap (leased slots),
-- circuit breaker (closed / open / half-open with one probe), and slow-down.
-- KEYS: tat (string), cap (zset holder -> lease end), brk (hash), resv (zset holder ->
--       reserved time), log (zset of admissions in the last second), conf (hash: run-time
--       overrides of rate, burst, concurrency, failures, cooldown_ms)
-- ARGV: op (acquire | release | success | failure | slowdown | status), holder,
--       rate per second (0 = none), burst, concurrency (0 = none), lease ms,
--       breaker failures (0 = no breaker), cooldown ms, slow-down ms
local K = { tat = KEYS[1], cap = KEYS[2], brk = KEYS[3], resv = KEYS[4], log = KEYS[5], conf = KEYS[6] }
local op, holder = ARGV[1], ARGV[2]
local rate, burst, cap, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local fails, cooldown, extra = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local conf = redis.call('HGETALL', K.conf)
for i = 1, #conf, 2 do
  local k, v = conf[i], tonumber(conf[i + 1])
  if v then
    if k == 'rate' then rate = v
    elseif k == 'burst' then burst = v
    elseif k == 'concurrency' then cap = v
    elseif k == 'failures' then fails = v
    elseif k == 'cooldown_ms' then cooldown = v end
  end
end
if burst < 1 then burst = 1 end
local now = now_ms()
local state = redis.call('HGET', K.brk, 'state') or 'closed'
local ttl = math.max(lease, cooldown, 1000) * 10

-- Tokens a new request could take right now (for metrics).
local function tokens()
  if rate <= 0 then return -1 end
  local T = 1000 / rate
  local tat = tonumber(redis.call('GET', K.tat) or '0')
  local used = math.max(0, tat - now) / T
  return math.max(0, math.floor(burst - used))
end

if op == 'acquire' then
  local blocked = tonumber(redis.call('HGET', K.brk, 'until') or '0')
  if blocked > now then return { 0, blocked - now, 'slowdown', state, tokens() } end

  local probe = false
  if fails > 0 and state ~= 'closed' then
    if state == 'open' then
      local reopen = tonumber(redis.call('HGET', K.brk, 'open_until') or '0')
      if now < reopen then return { 0, reopen - now, 'breaker', state, tokens() } end
      state = 'half'
      redis.call('HSET', K.brk, 'state', 'half')
    end
    local p = redis.call('HGET', K.brk, 'probe')
    local p_until = tonumber(redis.call('HGET', K.brk, 'probe_until') or '0')
    if p and p ~= holder and p_until > now then
      return { 0, math.max(50, math.min(p_until - now, cooldown)), 'breaker', state, tokens() }
    end
    probe = true
  end

  if cap > 0 then
    redis.call('ZREMRANGEBYSCORE', K.cap, '-inf', now)
    if (not redis.call('ZSCORE', K.cap, holder)) and redis.call('ZCARD', K.cap) >= cap then
      return { 0, 100, 'concurrency', state, tokens() }
    end
  end

  if rate > 0 then
    local T = 1000 / rate
    local r = redis.call('ZSCORE', K.resv, holder)
    local admit = false
    if r then
      r = tonumber(r)
      if r > now then return { 0, math.ceil(r - now), 'rate', state, tokens() } end
      redis.call('ZREM', K.resv, holder)
      admit = true
    else
      local tat = tonumber(redis.call('GET', K.tat) or '0')
      if tat < now then tat = now end
      local at = tat - T * (burst - 1)
      redis.call('SET', K.tat, tostring(tat + T), 'PX', math.ceil(tat + T - now) + ttl)
      if at > now then
        redis.call('ZADD', K.resv, at, holder)
        redis.call('PEXPIRE', K.resv, math.ceil(at - now) + ttl)
        return { 0, math.ceil(at - now), 'rate', state, tokens() }
      end
      admit = true
    end
    -- Hard guard: never more than max(rate, burst) admissions in any one second. The
    -- log spans 1025 ms, so starts measured on the workers' clocks (a few ms after the
    -- admission) cannot exceed the rate in any one-second window either.
    local window = math.max(math.floor(rate), burst, 1)
    redis.call('ZREMRANGEBYSCORE', K.log, '-inf', now - 1025)
    if admit and redis.call('ZCARD', K.log) >= window then
      local oldest = redis.call('ZRANGE', K.log, 0, 0, 'WITHSCORES')
      local at = tonumber(oldest[2]) + 1025
      redis.call('ZADD', K.resv, at, holder)
      return { 0, math.max(1, math.ceil(at - now)), 'rate', state, tokens() }
    end
    redis.call('ZADD', K.log, now, holder .. '@' .. now)
    redis.call('PEXPIRE', K.log, 2000)
  end

  if cap > 0 then
    redis.call('ZADD', K.cap, now + lease, holder)
    redis.call('PEXPIRE', K.cap, lease + ttl)
  end
  if probe then
    redis.call('HSET', K.brk, 'probe', holder, 'probe_until', now + lease)
  end
  return { 1, 0, '', state, tokens() }
elseif op == 'renew' then
  if cap > 0 then redis.call('ZADD', K.cap, 'XX', now + lease, holder) end
  return { 1, 0, '', state, tokens() }
elseif op == 'release' then
  redis.call('ZREM', K.cap, holder)
  return { 1, 0, '', state, tokens() }
elseif op == 'success' or op == 'failure' then
  redis.call('ZREM', K.cap, holder)
  if fails > 0 then
    if op == 'success' then
      if state ~= 'closed' then
        redis.call('HSET', K.brk, 'state', 'closed')
        redis.call('HDEL', K.brk, 'probe', 'probe_until', 'open_until')
        state = 'closed'
      end
      redis.call('HSET', K.brk, 'failures', 0)
    else
      local n = redis.call('HINCRBY', K.brk, 'failures', 1)
      if state == 'half' or (state == 'closed' and n >= fails) then
        redis.call('HSET', K.brk, 'state', 'open', 'open_until', now + cooldown)
        redis.call('HDEL', K.brk, 'probe', 'probe_until')
        state = 'open'
      end
    end
    redis.call('PEXPIRE', K.brk, ttl + cooldown)
  end
  return { 1, 0, '', state, tokens() }
elseif op == 'slowdown' then
  local blocked = tonumber(redis.call('HGET', K.brk, 'until') or '0')
  if now + extra > blocked then redis.call('HSET', K.brk, 'until', now + extra) end
  redis.call('PEXPIRE', K.brk, extra + ttl)
  return { 1, 0, '', state, tokens() }
end
-- status
return { 1, 0, '', state, tokens() }
