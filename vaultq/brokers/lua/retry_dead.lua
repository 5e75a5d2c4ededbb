-- Move a dead letter back into the queue on an operator's request (`vaultq dead retry`):
-- the sealed envelope unchanged, as a fresh first attempt. The id's finished memory, old
-- result and cancel marker are removed in the same step, or the worker would refuse the
-- job as a replay (or the old outcome would stand). Only retryable reasons move.
-- ARGV: prefix, dead entry id, retryable reasons (comma-separated)
-- Returns {} when the letter is gone, {'refused', reason} or
-- {'ok', job_id, reason, detail, attempt, at}.
local tag = ARGV[2]
local entry = redis.call('XRANGE', DEAD, tag, tag)[1]
if not entry then
  return {}
end
local fields = entry[2]
local reason = field(fields, 'reason') or ''
local job_id = field(fields, 'id') or ''
local envelope = field(fields, 'env') or ''
if not string.find(',' .. ARGV[3] .. ',', ',' .. reason .. ',', 1, true)
    or job_id == '' or envelope == '' then
  return {'refused', reason}
end
redis.call('XDEL', DEAD, tag)
for _, hour in ipairs(redis.call('ZRANGE', DONE, 0, -1)) do
  redis.call('SREM', DONE .. ':' .. hour, job_id)
end
redis.call('DEL', RESULT .. job_id, CANCEL .. job_id)
local at = string.format('%.6f', now_ms() / 1000)
-- Back at its priority level ('pri' is unauthenticated: only the two known suffixes).
local lvl = field(fields, 'pri')
if lvl ~= ':high' and lvl ~= ':low' then
  lvl = ''
end
redis.call('XADD', P .. 'stream' .. lvl, '*', 'id', job_id, 'env', envelope, 'att', '1', 'at', at)
return {'ok', job_id, reason, field(fields, 'detail') or '', field(fields, 'att') or '0',
        field(fields, 'at') or '0'}
