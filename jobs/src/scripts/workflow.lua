-- One workflow's state, in the workflow's own slot (`{wf:<id>}`): every operation on
-- it is one call of this script, so each is atomic and each is safe to run again.
--
-- Steps and their states (`st`): w waiting for dependencies, q released (its job is
-- enqueued, or about to be: `rel` holds the released steps whose enqueue is not yet
-- confirmed), k succeeded, f failed (dead, expired, or failed by a dependency),
-- c cancelled, s skipped. A step's `rem` counts its unresolved dependency edges; `out`
-- lists its dependants as a JSON array of [step, policy]; `verdict` keeps the worst
-- resolution a dependant got so far ('f' fail, 's' skip). When `rem` reaches 0 the
-- dependant fails, is skipped, or is released. Work per call is O(steps touched).
-- `relby` keeps, per ended step, the steps its end released (JSON array), so applying
-- that end again (a pump that stopped before confirming) hands back just those; and per
-- adder ('+<step>') the steps its adds released, handed back at its end if unconfirmed.
-- A submission larger than one call is stored in parts: `stage` calls (state
-- `staging`: nothing released, the steps ready at once are kept in `ready`), then one
-- `submit` call with the last part, which releases them all and starts the workflow.
-- KEYS: meta spec st rem out verdict res err rel relby ready
-- ARGV: op, keep ms (how long a finished workflow is kept), then per op:
--   submit: tenant, parent, parent step, depth, then triples name, spec JSON, deps JSON
--   stage:  as submit, for every part but the last
--   add:    adder step, then triples name, spec JSON, deps JSON
--   apply:  quadruples step, outcome (ok | dead | expire | cancel), tenant, result JSON ('' = none)
--   cancel: (nothing)
--   confirm: step... (enqueued: no longer unconfirmed)
--   start:  (nothing) releases the next part of the steps ready at submission
--   resume: (nothing) the next part of those, else the released steps not yet confirmed
--           ('!gone' if unknown; a workflow still staging is dropped)
-- Returns { state, tenant, parent, parent step, name1, spec1, name2, spec2, ... }: the
-- workflow's state and the steps to enqueue (cancel: to cancel; confirm: cancelled
-- meanwhile). Errors are returned as { '!<reason>', detail }.
local K = { meta = KEYS[1], spec = KEYS[2], st = KEYS[3], rem = KEYS[4], out = KEYS[5],
            verdict = KEYS[6], res = KEYS[7], err = KEYS[8], rel = KEYS[9],
            relby = KEYS[10], ready = KEYS[11] }
local op, keep = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local released = {}
local open_delta, failed_delta = 0, 0
local WORK = {}
local staging = false

