-- Enqueue a batch of one queue, idempotently. Each write leaves a marker
-- ENQUEUED .. job_id holding the SHA-1 of the sealed envelope, for the dedup window. A
-- producer (or redis-py) that retries after an error it cannot read -- the connection
-- broke after the server applied the write: a restart, a failover, a timeout -- sends
-- the same sealed bytes again: the marker matches and the second write is skipped
-- instead of becoming a second entry. The same job id sealed anew (a new nonce, so new
-- bytes) is written as before; duplicates written on purpose are the fetch claim's
-- business. The digest only recognises a retry; it protects nothing.
-- ARGV: prefix, window_ms, enqueued_at, then quadruples (job_id, envelope, not_before
-- ('' = now), unique). Returns how many jobs were written.
local window_ms = math.max(1, tonumber(ARGV[2]))
local at = ARGV[3]
local now = now_ms()
local written = 0
for i = 4, #ARGV, 4 do
  local job_id, envelope, not_before, unique = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local digest = redis.sha1hex(envelope)
  -- A copy of a job that already finished is not a retry: it is written, and the worker
  -- drops it as a replay (counted, with an audit line), as before.
  local retried = redis.call('GET', ENQUEUED .. job_id) == digest
    and redis.call('EXISTS', RESULT .. job_id) == 0 and not finished_flags({job_id})[1]
  if not retried then
    redis.call('SET', ENQUEUED .. job_id, digest, 'PX', window_ms)
    if not_before == '' or tonumber(not_before) * 1000 <= now then
      redis.call('XADD', STREAM, '*', 'id', job_id, 'env', envelope, 'att', '1', 'at', at)
    else
      add_delayed(job_id, '1', at, unique, not_before, envelope)
    end
    written = written + 1
  end
end
return written
