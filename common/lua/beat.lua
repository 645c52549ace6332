-- A worker process is alive: its heartbeat and description, and a check of the renders it
-- says it holds. Any it no longer holds (reaped and re-claimed, or ended) come back as
-- stale, so it stops working on them; a reap of its own that it survived (a pause, not a
-- death) has its crash taken back, twice per render at most (a render that stalls every
-- process that takes it still reaches the crash cap).
-- KEYS: heartbeats, workers, running; ARGV: owner, description (JSON), then for each held
-- render: job id, render id, attempt
local t = now()
redis.call('ZADD', KEYS[1], t, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local stale = {}
for i = 3, #ARGV, 3 do
  local job, render, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local field = job .. ' ' .. render
  if redis.call('HGET', KEYS[3], field) ~= ARGV[1] .. ' ' .. attempt then
    table.insert(stale, field)
    local marker = 'sb:reaped:' .. job .. ':' .. render .. ':' .. attempt
    if redis.call('GET', marker) == ARGV[1] then
      redis.call('DEL', marker)
      local crashes = 'sb:job:' .. job .. ':crashes'
      local pauses = redis.call('HINCRBY', 'sb:job:' .. job .. ':pauses', render, 1)
      if pauses <= 2 and tonumber(redis.call('HGET', crashes, render) or 0) > 0 then
        redis.call('HINCRBY', crashes, render, -1)
      end
    end
  end
end
return {tostring(t), stale}
