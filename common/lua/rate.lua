-- One request of a team against its rate, as a generic cell rate (GCRA): a token every
-- ARGV[1] ms, at most ARGV[2] at once. One key per team and class; it expires when full.
-- KEYS: the team's rate key; ARGV: interval (ms), burst
-- Returns {1 allowed | 0 refused, tokens left, ms until full again, ms until one is free}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
if now < allowed_at then
  return {0, 0, tat - now, allowed_at - now}
end
redis.call('SET', KEYS[1], next_tat, 'PX', next_tat - now)
return {1, math.floor((now - allowed_at) / interval), next_tat - now, 0}
