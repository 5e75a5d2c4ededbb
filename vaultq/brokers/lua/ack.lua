-- Ack: store the result, remember the id as finished, and remove the entry, in one
-- atomic step so a crash never leaves a finished job deliverable.
-- ARGV: prefix, entry_id, tag, job_id, has_result, result, result_ttl_ms, remember_until
local entry_id, tag, job_id = ARGV[2], ARGV[3], ARGV[4]
if fenced_out(job_id, tag) then
  return -1  -- a lost lease: this delivery may not settle the job (see fenced_out)
end
local acked = redis.call('XACK', STREAM, GROUP, entry_id)
redis.call('XDEL', STREAM, entry_id)
if ARGV[5] == '1' then
  store_result(job_id, ARGV[6], tonumber(ARGV[7]))
end
remember(job_id, tonumber(ARGV[8]))
release_claim(job_id, tag)
return acked
