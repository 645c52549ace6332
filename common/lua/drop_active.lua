-- The reconciler's list of jobs in progress loses a job that ended or is gone.
-- KEYS: job, active; ARGV: job id
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' or status == 'finalizing' then return 0 end
return redis.call('SREM', KEYS[2], ARGV[1])
