-- A webhook delivery for one job end, claimed by one notify task (its id is the token; a
-- Celery retry keeps it). 'delivered' once made; 'stale' if the job ended again since.
-- KEYS: job; ARGV: delivery id, token, lease seconds
if redis.call('HGET', KEYS[1], 'webhook_delivery') ~= ARGV[1] then return {'stale', '0'} end
if redis.call('HGET', KEYS[1], 'webhook_delivered') == ARGV[1] then return {'delivered', '0'} end
local t = now()
local owner = redis.call('HGET', KEYS[1], 'webhook_owner')
local until_ = tonumber(redis.call('HGET', KEYS[1], 'webhook_until') or 0)
if owner and owner ~= ARGV[2] and t < until_ then return {'busy', '0'} end
redis.call('HSET', KEYS[1], 'webhook_owner', ARGV[2], 'webhook_until', t + tonumber(ARGV[3]))
return {'claimed', tostring(redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1))}
