-- Fetch up to COUNT deliveries from one queue, atomically:
--   1. promote due delayed jobs into the stream (ZRANGEBYSCORE + XADD + ZREM + HDEL in
--      one script, so concurrent promoters can never deliver a delayed job twice);
--   2. reclaim entries whose lease ran out (XAUTOCLAIM, min idle = lease): redelivered;
--   3. read new entries (XREADGROUP >);
--   4. claim each job id (SET NX PX lease); an entry whose id is claimed by another live
--      delivery stays pending and is looked at again after the lease;
--   5. report the finished / cancel-requested flags of the claimed ids.
-- ARGV: prefix, consumer, count, lease_ms, nonce, promote_limit
-- Returns {more, wait_ms, last_id, flat deliveries}; each delivery is
-- tag, job_id, envelope, attempt, enqueued_at, redelivered, completed, cancel_requested.
local consumer = ARGV[2]
local count = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local nonce = ARGV[5]
local promote_limit = tonumber(ARGV[6])
local now = now_ms()

local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now / 1000, 'LIMIT', 0, promote_limit)
for _, member in ipairs(due) do
  local envelope = redis.call('HGET', DELAYED_DATA, member)
  local job_id, attempt, enqueued_at = parse_delayed(member)
  if envelope and job_id then
    redis.call('XADD', STREAM, '*', 'id', job_id, 'env', envelope, 'att', attempt, 'at', enqueued_at)
  end
  redis.call('ZREM', DELAYED, member)
  redis.call('HDEL', DELAYED_DATA, member)
end

local taken = {}
local function take(entry_id, fields, redelivered)
  if type(fields) ~= 'table' then
    return
  end
  local job_id = field(fields, 'id')
  local envelope = field(fields, 'env')
  if not job_id or not envelope then
    -- Not written by vaultq: settle it away rather than redeliver it forever.
    redis.call('XACK', STREAM, GROUP, entry_id)
    redis.call('XDEL', STREAM, entry_id)
    return
  end
  local tag = entry_id .. '/' .. nonce
  if redis.call('SET', CLAIM .. job_id, tag .. ' ' .. consumer, 'PX', lease_ms, 'NX') then
    taken[#taken + 1] = {tag, job_id, envelope, field(fields, 'att') or '1',
                         field(fields, 'at') or '0', redelivered}
  end
end

local cursor = redis.call('GET', RECLAIM) or '0-0'
local claimed = redis.pcall('XAUTOCLAIM', STREAM, GROUP, consumer, lease_ms, cursor, 'COUNT', count)
if claimed['err'] then
  if not string.find(claimed['err'], 'NOGROUP') then
    return redis.error_reply(claimed['err'])
  end
  -- First use of this queue: start the group at 0 so jobs enqueued before it are read.
  redis.call('XGROUP', 'CREATE', STREAM, GROUP, '0', 'MKSTREAM')
  claimed = {'0-0', {}}
end
if claimed[1] == '0-0' then
  redis.call('DEL', RECLAIM)
else
  redis.call('SET', RECLAIM, claimed[1])
end
for _, entry in ipairs(claimed[2]) do
  take(entry[1], entry[2], 1)
end

local more = 0
local want = count - #taken
if want > 0 then
  local read = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', want, 'STREAMS', STREAM, '>')
  if read then
    local entries = read[1][2]
    for _, entry in ipairs(entries) do
      take(entry[1], entry[2], 0)
    end
    if #entries == want then
      more = 1
    end
  end
end

local out = {}
local ids = {}
for i, t in ipairs(taken) do
  ids[i] = t[2]
end
local done = finished_flags(ids)
for i, t in ipairs(taken) do
  out[#out + 1] = t[1]
  out[#out + 1] = t[2]
  out[#out + 1] = t[3]
  out[#out + 1] = t[4]
  out[#out + 1] = t[5]
  out[#out + 1] = t[6]
  out[#out + 1] = done[i] and 1 or 0
  out[#out + 1] = redis.call('EXISTS', CANCEL .. t[2])
end

local wait_ms = -1
local last_id = ''
if #taken == 0 and more == 0 then
  -- Idle: tell the caller how long until the next delayed job is due, and the id to
  -- block after (everything up to it has been delivered to the group).
  local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  if first[2] then
    wait_ms = math.max(0, math.floor(tonumber(first[2]) * 1000 - now))
  end
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', STREAM)) do
    if field(group, 'name') == GROUP then
      last_id = field(group, 'last-delivered-id')
    end
  end
  -- Forget consumers that hold nothing and have been quiet for an hour (workers that
  -- went away); a live one is recreated by its next read.
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', STREAM, GROUP)) do
    local name = field(c, 'name')
    if name ~= consumer and field(c, 'pending') == 0 and field(c, 'idle') > 3600000 then
      redis.call('XGROUP', 'DELCONSUMER', STREAM, GROUP, name)
    end
  end
end
return {more, wait_ms, last_id, out}
