-- Hand a render back, from the attempt that holds it: running -> pending (a transient error,
-- a broken worker configuration, a device error). With a device error it counts one against
-- the render, and at the cap the render fails instead (running -> failed).
-- KEYS: job, states, failed, ended, fleet metrics (the prelude's J), running, device errors
-- ARGV: render, owner, running field, attempt, device error ('1' or ''), device cap, reason
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return {'missing', '0'} end
local state = cjson.decode(raw)
local status = state['status']
if status ~= 'pending' and status ~= 'running' then return {'ended', '0'} end
if status ~= 'running' or state['owner'] ~= ARGV[2]
    or tonumber(state['attempt']) ~= tonumber(ARGV[4]) then
  superseded()
  return {'superseded', '0'}
end
local t = now()
leave_running(KEYS[6], ARGV[3])
if ARGV[5] == '1' then
  local tries = redis.call('HINCRBY', KEYS[7], ARGV[1], 1)
  if tries >= tonumber(ARGV[6]) then
    local reason = 'device errors on ' .. tries .. ' tries: ' .. ARGV[7]
    redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({status = 'failed', error = reason,
               ended_at = t, attempt = tonumber(ARGV[4])}))
    return {'failed', tostring(ended('failed', t, ARGV[1]))}
  end
end
redis.call('HSET', KEYS[2], ARGV[1], pending(tonumber(ARGV[4])))
redis.call('HSET', KEYS[1], 'activity', t)
return {'released', '0'}
