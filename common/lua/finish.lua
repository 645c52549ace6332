-- A render's outcome, from the attempt that holds it: running (this attempt) -> done |
-- skipped | failed | cancelled, counted once. Any other attempt is superseded: refused and
-- counted as such, never as an outcome. Returns 2 when it ended the job's last render.
-- KEYS: job, states, failed, ended, fleet metrics (the prelude's J), running
-- ARGV: render, status, record (JSON), running field, attempt, owner ('' = any)
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return -1 end
local state = cjson.decode(raw)
local status = state['status']
if status ~= 'pending' and status ~= 'running' then return 0 end
if status ~= 'running' or tonumber(state['attempt']) ~= tonumber(ARGV[5])
    or (ARGV[6] ~= '' and state['owner'] ~= ARGV[6]) then
  superseded()
  return -2
end
local t = now()
leave_running(KEYS[6], ARGV[4])
local record = cjson.decode(ARGV[3])
record['ended_at'] = t
record['attempt'] = tonumber(ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(record))
if type(record['device']) == 'string' and tonumber(record['seconds']) then
  local seconds = tonumber(record['seconds'])
  redis.call('HINCRBYFLOAT', KEYS[1], 'cost:seconds:' .. record['device'], seconds)
  redis.call('HINCRBYFLOAT', KEYS[1], 'cost:pixel_iterations', tonumber(record['pixel_iterations']) or 0)
  redis.call('HINCRBYFLOAT', J.metrics, 'device_seconds:' .. record['device'], seconds)
  local bucket = '+Inf'
  for _, le in ipairs({__BUCKETS__}) do
    if seconds <= le then bucket = tostring(le); break end
  end
  redis.call('HINCRBY', J.metrics, 'render_seconds_bucket:' .. bucket, 1)
  redis.call('HINCRBYFLOAT', J.metrics, 'render_seconds_sum', seconds)
end
-- outputs written: the render's own, and its copies' (one making, several keys)
if ARGV[2] == 'done' then
  redis.call('HINCRBY', KEYS[1], 'cost:outputs', tonumber(record['outputs']) or 1)
end
return ended(ARGV[2], t, ARGV[1])
