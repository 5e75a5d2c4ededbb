-- One chord member's arrival (vaultq/brokers/chords.py): record its sealed result unless
-- it has one (the first stays), and say whether every member has one now, in one atomic
-- step, so two members finishing at the same moment on different workers cannot both
-- miss (nor hide) the last arrival. The hash lives on the queue's slot (hash tag).
-- ARGV: prefix, chord id, member index, total, sealed result, expiry (Unix ms)
local key = P .. 'chord:' .. ARGV[2]
if redis.call('HSETNX', key, ARGV[3], ARGV[5]) == 1 then
  redis.call('PEXPIREAT', key, ARGV[6])
end
if redis.call('HLEN', key) >= tonumber(ARGV[4]) then
  return 1
end
return 0
