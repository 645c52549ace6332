-- Take a render for one attempt. pending -> running (attempt + 1); running under a silent or
-- dead owner -> running under the caller (one crash; failed at the cap); running under a
-- live owner -> unchanged ('busy': a duplicate delivery); terminal -> unchanged ('ended').
-- The new attempt number is the fencing token every later transition must carry.
-- KEYS: job, states, failed, ended, fleet metrics (the prelude's J), crashes, running,
--       heartbeats, reaped markers
-- ARGV: render, owner, liveness, crash cap, owner known dead (or ''), running field, task id
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return {'missing', '', '0'} end
local state = cjson.decode(raw)
local status = state['status']
if status ~= 'pending' and status ~= 'running' then return {'ended', status, '0'} end
local t = now()
local attempt = tonumber(state['attempt'] or 0)
local crashes = 0
if status == 'running' then
  local owner = state['owner']
  if owner ~= ARGV[2] then
    local beat = redis.call('ZSCORE', KEYS[8], owner)
    if owner ~= ARGV[5] and beat and t - tonumber(beat) < tonumber(ARGV[3]) then
      return {'busy', owner, '0'}
    end
    local gave_up
    crashes, gave_up = crashed(KEYS[6], ARGV[1], ARGV[4], t, attempt)
    if gave_up > 0 then
      leave_running(KEYS[7], ARGV[6])
      return {'gave_up', tostring(gave_up), '0'}
    end
    redis.call('HSET', KEYS[9], ARGV[1] .. ' ' .. attempt, owner)  -- beat.lua may take it back
  end
else
  redis.call('HINCRBY', KEYS[1], 'n_running', 1)
end
attempt = attempt + 1
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({status = 'running', owner = ARGV[2],
           attempt = attempt, task = ARGV[7], started = t}))
redis.call('HSET', KEYS[7], ARGV[6], ARGV[2] .. ' ' .. attempt)
redis.call('HSET', KEYS[1], 'activity', t)
redis.call('ZADD', KEYS[8], t, ARGV[2])
return {'claimed', tostring(crashes), tostring(attempt)}
