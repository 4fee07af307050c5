-- Replays or purges dead letters named by id (at most a few hundred per call, as sent).
-- replay: the job goes back to the end of its ready list with a fresh set of attempts
-- (its history is kept, its crash count forgotten); purge: its record is deleted. Ids that
-- are not dead are skipped, except that a purge also deletes a dead-letter entry whose
-- state Fleet did not write.
-- KEYS: jobs state att r0 r1 r2 stats dead hist wake
-- ARGV: op (replay | purge), id...
-- Returns the number of jobs moved.
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], ready = { KEYS[4], KEYS[5], KEYS[6] },
            stats = KEYS[7], dead = KEYS[8], hist = KEYS[9], wake = KEYS[10] }
local op = ARGV[1]
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local st = redis.call('HGET', K.state, id)
  -- A purge also takes a dead-letter entry whose state is not one Fleet writes (or is
  -- gone): an operator must always be able to get rid of what the dead letters list.
  local foreign = op == 'purge' and not (st and st ~= '' and string.find('qsyrkdcx', code_of(st), 1, true))
  if foreign and redis.call('ZREM', K.dead, id) == 1 then
    purge(K, id)
    n = n + 1
  elseif st and code_of(st) == 'd' and redis.call('ZREM', K.dead, id) == 1 then
    if op == 'replay' then
      local p = pri_of(st)
      redis.call('HSET', K.att, id, 0)
      redis.call('HDEL', qkey(K, 'crashes'), id)
      redis.call('HSET', K.state, id, 'q' .. p)
      local t = tenant_of(K, id)
      push_ready(K, p, t, id, false)
      if t ~= '' then redis.call('HINCRBY', qkey(K, 'topen'), t, 1) end
    else
      purge(K, id)
    end
    n = n + 1
  end
end
if n > 0 then
  -- Never below zero (a foreign entry may not have been counted).
  if redis.call('HINCRBY', K.stats, 'dead', -n) < 0 then redis.call('HSET', K.stats, 'dead', 0) end
  if op == 'replay' then
    redis.call('HINCRBY', K.stats, 'ready', n)
    redis.call('HINCRBY', K.stats, 'replayed', n)
    wake(K)
  else
    redis.call('HINCRBY', K.stats, 'purged', n)
  end
end
return n
