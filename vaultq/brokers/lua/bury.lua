-- Bury: write a dead letter (ids, reason, detail, attempt, time and the still sealed
-- envelope -- never plaintext), the result when given and the finished-id memory,
-- and remove the entry, atomically. A stale settle writes no dead letter or result.
-- ARGV: prefix, entry_id, tag, job_id, attempt, reason, detail, has_result, result,
--       result_ttl_ms, remember_until ('' = do not remember)
local entry_id, tag, job_id = ARGV[2], ARGV[3], ARGV[4]
if fenced_out(job_id, tag) then
  return -1  -- a lost lease: this delivery may not settle the job (see fenced_out)
end
local acked = redis.call('XACK', STREAM, GROUP, entry_id)
if acked == 1 then
  local entry = redis.call('XRANGE', STREAM, entry_id, entry_id)[1]
  local at = string.format('%.3f', now_ms() / 1000)
  if entry then
    redis.call('XADD', DEAD, '*', 'id', job_id, 'reason', ARGV[6], 'detail', ARGV[7],
               'att', ARGV[5], 'at', at, 'env', field(entry[2], 'env') or '')
  else
    redis.call('XADD', DEAD, '*', 'id', job_id, 'reason', ARGV[6], 'detail', ARGV[7],
               'att', ARGV[5], 'at', at)
  end
  if ARGV[8] == '1' then
    store_result(job_id, ARGV[9], tonumber(ARGV[10]))
  end
end
redis.call('XDEL', STREAM, entry_id)
if ARGV[11] ~= '' then
  remember(job_id, tonumber(ARGV[11]))
end
release_claim(job_id, tag)
return acked
