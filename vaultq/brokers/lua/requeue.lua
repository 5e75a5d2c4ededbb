-- Retry / Release: remove the entry and put the same envelope back with the given
-- attempt, deliverable at not_before (straight into the stream when already due, so
-- blocked readers wake up). A stale settle (the entry was already settled by a
-- delivery that took over the lease) changes nothing but its own claim.
-- ARGV: prefix, entry_id, tag, job_id, attempt, not_before, unique
local entry_id, tag, job_id = ARGV[2], ARGV[3], ARGV[4]
local attempt, not_before, unique = ARGV[5], tonumber(ARGV[6]), ARGV[7]
if fenced_out(job_id, tag) then
  return -1  -- a lost lease: this delivery may not settle the job (see fenced_out)
end
local acked = redis.call('XACK', STREAM, GROUP, entry_id)
if acked == 1 then
  local entry = redis.call('XRANGE', STREAM, entry_id, entry_id)[1]
  if entry then
    local envelope = field(entry[2], 'env')
    local enqueued_at = field(entry[2], 'at') or '0'
    if not_before * 1000 <= now_ms() then
      redis.call('XADD', STREAM, '*', 'id', job_id, 'env', envelope, 'att', attempt, 'at', enqueued_at)
    else
      add_delayed(job_id, attempt, enqueued_at, unique, ARGV[6], envelope)
    end
  end
end
redis.call('XDEL', STREAM, entry_id)
release_claim(job_id, tag)
return acked
