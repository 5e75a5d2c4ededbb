-- Drop: remove the entry and count it under a reason (a copy of a finished job): no
-- dead letter, no result, no memory -- garbage is counted, not stored.
-- ARGV: prefix, entry_id, tag, job_id, reason
local entry_id, tag, job_id = ARGV[2], ARGV[3], ARGV[4]
if fenced_out(job_id, tag) then
  return -1  -- a lost lease: this delivery may not settle the job (see fenced_out)
end
local acked = redis.call('XACK', STREAM, GROUP, entry_id)
redis.call('XDEL', STREAM, entry_id)
if acked == 1 then
  count_garbage(ARGV[5])
end
release_claim(job_id, tag)
return acked
