-- Finish a job id that was never written (a cancelled workflow's next step): unless the
-- id exists as enqueue_unique sees it (reserved, claimed, with a stored result or
-- remembered as finished), store the sealed outcome and remember the id, atomically,
-- so a later enqueue_unique of it writes nothing.
-- ARGV: prefix, job_id, result, result_ttl_ms, remember_until
-- Returns 1 when the tombstone was written, 0 when the id exists.
local job_id = ARGV[2]
if redis.call('EXISTS', JOB .. job_id) == 1 or redis.call('EXISTS', RESULT .. job_id) == 1
    or redis.call('EXISTS', CLAIM .. job_id) == 1 or finished_flags({job_id})[1] then
  return 0
end
store_result(job_id, ARGV[3], tonumber(ARGV[4]))
remember(job_id, tonumber(ARGV[5]))
return 1
