-- Applies a batch of job completions, idempotently.
--
-- Every applied completion leaves its lease token in the job's state
-- (`<code><pri>:<token>`, e.g. `k1:42.7` for a success), until the job is leased
-- again. So a completion sent again because the reply to the first send was lost
-- (a Redis restart, a cut connection) is recognised as already applied (flag 2,
-- stats.duplicate_acks), not counted as stale.
--
-- A completion whose lease expired and was taken back by a heartbeat (the job is
-- `q<pri>`, back in ready, and its attempt count is still this attempt's: nobody
-- leased it since) is still applied (flag 4, stats.late_acks) when it ends the attempt
-- (ok, expire, dead, retry): the job's work is done, so it does not run again now. Its stale ready-list entry is dropped by the fetch
-- that reaches it, as for a cancelled job.
--
-- A completion for a job whose record is gone (finished and deleted: retention 0,
-- expired, evicted or purged) has nothing to apply (flag 3, stats.gone_acks).
-- Any other completion carries a token that is not the job's (its lease was taken
-- back and the job moved on): refused, flag 0, stats.stale.
-- KEYS: jobs state att r0 r1 r2 sched leases stats dead done hist wake batches batchdone
-- ARGV: retention ms (0 = delete finished records), dead max count, dead max age ms,
--       history cap, then groups of 7: id, token, op, delay ms, attempt record JSON,
--       batch id, attempt number (0 = unknown)
-- ops: ok, retry, dead, snooze, defer, release, expire, lost (the worker gave the job up
-- because its lease was taken back or it was cancelled: nothing to apply, not counted)
-- Returns one flag per completion: 1 applied, 0 refused as stale, 2 already applied,
-- 3 job gone, 4 applied after its lease was taken back; then the batches finished.
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], ready = { KEYS[4], KEYS[5], KEYS[6] },
            sched = KEYS[7], leases = KEYS[8], stats = KEYS[9], dead = KEYS[10], done = KEYS[11],
            hist = KEYS[12], wake = KEYS[13], batches = KEYS[14], batchdone = KEYS[15] }
local retention, dead_max, dead_age, hist_cap =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local res = {}
local n_ok, n_running, n_stale, n_failed, n_released, n_later = 0, 0, 0, 0, 0, 0
local n_dup, n_gone, n_late, n_unready = 0, 0, 0, 0
local released = {}

local function finish(id, code, pri, tok)
  archive(K, id, code, now)
  if retention > 0 then
    redis.call('HSET', K.state, id, code .. pri .. ':' .. tok)
    redis.call('ZADD', K.done, now + retention, id)
  else
    purge(K, id)
  end
end

