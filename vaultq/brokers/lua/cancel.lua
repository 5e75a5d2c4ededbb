-- Cancel: a job with a result or a remembered finished id is FINISHED (nothing is
-- changed); otherwise leave a marker that fetch and `cancelled` report.
-- ARGV: prefix, job_id, ttl_ms
local job_id = ARGV[2]
if redis.call('EXISTS', RESULT .. job_id) == 1 or finished_flags({job_id})[1] then
  return 'finished'
end
redis.call('SET', CANCEL .. job_id, '1', 'PX', math.max(1, tonumber(ARGV[3])))
return 'requested'
