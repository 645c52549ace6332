-- One finalize at a time per job end: a finalize task leases the job's end. A second one
-- (the watchdog's resend, a duplicate delivery) finds the lease and does nothing, unless the
-- holder died and its lease ran out.
-- KEYS: job; ARGV: token (the task's id), lease seconds
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'finalizing' then return status or '' end
local t = now()
local owner = redis.call('HGET', KEYS[1], 'finalize_owner')
local until_ = tonumber(redis.call('HGET', KEYS[1], 'finalize_until') or 0)
if owner and owner ~= ARGV[1] and t < until_ then return 'busy' end
redis.call('HSET', KEYS[1], 'finalize_owner', ARGV[1], 'finalize_until', t + tonumber(ARGV[2]),
           'finalizing_since', t)
return 'ok'
