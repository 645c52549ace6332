-- Ask for a job's cancel: renders not yet started end cancelled when a task takes them.
-- KEYS: job
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cancelled', '1')
return 1
