-- Shared helpers, prepended to every vaultq script after the generated key header
-- (P, GROUP, STREAM, DELAYED, ... are defined there, from QueueKeys in vaultq/brokers/redis_layout.py).
-- Every key a script touches starts with P, the queue's prefix, so all of them share
-- the queue's hash tag and live in one Redis Cluster slot.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Look a field up in a flat stream-entry field array {k1, v1, k2, v2, ...}.
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

local function starts_with(s, prefix)
  return string.sub(s, 1, #prefix) == prefix
end

-- redis.call(cmd, head..., items...) for a list of any length: in slices of 1000, so
-- no unpack exceeds Lua's C stack (~8000 values); the slices' array replies are
-- concatenated (a batch of keys for MGET, ids for SMISMEMBER, entries for XACK ...).
local function sliced(cmd, head, items)
  local out = {}
  for first = 1, #items, 1000 do
    local args = {}
    for k = 1, #head do
      args[k] = head[k]
    end
    for k = first, math.min(#items, first + 999) do
      args[#args + 1] = items[k]
    end
    local reply = redis.call(cmd, unpack(args))
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do
        out[#out + 1] = v
      end
    end
  end
  return out
end

-- The claim value is "<tag> <consumer>"; only the delivery holding the tag may extend
-- or release it, so a late settle from a lost lease cannot free someone else's claim.
local function claim_owned(job_id, tag)
  local v = redis.call('GET', CLAIM .. job_id)
  return v and starts_with(v, tag .. ' ')
end

-- Fencing: a settlement is honoured only while its delivery's tag still holds the live
-- job-id claim. The claim expires on Redis's own clock (PX), so a delivery whose lease
-- ran out has lost it for good -- even when nobody took the job over yet -- and its late
-- ack, retry or dead letter changes nothing (the job runs again: at-least-once).
local function fenced_out(job_id, tag)
  return not claim_owned(job_id, tag)
end

local function release_claim(job_id, tag)
  if claim_owned(job_id, tag) then
    redis.call('DEL', CLAIM .. job_id)
  end
end

-- A result is a one-element list: waiters block on BLMOVE key key (a rotation that
-- hands the element back at once, so it consumes nothing and every waiter is served),
-- and the RPUSH here wakes all of them. A list costs ~100 bytes plus the result; a
-- one-entry stream would preallocate a 4 KiB node.
--
-- Outcomes are write-once: a stored result is never replaced, and no result is stored
-- for an id remembered as finished (its result may have expired: a copy re-inserted
-- later must not write a second outcome). Returns true when stored.
local function store_result(job_id, data, ttl_ms)
  local key = RESULT .. job_id
  if redis.call('EXISTS', key) == 1 then
    return false
  end
  redis.call('RPUSH', key, data)
  redis.call('PEXPIRE', key, math.max(1, ttl_ms))
  return true
end

-- Finished ids live in one set per hour of their remember-until time; the set expires
-- by itself an hour after that hour ends. DONE indexes the live hours so a lookup only
-- touches sets that still exist. by_hour maps each hour (Unix hours) to its ids, hours
-- lists those hours; now is Redis's time in ms. One SADD per hour for a whole batch.
local function remember_hours(by_hour, hours, now)
  for _, hour in ipairs(hours) do
    local key = DONE .. ':' .. hour
    sliced('SADD', {key}, by_hour[hour])
    redis.call('EXPIREAT', key, (hour + 2) * 3600)
    redis.call('ZADD', DONE, hour, hour)
  end
  local now_hour = math.floor(now / 3600000)
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', '(' .. (now_hour - 1))
  local last = redis.call('ZRANGE', DONE, -1, -1)
  if last[1] then
    redis.call('EXPIREAT', DONE, (tonumber(last[1]) + 2) * 3600)
  end
end

-- Remember one id as finished until until_s (Unix seconds).
local function remember(job_id, until_s)
  local hour = math.floor(until_s / 3600)
  remember_hours({[hour] = {job_id}}, {hour}, now_ms())
end

-- For each id in ids, true when it is remembered as finished.
local function finished_flags(ids)
  local flags = {}
  for i = 1, #ids do
    flags[i] = false
  end
  if #ids == 0 then
    return flags
  end
  local now_hour = math.floor(now_ms() / 3600000)
  local hours = redis.call('ZRANGEBYSCORE', DONE, now_hour - 1, '+inf')
  for _, hour in ipairs(hours) do
    local hits = sliced('SMISMEMBER', {DONE .. ':' .. hour}, ids)
    for i = 1, #ids do
      if hits[i] == 1 then
        flags[i] = true
      end
    end
  end
  return flags
end

-- A delayed job is a member "<job id>|<attempt>|<enqueued at>|<unique>" of DELAYED
-- (score = not-before, Unix seconds) plus its envelope in the hash DELAYED_DATA under
-- the same member. The job id may itself contain '|', so parse from the right.
local function add_delayed(job_id, attempt, enqueued_at, unique, not_before, envelope)
  local member = job_id .. '|' .. attempt .. '|' .. enqueued_at .. '|' .. unique
  redis.call('ZADD', DELAYED, not_before, member)
  redis.call('HSET', DELAYED_DATA, member, envelope)
end

local function parse_delayed(member)
  return string.match(member, '^(.*)|([^|]*)|([^|]*)|([^|]*)$')
end

-- Unauthenticated job ids longer than this are never used as key names.
local MAX_ID = 256

-- The stream fields' forms (docs/redis.md, "Enqueueing from another language"):
-- att is 1-999999999 in decimal without sign or leading zeros; at is Unix seconds,
-- 1-12 digits with an optional point and 1-9 decimals. Lua's tonumber would also take
-- "nan", "inf", "0x10", " 1" and "-5": those are refused by the patterns instead.
local function valid_att(s)
  return s ~= nil and #s <= 9 and string.find(s, '^[1-9]%d*$') ~= nil
end

local function valid_at(s)
  if s == nil then
    return false
  end
  local whole, point, decimals = string.match(s, '^(%d+)(%.?)(%d*)$')
  if not whole or #whole > 12 or #decimals > 9 then
    return false
  end
  return (point == '') == (decimals == '')
end

-- Write a dead letter and keep the stream bounded: at most max_len entries and none
-- older than max_age_ms (exact trimming: one old entry goes per new one at the cap).
-- The envelope is copied only when keep is true; its size is always recorded, so an
-- oversized or unauthenticated entry leaves a stub of ~100 bytes, never a second copy.
-- A job off priority level 0 keeps its level (field 'pri': ':high' or ':low') for
-- `vaultq dead retry`; lvl defaults to the level of the script's stream.
local function add_dead(job_id, reason, detail, attempt, envelope, keep, max_len, max_age_ms, lvl)
  local at_ms = now_ms()
  local fields = {'id', string.sub(job_id, 1, MAX_ID), 'reason', reason, 'detail', detail,
                  'att', string.sub(attempt or '1', 1, 20),
                  'at', string.format('%.3f', at_ms / 1000)}
  lvl = lvl or LVL
  if lvl ~= '' then
    fields[#fields + 1] = 'pri'
    fields[#fields + 1] = lvl
  end
  if envelope then
    fields[#fields + 1] = 'size'
    fields[#fields + 1] = tostring(#envelope)
    if keep then
      fields[#fields + 1] = 'env'
      fields[#fields + 1] = envelope
    end
  end
  redis.call('XADD', DEAD, 'MAXLEN', math.max(1, max_len), '*', unpack(fields))
  redis.call('XTRIM', DEAD, 'MINID', math.max(0, at_ms - max_age_ms))
end

-- Garbage is counted, not stored: one hash of counters per queue.
local function count_garbage(reason)
  redis.call('HINCRBY', COUNTERS, reason, 1)
end
