-- `stylebatch retry`: failed -> pending for every failed render (its crash and device-error
-- counts cleared), and the job done | failed | cancelled -> running. A cancelled job is
-- resumed: its cancelled renders are pending again too, and its cancel is lifted (a retry
-- asks for the renders to be made; a cancel still in force would end them at once). Reads
-- only the job's failed set and the cancelled part of its ended index.
-- The renders made again will be new outputs, undecided: the job's review is no longer
-- complete (a later complete review sends job.reviewed again, with a new delivery id), and
-- its reviews and lineage live as long as the job again.
-- KEYS: job, states, failed, ended, fleet metrics (the prelude's J), crashes, active, specs,
--       device errors, render index, reviews, versions, lineage
-- ARGV: job id
local reset = redis.call('SMEMBERS', J.failed)
local failed = #reset
local cancelled = 0
if redis.call('HGET', KEYS[1], 'cancelled') == '1' then
  for _, member in ipairs(redis.call('ZRANGEBYLEX', J.ended, '[cancelled\0', '[cancelled\0\255')) do
    table.insert(reset, string.sub(member, #'cancelled' + 2))
    cancelled = cancelled + 1
  end
end
for i, render in ipairs(reset) do
  local raw = redis.call('HGET', KEYS[2], render)
  local state = raw and cjson.decode(raw) or {}
  redis.call('HSET', KEYS[2], render, pending(tonumber(state['attempt'] or 0)))
  redis.call('HDEL', KEYS[6], render)
  redis.call('HDEL', KEYS[9], render)
  redis.call('ZREM', J.ended, (i <= failed and 'failed\0' or 'cancelled\0') .. render)
end
if #reset > 0 then
  redis.call('DEL', J.failed)
  -- (never by -0: Lua would send it as the string "-0", which is no integer to Redis)
  if failed > 0 then redis.call('HINCRBY', KEYS[1], 'n_failed', -failed) end
  if cancelled > 0 then redis.call('HINCRBY', KEYS[1], 'n_cancelled', -cancelled) end
  redis.call('HINCRBY', KEYS[1], 'ended', -#reset)
  redis.call('HSET', KEYS[1], 'status', 'running', 'activity', now())
  redis.call('HDEL', KEYS[1], 'finished', 'reason', 'finalizing_since', 'finalize_owner',
             'finalize_until', 'finalize_status', 'finalized', 'cancelled')
  redis.call('HDEL', KEYS[1], 'reviewed', 'review_webhook_delivery', 'review_webhook_status',
             'review_webhook_owner', 'review_webhook_until', 'review_webhook_delivered')
  redis.call('SADD', KEYS[7], ARGV[1])
  for _, key in ipairs({J.job, J.states, J.ended, KEYS[6], KEYS[8], KEYS[9], KEYS[10],
                        KEYS[11], KEYS[12], KEYS[13]}) do
    redis.call('PERSIST', key)
  end
end
return reset
