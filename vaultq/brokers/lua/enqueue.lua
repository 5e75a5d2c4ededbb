-- Enqueue a batch of one queue, idempotently. Each write leaves a marker
-- ENQUEUED .. job_id holding a digest of the sealed envelope, for the dedup window. A
-- producer (or redis-py) that retries after an error it cannot read -- the connection
-- broke after the server applied the write: a restart, a failover, a timeout -- sends
-- the same sealed bytes again: the marker matches and the second write is skipped
-- instead of becoming a second entry. The same job id sealed anew (a new nonce, so new
-- bytes) is written as before; duplicates written on purpose are the fetch claim's
-- business. The digest only recognises a retry; it protects nothing, so the producer
-- computes it (SHA-1 of the envelope, vaultq/brokers/redis_writes.py) and Redis's one
-- thread does not hash every envelope.
-- One SET ... GET reads the marker and writes it in one command (Redis >= 6.2); a retry
-- rewrites the same digest, which only restarts the window. TIME is asked only for a
-- job with a not-before.
-- ARGV: prefix, window_ms, enqueued_at, then quintuples (job_id, envelope, not_before
-- ('' = now), unique, digest). Returns how many jobs were written.
local window_ms = ARGV[2]
local at = ARGV[3]
local now = nil
local written = 0
for i = 4, #ARGV, 5 do
  local job_id, envelope, not_before, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 4]
  local seen = redis.call('SET', ENQUEUED .. job_id, digest, 'PX', window_ms, 'GET')
  -- A copy of a job that already finished is not a retry: it is written, and the worker
  -- drops it as a replay (counted, with an audit line), as before.
  if seen ~= digest or redis.call('EXISTS', RESULT .. job_id) == 1
      or finished_flags({job_id})[1] then
    if not_before ~= '' then
      now = now or now_ms()
    end
    if not_before == '' or tonumber(not_before) * 1000 <= now then
      redis.call('XADD', STREAM, '*', 'id', job_id, 'env', envelope, 'att', '1', 'at', at)
    else
      add_delayed(job_id, '1', at, ARGV[i + 3], not_before, envelope)
    end
    written = written + 1
  end
end
return written
