-- The review's publication (summary.json and cost.csv written again after decisions), taken
-- by one task: 'publish' (the job has ended: write them), 'none' (nothing due, or the job
-- still runs: its finalize writes the decisions), 'wait' (finalizing: ask again later).
-- KEYS: job
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not redis.call('HGET', KEYS[1], 'review_publish_due') then return 'none' end
if status == 'finalizing' then return 'wait' end
redis.call('HDEL', KEYS[1], 'review_publish_due')
if status == 'running' then return 'none' end
return 'publish'
