-- A webhook delivery (a job's end, or its review complete) claimed by one notify task (its
-- id is the token; a Celery retry keeps it). 'delivered' once made; 'stale' if the job ended
-- again since, or runs again (a retry re-opened it: its next end is the one delivered). The
-- event's fields on the job record open with ARGV[4]: 'webhook' (job.ended) or
-- 'review_webhook' (job.reviewed).
-- KEYS: job; ARGV: delivery id, token, lease seconds, the event's field prefix
local p = ARGV[4]
if redis.call('HGET', KEYS[1], p .. '_delivery') ~= ARGV[1] then return {'stale', '0'} end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'done' and status ~= 'failed' and status ~= 'cancelled' then return {'stale', '0'} end
if redis.call('HGET', KEYS[1], p .. '_delivered') == ARGV[1] then return {'delivered', '0'} end
local t = now()
local owner = redis.call('HGET', KEYS[1], p .. '_owner')
local until_ = tonumber(redis.call('HGET', KEYS[1], p .. '_until') or 0)
if owner and owner ~= ARGV[2] and t < until_ then return {'busy', '0'} end
redis.call('HSET', KEYS[1], p .. '_owner', ARGV[2], p .. '_until', t + tonumber(ARGV[3]))
return {'claimed', tostring(redis.call('HINCRBY', KEYS[1], p .. '_attempts', 1))}
