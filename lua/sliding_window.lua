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
-- ARGV[k + 1]  check k, one string: '<c> <mode> <L1> <W1> [<L2> <W2> ...]', decimal integers
--          separated by single spaces, where
--   c       is its cost, 1 <= c <= every window's limit
--   mode    'consume' (count the request if it fits every window) or 'peek' (write nothing);
--           or, for one request that names several keys, 'all' (count it only if every
--           check of the call fits) or 'ask' (it must fit too, and is never counted)
--   L1 W1   limit and window (ms) of the longest window, 1 <= L, 1 <= W < 2^52
--   ...     up to 3 further windows, each shorter than the one before
--          A batch's checks mostly have one policy and cost 1, so their strings are equal:
--          each distinct string is parsed once per call.
--
-- Returns one flat array: for each check in order, either its decision, 3 + 2n integers
--   allowed (1|0), decided_at_ms, newest_ms (the key's newest unit before this request, 0 if
--   none), then for each of its n windows: spare (units free before this request),
--   retry_after_ms (0 if the request fits that window),
-- or one string saying why it could not be decided (bad arguments, or a key that is not
-- ours), which leaves that key unchanged and the other checks decided. A reader tells the
-- two apart by the first value's type. A call with no keys, or not one argument per key,
-- fails whole, before any check; so does any other Redis error (READONLY, OOM), which
-- comes before any write. The caller assembles remaining, retry and reset from a
-- decision's values (src/domain/decision.rs), as the in-process store does.
-- A call of 'all' and 'ask' checks, each of another key, is one all-or-nothing decision:
-- each is peeked, and only if every one fits are the 'all' ones counted (a key not ours fails
-- its check and nothing counts). A call that mixes them with others fails whole.
-- Needs Redis 6.2 or newer (SET ... KEEPTTL).
--
-- Storage: one string per API key. A 40-byte header (little-endian): the ring's capacity C
-- (u32), its head (u32), the frontier hint (u32), the format version (u32, 1), when the key
-- expires (i64, Unix ms), its newest entry (i64, Unix ms) and the mark (i64): the cutoff the
-- hint was found at (Unix ms), or, when the hint is the head (every slot inside the window),
-- -2^52 minus the oldest slot's time, so that a full ring's denial needs no slot read; then
-- C >= L slots of 8-byte Unix-ms timestamps, the times of the last C allowed units, oldest at
-- the head. A slot never used holds 0, older than any window. C is the largest limit the
-- key has had while it lived: a lowered limit never drops history.
--
-- Invariants (the exactness rule, on this clock, at millisecond resolution), for each
-- window (L, W); every window reads the same history, since an allowed unit counts in all:
-- * a request of cost c fits iff slot C-L+c-1 (0 = oldest) is at least W old: then at most
--   L-c units were allowed in (now-W, now], so allowing c keeps every window at or under L
--   (never over), and no fitting request is denied (never under);
-- * it is allowed iff it fits every window, and then counts in all of them;
-- * a denial's retry_after is the largest (that slot + W - now) over the windows it does not
--   fit: only time frees capacity, so the same request is allowed then (honest retry);
-- * time never runs backwards for a key: now is at least its newest entry;
-- * a raised limit grows the ring once with empty slots in front; a lowered one keeps every
--   entry; W is not stored, entries are times, so any W applies to the same history;
-- * the key expires only after its newest entry has left the longest window it was used
--   with (the header's expiry only moves later).
--
-- Why it reads and writes as it does (frontier hint, galloping, a full ring's mark, the TTL
-- pushed out in steps of W/8): docs/design.md#the-algorithm.

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

local out = {} -- the call's reply (see the top)

-- Decides `check` (a parsed argument, see parse() below) for `key`: the script's work for
-- one check (see the top). Writes the decision's values into `out` from index `at` and
-- returns nothing, or returns a string saying what is wrong with the key, having written
-- nothing.
local function decide(key, check, now, at, peek_only)
  local cost, peek, limits, windows, count = check.cost, check.peek or peek_only, check.limits, check.windows, check.count
  local capacity_needed, longest, slack = check.capacity, windows[1], check.slack

  local header = redis.call('GETRANGE', key, HEADER_FIRST, HEADER_LAST)
  if #header < HEADER then
    out[at], out[at + 1], out[at + 2] = 1, now, 0
    for i = 1, count do
      out[at + 2 * i + 1] = limits[i]
      out[at + 2 * i + 2] = 0
    end
    if peek then
      return
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
    return
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
  out[at + 1], out[at + 2] = now, newest
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
    out[at + 2 * i + 1] = spare
    out[at + 2 * i + 2] = retry
  end
  out[at] = allowed
  if peek then
    return
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
    return
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
end

-- A check's argument parsed (see the top), or false if it is not a valid check: 1 to 4
-- windows, every limit and window a positive integer, windows below 2^52 ms and longest
-- first, 1 <= cost <= every limit.
local function parse(arg)
  local cost, mode, at = string.match(arg, '^(%d+) (%l+)()')
  if not cost or (mode ~= 'consume' and mode ~= 'peek' and mode ~= 'all' and mode ~= 'ask') then
    return false
  end
  local limits, windows, count, capacity, smallest = {}, {}, 0, 0, TAG
  while at <= #arg do
    local l, w, next_at = string.match(arg, '^ (%d+) (%d+)()', at)
    if not l or count == 4 then
      return false
    end
    l, w = tonumber(l), tonumber(w)
    if l < 1 or w < 1 or w >= TAG or (count > 0 and w >= windows[count]) then
      return false
    end
    count = count + 1
    limits[count], windows[count] = l, w
    capacity, smallest = max(capacity, l), min(smallest, l)
    at = next_at
  end
  cost = tonumber(cost)
  if count == 0 or cost < 1 or cost > smallest then
    return false
  end
  -- slack: how long past its last needed moment a key may live; the TTL moves in these steps.
  return {cost = cost, peek = mode == 'peek' or mode == 'ask', count = count, limits = limits, windows = windows,
          capacity = capacity, slack = floor(windows[1] / 8), group = mode == 'all' or mode == 'ask'}
end

if #KEYS == 0 or #ARGV ~= #KEYS + 1 then
  return redis.error_reply('ERR ratelimitd: invalid arguments: need the clock, then one argument per key: its check, "<cost> consume|peek <limit> <window ms> ..."')
end

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end

-- Decides KEYS[k] by `check` at `at` (as a peek with `peek_only`): nil and the next position,
-- or a failure string (written at `at`) and the next position. A Redis error other than
-- WRONGTYPE (READONLY on a demoted master, OOM, ...) ends the call: such an error stops the
-- call's first write, so nothing was written, and the caller must see what Redis said.
local function decide_at(k, check, now, at, peek_only)
  local ok, result = pcall(decide, KEYS[k], check, now, at, peek_only)
  local failure = result
  if not ok then
    failure = type(result) == 'table' and result.err or tostring(result)
    if string.sub(failure, 1, 9) ~= 'WRONGTYPE' then
      error({fatal = failure})
    end
  end
  if failure then
    out[at] = failure
    return failure, at + 1
  end
  return nil, at + 3 + 2 * check.count
end

-- One all-or-nothing decision: every check peeked; the 'all' ones counted only if all fit.
local function decide_group(checks)
  local positions, at, fits = {}, 1, true
  for k = 1, #KEYS do
    positions[k] = at
    local failure
    failure, at = decide_at(k, checks[k], now, at, true)
    fits = fits and not failure and out[positions[k]] == 1
  end
  for k = 1, #KEYS do
    if fits and not checks[k].peek then
      -- The same decision as the peek (same clock, nothing written in between), now counted.
      decide_at(k, checks[k], now, positions[k])
    end
  end
end

local function main()
  -- Each distinct argument is parsed once (Redis interns Lua strings: looking one up is cheap).
  local parsed, checks, grouped, seen = {}, {}, 0, {}
  for k = 1, #KEYS do
    local arg = ARGV[k + 1]
    if parsed[arg] == nil then
      parsed[arg] = parse(arg)
    end
    checks[k] = parsed[arg]
    if checks[k] and checks[k].group then
      grouped = grouped + (seen[KEYS[k]] and 0 or 1)
      seen[KEYS[k]] = true
    end
  end
  if grouped > 0 then
    if grouped ~= #KEYS then
      error({fatal = 'ERR ratelimitd: invalid arguments: a call with "all" or "ask" checks must have only such checks, each of another key'})
    end
    return decide_group(checks)
  end
  local at = 1
  for k = 1, #KEYS do
    if checks[k] then
      local _
      _, at = decide_at(k, checks[k], now, at)
    else
      out[at] = 'ERR ratelimitd: invalid arguments for key ' .. KEYS[k] .. ': need "<cost> consume|peek <limit> <window ms> ...", 1 to 4 windows, longest first, limits and windows at least 1, windows below 2^52 ms, and 1 <= cost <= every limit'
      at = at + 1
    end
  end
end

local ok, failure = pcall(main)
if not ok then
  return redis.error_reply(type(failure) == 'table' and failure.fatal or tostring(failure))
end
return out
