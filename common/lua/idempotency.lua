-- An Idempotency-Key of a team's POST /jobs: transitions (none) -> pending -> done, or
-- pending -> (none) when the request failed. A key is bound to the digest of the body
-- it first came with; the same key with another body is refused.
-- KEYS: the key's record
-- ARGV: 'begin' | 'end' | 'drop', the body's digest, then for 'end': the job, the status
--       code, seconds to keep the record; for 'begin': seconds a pending claim lasts
-- Returns begin: {'new'} | {'busy'} | {'mismatch'} | {'done', job, status};
--         end and drop: {'ok'} | {'stale'}
local digest = redis.call('HGET', KEYS[1], 'digest')
local state = redis.call('HGET', KEYS[1], 'state')
if ARGV[1] == 'begin' then
  if not digest then
    redis.call('HSET', KEYS[1], 'digest', ARGV[2], 'state', 'pending')
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
    return {'new'}
  end
  if digest ~= ARGV[2] then return {'mismatch'} end
  if state == 'pending' then return {'busy'} end
  return {'done', redis.call('HGET', KEYS[1], 'job'), redis.call('HGET', KEYS[1], 'status')}
end
if digest ~= ARGV[2] or state ~= 'pending' then return {'stale'} end
if ARGV[1] == 'end' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'job', ARGV[3], 'status', ARGV[4])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
else
  redis.call('DEL', KEYS[1])
end
return {'ok'}
