-- Concurrency and rate limits of one job about to start, in one atomic step (one round
-- trip), on Redis's clock. Returns 0 (start now), -1 (every concurrency slot is held:
-- try again shortly) or the milliseconds until this job's reserved turn under the rate.
--
-- Concurrency: a sorted set of the job ids holding a slot. A holder counts only while its
-- job-id claim lives (it is running under a lease), so a settled job, or one whose worker
-- died and whose lease ran out, gives its slot back without any release step.
-- Rate (GCRA): TAT, the theoretical arrival time of the next start. A job that may not
-- start yet reserves its turn (TAT moves on) and is told when; coming back at that time it
-- starts without taking another turn, so waiting jobs keep their place in the rate.
-- ARGV: prefix, job_id, conc_key ('' = none), conc_max, rate_key ('' = none), interval_ms,
--       keep_ms (how long limit state outlives its last use)
local job_id, ckey, rkey = ARGV[2], ARGV[3], ARGV[5]
local keep = tonumber(ARGV[7])
local now = now_ms()
local slots = LIMIT .. 'c:' .. ckey
local took = false
if ckey ~= '' and not redis.call('ZSCORE', slots, job_id) then
  local live = 0
  for _, holder in ipairs(redis.call('ZRANGE', slots, 0, -1)) do
    if redis.call('EXISTS', CLAIM .. holder) == 1 then
      live = live + 1
    else
      redis.call('ZREM', slots, holder)
    end
  end
  if live >= tonumber(ARGV[4]) then
    return -1
  end
  redis.call('ZADD', slots, now, job_id)
  redis.call('PEXPIRE', slots, keep)
  took = true
end
if rkey ~= '' then
  local interval = tonumber(ARGV[6])
  local hold = LIMIT .. 'h:' .. job_id
  local turn = redis.call('GET', hold)
  local wait
  if turn then
    wait = tonumber(turn) - now
  else
    local rate = LIMIT .. 'r:' .. rkey
    local tat = math.max(tonumber(redis.call('GET', rate) or '0'), now)
    redis.call('SET', rate, tat + interval, 'PX', tat + interval - now + keep)
    wait = tat - now
  end
  if wait <= 0 then
    -- Its turn has come; but turns of jobs delivered late would all start at once: starts
    -- themselves are spaced too (LAST: the latest start), so the rate holds whatever the
    -- delivery lag, and a late job starts at the next free instant.
    local last = LIMIT .. 'l:' .. rkey
    local gap = tonumber(redis.call('GET', last) or '0') + interval - now
    if gap > 0 then
      wait = gap
    else
      redis.call('SET', last, now, 'PX', interval + keep)
      redis.call('DEL', hold)
      return 0
    end
  end
  redis.call('SET', hold, now + wait, 'PX', wait + keep)
  if took then
    redis.call('ZREM', slots, job_id)
  end
  return wait
end
return 0
