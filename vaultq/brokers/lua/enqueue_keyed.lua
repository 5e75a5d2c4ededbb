-- Enqueue unless a live job holds the unique key (unique jobs). The key's lock names the
-- job id that took it; the lock counts only while that job is live: its id reserved
-- (queued, delayed or running: the reservation is deleted when the job is settled) or
-- claimed, and not remembered as finished. So the key is free again as soon as the job
-- settles, when the lock's own TTL (unique_for) runs out, or never was taken. The check,
-- the lock and the write are one atomic step across every producer.
-- ARGV: prefix, key (a digest), job_id, envelope, not_before ('' = now), enqueued_at,
--       unique, ttl_ms (the id's reservation), key_ttl_ms (the lock)
-- Returns the job id that holds the key: this job's when it was written (or this very
-- envelope was written before), another's when that one is live, '' when this job id
-- itself exists already (a custom id taken by another job).
local lock = UNIQUE .. ARGV[2]
local job_id, envelope, not_before = ARGV[3], ARGV[4], ARGV[5]
local held = redis.call('GET', lock)
if held and held ~= job_id then
  local live = redis.call('EXISTS', JOB .. held) == 1 or redis.call('EXISTS', CLAIM .. held) == 1
  if live and not finished_flags({held})[1] then
    return held
  end
end
local digest = redis.sha1hex(envelope)
local mine = redis.call('GET', JOB .. job_id)
if mine then
  return mine == digest and job_id or ''
end
if redis.call('EXISTS', RESULT .. job_id) == 1 or redis.call('EXISTS', CLAIM .. job_id) == 1
    or finished_flags({job_id})[1] then
  return ''
end
redis.call('SET', JOB .. job_id, digest, 'PX', math.max(1, tonumber(ARGV[8])))
redis.call('SET', lock, job_id, 'PX', math.max(1, tonumber(ARGV[9])))
if not_before == '' or tonumber(not_before) * 1000 <= now_ms() then
  redis.call('XADD', STREAM, '*', 'id', job_id, 'env', envelope, 'att', '1', 'at', ARGV[6])
else
  add_delayed(job_id, '1', ARGV[6], ARGV[7], not_before, envelope)
end
return job_id
