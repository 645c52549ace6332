-- A job recorded before the render index existed gets its index, as create would have made
-- it (state.py's index_recorded built it under a key of its own): swapped in whole, with the
-- ended renders merged into the job's ':ended' set (the prelude has added to it since), and
-- the job's facets recorded last (their presence says the index is complete). The job's
-- retention carries over. No render or job changes state. A job gone meanwhile, or indexed by
-- another caller first, is left as it is.
-- KEYS: job, built index, index, built ended, ended
-- ARGV: facets (JSON)
local function drop() redis.call('DEL', KEYS[2], KEYS[4]) end
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'facets') == 1 then
  drop()
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3]) end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZUNIONSTORE', KEYS[5], 2, KEYS[5], KEYS[4])
  redis.call('DEL', KEYS[4])
end
redis.call('HSET', KEYS[1], 'facets', ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
for _, key in ipairs({KEYS[3], KEYS[5]}) do
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
return 1
