-- Enqueue unless the job id exists: reserved by an earlier unique enqueue (queued,
-- delayed or running), claimed, with a stored result, or remembered as finished.
-- The check and the write are one atomic step. The reservation lives ttl_ms (the
-- envelope's validity) or until the job is settled with an outcome.
-- ARGV: prefix, job_id, envelope, not_before ('' = now), enqueued_at, unique, ttl_ms
-- Returns 1 when written (or this very envelope was written before), 0 when the id exists.
local job_id, envelope, not_before = ARGV[2], ARGV[3], ARGV[4]
-- The reservation holds the envelope's digest: the same envelope written again (a
-- producer retrying after a lost reply) is a no-op that reports success.
local digest = redis.sha1hex(envelope)
local held = redis.call('GET', JOB .. job_id)
if held then
  return held == digest and 1 or 0
end
if redis.call('EXISTS', RESULT .. job_id) == 1 or redis.call('EXISTS', CLAIM .. job_id) == 1
    or finished_flags({job_id})[1] then
  return 0
end
redis.call('SET', JOB .. job_id, digest, 'PX', math.max(1, tonumber(ARGV[7])))
if not_before == '' or tonumber(not_before) * 1000 <= now_ms() then
  redis.call('XADD', STREAM, '*', 'id', job_id, 'env', envelope, 'att', '1', 'at', ARGV[5])
else
  add_delayed(job_id, '1', ARGV[5], ARGV[6], not_before, envelope)
end
return 1