-- Applies op to a job that was running under tok (or, late, whose lease tok was
-- taken back and which waits in ready since). Tenant counters: a running job stops
-- running (left_running); a late one was already counted out of running by the reaper.
local function apply(id, tok, op, p, delay, entry, batch, late)
  local t = tenant_of(K, id)
  local final = op == 'ok' or op == 'expire' or op == 'dead'
  if late then
    if final then finished_only(t) end
  else
    left_running(t, final, tok)
  end
  if op == 'ok' then
    n_ok = n_ok + 1
    wf_finished(K, id, 'ok')
    finish(id, 'k', p, tok)
    batch_finished(K, batch, true)
  elseif op == 'expire' then
    redis.call('HINCRBY', K.stats, 'expired', 1)
    wf_finished(K, id, 'expire')
    finish(id, 'x', p, tok)
    batch_finished(K, batch, false)
  elseif op == 'retry' then
    -- A late retry's failed attempt was counted when its lease was reaped.
    if not late then n_failed = n_failed + 1 end
    append_history(K, id, entry, hist_cap)
    redis.call('ZADD', K.sched, now + delay, id)
    n_later = n_later + 1
    redis.call('HSET', K.state, id, 'y' .. p .. ':' .. tok)
    redis.call('HINCRBY', K.stats, 'retrying', 1)
  elseif op == 'dead' then
    if not late then n_failed = n_failed + 1 end
    append_history(K, id, entry, hist_cap)
    to_dead(K, id, p, now)
    redis.call('HSET', K.state, id, 'd' .. p .. ':' .. tok)
    batch_finished(K, batch, false)
    wf_finished(K, id, 'dead')
  elseif op == 'snooze' or op == 'defer' then
    -- defer: held back by a limit, a cap or a breaker; like a snooze, no attempt counted.
    redis.call('HINCRBY', K.att, id, -1)
    redis.call('ZADD', K.sched, now + delay, id)
    n_later = n_later + 1
    redis.call('HSET', K.state, id, 's' .. p .. ':' .. tok)
    redis.call('HINCRBY', K.stats, 'scheduled', 1)
    if op == 'snooze' then
      redis.call('HINCRBY', K.stats, 'snoozed', 1)
    else
      redis.call('HINCRBY', K.stats, 'deferred', 1)
    end
  else -- release: back to the front of its ready list, attempt not counted
    redis.call('HINCRBY', K.att, id, -1)
    released[#released + 1] = { id, p, t }
    redis.call('HSET', K.state, id, 'q' .. p .. ':' .. tok)
    n_released = n_released + 1
  end
  -- A late job leaves ready (its list entry is dropped when a fetch reaches it).
  if late then n_unready = n_unready + 1 end
end

-- Ops applied late, to a job reaped from the completion's lease (state `q<p>!<token>`)
-- and not leased since. Not release, snooze or defer: the reaped job is in ready anyway,
-- as they asked. (A plain `q<p>` with the same attempt count is the older form.)
local LATE_OK = { ok = true, expire = true, dead = true, retry = true }
local FINAL_OP = { ok = true, expire = true, dead = true }
local DEDUP = dedup_on(K)

for i = 5, #ARGV, 7 do
  local id, tok, op = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local delay, entry, batch = tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local attempt = tonumber(ARGV[i + 6]) or 0
  local st = redis.call('HGET', K.state, id)
  if op == 'lost' then
    res[#res + 1] = 0
  elseif not st then
    n_gone = n_gone + 1
    res[#res + 1] = 3
  elseif code_of(st) == 'r' and string.sub(st, 4) == tok then
    redis.call('ZREM', K.leases, id)
    n_running = n_running + 1
    apply(id, tok, op, pri_of(st), delay, entry, batch, false)
    if DEDUP then dedup_settle(K, id, FINAL_OP[op], now) end
    res[#res + 1] = 1
  elseif tok ~= '' and string.sub(st, 3) == ':' .. tok then
    -- This very completion was applied before (its reply was lost).
    n_dup = n_dup + 1
    res[#res + 1] = 2
  elseif LATE_OK[op] and code_of(st) == 'q' and tok ~= '' and string.sub(st, 3) == '!' .. tok then
    -- Reaped from this very lease and not leased again since: the attempt did finish.
    n_late = n_late + 1
    apply(id, tok, op, pri_of(st), delay, entry, batch, true)
    if DEDUP then dedup_settle(K, id, FINAL_OP[op], now) end
    res[#res + 1] = 4
  elseif LATE_OK[op] and code_of(st) == 'q' and #st == 2 and attempt > 0
      and tonumber(redis.call('HGET', K.att, id) or '0') == attempt then
    n_late = n_late + 1
    apply(id, tok, op, pri_of(st), delay, entry, batch, true)
    if DEDUP then dedup_settle(K, id, FINAL_OP[op], now) end
    res[#res + 1] = 4
  else
    n_stale = n_stale + 1
    res[#res + 1] = 0
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
if n_dup > 0 then redis.call('HINCRBY', K.stats, 'duplicate_acks', n_dup) end
if n_gone > 0 then redis.call('HINCRBY', K.stats, 'gone_acks', n_gone) end
if n_late > 0 then redis.call('HINCRBY', K.stats, 'late_acks', n_late) end
if n_unready > 0 then redis.call('HINCRBY', K.stats, 'ready', -n_unready) end

-- Expire finished records and bound the dead letters; at most a few per
-- completion, so the work per call stays bounded and keeps up with the flow.
local limit = 2 * (#ARGV - 4) / 7 + 10
local old = redis.call('ZRANGEBYSCORE', K.done, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(old) do
  redis.call('ZREM', K.done, id)
  purge(K, id)
end
trim_dead(K, now, dead_max, dead_age, limit)
-- After the flags: the batches this call finished.
for _, b in ipairs(FIRED) do res[#res + 1] = b end
return res
