-- Make a job visible, whole: its record, specs, states and index entries appear at once.
-- The specs and states were written beforehand to staging keys (in chunks, invisible); a
-- submit killed before this script leaves only staging keys, which expire, and the next
-- submit writes them again. Transition: (none) -> running, or -> finalizing with no renders.
-- The render index (by style, size and content, for paging a job's renders: state.py's
-- renders_page) is staged the same way; a job made by a web team is also listed under it.
-- The jobs indexes (every job's, the team's) are trimmed by time on the way: an id older than
-- the horizon (past any job's retention) goes, so they never grow without bound.
-- KEYS: job, staged specs, staged states, specs, states, jobs index, active,
--       staged render index, render index, the team's jobs index
-- ARGV: job id, record (JSON object of fields), total, index entries, team ('' for none),
--       horizon (seconds)
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
local total = tonumber(ARGV[3])
if total > 0 then
  if redis.call('HLEN', KEYS[2]) ~= total or redis.call('HLEN', KEYS[3]) ~= total then
    return 'incomplete'
  end
  if KEYS[8] and redis.call('ZCARD', KEYS[8]) ~= tonumber(ARGV[4]) then return 'incomplete' end
  redis.call('RENAME', KEYS[2], KEYS[4])
  redis.call('RENAME', KEYS[3], KEYS[5])
  redis.call('PERSIST', KEYS[4])
  redis.call('PERSIST', KEYS[5])
  if KEYS[8] then
    redis.call('RENAME', KEYS[8], KEYS[9])
    redis.call('PERSIST', KEYS[9])
  end
end
local t = now()
local record = cjson.decode(ARGV[2])
for field, value in pairs(record) do redis.call('HSET', KEYS[1], field, tostring(value)) end
redis.call('HSET', KEYS[1], 'created', t, 'activity', t, 'total', total, 'ended', 0,
           'n_running', 0, 'sent', 0)
if total > 0 then
  redis.call('HSET', KEYS[1], 'status', 'running')
else
  redis.call('HSET', KEYS[1], 'status', 'finalizing', 'finalizing_since', t)
end
local oldest = '(' .. tostring(t - tonumber(ARGV[6]))
redis.call('ZADD', KEYS[6], t, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', oldest)
redis.call('SADD', KEYS[7], ARGV[1])
if ARGV[5] and ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[10], t, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', oldest)
end
return 'created'
