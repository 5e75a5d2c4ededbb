-- The queue's counters of entries removed without a dead letter. ARGV: prefix.
return redis.call('HGETALL', COUNTERS)
