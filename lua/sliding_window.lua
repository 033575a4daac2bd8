-- sliding_window.lua: one exact sliding-window check-and-consume, atomically, on Redis's clock.
--
-- KEYS[1]  the API key's ring, named <prefix>{<fingerprint>} (one key, one Cluster slot)
-- ARGV[1]  limit L: units the window admits, 1 <= L
-- ARGV[2]  window W in milliseconds, 1 <= W
-- ARGV[3]  cost c of this request, 1 <= c <= L
--
-- Returns {allowed (1|0), remaining, retry_after_ms, reset_after_ms, decided_at_ms}.
--
-- Storage: one string per API key, an 8-byte header (L and the ring's head, two
-- little-endian u32) and L slots of 8-byte little-endian Unix-ms timestamps: the
-- times of the last L allowed units, oldest at the head, in arrival order. A slot
-- that was never used holds 0, older than any window.
--
-- Invariants (the exactness rule of DESIGN.md, on this clock, at millisecond resolution):
-- * a request of cost c fits iff the c-th oldest slot is at least W old: then at
--   most L - c units were allowed in (now - W, now], so allowing c keeps every
--   window at or under L (never over), and no fitting request is denied (never under);
-- * a denial's retry_after is (that slot + W - now): only time frees capacity, so
--   the same request is allowed then if nothing else is (honest retry);
-- * time never runs backwards for a key: now is at least its newest slot, even
--   after a failover to a host with another clock;
-- * a new L keeps the newest min(old L, new L) entries in order, so the rule holds
--   across limit changes; W is not stored, entries are times, so a new W applies
--   to the same history.
-- Work per call is O(log L) reads plus O(c) bytes written; a limit change is O(L) once.
-- The key expires W after its newest entry, when it no longer counts.

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

local function slot_at(head, j)
  local offset = HEADER + ((head + j) % limit) * SLOT
  local raw = redis.call('GETRANGE', key, offset, offset + SLOT - 1)
  if #raw ~= SLOT then
    return 0
  end
  return (struct.unpack('<i8', raw))
end

-- Rewrites the ring for a new limit, oldest first (head 0), keeping the newest entries.
local function resize(old_limit, old_head)
  local body = redis.call('GETRANGE', key, HEADER, -1)
  if #body ~= old_limit * SLOT then
    return redis.error_reply('ERR ratelimitd: key ' .. key .. ' does not hold a ratelimitd ring')
  end
  local split = old_head * SLOT
  local ordered = string.sub(body, split + 1) .. string.sub(body, 1, split)
  if limit > old_limit then
    ordered = string.rep(ZERO_SLOT, limit - old_limit) .. ordered
  else
    ordered = string.sub(ordered, (old_limit - limit) * SLOT + 1)
  end
  redis.call('SET', key, struct.pack('<I4I4', limit, 0) .. ordered, 'KEEPTTL')
  return nil
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local head = 0
local header = redis.call('GETRANGE', key, 0, HEADER - 1)
local fresh = #header < HEADER
if not fresh then
  local stored_limit
  stored_limit, head = struct.unpack('<I4I4', header)
  if stored_limit ~= limit then
    local err = resize(stored_limit, head)
    if err then
      return err
    end
    head = 0
  end
  local newest = slot_at(head, limit - 1)
  if newest > now then
    now = newest
  end
end

local cutoff = now - window
local needed = 0
if not fresh then
  needed = slot_at(head, cost - 1)
end
local allowed = needed <= cutoff

-- expired: how many of the oldest slots lie outside the window. The ring is ordered,
-- so a binary search finds it; slot cost-1 is already known, which halves the range.
local lo, hi = 0, cost - 1
if allowed then
  lo, hi = cost, limit
end
if fresh then
  lo, hi = limit, limit
end
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  if slot_at(head, mid) <= cutoff then
    lo = mid + 1
  else
    hi = mid
  end
end
local expired = lo

if not allowed then
  local newest = slot_at(head, limit - 1)
  return {0, expired, needed + window - now, newest + window - now, now}
end

local stamp = struct.pack('<i8', now)
if fresh then
  -- Allocated at full size once, so later writes never grow (and over-allocate) the string.
  local ring = string.rep(stamp, cost) .. string.rep(ZERO_SLOT, limit - cost)
  redis.call('SET', key, struct.pack('<I4I4', limit, cost % limit) .. ring, 'PX', window)
else
  local first = math.min(cost, limit - head)
  redis.call('SETRANGE', key, HEADER + head * SLOT, string.rep(stamp, first))
  if cost > first then
    redis.call('SETRANGE', key, HEADER, string.rep(stamp, cost - first))
  end
  redis.call('SETRANGE', key, 0, struct.pack('<I4I4', limit, (head + cost) % limit))
  redis.call('PEXPIRE', key, window)
end
return {1, expired - cost, 0, window, now}
