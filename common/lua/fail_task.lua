-- A render task that died without recording its renders (a hard time limit): running ->
-- failed, for the renders this very task claimed, and no others.
-- KEYS: job, states, failed, ended, fleet metrics (the prelude's J), running
-- ARGV: task id, reason, job id, then the render ids
local t = now()
local failed, complete = 0, 0
for i = 4, #ARGV do
  local raw = redis.call('HGET', KEYS[2], ARGV[i])
  local state = raw and cjson.decode(raw)
  if state and state['status'] == 'running' and state['task'] == ARGV[1] then
    leave_running(KEYS[6], ARGV[3] .. ' ' .. ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], cjson.encode({status = 'failed', error = ARGV[2],
               ended_at = t, attempt = state['attempt']}))
    failed = failed + 1
    if ended('failed', t, ARGV[i]) == 2 then complete = 1 end
  end
end
return {failed, complete}
