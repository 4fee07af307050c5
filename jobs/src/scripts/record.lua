-- Records what a running job reports: its progress or its result, only while the job
-- runs under the lease token given (a late write of an attempt whose lease was taken
-- back, or of a job that already finished, changes nothing). Both are kept beside the
-- job's record and deleted with it (`purge` in the prelude), so they live exactly as
-- long as the finished record (the worker's `retention`).
-- KEYS: state progress results
-- ARGV: id, lease token, what (progress | result), JSON
-- Returns 1 when recorded, 0 when the job does not run under that token.
local K = { state = KEYS[1], progress = KEYS[2], results = KEYS[3] }
local id, tok, what, json = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local st = redis.call('HGET', K.state, id)
if (not st) or code_of(st) ~= 'r' or string.sub(st, 4) ~= tok then return 0 end
if what == 'result' then
  redis.call('HSET', K.results, id, json)
else
  redis.call('HSET', K.progress, id, json)
end
return 1
