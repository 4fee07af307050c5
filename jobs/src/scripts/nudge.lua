-- Makes a scheduled or retrying job due now (an operator's "retry now"): its entry in the
-- schedule set gets the current time and idle workers are woken; the next fetch promotes
-- it like any due job and moves the counters there. One job per call.
-- KEYS: state sched wake
-- ARGV: id
-- Returns 1 when the job was waiting and is now due, else 0.
local K = { state = KEYS[1], sched = KEYS[2], wake = KEYS[3] }
local id = ARGV[1]
local st = redis.call('HGET', K.state, id)
if not st then return 0 end
local c = code_of(st)
if c ~= 's' and c ~= 'y' then return 0 end
if not redis.call('ZSCORE', K.sched, id) then return 0 end
redis.call('ZADD', K.sched, now_ms(), id)
wake(K)
return 1
