-- sliding_window.lua: one exact sliding-window check-and-consume, atomically, on Redis's clock.
--
-- KEYS[1]  the API key's ring, named <prefix>{<fingerprint>} (one key, one Cluster slot)
-- ARGV[1]  limit L: units the window admits, 1 <= L
-- ARGV[2]  window W in milliseconds, 1 <= W
-- ARGV[3]  cost c of this request, 1 <= c <= L
-- ARGV[4]  optional: the caller's clock, Unix ms, used instead of Redis TIME. The
--          service never passes it (it would trust each replica's clock); it exists
--          for Redis services that forbid TIME in scripts and for tests that replay
--          a timeline.
--
-- Returns {allowed (1|0), remaining, retry_after_ms, reset_after_ms, decided_at_ms}.
-- Needs Redis 6.2 or newer (SET ... PXAT / KEEPTTL).
--
-- Storage: one string per API key. A 40-byte header (little-endian): the ring's
-- capacity C (u32), its head (u32), the frontier hint (u32, see below), the format
-- version (u32, 1), when the key expires (i64, Unix ms), its newest entry (i64, Unix ms) and
-- the cutoff the hint was found at (i64, Unix ms);
-- then C >= L slots of 8-byte little-endian Unix-ms timestamps: the times of the
-- last C allowed units, oldest at the head, in arrival order. A slot never used
-- holds 0, older than any window. C is the largest limit the key has had while it
-- lived: a lowered limit never drops history.
--
-- Invariants (the exactness rule, on this clock, at millisecond resolution):
-- * a request of cost c fits iff slot C-L+c-1 (0 = oldest) is at least W old: then
--   at most L-c units were allowed in (now-W, now], so allowing c keeps every window
--   at or under L (never over), and no fitting request is denied (never under);
-- * a denial's retry_after is (that slot + W - now): only time frees capacity, so the
--   same request is allowed then if nothing else is (honest retry);
-- * time never runs backwards for a key: now is at least its newest entry, even after
--   a failover to a host with another clock;
-- * a raised limit grows the ring once with empty slots in front; a lowered one keeps
--   every entry, so no sequence of limit changes (or replicas with different limits)
--   can forget a counted unit; W is not stored, entries are times, so any W applies
--   to the same history;
-- * the key expires only after its newest entry has left the longest window it was
--   used with (the header's expiry only moves later), so expiry forgets no unit that
--   still counts.
--
-- Work per call: each redis.call() from Lua costs more than a few bytes of copying,
-- and Redis hashes every byte of every Lua string, so the script reads 8-byte slots
-- and as few as it can. The frontier (the first slot inside the window) only moves
-- forward while the cutoff (now - W) does, so the header remembers where it was (as a
-- slot position, which writes do not move) and the next call gallops from there: a
-- steady key needs one or two reads, a key idle for a while O(log C). A cutoff below
-- the remembered one (a longer window) searches from the oldest slot. Writes are one SETRANGE of the c slots plus
-- the header; the TTL is pushed out in steps of W/8, not on every call.

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if not limit or not window or not cost or limit < 1 or window < 1 or cost < 1 or cost > limit then
  return redis.error_reply('ERR ratelimitd: invalid arguments: need 1 <= cost <= limit and window >= 1')
end

local HEADER = 40
local LAYOUT = '<I4I4I4I4i8i8i8'
local SLOT = 8
local FORMAT = 1
local ZERO_SLOT = string.rep('\0', SLOT)

local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- How long past its last needed moment a key may live: the TTL moves in these steps.
local slack = math.floor(window / 8)

local header = redis.call('GETRANGE', key, 0, HEADER - 1)
if #header < HEADER then
  -- A new key: Redis allocates the whole ring at its exact size, zero-filled, once
  -- (a SETRANGE past the end of a missing key), so no Lua string of C slots is built
  -- and hashed, and later writes never grow (and over-allocate) it. The first c
  -- slots follow the header, so one write sets both.
  local stamp = struct.pack('<i8', now)
  local expires = now + window + slack
  redis.call('SETRANGE', key, HEADER + (limit - 1) * SLOT, ZERO_SLOT)
  redis.call('SETRANGE', key, 0, struct.pack(LAYOUT, limit, cost % limit, 0, FORMAT, expires, now, 0) .. string.rep(stamp, cost))
  redis.call('PEXPIREAT', key, expires)
  return {1, limit - cost, 0, window, now}
end

local capacity, head, hint, format, expires, newest, hint_cutoff = struct.unpack(LAYOUT, header)
if format ~= FORMAT then
  return redis.error_reply('ERR ratelimitd: key ' .. key .. ' does not hold a format ' .. FORMAT .. ' ratelimitd ring')
end
if capacity < limit then
  local body = redis.call('GETRANGE', key, HEADER, -1)
  if #body ~= capacity * SLOT then
    return redis.error_reply('ERR ratelimitd: key ' .. key .. ' does not hold a ratelimitd ring')
  end
  local split = head * SLOT
  body = string.rep(ZERO_SLOT, limit - capacity) .. string.sub(body, split + 1) .. string.sub(body, 1, split)
  capacity, head, hint, hint_cutoff = limit, 0, 0, 0
  redis.call('SET', key, struct.pack(LAYOUT, capacity, head, hint, FORMAT, expires, newest, hint_cutoff) .. body, 'KEEPTTL')
end

local seen = {}
-- Slot j of the ring, 0 = oldest (each read at most once per call).
local function slot_at(j)
  local value = seen[j]
  if not value then
    local offset = HEADER + ((head + j) % capacity) * SLOT
    value = struct.unpack('<i8', redis.call('GETRANGE', key, offset, offset + SLOT - 1))
    seen[j] = value
  end
  return value
end

if newest > now then
  now = newest
end
local cutoff = now - window

-- The frontier: the first slot newer than cutoff (C if none). Every slot before the
-- hint was outside the window at the last call, and cutoffs only grow, so search
-- from there: gallop until a slot inside the window, then bisect the last step.
local lo = 0
if cutoff >= hint_cutoff then
  lo = (hint - head) % capacity
end
local hi = capacity
local step = 1
while lo < hi do
  local probe = math.min(lo + step - 1, capacity - 1)
  if slot_at(probe) > cutoff then
    hi = probe
    break
  end
  lo = probe + 1
  step = step * 2
end
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  if slot_at(mid) <= cutoff then
    lo = mid + 1
  else
    hi = mid
  end
end
local frontier = lo
local decisive = capacity - limit + cost - 1
-- Room left under the limit; below 0 while a lowered limit still counts older units.
local spare = math.max(frontier - (capacity - limit), 0)
local new_hint = (head + frontier) % capacity

if frontier <= decisive then
  local needed = slot_at(decisive)
  local keep = newest + window
  local extended = keep > expires
  if extended then
    -- A longer window than the key has lived by: keep its history that long.
    expires = keep + slack
    redis.call('PEXPIREAT', key, expires)
  end
  if extended or new_hint ~= hint then
    -- Nothing is counted; the header only remembers the frontier and the expiry.
    redis.call('SETRANGE', key, 0, struct.pack(LAYOUT, capacity, head, new_hint, FORMAT, expires, newest, cutoff))
  end
  return {0, spare, needed + window - now, newest + window - now, now}
end

-- The c oldest slots are all outside the window (they precede the frontier).
local stamp = struct.pack('<i8', now)
if expires < now + window then
  expires = now + window + slack
  redis.call('PEXPIREAT', key, expires)
end
local first = math.min(cost, capacity - head)
redis.call('SETRANGE', key, HEADER + head * SLOT, string.rep(stamp, first))
if cost > first then
  redis.call('SETRANGE', key, HEADER, string.rep(stamp, cost - first))
end
redis.call('SETRANGE', key, 0, struct.pack(LAYOUT, capacity, (head + cost) % capacity, new_hint, FORMAT, expires, now, cutoff))
return {1, spare - cost, 0, window, now}
