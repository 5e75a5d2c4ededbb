-- Delete every dead letter of the queue. ARGV: prefix. Returns how many there were.
local n = redis.call('XLEN', DEAD)
redis.call('DEL', DEAD)
return n
