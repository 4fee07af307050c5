-- A tenant's workflow step quota: how many steps its workflows that have not ended hold.
-- One hash per tenant; a field per root workflow (`w:<id>`: the steps charged to it,
-- nested and added ones included), `_total` (their sum) and `_limit` (the limit the
-- last submission named, which run-time adds obey).
-- KEYS: steps
-- ARGV: op, then per op:
--   submit: workflow id, steps, limit (0: none). A workflow charged before (a
--           re-submission) is not charged again.
--   add:    workflow id, steps (the limit is `_limit`)
--   release: workflow id (it ended: its steps are free again; twice is harmless)
-- Returns { 1 | 0 (refused), total, limit }.
local K = { steps = KEYS[1] }
local op, field = ARGV[1], 'w:' .. ARGV[2]
local function num(f) return tonumber(redis.call('HGET', K.steps, f) or '0') end
if op == 'release' then
  local v = redis.call('HGET', K.steps, field)
  if v then
    redis.call('HDEL', K.steps, field)
    redis.call('HINCRBY', K.steps, '_total', -tonumber(v))
  end
  return { 1, num('_total'), num('_limit') }
end
local n, limit = tonumber(ARGV[3]), 0
if op == 'submit' then
  limit = tonumber(ARGV[4])
  redis.call('HSET', K.steps, '_limit', limit)
  if redis.call('HEXISTS', K.steps, field) == 1 then return { 1, num('_total'), limit } end
elseif op == 'add' then
  limit = num('_limit')
else
  return redis.error_reply('wfquota: unknown op ' .. op)
end
local total = num('_total')
if limit > 0 and total + n > limit then return { 0, total, limit } end
redis.call('HINCRBY', K.steps, field, n)
return { 1, redis.call('HINCRBY', K.steps, '_total', n), limit }
