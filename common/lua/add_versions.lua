-- Lineage: a render gains a version (a re-render of it, "<job id> <render id>"), once however
-- often this runs; on the re-render's side, each of its renders names the one it re-renders.
-- KEYS: job, its versions (or lineage) hash; ARGV: mode ('versions' | 'lineage'), then pairs
--       of render id, "<job id> <render id>"
-- Returns 0 where the job is gone, else 1
if not redis.call('HGET', KEYS[1], 'status') then return 0 end
for i = 2, #ARGV, 2 do
  if ARGV[1] == 'lineage' then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  else
    local raw = redis.call('HGET', KEYS[2], ARGV[i])
    local list = raw and cjson.decode(raw) or {}
    local seen = false
    for _, v in ipairs(list) do
      if v == ARGV[i + 1] then seen = true end
    end
    if not seen then
      table.insert(list, ARGV[i + 1])
      redis.call('HSET', KEYS[2], ARGV[i], cjson.encode(list))
    end
  end
end
live_as_job(KEYS[1], KEYS[2])
return 1
