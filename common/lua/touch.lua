-- Facts about an existing job that are no transition: its last activity (server time) and
-- any fields given (sent, finalizing_since). Nothing for a job that is gone.
-- KEYS: job; ARGV: field, value, field, value ...
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'activity', now())
for i = 1, #ARGV, 2 do
  local value = ARGV[i + 1]
  if value == '@now' then value = now() end
  redis.call('HSET', KEYS[1], ARGV[i], value)
end
return 1
