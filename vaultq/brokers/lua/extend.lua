-- Renew the leases of running deliveries: reset the entry's idle time in the PEL
-- (XCLAIM JUSTID to the same consumer) and the job-id claim's expiry, but only for
-- deliveries whose tag still holds a live claim. A claim that ran out is never taken
-- back, even when nobody took the job over: the holder has lost its lease (a fenced
-- worker has already cancelled the attempt), and reviving it could let two copies run.
-- ARGV: prefix, consumer, lease_ms, then triples (entry_id, tag, job_id).
-- Returns 1 (renewed) or 0 (lost) per delivery, in order.
local consumer = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 3 do
  local entry_id, tag, job_id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local renewed = 0
  if claim_owned(job_id, tag) then
    local still = redis.call('XCLAIM', STREAM, GROUP, consumer, 0, entry_id, 'JUSTID')
    if #still > 0 then
      redis.call('PEXPIRE', CLAIM .. job_id, lease_ms)
      renewed = 1
    end
  end
  out[#out + 1] = renewed
end
return out
