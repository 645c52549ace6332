-- A worker process is alive: its heartbeat and description, and a check of the renders it
-- says it holds. Any it no longer holds (reaped and re-claimed, or ended) come back as
-- stale, so it stops working on them; a reap of its own that it survived (a pause, not a
-- death) has its crash taken back, twice per render at most (a render that stalls every
-- process that takes it still reaches the crash cap).
-- KEYS: heartbeats, workers, running, then for each held render its job's crashes, pauses
--       and reaped markers
-- ARGV: owner, description (JSON), then for each held render: job id, render id, attempt
local t = now()
redis.call('ZADD', KEYS[1], t, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local stale = {}
for i = 3, #ARGV, 3 do
  local job, render, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local k = 4 + (i - 3)  -- this render's crashes, pauses and reaped keys: KEYS[k .. k + 2]
  local crashes, pauses, reaped = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local field = job .. ' ' .. render
  if redis.call('HGET', KEYS[3], field) ~= ARGV[1] .. ' ' .. attempt then
    table.insert(stale, field)
    local marker = render .. ' ' .. attempt
    if redis.call('HGET', reaped, marker) == ARGV[1] then
      redis.call('HDEL', reaped, marker)
      local n = redis.call('HINCRBY', pauses, render, 1)
      if n <= 2 and tonumber(redis.call('HGET', crashes, render) or 0) > 0 then
        redis.call('HINCRBY', crashes, render, -1)
      end
    end
  end
end
return {tostring(t), stale}
