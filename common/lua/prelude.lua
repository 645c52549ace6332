-- Shared by every script (common/state/scripts.py prepends it). Times are the Redis server's
-- clock. No script builds a key name: every key comes in KEYS (common/state/keys.py).
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- A script that may end a render gets these keys first, in this order (JobKeys.ending): the
-- job's record, its render states, its failed set, its ended index, the fleet's metrics.
local J = {job = KEYS[1], states = KEYS[2], failed = KEYS[3], ended = KEYS[4],
           metrics = KEYS[5]}
-- A render reached a terminal state: count it once, and index it by its state (the job's
-- ended index, read in pages by renders_page). The job's last render moves the job to
-- finalizing; this is the one place that decides a job's finalize is due (returns 2).
local function ended(status, t, render)
  redis.call('HINCRBY', J.job, 'n_' .. status, 1)
  redis.call('HINCRBY', J.metrics, 'renders_ended:' .. status, 1)  -- the fleet's count
  if status == 'failed' then redis.call('SADD', J.failed, render) end
  redis.call('ZADD', J.ended, 0, status .. '\0' .. render)  -- paged by state
  redis.call('HSET', J.job, 'activity', t)
  local n = redis.call('HINCRBY', J.job, 'ended', 1)
  if n == tonumber(redis.call('HGET', J.job, 'total')) then
    redis.call('HSET', J.job, 'status', 'finalizing', 'finalizing_since', t)
    return 2
  end
  return 1
end
local function leave_running(running, field)
  redis.call('HINCRBY', J.job, 'n_running', -1)
  redis.call('HDEL', running, field)
end
-- A render's worker died (or went silent) while rendering: one crash; failed at the cap.
local function crashed(crashes, render, cap, t, attempt)
  local n = redis.call('HINCRBY', crashes, render, 1)
  if n >= tonumber(cap) then
    local reason = 'the worker died ' .. n .. ' times while rendering this; given up'
    redis.call('HSET', J.states, render, cjson.encode({status = 'failed', error = reason,
                                                       ended_at = t, attempt = attempt}))
    return n, ended('failed', t, render)
  end
  return n, 0
end
local function pending(attempt)
  return cjson.encode({status = 'pending', attempt = attempt})
end
-- A transition refused because the caller's attempt is not the current one.
local function superseded()
  redis.call('HINCRBY', J.metrics, 'superseded', 1)
end
-- A job's review is complete when it has ended and every render with an output (done or
-- skipped) has a decision; the first time it is, the job is marked 'reviewed' and, with a
-- webhook, owes its job.reviewed delivery (the owed set's member "<job id> reviewed").
-- Returns 1 that first time, else 0.
local function review_complete(job, owed, job_id, t)
  local status = redis.call('HGET', job, 'status')
  if status ~= 'done' and status ~= 'failed' and status ~= 'cancelled' then return 0 end
  if redis.call('HEXISTS', job, 'reviewed') == 1 then return 0 end
  local f = redis.call('HMGET', job, 'n_done', 'n_skipped', 'review:approved',
                       'review:rejected', 'review:superseded')
  local outputs = tonumber(f[1] or 0) + tonumber(f[2] or 0)
  local decided = tonumber(f[3] or 0) + tonumber(f[4] or 0) + tonumber(f[5] or 0)
  if outputs == 0 or decided < outputs then return 0 end
  redis.call('HSET', job, 'reviewed', tostring(t))
  if (redis.call('HGET', job, 'webhook') or '') ~= '' then
    redis.call('HSET', job, 'review_webhook_delivery', job_id .. ':reviewed:' .. tostring(t),
               'review_webhook_status', 'pending')
    redis.call('SADD', owed, job_id .. ' reviewed')
  end
  return 1
end
-- A key made after its job (its reviews, its lineage) lives as long as the job's record.
local function live_as_job(job, key)
  local ttl = redis.call('PTTL', job)
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
