-- finalizing -> done (cancelled if a cancel was asked for) | failed, by the finalize that
-- holds the lease (or any caller when the token is ''). Exactly one caller gets 'ok', with
-- the end's time; a job with a webhook gets its one delivery id for this end, and is owed
-- its delivery (the owed webhooks) until delivered or given up: the watchdog resends a lost one.
-- A job whose every output was decided while it ran is reviewed now (the prelude's review_complete).
-- KEYS: job, active, owed webhooks, then the job's other keys
-- ARGV: job id, terminal status, reason, seconds its state is kept, token
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'finalizing' then return {status or '', ''} end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'finalize_owner') ~= ARGV[5] then
  return {'busy', ''}
end
local final = ARGV[2]
if final == 'done' and redis.call('HGET', KEYS[1], 'cancelled') == '1' then final = 'cancelled' end
local t = tostring(now())
redis.call('HSET', KEYS[1], 'status', final, 'finished', t)
redis.call('HDEL', KEYS[1], 'finalize_owner', 'finalize_until', 'finalize_status')
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[3]) end
if (redis.call('HGET', KEYS[1], 'webhook') or '') ~= '' then
  redis.call('HSET', KEYS[1], 'webhook_delivery', ARGV[1] .. ':' .. t, 'webhook_status', 'pending')
  redis.call('HDEL', KEYS[1], 'webhook_owner', 'webhook_until')
  redis.call('SADD', KEYS[3], ARGV[1])  -- owed: until delivered or given up
end
redis.call('SREM', KEYS[2], ARGV[1])
review_complete(KEYS[1], KEYS[3], ARGV[1], t)  -- every output decided while it ran
for i = 1, #KEYS do
  if i ~= 2 and i ~= 3 then redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
end
return {'ok', t}
