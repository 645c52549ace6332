-- Ask for a job's cancel: renders not yet started end cancelled when a task takes them.
-- Transition: running -> running (cancel asked). A job that is finalizing (every render has
-- ended) or has ended is not changed: its renders' outcomes stand, and so does its end.
-- KEYS: job
-- Returns 'requested' | 'finalizing' | 'ended' | 'missing'
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'finalizing' then return 'finalizing' end
if status ~= 'running' then return 'ended' end
redis.call('HSET', KEYS[1], 'cancelled', '1')
return 'requested'
