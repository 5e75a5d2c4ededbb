-- Claim one tick of a schedule and enqueue its job, as one atomic step: the mark (newest
-- tick claimed or passed over) only moves forward, so of any number of schedulers racing
-- for a tick exactly one moves it, and a crash can never leave the mark moved without
-- the job written (or the job written without the mark). The job is written unless its
-- id exists (reserved, claimed, with a result, or remembered as finished), like
-- enqueue_unique.lua: a tick re-claimed under an older mark still enqueues nothing.
-- ARGV: prefix, schedule, tick, job_id, envelope, enqueued_at, ttl_ms
-- Returns 1 when the job was written, 0 otherwise.
local name, tick = ARGV[2], ARGV[3]
local mark = redis.call('HGET', SCHEDULES, 'm:' .. name)
if mark and tonumber(mark) >= tonumber(tick) then
  return 0
end
redis.call('HSET', SCHEDULES, 'm:' .. name, tick)
local job_id, envelope = ARGV[4], ARGV[5]
if redis.call('EXISTS', JOB .. job_id) == 1 or redis.call('EXISTS', RESULT .. job_id) == 1
    or redis.call('EXISTS', CLAIM .. job_id) == 1 or finished_flags({job_id})[1] then
  return 0
end
redis.call('SET', JOB .. job_id, redis.sha1hex(envelope), 'PX', math.max(1, tonumber(ARGV[7])))
redis.call('XADD', STREAM, '*', 'id', job_id, 'env', envelope, 'att', '1', 'at', ARGV[6])
redis.call('HSET', SCHEDULES, 'f:' .. name, tick)
return 1
