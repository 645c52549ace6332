-- Shared by every script (common/state.py prepends it). Times are the Redis server's clock.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- A render reached a terminal state: count it once, and index it by its state (the job's
-- ':ended' set, read in pages by state.py's renders_page). The job's last render moves the job to
-- finalizing; this is the one place that decides a job's finalize is due (returns 2).
local function ended(job, status, t, render)
  redis.call('HINCRBY', job, 'n_' .. status, 1)
  redis.call('HINCRBY', 'sb:metrics', 'renders_ended:' .. status, 1)  -- the fleet's count
  if status == 'failed' then redis.call('SADD', job .. ':failed', render) end
  redis.call('ZADD', job .. ':ended', 0, status .. '\0' .. render)  -- paged by state
  redis.call('HSET', job, 'activity', t)
  local n = redis.call('HINCRBY', job, 'ended', 1)
  if n == tonumber(redis.call('HGET', job, 'total')) then
    redis.call('HSET', job, 'status', 'finalizing', 'finalizing_since', t)
    return 2
  end
  return 1
end
local function leave_running(job, running, field)
  redis.call('HINCRBY', job, 'n_running', -1)
  redis.call('HDEL', running, field)
end
-- A render's worker died (or went silent) while rendering: one crash; failed at the cap.
local function crashed(job, states, crashes, render, cap, t, attempt)
  local n = redis.call('HINCRBY', crashes, render, 1)
  if n >= tonumber(cap) then
    local reason = 'the worker died ' .. n .. ' times while rendering this; given up'
    redis.call('HSET', states, render, cjson.encode({status = 'failed', error = reason,
                                                     ended_at = t, attempt = attempt}))
    return n, ended(job, 'failed', t, render)
  end
  return n, 0
end
local function pending(attempt)
  return cjson.encode({status = 'pending', attempt = attempt})
end
-- A transition refused because the caller's attempt is not the current one.
local function superseded(metrics)
  redis.call('HINCRBY', metrics, 'superseded', 1)
end
