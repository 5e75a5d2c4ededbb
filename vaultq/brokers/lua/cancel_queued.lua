-- Cancel a waiting job at once (operator's `vaultq cancel`): dead-letter the entry with
-- reason 'cancelled', store the sealed CANCELLED result and remember the id, atomically,
-- unless a worker holds the job id by now (its cancel marker stops it instead).
-- ARGV: prefix, kind ('stream' | 'delayed'), tag (entry id | delayed member), job_id,
--       has_result, result, result_ttl_ms, remember_until
-- Returns 1 when the entry was cancelled, 0 when it is no longer waiting.
local kind, tag, job_id = ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', CLAIM .. job_id) == 1 then
  return 0
end
local envelope, attempt
if kind == 'stream' then
  local entry = redis.call('XRANGE', STREAM, tag, tag)[1]
  if not entry or field(entry[2], 'id') ~= job_id then
    return 0
  end
  envelope = field(entry[2], 'env') or ''
  attempt = field(entry[2], 'att') or '1'
  -- An entry left pending by a dead worker is in the group's PEL too.
  redis.call('XACK', STREAM, GROUP, tag)
  redis.call('XDEL', STREAM, tag)
else
  local member_id, member_attempt = parse_delayed(tag)
  if member_id ~= job_id or not redis.call('ZSCORE', DELAYED, tag) then
    return 0
  end
  envelope = redis.call('HGET', DELAYED_DATA, tag) or ''
  attempt = member_attempt
  redis.call('ZREM', DELAYED, tag)
  redis.call('HDEL', DELAYED_DATA, tag)
end
local at = string.format('%.3f', now_ms() / 1000)
redis.call('XADD', DEAD, '*', 'id', job_id, 'reason', 'cancelled',
           'detail', 'cancelled before it started', 'att', attempt, 'at', at, 'env', envelope)
if ARGV[5] == '1' then
  store_result(job_id, ARGV[6], tonumber(ARGV[7]))
end
remember(job_id, tonumber(ARGV[8]))
return 1
