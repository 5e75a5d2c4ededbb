-- Remove a consumer from the group if it holds no pending entries (a closing worker
-- tidies up after itself). ARGV: prefix, consumer. Returns 1 when removed.
local consumer = ARGV[2]
local pending = redis.pcall('XPENDING', STREAM, GROUP, '-', '+', 1, consumer)
if pending['err'] or #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', STREAM, GROUP, consumer)
return 1
