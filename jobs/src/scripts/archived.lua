-- Drops the first entries of a queue's archive list once the scheduler has copied them
-- into PostgreSQL, only if they are still exactly the entries it read: when two
-- schedulers drained the same entries, the second finds other entries at the head and
-- drops nothing (its copy was idempotent), so no entry is dropped uncopied.
-- KEYS: archive
-- ARGV: the entries read, in order
-- Returns the number of entries dropped (0: the head is no longer what was read).
local K = { archive = KEYS[1] }
local n = #ARGV
if n == 0 then return 0 end
local head = redis.call('LRANGE', K.archive, 0, n - 1)
if #head < n then return 0 end
for i = 1, n do
  if head[i] ~= ARGV[i] then return 0 end
end
redis.call('LTRIM', K.archive, n, -1)
return n
