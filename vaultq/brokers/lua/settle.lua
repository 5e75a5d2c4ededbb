-- Settle a batch of deliveries of one queue level in one call: any mix of
--   ack      store the result (write-once), remember the id as finished, remove the entry;
--   requeue  remove the entry and put the same envelope back (Retry: attempt + 1;
--            Release: the same attempt), straight into the stream when already due;
--   bury     dead letter (a stub unless keep_envelope), the result when given
--            (write-once), the finished-id memory unless remember_until is '' (an entry
--            that did not authenticate), remove the entry;
--   drop     remove the entry and count it under a reason (a copy of a finished job).
-- Each operation is what it was as a script of its own (ack.lua, requeue.lua, bury.lua,
-- drop.lua before): atomic with everything else in the batch, fenced by its delivery's
-- claim, and a crash leaves either all of the batch or none of it. One call instead of
-- one per job is what the batch buys: ~15 redis.call per ack became ~3 per ack plus a
-- dozen per batch (the claims read with one MGET, one XACK and one XDEL for all acks,
-- one TIME, one SMISMEMBER per live finished-id hour, one SADD per hour, one DEL of the
-- reservations and one of the claims), and the client packs and parses one command.
--
-- Fencing: an operation is honoured only while its delivery's tag holds the live job-id
-- claim (see fenced_out in common.lua), read once for the batch; an operation that
-- releases a claim clears it in that table too, so a second operation on the same job
-- id in one batch sees it gone, exactly as if each had run as a script of its own. Two
-- acks can thus never both hold a claim in one batch: the acks' finished-id flags are
-- read once, before any of them is remembered.
-- ARGV: prefix, dead_max, dead_age_ms, then operations, each a kind and its fields:
--   ack      entry_id, tag, job_id, has_result, result, result_ttl_ms, remember_until
--   requeue  entry_id, tag, job_id, attempt, not_before, unique
--   drop     entry_id, tag, job_id, reason
--   bury     entry_id, tag, job_id, attempt, reason, detail, has_result, result,
--            result_ttl_ms, remember_until ('' = do not remember), keep_envelope
-- Returns one integer per operation: -1 when its delivery no longer holds the lease
-- (nothing changed for it), else 1 when its entry was still pending, 0 when not (an ack
-- reports 1: its entries are acknowledged together).
local dead_max, dead_age_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local WIDTH = {ack = 8, requeue = 7, drop = 5, bury = 12}

local ops = {}
local i = 4
while i <= #ARGV do
  local width = WIDTH[ARGV[i]]
  if not width then
    return redis.error_reply('settle: unknown operation ' .. tostring(ARGV[i]))
  end
  ops[#ops + 1] = i
  i = i + width
end

-- The live claims of the batch's job ids, in one read.
local claim_keys = {}
for n, at in ipairs(ops) do
  claim_keys[n] = CLAIM .. ARGV[at + 3]
end
local held = {}
for n, value in ipairs(sliced('MGET', {}, claim_keys)) do
  local job_id = ARGV[ops[n] + 3]
  if held[job_id] == nil then
    held[job_id] = value
  end
end
local function owns(job_id, tag)
  local v = held[job_id]
  return v and starts_with(v, tag .. ' ')
end
local released = {}
local function release(job_id)
  released[#released + 1] = CLAIM .. job_id
  held[job_id] = false
end

local out = {}
local acks = {}
for n, at in ipairs(ops) do
  local kind, entry_id, tag, job_id = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  if not owns(job_id, tag) then
    out[n] = -1 -- a lost lease: this delivery may not settle the job (see fenced_out)
  elseif kind == 'ack' then
    acks[#acks + 1] = at
    release(job_id)
    out[n] = 1
  elseif kind == 'requeue' then
    local attempt, not_before, unique = ARGV[at + 4], tonumber(ARGV[at + 5]), ARGV[at + 6]
    local acked = redis.call('XACK', STREAM, GROUP, entry_id)
    if acked == 1 then
      local entry = redis.call('XRANGE', STREAM, entry_id, entry_id)[1]
      if entry then
        local envelope = field(entry[2], 'env')
        local enqueued_at = field(entry[2], 'at') or '0'
        if not_before * 1000 <= now_ms() then
          redis.call('XADD', STREAM, '*', 'id', job_id, 'env', envelope, 'att', attempt,
                     'at', enqueued_at)
        else
          add_delayed(job_id, attempt, enqueued_at, unique, ARGV[at + 5], envelope)
        end
      end
    end
    redis.call('XDEL', STREAM, entry_id)
    release(job_id)
    out[n] = acked
  elseif kind == 'drop' then
    local acked = redis.call('XACK', STREAM, GROUP, entry_id)
    redis.call('XDEL', STREAM, entry_id)
    if acked == 1 then
      count_garbage(ARGV[at + 4])
    end
    release(job_id)
    out[n] = acked
  else -- bury
    local ttl_ms = tonumber(ARGV[at + 9])
    local acked = redis.call('XACK', STREAM, GROUP, entry_id)
    if acked == 1 then
      local entry = redis.call('XRANGE', STREAM, entry_id, entry_id)[1]
      local envelope = entry and field(entry[2], 'env') or nil
      add_dead(job_id, ARGV[at + 5], ARGV[at + 6], ARGV[at + 4], envelope, ARGV[at + 11] == '1',
               dead_max, dead_age_ms)
      if ARGV[at + 7] == '1' and not finished_flags({job_id})[1] then
        store_result(job_id, ARGV[at + 8], ttl_ms)
      end
    end
    redis.call('XDEL', STREAM, entry_id)
    if ARGV[at + 10] ~= '' then
      remember(job_id, math.max(tonumber(ARGV[at + 10]), (now_ms() + ttl_ms) / 1000))
      redis.call('DEL', JOB .. job_id)
    end
    release(job_id)
    out[n] = acked
  end
end

if #acks > 0 then
  -- The acks, together: results first (write-once, and none for an id already
  -- remembered as finished), then the finished-id memory, the entries and reservations.
  local entries, ids, jobs = {}, {}, {}
  for k, at in ipairs(acks) do
    entries[k] = ARGV[at + 1]
    ids[k] = ARGV[at + 3]
    jobs[k] = JOB .. ARGV[at + 3]
  end
  sliced('XACK', {STREAM, GROUP}, entries)
  sliced('XDEL', {STREAM}, entries)
  local done = finished_flags(ids)
  local now = now_ms()
  local by_hour = {}
  local hours = {}
  for k, at in ipairs(acks) do
    local ttl_ms = tonumber(ARGV[at + 6])
    if ARGV[at + 4] == '1' and not done[k] then
      store_result(ids[k], ARGV[at + 5], ttl_ms)
    end
    local hour = math.floor(math.max(tonumber(ARGV[at + 7]), (now + ttl_ms) / 1000) / 3600)
    if not by_hour[hour] then
      by_hour[hour] = {}
      hours[#hours + 1] = hour
    end
    table.insert(by_hour[hour], ids[k])
  end
  remember_hours(by_hour, hours, now)
  sliced('DEL', {}, jobs)
end
if #released > 0 then
  sliced('DEL', {}, released)
end
return out
