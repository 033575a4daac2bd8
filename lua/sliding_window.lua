-- sliding_window.lua: one exact sliding-window check-and-consume over one to four
-- windows, atomically, on Redis's clock.
--
-- The script decides one or more requests, in order, each as if called alone: a batch of
-- checks costs Redis one script call instead of one each.
-- KEYS[k]  the ring of check k's API key, named <prefix>{<fingerprint>} (one key, one Cluster
--          slot; a batch on Redis Cluster must keep to one slot)
-- ARGV[1]  '' to use Redis TIME, or the caller's clock in Unix ms, for every check. The service
--          always passes ''; a caller clock (trusting each replica's clock) exists for Redis
--          services that forbid TIME in scripts and for tests that replay a timeline.
-- Then for each check k, in the order of KEYS:
--   n       its number of windows, 1 to 4
--   c       its cost, 1 <= c <= every window's limit
--   mode    'consume' (count the request if it fits every window) or 'peek' (write nothing)
--   L1 W1   limit and window (ms) of the longest window, 1 <= L, 1 <= W < 2^52
--   ...     the n - 1 further windows, each shorter than the one before
--
-- Returns one reply per check, in order: its decision, or a string saying why it could not be
-- decided (bad arguments, or a key that is not ours), which leaves that key unchanged and
-- the other checks decided. Arguments whose shape is wrong fail the whole call, before any
-- check; so does any other Redis error (READONLY, OOM), which comes before any write. A
-- decision is
--   {allowed (1|0), decided_at_ms, newest_ms (the key's newest unit before this
-- request, 0 if none), then for each window: spare (units free before this request),
-- retry_after_ms (0 if the request fits that window)}. The caller assembles remaining,
-- retry and reset from these (src/limiter/decision.rs), as the in-process store does.
-- Needs Redis 6.2 or newer (SET ... KEEPTTL).
--
-- Storage: one string per API key. A 40-byte header (little-endian): the ring's
-- capacity C (u32), its head (u32), the frontier hint (u32, see below), the format
-- version (u32, 1), when the key expires (i64, Unix ms), its newest entry (i64, Unix ms) and
-- the mark (i64): the cutoff the hint was found at (Unix ms), or, when the hint is the
-- head (every slot inside the window), -2^52 minus the oldest slot's time, so that a full
-- ring's denial needs no slot read (below);
-- then C >= L slots of 8-byte little-endian Unix-ms timestamps: the times of the
-- last C allowed units, oldest at the head, in arrival order. A slot never used
-- holds 0, older than any window. C is the largest limit the key has had while it
-- lived: a lowered limit never drops history.
--
-- Invariants (the exactness rule, on this clock, at millisecond resolution), for each
-- window (L, W); every window reads the same history, since an allowed unit counts in all:
-- * a request of cost c fits iff slot C-L+c-1 (0 = oldest) is at least W old: then
--   at most L-c units were allowed in (now-W, now], so allowing c keeps every window
--   at or under L (never over), and no fitting request is denied (never under);
-- * it is allowed iff it fits every window, and then counts in all of them; a request
--   that does not fit one window consumes from none;
-- * a denial's retry_after is the largest (that slot + W - now) over the windows it does
--   not fit: only time frees capacity, so the same request is allowed then if nothing
--   else is (honest retry);
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
-- forward while the cutoff (now - W) does, so the header remembers where the longest
-- window's frontier was (as a slot position, which writes do not move) and the next call
-- gallops from there: a steady key needs one or two reads, a key idle for a while
-- O(log C). A cutoff below the remembered one (a longer window) searches from the
-- oldest slot. A full ring (the frontier at the head: a key at its limit) also remembers
-- its oldest slot's time, the one a denial's retry_after comes from, so a denial there
-- is one header read and no write. That memory is kept in the mark, not in a new field, so
-- the format stays 1 and a script that predates it reads such a header correctly during a
-- rolling deploy: it takes the mark for a cutoff below any real one and, the hint being the
-- head, searches from the oldest slot as it would anyway; every write rewrites the mark.
-- Windows are therefore below 2^52 ms (142,000 years), so no cutoff reads as a time.
-- Shorter windows hold the newest units, so their frontier is found by
-- galloping back from the newest slot. Writes are one SETRANGE of the c slots plus
-- the header; the TTL is pushed out in steps of W/8, not on every call.

local HEADER = 40
local LAYOUT = '<I4I4I4I4i8i8i8'
local SLOT = 8
local FORMAT = 1
local ZERO_SLOT = string.rep('\0', SLOT)
-- A mark at or below -TAG holds the oldest slot's time (see the header).
local TAG = 4503599627370496
-- Constant offsets as strings: Redis formats every number passed to redis.call() with
-- %.17g, about 0.2 us each, and the header is read by every check.
local HEADER_FIRST, HEADER_LAST = '0', tostring(HEADER - 1)
local floor, min, max = math.floor, math.min, math.max

-- The ring being decided, set by decide() for the helpers below.
local ring_key, ring_head, ring_capacity, ring_body, seen

-- Slot j of the ring being decided, 0 = oldest (each read at most once per check). A peek that
-- grew the ring reads the grown copy it did not write.
local function slot_at(j)
  local value = seen[j]
  if not value then
    local offset = ((ring_head + j) % ring_capacity) * SLOT
    if ring_body then
      value = struct.unpack('<i8', string.sub(ring_body, offset + 1, offset + SLOT))
    else
      value = struct.unpack('<i8', redis.call('GETRANGE', ring_key, HEADER + offset, HEADER + offset + SLOT - 1))
    end
    seen[j] = value
  end
  return value
end

-- The first slot in lo..hi-1 newer than cutoff (hi if none), knowing every slot
-- before lo is at most cutoff and every slot from hi on newer.
local function bisect(lo, hi, cutoff)
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if slot_at(mid) <= cutoff then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end

-- The same, galloping forward from lo: cheap when the frontier is just past lo.
local function gallop_forward(lo, hi, cutoff)
  local step = 1
  while lo < hi do
    local probe = min(lo + step - 1, hi - 1)
    if slot_at(probe) > cutoff then
      return bisect(lo, probe, cutoff)
    end
    lo = probe + 1
    step = step * 2
  end
  return lo
end

-- The same, galloping back from hi: cheap when few slots are inside the window.
local function gallop_back(lo, hi, cutoff)
  local step = 1
  while lo < hi do
    local probe = max(hi - step, lo)
    if slot_at(probe) <= cutoff then
      return bisect(probe + 1, hi, cutoff)
    end
    hi = probe
    step = step * 2
  end
  return lo
end

-- Decides one request of `cost` for `key` under the windows of `spec` (see the argument
-- loop below; the script's work for one check, see the top); returns its reply, or a string
-- saying what is wrong with the key.
local function decide(key, cost, peek, spec, now)
  local limits, windows, count = spec.limits, spec.windows, spec.count
  local capacity_needed, longest, slack = spec.capacity, windows[1], spec.slack

  local header = redis.call('GETRANGE', key, HEADER_FIRST, HEADER_LAST)
  if #header < HEADER then
    local reply = {1, now, 0}
    for i = 1, count do
      reply[2 * i + 2] = limits[i]
      reply[2 * i + 3] = 0
    end
    if peek then
      return reply
    end
    -- A new key: Redis allocates the whole ring at its exact size, zero-filled, once
    -- (a SETRANGE past the end of a missing key), so no Lua string of C slots is built
    -- and hashed, and later writes never grow (and over-allocate) it. The first c
    -- slots follow the header, so one write sets both.
    local stamp = struct.pack('<i8', now)
    local expires = now + longest + slack
    local capacity = capacity_needed
    redis.call('SETRANGE', key, HEADER + (capacity - 1) * SLOT, ZERO_SLOT)
    redis.call('SETRANGE', key, HEADER_FIRST, struct.pack(LAYOUT, capacity, cost % capacity, 0, FORMAT, expires, now, 0) .. string.rep(stamp, cost))
    redis.call('PEXPIREAT', key, expires)
    return reply
  end

  local capacity, head, hint, format, expires, newest, mark = struct.unpack(LAYOUT, header)
  if format ~= FORMAT then
    return 'ERR ratelimitd: key ' .. key .. ' does not hold a format ' .. FORMAT .. ' ratelimitd ring'
  end
  local body = nil
  if capacity < capacity_needed then
    body = redis.call('GETRANGE', key, HEADER, -1)
    if #body ~= capacity * SLOT then
      return 'ERR ratelimitd: key ' .. key .. ' does not hold a ratelimitd ring'
    end
    local split = head * SLOT
    body = string.rep(ZERO_SLOT, capacity_needed - capacity) .. string.sub(body, split + 1) .. string.sub(body, 1, split)
    capacity, head, hint, mark = capacity_needed, 0, 0, 0
    if not peek then
      redis.call('SET', key, struct.pack(LAYOUT, capacity, head, hint, FORMAT, expires, newest, mark) .. body, 'KEEPTTL')
      body = nil
    end
  end

  ring_key, ring_head, ring_capacity, ring_body, seen = key, head, capacity, body, {}
  local oldest_known = mark <= -TAG
  if oldest_known then
    seen[0] = -TAG - mark
  end

  if newest > now then
    now = newest
  end

  -- The longest window's frontier: every slot before the hint was outside the window
  -- at the last call, and cutoffs only grow, so search from there.
  local cutoff = now - longest
  local start = 0
  if cutoff >= mark then
    start = (hint - head) % capacity
  end
  local frontier = gallop_forward(start, capacity, cutoff)
  local new_hint = (head + frontier) % capacity

  local allowed = 1
  local reply = {0, now, newest}
  for i = 1, count do
    local l, w = limits[i], windows[i]
    local decisive = capacity - l + cost - 1
    local f = frontier
    if i > 1 then
      local c = now - w
      if slot_at(decisive) <= c then
        f = gallop_back(decisive + 1, capacity, c)
      else
        f = gallop_back(0, decisive, c)
      end
    end
    -- Room left under the limit; below 0 while a lowered limit still counts older units.
    local spare = max(f - (capacity - l), 0)
    local retry = 0
    if f <= decisive then
      allowed = 0
      retry = slot_at(decisive) + w - now
    end
    reply[2 * i + 2] = spare
    reply[2 * i + 3] = retry
  end
  reply[1] = allowed
  if peek then
    return reply
  end

  if allowed == 0 then
    local keep = newest + longest
    local extended = keep > expires
    if extended then
      -- A longer window than the key has lived by: keep its history that long.
      expires = keep + slack
      redis.call('PEXPIREAT', key, expires)
    end
    -- A full ring whose oldest time is not remembered yet learns it here, once.
    local full = frontier == 0
    if extended or new_hint ~= hint or (full and not oldest_known) then
      -- Nothing is counted; the header only remembers the frontier and the expiry.
      local new_mark = cutoff
      if full then
        new_mark = -TAG - slot_at(0)
      end
      redis.call('SETRANGE', key, HEADER_FIRST, struct.pack(LAYOUT, capacity, head, new_hint, FORMAT, expires, newest, new_mark))
    end
    return reply
  end

  -- The c oldest slots are outside every window (they precede each frontier).
  local stamp = struct.pack('<i8', now)
  if expires < now + longest then
    expires = now + longest + slack
    redis.call('PEXPIREAT', key, expires)
  end
  local first = min(cost, capacity - head)
  redis.call('SETRANGE', key, HEADER + head * SLOT, string.rep(stamp, first))
  if cost > first then
    redis.call('SETRANGE', key, HEADER, string.rep(stamp, cost - first))
  end
  -- Full after this write (the frontier just past the c slots overwritten): remember its
  -- oldest time, already read by the search (or now, if all C slots were written).
  local new_mark = cutoff
  if frontier == cost then
    local oldest = now
    if cost < capacity then
      oldest = seen[cost]
    end
    if oldest then
      new_mark = -TAG - oldest
    end
  end
  redis.call('SETRANGE', key, HEADER_FIRST, struct.pack(LAYOUT, capacity, (head + cost) % capacity, new_hint, FORMAT, expires, now, new_mark))
  return reply
end

local MALFORMED = 'ERR ratelimitd: invalid arguments: need the clock, then for each key: the number of windows (1-4), cost, consume|peek, and that many (limit, window) pairs'

-- Reads every check's arguments before deciding any: a malformed call changes nothing.
-- The checks of one batch mostly share their windows (one policy), so a check whose
-- window arguments are the very strings of the check before (Redis interns Lua strings:
-- comparing them is cheap) shares that check's parsed windows, its spec; and no table is
-- made per check. Measured with batches of 16 (BENCHMARKS.md): about 10 % less Redis CPU
-- per check for a key at its limit, 3-9 % for an allowed check.
local costs, peeks, specs = {}, {}, {}
local spec, spec_at = nil, 0
local p = 2
for k = 1, #KEYS do
  local count = tonumber(ARGV[p])
  if not count or count < 1 or count > 4 or count % 1 ~= 0 or p + 2 + 2 * count > #ARGV then
    return redis.error_reply(MALFORMED)
  end
  local same = spec ~= nil and count == spec.count
  if same then
    for a = p + 3, p + 2 + 2 * count do
      if ARGV[a] ~= ARGV[a - p + spec_at] then
        same = false
        break
      end
    end
  end
  if not same then
    -- valid: every limit and window a positive number, windows below 2^52 ms, longest first.
    local limits, windows = {}, {}
    local valid, capacity, smallest = true, 0, nil
    for i = 1, count do
      local l, w = tonumber(ARGV[p + 1 + 2 * i]), tonumber(ARGV[p + 2 + 2 * i])
      limits[i], windows[i] = l, w
      if not l or not w or l < 1 or w < 1 or w >= TAG or (i > 1 and w >= windows[i - 1]) then
        valid = false
      else
        if l > capacity then
          capacity = l
        end
        if not smallest or l < smallest then
          smallest = l
        end
      end
    end
    -- slack: how long past its last needed moment a key may live; the TTL moves in these steps.
    spec = {count = count, limits = limits, windows = windows, valid = valid, capacity = capacity,
            smallest = smallest, slack = valid and floor(windows[1] / 8)}
    spec_at = p
  end
  local cost, mode = tonumber(ARGV[p + 1]), ARGV[p + 2]
  -- A check is decided if its windows are valid and 1 <= cost <= every limit.
  if spec.valid and cost ~= nil and cost >= 1 and cost <= spec.smallest and (mode == 'consume' or mode == 'peek') then
    costs[k], peeks[k], specs[k] = cost, mode == 'peek', spec
  else
    specs[k] = false
  end
  p = p + 3 + 2 * count
end
if p ~= #ARGV + 1 or #KEYS == 0 then
  return redis.error_reply(MALFORMED)
end

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end

local replies = {}
for k = 1, #KEYS do
  local check = specs[k]
  if not check then
    replies[k] = 'ERR ratelimitd: invalid arguments for key ' .. KEYS[k] .. ': cost must be at least 1 and at most every limit, mode consume or peek, limits and windows at least 1, windows below 2^52 ms and longest first'
  else
    -- A key of another type ends this check only. Any other error (READONLY on a demoted
    -- master, OOM, ...) ends the whole call: such an error stops the call's first write, so
    -- nothing was written, and the caller must see what Redis said (it reconnects on READONLY).
    local ok, reply = pcall(decide, KEYS[k], costs[k], peeks[k], check, now)
    if ok then
      replies[k] = reply
    else
      local words = type(reply) == 'table' and reply.err or tostring(reply)
      if string.sub(words, 1, 9) ~= 'WRONGTYPE' then
        return redis.error_reply(words)
      end
      replies[k] = words
    end
  end
end
return replies
