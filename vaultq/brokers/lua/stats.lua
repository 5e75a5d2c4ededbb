-- Queue counters. Settled entries are deleted from the stream, so everything in it is
-- either not yet delivered (ready) or in the group's pending list (running).
-- ARGV: prefix. Returns {stream length, pending, delayed, dead}.
local pending = 0
local summary = redis.pcall('XPENDING', STREAM, GROUP)
if not summary['err'] then
  pending = summary[1]
end
return {redis.call('XLEN', STREAM), pending, redis.call('ZCARD', DELAYED), redis.call('XLEN', DEAD)}
