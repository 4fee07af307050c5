-- Deletes a finished job's record (succeeded, cancelled or expired) before its retention
-- ends: an operator's "delete". Dead letters are purged by deadletters.lua, which counts
-- them; the counters of finished jobs are totals and do not change. One job per call.
-- KEYS: jobs state att hist done
-- ARGV: id
-- Returns 1 when a finished job was deleted, else 0.
local K = { jobs = KEYS[1], state = KEYS[2], att = KEYS[3], hist = KEYS[4], done = KEYS[5] }
local id = ARGV[1]
local st = redis.call('HGET', K.state, id)
if not st then return 0 end
local c = code_of(st)
if c ~= 'k' and c ~= 'c' and c ~= 'x' then return 0 end
purge(K, id)
redis.call('ZREM', K.done, id)
return 1
