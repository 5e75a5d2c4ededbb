-- Bury: write a dead letter (ids, reason, detail, attempt, time, size and -- unless it
-- is a stub -- the still sealed envelope, never plaintext), the result when given
-- (write-once) and the finished-id memory, and remove the entry, atomically. A stale
-- settle writes no dead letter or result. Without remember_until (an entry that did
-- not authenticate) the job id it names is left exactly as it was: no result, no
-- memory, the reservation of an honest job with that id untouched.
-- ARGV: prefix, entry_id, tag, job_id, attempt, reason, detail, has_result, result,
--       result_ttl_ms, remember_until ('' = do not remember), keep_envelope ('1'/'0'),
--       dead_max, dead_age_ms
local entry_id, tag, job_id = ARGV[2], ARGV[3], ARGV[4]
if fenced_out(job_id, tag) then
  return -1  -- a lost lease: this delivery may not settle the job (see fenced_out)
end
local ttl_ms = tonumber(ARGV[10])
local acked = redis.call('XACK', STREAM, GROUP, entry_id)
if acked == 1 then
  local entry = redis.call('XRANGE', STREAM, entry_id, entry_id)[1]
  local envelope = entry and field(entry[2], 'env') or nil
  add_dead(job_id, ARGV[6], ARGV[7], ARGV[5], envelope, ARGV[12] == '1',
           tonumber(ARGV[13]), tonumber(ARGV[14]))
  if ARGV[8] == '1' and not finished_flags({job_id})[1] then
    store_result(job_id, ARGV[9], ttl_ms)
  end
end
redis.call('XDEL', STREAM, entry_id)
if ARGV[11] ~= '' then
  remember(job_id, math.max(tonumber(ARGV[11]), (now_ms() + ttl_ms) / 1000))
  redis.call('DEL', JOB .. job_id)
end
release_claim(job_id, tag)
return acked
