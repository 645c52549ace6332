-- What a delivery attempt came to, from the task that holds the claim: 'delivered' (final),
-- a retry (the claim held for its countdown) or a final failure (claim let go). Fields as in
-- claim_delivery.lua, opening with ARGV[7].
-- KEYS: job, fleet metrics, owed webhooks; ARGV: delivery id, token, status text, outcome
-- (delivered | retrying | failed | refused), seconds to hold the claim (retrying), the owed
-- set's member ("<job id>", or "<job id> reviewed"), the event's field prefix
local p = ARGV[7]
if redis.call('HGET', KEYS[1], p .. '_delivery') ~= ARGV[1]
    or redis.call('HGET', KEYS[1], p .. '_owner') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], p .. '_status', ARGV[3])
if ARGV[4] == 'delivered' then
  redis.call('HSET', KEYS[1], p .. '_delivered', ARGV[1])
  redis.call('HDEL', KEYS[1], p .. '_owner', p .. '_until')
  redis.call('SREM', KEYS[3], ARGV[6])
elseif ARGV[4] == 'retrying' then
  redis.call('HSET', KEYS[1], p .. '_until', now() + tonumber(ARGV[5]))
else
  redis.call('HDEL', KEYS[1], p .. '_owner', p .. '_until')
  redis.call('SREM', KEYS[3], ARGV[6])
  if ARGV[4] == 'failed' then redis.call('HINCRBY', KEYS[2], 'failures:webhook', 1) end
end
return 1
