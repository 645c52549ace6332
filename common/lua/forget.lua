-- A worker leaves the roll: at once (a clean exit), or only if it is still silent (the
-- reaper's check, so a worker whose beat resumed meanwhile stays).
-- KEYS: heartbeats, workers; ARGV: owner, silent before (Redis time; '' = at once)
if ARGV[2] ~= '' then
  local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if beat and tonumber(beat) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
