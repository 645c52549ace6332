-- `stylebatch retry`: failed -> pending for every failed render (its crash and device-error
-- counts cleared), and the job done | failed -> running. Reads only the job's failed set.
-- KEYS: job, states, failed, ended, fleet metrics (the prelude's J), crashes, active, specs,
--       device errors, render index
-- ARGV: job id
local reset = redis.call('SMEMBERS', J.failed)
for _, render in ipairs(reset) do
  local raw = redis.call('HGET', KEYS[2], render)
  local state = raw and cjson.decode(raw) or {}
  redis.call('HSET', KEYS[2], render, pending(tonumber(state['attempt'] or 0)))
  redis.call('HDEL', KEYS[6], render)
  redis.call('HDEL', KEYS[9], render)
  redis.call('ZREM', J.ended, 'failed\0' .. render)
end
if #reset > 0 then
  redis.call('DEL', J.failed)
  redis.call('HINCRBY', KEYS[1], 'n_failed', -#reset)
  redis.call('HINCRBY', KEYS[1], 'ended', -#reset)
  redis.call('HSET', KEYS[1], 'status', 'running', 'activity', now())
  redis.call('HDEL', KEYS[1], 'finished', 'reason', 'finalizing_since', 'finalize_owner',
             'finalize_until')
  redis.call('SADD', KEYS[7], ARGV[1])
  for _, key in ipairs({J.job, J.states, J.ended, KEYS[6], KEYS[8], KEYS[9], KEYS[10]}) do
    redis.call('PERSIST', key)
  end
end
return reset
