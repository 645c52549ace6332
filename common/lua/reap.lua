-- A render whose owner went silent: running (that owner) -> pending, one crash (failed at
-- the cap). The reap is remembered (the job's reaped markers, gone with the job): if the
-- owner's heartbeat resumes, it was a pause, not a crash, and beat.lua takes the crash back.
-- KEYS: job, states, failed, ended, fleet metrics (the prelude's J), crashes, running,
--       reaped markers
-- ARGV: render, silent owner, crash cap, running field
local raw = redis.call('HGET', KEYS[2], ARGV[1])
local state = raw and cjson.decode(raw)
if not state or state['status'] ~= 'running' or state['owner'] ~= ARGV[2] then
  local held = redis.call('HGET', KEYS[7], ARGV[4])
  if held and string.sub(held, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
    redis.call('HDEL', KEYS[7], ARGV[4])
  end
  return {'gone', '0'}
end
local t = now()
local attempt = tonumber(state['attempt'] or 0)
leave_running(KEYS[7], ARGV[4])
local crashes, gave_up = crashed(KEYS[6], ARGV[1], ARGV[3], t, attempt)
if gave_up > 0 then return {'gave_up', tostring(gave_up)} end
redis.call('HSET', KEYS[8], ARGV[1] .. ' ' .. attempt, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], pending(attempt))
redis.call('HSET', KEYS[1], 'activity', t)
return {'requeued', tostring(crashes)}