local function release(name)
  if staging then
    redis.call('SADD', K.ready, name)
    return
  end
  redis.call('HSET', K.st, name, 'q')
  redis.call('SADD', K.rel, name)
  released[#released + 1] = name
end

-- The class a finished step hands its dependants: ok, fail or skip.
local CLASS = { k = 'ok', f = 'fail', c = 'fail', s = 'skip' }

-- Resolves the edge to waiting step d (policy fail | skip | run) from a dependency
-- that ended with `class`.
local function edge(d, policy, class)
  if redis.call('HGET', K.st, d) ~= 'w' then return end
  local v = nil
  if class == 'fail' then
    if policy == 'fail' then v = 'f' elseif policy == 'skip' then v = 's' end
  elseif class == 'skip' then
    if policy ~= 'run' then v = 's' end
  end
  if v == 'f' or (v == 's' and not redis.call('HGET', K.verdict, d)) then
    redis.call('HSET', K.verdict, d, v)
  end
  if redis.call('HINCRBY', K.rem, d, -1) <= 0 then
    local fin = redis.call('HGET', K.verdict, d)
    if fin == 'f' then
      redis.call('HSET', K.st, d, 'f')
      redis.call('HSET', K.err, d, 'a dependency failed')
      WORK[#WORK + 1] = { d, 'fail' }
    elseif fin == 's' then
      redis.call('HSET', K.st, d, 's')
      WORK[#WORK + 1] = { d, 'skip' }
    else
      release(d)
    end
  end
end

-- Ends the steps queued in WORK (each with its class): resolves their dependants, and
-- theirs, iteratively.
local function drain()
  local i = 1
  while i <= #WORK do
    local n, c = WORK[i][1], WORK[i][2]
    open_delta = open_delta - 1
    if c == 'fail' then failed_delta = failed_delta + 1 end
    local outs = redis.call('HGET', K.out, n)
    if outs then
      for _, e in ipairs(cjson.decode(outs)) do edge(e[1], e[2], c) end
    end
    i = i + 1
  end
  WORK = {}
end

-- A step just ended with `class`.
local function settle(name, class)
  WORK[#WORK + 1] = { name, class }
  drain()
end

local function expire_all()
  for _, key in pairs(K) do redis.call('PEXPIRE', key, keep) end
end

-- Applies the counters; the workflow ends when no step is open.
local function conclude()
  local open = redis.call('HINCRBY', K.meta, 'open', open_delta)
  if failed_delta ~= 0 then redis.call('HINCRBY', K.meta, 'failed', failed_delta) end
  if open <= 0 and redis.call('HGET', K.meta, 'state') == 'running' then
    local state = 'succeeded'
    if tonumber(redis.call('HGET', K.meta, 'failed') or '0') > 0 then state = 'failed' end
    redis.call('HSET', K.meta, 'state', state, 'finished', now)
    expire_all()
  end
end

-- Records new steps (triples from ARGV[first]); existing names are left alone. Edges
-- to steps already finished resolve at once. Returns the names seen, new or not.
local function add_steps(first, extra_out)
  local outs, names, fresh = {}, {}, {}
  for i = first, #ARGV, 3 do
    local name = ARGV[i]
    names[#names + 1] = name
    if redis.call('HSETNX', K.spec, name, ARGV[i + 1]) == 1 then
      fresh[#fresh + 1] = { name, cjson.decode(ARGV[i + 2]) }
    end
  end
  -- First every new step exists and waits, so a dependency on a sibling resolves right.
  for _, f in ipairs(fresh) do
    local name, deps = f[1], f[2]
    redis.call('HSET', K.st, name, 'w')
    redis.call('HSET', K.rem, name, #deps)
    if extra_out then
      outs[name] = {}
      for _, e in ipairs(extra_out) do
        table.insert(outs[name], e)
        redis.call('HINCRBY', K.rem, e[1], 1)
      end
    end
  end
  open_delta = open_delta + #fresh
  redis.call('HINCRBY', K.meta, 'total', #fresh)
  local late = {}
  for _, f in ipairs(fresh) do
    local name, deps = f[1], f[2]
    for _, d in ipairs(deps) do
      local ds = redis.call('HGET', K.st, d[1])
      if ds and CLASS[ds] then
        late[#late + 1] = { name, d[2], CLASS[ds] }
      else
        outs[d[1]] = outs[d[1]] or {}
        table.insert(outs[d[1]], { name, d[2] })
      end
    end
  end
  for s, list in pairs(outs) do
    local have = redis.call('HGET', K.out, s)
    if have then
      for _, e in ipairs(cjson.decode(have)) do table.insert(list, e) end
    end
    if #list > 0 then redis.call('HSET', K.out, s, cjson.encode(list)) end
  end
  for _, f in ipairs(fresh) do
    if #f[2] == 0 then release(f[1]) end
  end
  for _, l in ipairs(late) do
    edge(l[1], l[2], l[3])
    drain()
  end
  return names
end

local function reply(extra)
  local m = redis.call('HMGET', K.meta, 'state', 'tenant', 'parent', 'pstep')
  local r = { m[1] or '', m[2] or '', m[3] or '', m[4] or '' }
  local seen = {}
  for _, list in ipairs(extra) do
    for _, name in ipairs(list) do
      if not seen[name] then
        seen[name] = true
        r[#r + 1] = name
        r[#r + 1] = redis.call('HGET', K.spec, name) or ''
      end
    end
  end
  return r
end

-- Releases up to PART of the steps kept in `ready` at submission; the submitter (or a
-- resume) asks for the next part with `start` until none is handed back.
local PART = 1000
local function start_part()
  local names = redis.call('SPOP', K.ready, PART)
  for _, n in ipairs(names) do
    if redis.call('HGET', K.st, n) == 'w' then release(n) end
  end
end

if op == 'submit' or op == 'stage' then
  local was = redis.call('HGET', K.meta, 'state')
  if was and was ~= 'staging' then
    -- Submitted before: hand back the released steps whose enqueue was not confirmed.
    return reply({ redis.call('SMEMBERS', K.rel) })
  end
  if not was then
    redis.call('HSET', K.meta, 'tenant', ARGV[3], 'parent', ARGV[4], 'pstep', ARGV[5], 'depth', ARGV[6],
      'state', 'staging', 'open', 0, 'failed', 0, 'total', 0, 'created', now)
  end
  -- Nothing ends while staging: no step has been released yet.
  staging = true
  add_steps(7, nil)
  if op == 'stage' then
    redis.call('HINCRBY', K.meta, 'open', open_delta)
    return reply({})
  end
  staging = false
  redis.call('HSET', K.meta, 'state', 'running')
  start_part()
  conclude()
  return reply({ released })
elseif op == 'start' then
  -- The next part of the steps ready at submission (none left: nothing handed back).
  if redis.call('HGET', K.meta, 'state') ~= 'running' then return reply({}) end
  start_part()
  return reply({ released })
elseif op == 'add' then
  if redis.call('HGET', K.meta, 'state') ~= 'running' then return { '!finished', '' } end
  local adder = ARGV[3]
  if redis.call('HGET', K.st, adder) ~= 'q' then return { '!adder', adder } end
  for i = 4, #ARGV, 3 do
    for _, d in ipairs(cjson.decode(ARGV[i + 2])) do
      local known = redis.call('HEXISTS', K.spec, d[1]) == 1
      if not known then
        for j = 4, #ARGV, 3 do if ARGV[j] == d[1] then known = true end end
      end
      if not known then return { '!dependency', d[1] } end
    end
  end
  -- Every dependant of the adder also waits for the steps it adds.
  local extra = {}
  local outs = redis.call('HGET', K.out, adder)
  if outs then extra = cjson.decode(outs) end
  local names = add_steps(4, extra)
  -- What this add released is kept per adder (field '+<adder>': no step name has a '+'),
  -- so the adder's end hands back any it left unenqueued: an adder whose worker died
  -- between this call and enqueueing the steps would otherwise leave them, and every
  -- step after them, waiting for ever.
  if #released > 0 then
    local have = redis.call('HGET', K.relby, '+' .. adder)
    local list = {}
    if have then list = cjson.decode(have) end
    for _, n in ipairs(released) do list[#list + 1] = n end
    redis.call('HSET', K.relby, '+' .. adder, cjson.encode(list))
  end
  conclude()
  -- A retried adder gets back its steps still unconfirmed, to enqueue them again.
  local again = {}
  for _, n in ipairs(names) do
    if redis.call('SISMEMBER', K.rel, n) == 1 then again[#again + 1] = n end
  end
  return reply({ released, again })
elseif op == 'apply' then
  if redis.call('EXISTS', K.meta) == 0 then return { '!gone', '' } end
  local owner = redis.call('HGET', K.meta, 'tenant')
  local again = {}
  for i = 3, #ARGV, 4 do
    local step, outcome, tenant, result = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    -- A job of another tenant cannot end this workflow's step.
    if tenant == owner then
      -- The steps this step added and released that are still unconfirmed (its worker
      -- may have died before enqueueing them): enqueued again (ids make it idempotent).
      local added = redis.call('HGET', K.relby, '+' .. step)
      if added then
        for _, n in ipairs(cjson.decode(added)) do
          if redis.call('SISMEMBER', K.rel, n) == 1 then again[#again + 1] = n end
        end
      end
      local s = redis.call('HGET', K.st, step)
      if s == 'q' then
        local code = 'k'
        if outcome == 'cancel' then code = 'c' elseif outcome ~= 'ok' then code = 'f' end
        redis.call('HSET', K.st, step, code)
        redis.call('SREM', K.rel, step)
        if result ~= '' then redis.call('HSET', K.res, step, result) end
        if code ~= 'k' then redis.call('HSET', K.err, step, outcome) end
        local from = #released
        settle(step, CLASS[code])
        if #released > from then
          local mine = {}
          for j = from + 1, #released do mine[#mine + 1] = released[j] end
          redis.call('HSET', K.relby, step, cjson.encode(mine))
        end
      else
        -- Applied before (or the workflow was cancelled): hand back what this step's
        -- end released and is still unconfirmed.
        local by = redis.call('HGET', K.relby, step)
        if by then
          for _, n in ipairs(cjson.decode(by)) do
            if redis.call('SISMEMBER', K.rel, n) == 1 then again[#again + 1] = n end
          end
        end
      end
    end
  end
  conclude()
  return reply({ released, again })
elseif op == 'cancel' then
  if redis.call('HGET', K.meta, 'state') ~= 'running' then return reply({}) end
  local all = redis.call('HGETALL', K.st)
  local live = {}
  local n = 0
  for i = 1, #all, 2 do
    local s = all[i + 1]
    if s == 'w' or s == 'q' then
      redis.call('HSET', K.st, all[i], 'c')
      n = n + 1
      if s == 'q' then live[#live + 1] = all[i] end
    end
  end
  redis.call('DEL', K.rel)
  redis.call('HSET', K.meta, 'state', 'cancelled', 'open', 0, 'finished', now)
  redis.call('HINCRBY', K.meta, 'cancelled', n)
  expire_all()
  return reply({ live })
elseif op == 'resume' then
  local was = redis.call('HGET', K.meta, 'state')
  if not was then return { '!gone', '' } end
  if was == 'staging' then
    -- Its submitter stopped before the last part: the workflow was never whole, and no
    -- step of it ran. Dropped (the submitter got no id back, or an error).
    for _, key in pairs(K) do redis.call('DEL', key) end
    return { '!gone', '' }
  end
  start_part()
  if #released > 0 then return reply({ released }) end
  return reply({ redis.call('SMEMBERS', K.rel) })
elseif op == 'confirm' then
  local gone = {}
  for i = 3, #ARGV do
    redis.call('SREM', K.rel, ARGV[i])
    if redis.call('HGET', K.st, ARGV[i]) == 'c' then gone[#gone + 1] = ARGV[i] end
  end
  return reply({ gone })
end
return { '!op', op }
