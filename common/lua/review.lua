-- Review decisions. A render with an output (done or skipped) goes
--   undecided -> approved | rejected
--   approved | rejected | superseded -> approved | rejected     a reviewer changes it
--   approved | rejected -> superseded     a newer version of it (a re-render) was approved;
--                                         the decision it replaced is kept (``was``)
--   superseded -> its ``was`` (or undecided: decision '')   that newer version's approval
--                                         was withdrawn
-- Each change bumps the render's review version. A write that names a version (the one its
-- reviewer saw) other than the current one is refused 'stale', with the current decision:
-- two reviewers never overwrite each other silently. The same decision and note again is
-- 'unchanged' (a repeated request changes nothing, counts nothing).
-- KEYS: job, states, reviews, owed webhooks
-- ARGV: decision ('' for undecided), note, reviewer, job id, then per render: render id, expected version
--       ('' for any), superseded by ('' unless the decision is superseded)
-- Returns {'gone'} or {'ok', reviewed now (0|1), publication due (0|1), then per render: id,
--   outcome ('recorded' | 'unchanged' | 'stale' | 'missing' | 'no-output'), version, the
--   render's decision (JSON, '' for none)}
if not redis.call('HGET', KEYS[1], 'status') then return {'gone'} end
local t = now()
local out = {'ok', 0, 0}
local changed = 0
for i = 5, #ARGV, 3 do
  local render, expected, by = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local raw = redis.call('HGET', KEYS[2], render)
  local current = redis.call('HGET', KEYS[3], render)
  local review = current and cjson.decode(current) or {}
  local version = tonumber(review['version'] or 0)
  local outcome
  if not raw then
    outcome = 'missing'
  else
    local status = cjson.decode(raw)['status']
    if status ~= 'done' and status ~= 'skipped' then
      outcome = 'no-output'
    elseif expected ~= '' and tonumber(expected) ~= version then
      outcome = 'stale'
    elseif (review['decision'] or '') == ARGV[1] and (review['note'] or '') == ARGV[2]
        and (review['superseded_by'] or '') == by then
      outcome = 'unchanged'
    else
      if review['decision'] then
        redis.call('HINCRBY', KEYS[1], 'review:' .. review['decision'], -1)
      end
      version = version + 1
      local made = {version = version, by = ARGV[3], at = t}
      if ARGV[1] ~= '' then
        redis.call('HINCRBY', KEYS[1], 'review:' .. ARGV[1], 1)
        made['decision'], made['note'] = ARGV[1], ARGV[2]
      end
      if by ~= '' then made['superseded_by'] = by end
      if ARGV[1] == 'superseded' and review['decision'] and review['decision'] ~= 'superseded' then
        made['was'] = {decision = review['decision'], note = review['note'] or '',
                       by = review['by'] or ''}
      end
      review = made
      current = cjson.encode(review)
      redis.call('HSET', KEYS[3], render, current)
      outcome = 'recorded'
      changed = changed + 1
    end
  end
  table.insert(out, render)
  table.insert(out, outcome)
  table.insert(out, tostring(version))
  table.insert(out, current or '')
end
if changed > 0 then
  live_as_job(KEYS[1], KEYS[3])
  out[2] = review_complete(KEYS[1], KEYS[4], ARGV[4], t)
  local due = tonumber(redis.call('HGET', KEYS[1], 'review_publish_due') or 0)
  if due == 0 or t - due > 120 then  -- none asked for, or its task was lost: ask again
    redis.call('HSET', KEYS[1], 'review_publish_due', tostring(t))
    out[3] = 1
  end
end
return out
