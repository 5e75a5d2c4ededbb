-- Ack: store the result, remember the id as finished, and remove the entry, in one
-- atomic step so a crash never leaves a finished job deliverable. The result is
-- write-once (see store_result) and the id is remembered at least as long as the
-- result lives, so a later copy can neither run nor replace it.
-- ARGV: prefix, entry_id, tag, job_id, has_result, result, result_ttl_ms, remember_until
local entry_id, tag, job_id = ARGV[2], ARGV[3], ARGV[4]
if fenced_out(job_id, tag) then
  return -1  -- a lost lease: this delivery may not settle the job (see fenced_out)
end
local acked = redis.call('XACK', STREAM, GROUP, entry_id)
redis.call('XDEL', STREAM, entry_id)
local ttl_ms = tonumber(ARGV[7])
if ARGV[5] == '1' and not finished_flags({job_id})[1] then
  store_result(job_id, ARGV[6], ttl_ms)
end
remember(job_id, math.max(tonumber(ARGV[8]), (now_ms() + ttl_ms) / 1000))
redis.call('DEL', JOB .. job_id)
release_claim(job_id, tag)
return acked
