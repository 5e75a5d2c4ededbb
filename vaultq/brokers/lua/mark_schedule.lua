-- Move a schedule's mark forward (never back) without enqueuing: missed ticks passed
-- over. With only_if_absent, set it only when the schedule has no mark (first start).
-- ARGV: prefix, schedule, tick, only_if_absent ('1' or '')
-- Returns the mark now stored.
local key, tick = 'm:' .. ARGV[2], ARGV[3]
local mark = redis.call('HGET', SCHEDULES, key)
if mark and (ARGV[4] == '1' or tonumber(mark) >= tonumber(tick)) then
  return mark
end
redis.call('HSET', SCHEDULES, key, tick)
return tick
