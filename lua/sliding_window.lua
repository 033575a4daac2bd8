-- sliding_window.lua: one exact sliding-window check-and-consume, atomically, on Redis's clock.
--
-- KEYS[1]  the API key's ring, named <prefix>{<fingerprint>} (one key, one Cluster slot)
-- ARGV[1]  limit L: units the window admits, 1 <= L
-- ARGV[2]  window W in milliseconds, 1 <= W
-- ARGV[3]  cost c of this request, 1 <= c <= L
--
-- Returns {allowed (1|0), remaining, retry_after_ms, reset_after_ms, decided_at_ms}.
-- Needs Redis 7.0 or newer (PEXPIREAT ... GT).
--
-- Storage: one string per API key, an 8-byte header (the ring's capacity C and its
-- head, two little-endian u32) and C >= L slots of 8-byte little-endian Unix-ms
-- timestamps: the times of the last C allowed units, oldest at the head, in arrival
-- order. A slot never used holds 0, older than any window. C is the largest limit
-- the key has had while it lived: a lowered limit never drops history.
--
-- Invariants (the exactness rule, on this clock, at millisecond resolution):
-- * a request of cost c fits iff slot C-L+c-1 (0 = oldest) is at least W old: then
--   at most L-c units were allowed in (now-W, now], so allowing c keeps every window
--   at or under L (never over), and no fitting request is denied (never under);
-- * a denial's retry_after is (that slot + W - now): only time frees capacity, so the
--   same request is allowed then if nothing else is (honest retry);
-- * time never runs backwards for a key: now is at least its newest slot, even after
--   a failover to a host with another clock;
-- * a raised limit grows the ring once with empty slots in front; a lowered one keeps
--   every entry, so no sequence of limit changes (or replicas with different limits)
--   can forget a counted unit; W is not stored, entries are times, so any W applies
--   to the same history;
-- * the key expires when its newest entry leaves the longest window it was used with
--   (PEXPIREAT ... GT on every call), so expiry never forgets a unit that still counts.
-- Work per call: O(log C) 8-byte reads plus O(c) bytes written; growth is O(C) once.

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if not limit or not window or not cost or limit < 1 or window < 1 or cost < 1 or cost > limit then
  return redis.error_reply('ERR ratelimitd: invalid arguments: need 1 <= cost <= limit and window >= 1')
end

local HEADER = 8
local SLOT = 8
local ZERO_SLOT = string.rep('\0', SLOT)

local capacity = limit
local head = 0

local function slot_at(j)
  local offset = HEADER + ((head + j) % capacity) * SLOT
  return (struct.unpack('<i8', redis.call('GETRANGE', key, offset, offset + SLOT - 1)))
end

-- Rewrites the ring at the larger capacity `limit`, oldest first, empty slots in front.
local function grow(old_capacity)
  local body = redis.call('GETRANGE', key, HEADER, -1)
  if #body ~= old_capacity * SLOT then
    return redis.error_reply('ERR ratelimitd: key ' .. key .. ' does not hold a ratelimitd ring')
  end
  local split = head * SLOT
  local ordered = string.rep(ZERO_SLOT, limit - old_capacity) .. string.sub(body, split + 1) .. string.sub(body, 1, split)
  redis.call('SET', key, struct.pack('<I4I4', limit, 0) .. ordered, 'KEEPTTL')
  return nil
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local header = redis.call('GETRANGE', key, 0, HEADER - 1)
local fresh = #header < HEADER
if fresh then
  -- Allocated at full size once, so later writes never grow (and over-allocate) it.
  local stamp = struct.pack('<i8', now)
  local ring = string.rep(stamp, cost) .. string.rep(ZERO_SLOT, limit - cost)
  redis.call('SET', key, struct.pack('<I4I4', limit, cost % limit) .. ring, 'PXAT', now + window)
  return {1, limit - cost, 0, window, now}
end

capacity, head = struct.unpack('<I4I4', header)
if capacity < limit then
  local err = grow(capacity)
  if err then
    return err
  end
  capacity, head = limit, 0
end
local newest = slot_at(capacity - 1)
if newest > now then
  now = newest
end
local cutoff = now - window
-- Units outside the window: the slots before the first one newer than cutoff. The
-- ring is ordered, so a binary search finds it; the decisive slot halves the range.
local decisive = capacity - limit + cost - 1
local needed = slot_at(decisive)
local allowed = needed <= cutoff
local lo, hi = 0, decisive
if allowed then
  lo, hi = decisive + 1, capacity
end
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  if slot_at(mid) <= cutoff then
    lo = mid + 1
  else
    hi = mid
  end
end
-- Room left under the limit; below 0 while a lowered limit still counts older units.
local spare = math.max(lo - (capacity - limit), 0)

if not allowed then
  redis.call('PEXPIREAT', key, newest + window, 'GT')
  return {0, spare, needed + window - now, newest + window - now, now}
end

-- The c oldest slots are all outside the window (they precede the decisive one).
local stamp = struct.pack('<i8', now)
local first = math.min(cost, capacity - head)
redis.call('SETRANGE', key, HEADER + head * SLOT, string.rep(stamp, first))
if cost > first then
  redis.call('SETRANGE', key, HEADER, string.rep(stamp, cost - first))
end
redis.call('SETRANGE', key, 0, struct.pack('<I4I4', capacity, (head + cost) % capacity))
redis.call('PEXPIREAT', key, now + window, 'GT')
return {1, spare - cost, 0, window, now}
