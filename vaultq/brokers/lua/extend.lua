-- Push the lease of running deliveries out: reset the entry's idle time in the PEL
-- (XCLAIM JUSTID to the same consumer) and the job-id claim's expiry, but only for
-- deliveries that still own their claim. A claim that ran out while nobody took the
-- entry over is taken back.
-- ARGV: prefix, consumer, lease_ms, then triples (entry_id, tag, job_id).
-- Returns how many deliveries were extended.
local consumer = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local extended = 0
for i = 4, #ARGV, 3 do
  local entry_id, tag, job_id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = CLAIM .. job_id
  local holder = redis.call('GET', key)
  if holder and starts_with(holder, tag .. ' ') then
    redis.call('PEXPIRE', key, lease_ms)
    redis.call('XCLAIM', STREAM, GROUP, consumer, 0, entry_id, 'JUSTID')
    extended = extended + 1
  elseif not holder then
    local still = redis.call('XCLAIM', STREAM, GROUP, consumer, 0, entry_id, 'JUSTID')
    if #still > 0 then
      redis.call('SET', key, tag .. ' ' .. consumer, 'PX', lease_ms)
      extended = extended + 1
    end
  end
end
return extended
