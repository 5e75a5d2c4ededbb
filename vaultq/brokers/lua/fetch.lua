-- Fetch up to COUNT deliveries from one queue, atomically, level by level as the plan in
-- ARGV says (vaultq/priority.py: highest level first, every tenth fetch one job of a
-- lower level first). Each priority level has its own stream, delayed set and reclaim
-- cursor (KEYS[1] is level 0's stream; the others add ':high' / ':low'); for each level:
--   1. promote due delayed jobs into the stream (ZRANGEBYSCORE + XADD + ZREM + HDEL in
--      one script, so concurrent promoters can never deliver a delayed job twice);
--   2. reclaim entries whose lease ran out (XAUTOCLAIM, min idle = lease): redelivered;
--   3. read new entries (XREADGROUP >);
--   4. claim each job id (SET NX PX lease). An entry whose id is claimed by a live
--      lease of ANOTHER entry is a duplicate: it is removed and counted, in this pass,
--      so a pile of entries sharing one id cannot slow recovery down. An entry whose
--      own claim is still live (its holder renews it) stays pending;
--   5. report the finished / cancel-requested flags of the claimed ids.
-- Before any of that an entry's size is checked here, inside Redis: an envelope larger
-- than max_size (or an id longer than MAX_ID) is never sent to a worker; it becomes a
-- dead-letter stub.
-- A level whose stream does not exist (never used) costs an EXISTS and a ZRANGEBYSCORE.
-- ARGV: prefix, consumer, count, lease_ms, nonce, promote_limit, max_size (0 = none),
--       dead_max, dead_age_ms, then pairs (level suffix, most to take from that level)
-- Returns {more, wait_ms, after, flat deliveries}: after is {} unless idle, then flat
-- pairs (stream, id to block after); each delivery is tag, job_id, envelope, attempt,
-- enqueued_at, redelivered, completed, cancel_requested. A tag is
-- '<entry id><level suffix>/<nonce>'.
local consumer = ARGV[2]
local count = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local nonce = ARGV[5]
local promote_limit = tonumber(ARGV[6])
local max_size = tonumber(ARGV[7]) or 0
local dead_max = tonumber(ARGV[8]) or 10000
local dead_age_ms = tonumber(ARGV[9]) or 2592000000
local now = now_ms()

local taken = {}
local cur_stream, cur_lvl = STREAM, ''
local function take(entry_id, fields, redelivered)
  local STREAM = cur_stream
  if type(fields) ~= 'table' then
    return
  end
  local job_id = field(fields, 'id')
  local envelope = field(fields, 'env')
  if not job_id or not envelope then
    -- Not written by vaultq: settle it away rather than redeliver it forever.
    redis.call('XACK', STREAM, GROUP, entry_id)
    redis.call('XDEL', STREAM, entry_id)
    count_garbage('malformed')
    return
  end
  if #job_id > MAX_ID or (max_size > 0 and #envelope > max_size) then
    -- One reason for everything checked before the signature (see docs/security.md).
    redis.call('XACK', STREAM, GROUP, entry_id)
    redis.call('XDEL', STREAM, entry_id)
    add_dead(job_id, 'rejected:unauthenticated', 'envelope rejected before authentication',
             field(fields, 'att'), envelope, false, dead_max, dead_age_ms, cur_lvl)
    return
  end
  local att, at = field(fields, 'att'), field(fields, 'at')
  if not valid_att(att) or not valid_at(at) then
    -- Whoever can write to Redis can write any bytes here; docs/redis.md states the
    -- forms. Never delivered (a guessed attempt could grant extra retries or skip
    -- them): a stub dead letter naming the fields, in this same atomic step.
    redis.call('XACK', STREAM, GROUP, entry_id)
    redis.call('XDEL', STREAM, entry_id)
    add_dead(job_id, 'rejected:unauthenticated',
             'stream field att or at missing or malformed (docs/redis.md)',
             '0', envelope, false, dead_max, dead_age_ms, cur_lvl)
    return
  end
  local ref = entry_id .. cur_lvl
  local tag = ref .. '/' .. nonce
  if redis.call('SET', CLAIM .. job_id, tag .. ' ' .. consumer, 'PX', lease_ms, 'NX') then
    taken[#taken + 1] = {tag, job_id, envelope, att, at, redelivered}
    return
  end
  local holder = redis.call('GET', CLAIM .. job_id)
  if holder and not starts_with(holder, ref .. '/') then
    -- Another entry runs this id: this one may never run beside it, and once that one
    -- settled it would be a replay. Remove it now (counted) instead of parking it in
    -- the pending list, where thousands of them would be walked again every lease.
    redis.call('XACK', STREAM, GROUP, entry_id)
    redis.call('XDEL', STREAM, entry_id)
    count_garbage('duplicate')
  end
end

-- Serve one level: promote its due delayed jobs (ZRANGEBYSCORE + XADD + ZREM + HDEL in
-- this one script, so concurrent promoters never deliver a delayed job twice), reclaim
-- its lapsed leases, read its new entries; at most `most` taken from it.
local RECLAIM_SCAN = 2000
local more = 0
local function serve(lvl, most)
  local stream = P .. 'stream' .. lvl
  local delayed = P .. 'delayed' .. lvl
  local delayed_data = P .. 'delayed:data' .. lvl
  local reclaim = P .. 'reclaim' .. lvl
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now / 1000, 'LIMIT', 0, promote_limit)
  for _, member in ipairs(due) do
    local envelope = redis.call('HGET', delayed_data, member)
    local job_id, attempt, enqueued_at = parse_delayed(member)
    if envelope and job_id then
      redis.call('XADD', stream, '*', 'id', job_id, 'env', envelope, 'att', attempt, 'at', enqueued_at)
    end
    redis.call('ZREM', delayed, member)
    redis.call('HDEL', delayed_data, member)
  end
  if lvl ~= '' and redis.call('EXISTS', stream) == 0 then
    return -- a level never used in this queue: nothing to read, no group to create
  end
  cur_stream, cur_lvl = stream, lvl
  local stop = math.min(count, #taken + most)

  -- Reclaim: walk the pending list from the saved cursor, asking each time for no more
  -- entries than can still be taken (XAUTOCLAIM resets the idle time of what it returns,
  -- so an entry returned and not taken would wait another lease). Duplicates are removed
  -- as they are met, so the walk goes on in this same call, up to RECLAIM_SCAN entries.
  local cursor = redis.call('GET', reclaim) or '0-0'
  local examined = 0
  local rounds = 0
  local returned = 0
  repeat
    rounds = rounds + 1
    local claimed = redis.pcall('XAUTOCLAIM', stream, GROUP, consumer, lease_ms, cursor,
                                'COUNT', stop - #taken)
    if claimed['err'] then
      if not string.find(claimed['err'], 'NOGROUP') then
        error(claimed['err'])
      end
      -- First use of this stream: start the group at 0 so jobs enqueued before it are read.
      redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
      claimed = {'0-0', {}}
    end
    cursor = claimed[1]
    for _, entry in ipairs(claimed[2]) do
      take(entry[1], entry[2], 1)
    end
    returned = #claimed[2]
    examined = examined + returned
  -- A round that found nothing idle ends the walk (the cursor is kept for the next call).
  until cursor == '0-0' or #taken >= stop or returned == 0 or examined >= RECLAIM_SCAN
        or rounds >= 100
  if cursor == '0-0' then
    redis.call('DEL', reclaim)
  else
    redis.call('SET', reclaim, cursor)
  end
  if cursor ~= '0-0' and #taken < stop and returned > 0 then
    more = 1 -- the walk stopped at its bound with work left: the caller reads on at once
  end
  local want = stop - #taken
  if want > 0 then
    local read = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', want, 'STREAMS', stream, '>')
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
end

for i = 10, #ARGV - 1, 2 do
  if #taken >= count then
    break
  end
  serve(ARGV[i], tonumber(ARGV[i + 1]))
end

local out = {}
local ids = {}
local cancel_keys = {}
for i, t in ipairs(taken) do
  ids[i] = t[2]
  cancel_keys[i] = CANCEL .. t[2]
end
local done = finished_flags(ids)
-- The cancel flags of the whole batch in one read.
local cancelled = sliced('MGET', {}, cancel_keys)
for i, t in ipairs(taken) do
  out[#out + 1] = t[1]
  out[#out + 1] = t[2]
  out[#out + 1] = t[3]
  out[#out + 1] = t[4]
  out[#out + 1] = t[5]
  out[#out + 1] = t[6]
  out[#out + 1] = done[i] and 1 or 0
  out[#out + 1] = cancelled[i] and 1 or 0
end

local wait_ms = -1
local after = {}
if #taken == 0 and more == 0 then
  -- Idle: tell the caller how long until the next delayed job of any level is due, and
  -- the id to block after in each level's stream (everything up to it has been
  -- delivered to the group; a level without a stream yet: any entry, once created).
  local quiet_ms = 3 * lease_ms
  for _, lvl in ipairs({':high', '', ':low'}) do
    local stream = P .. 'stream' .. lvl
    local first = redis.call('ZRANGE', P .. 'delayed' .. lvl, 0, 0, 'WITHSCORES')
    if first[2] then
      local due_ms = math.max(0, math.floor(tonumber(first[2]) * 1000 - now))
      wait_ms = (wait_ms < 0) and due_ms or math.min(wait_ms, due_ms)
    end
    local last_id = '0-0'
    if redis.call('EXISTS', stream) == 1 then
      for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
        if field(group, 'name') == GROUP then
          last_id = field(group, 'last-delivered-id')
          -- Forget consumers that hold nothing and have been quiet for three leases
          -- (workers that went away: a live worker reads at least once per block
          -- interval, and holds pending entries while busy). A live one is recreated
          -- by its next read or extend.
          for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, GROUP)) do
            local name = field(c, 'name')
            if name ~= consumer and field(c, 'pending') == 0 and field(c, 'idle') > quiet_ms then
              redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, name)
            end
          end
        end
      end
    end
    after[#after + 1] = stream
    after[#after + 1] = last_id
  end
end
return {more, wait_ms, after, out}
