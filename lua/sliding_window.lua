-- sliding_window.lua: one exact sliding-window check-and-consume over one to four
-- windows, atomically, on Redis's clock.
--
-- The script decides one or more requests, in order, each as if called alone: a batch of
-- checks costs Redis one script call instead of one each.
-- KEYS[k]  the history of check k's API key, named <prefix>{<fingerprint>}:2 (one key, one
--          Cluster slot; a batch on Redis Cluster must keep to one slot). With ' previous', a
--          name ending in '}:2' also names the previous release's ring,
--          <prefix>{<fingerprint>}, which is read (never written): see "Rolling deploys".
-- ARGV[1]  '[<clock>][ previous][ existing][ by <deadline>]': the caller's clock in Unix ms
--          for every check, or nothing to use Redis TIME (the service always uses TIME; a
--          caller clock, trusting each replica's clock, exists for Redis services that forbid
--          TIME in scripts and for tests that replay a timeline); ' previous' to count the
--          previous release's rings too (see "Rolling deploys" below); ' existing' when
--          Redis is full (maxmemory; the caller then runs this script with the allow-oom
--          flag): a request is counted only in a key that exists and has room for it, so the
--          value does not grow; one that would need a new key, or a bigger or wider value,
--          fails alone with 'OOM ...', counting nothing (a group's check, its whole group);
--          ' by <deadline>' (Unix ms on Redis's clock) to fail whole with 'LATE ...', deciding
--          and counting nothing, if Redis runs the call after it: its callers have stopped
--          waiting and were answered otherwise (rule 4: no answer contradicts the store).
-- ARGV[k + 1]  check k, one string: '<c> <mode> <L1> <W1> [<L2> <W2> ...]', decimal integers
--          separated by single spaces, where
--   c       is its cost, 1 <= c <= every window's limit
--   mode    'consume' (count the request if it fits every window) or 'peek' (write nothing);
--           or, for one request that names several keys, 'all' (count it only if every
--           check of the call fits) or 'ask' (it must fit too, and is never counted); or
--           'owed <age>': a request a failure mode admitted <age> ms ago while Redis could not
--           answer, now counted whether it fits or not (rule 4: see "Owed requests")
--   L1 W1   limit and window (ms) of the longest window, 1 <= L < 2^22, 1 <= W < 2^38
--   ...     up to 3 further windows, each shorter than the one before
--          A batch's checks mostly have one policy and cost 1, so their strings are equal:
--          each distinct string is parsed once per call.
--
-- Returns one flat array: for each check in order, either its decision, 3 + 2n integers
--   allowed (1|0), decided_at_ms, newest_ms (the key's newest unit before this request, 0 if
--   none), then for each of its n windows: spare (units free before this request),
--   retry_after_ms (0 if the request fits that window),
-- or, for an owed request, 1 once it is counted,
-- or one string saying why it could not be decided (bad arguments, or a key that is not
-- ours), which leaves that key unchanged and the other checks decided. A reader tells the
-- two apart by the first value's type. A call with no keys, or not one argument per key,
-- fails whole, before any check; so does any other Redis error (READONLY, OOM), which
-- comes before any write. The caller assembles remaining, retry and reset from a
-- decision's values (src/domain/decision.rs), as the in-process store does.
-- A call of 'all' and 'ask' checks, each of another key, is one all-or-nothing decision:
-- each is peeked, and only if every one fits are the 'all' ones counted (a key not ours fails
-- its check and nothing counts). A call that mixes them with others fails whole.
-- Only an allowed, counted request writes; a peek writes nothing, nor does a denial, but for
-- its key's expiry under a longer window (see the invariants).
--
-- Storage: one string per API key, the requests it counted inside its longest window, one
-- entry per request. A 40-byte header (little-endian): format (u8, 2), the bytes of an
-- entry's time T (u8: 3 or 5) and of its count K (u8: 0 or 3), capacity C (u32, entries),
-- head (u32, where the oldest entry is), n (u32, entries held), newest, oldest (i48, Unix ms:
-- the times of the newest and the oldest entry), expires (i48: on the key's clock, the
-- history is forgotten from then on), base (u24: the count before the oldest entry), total
-- (u32: the units held); then C entries of T + K bytes in a ring, oldest at the head: the
-- time modulo 2^(8T) and, when K = 3, the units counted up to and including it, modulo
-- 2^24. K = 0 while every request was of cost 1 under limits up to 512: then an entry is a
-- unit. The full layout, its sizes and why: docs/design.md#the-algorithm.
--
-- Invariants (the exactness rule, on this clock, at millisecond resolution):
-- * the units in window (L, W) are those of the entries newer than now - W; a request of cost
--   c fits iff they are at most L - c (never over, never under), and is allowed iff it fits
--   every window, then counting in all of them;
-- * a denial's retry_after is the largest, over the windows it does not fit, of (the time of
--   the entry holding the (units + c - L)-th oldest unit in that window) + W - now: only time
--   frees capacity (honest retry);
-- * time never runs backwards for a key: now is at least its newest entry;
-- * an allowed request first drops the entries outside its policy's longest window; the
--   expiry is at least the newest entry plus the longest window of every request checked
--   since (a denial moves it too, writing nothing else); a key past it holds nothing;
-- * every entry held is within 2^(8T)/4 ms of the newest, so times decode exactly, and the
--   units held are at most the largest limit, below 2^22, so counts do.
--
-- Owed requests: a failure mode's admission is counted at the time it was made on Redis's
-- clock (now - age, the age measured before the call was sent, so never earlier than it was
-- made), or at the key's newest entry if that is later, and only up to the largest limit held
-- in the longest window (more than that denies no longer). One already outside the longest
-- window is not counted.
--
-- Rolling deploys: the previous release kept a ring of 8-byte times under the name without
-- ':2'. While it exists its units inside a window count as well, read when a request would
-- otherwise be allowed (they can only deny more, so a denial's retry_after counts this
-- layout's units alone). One EXISTS per call, of every key's previous ring, spares the
-- look once none is left. The previous release never reads this layout: its replicas count
-- only their own units until they are replaced.
--
-- Cost of a call: Redis runs this whole file on every call, making each of its functions
-- anew, and each local of this file that a function uses costs that call an allocation. So
-- the functions are few and use few such names: the layout's numbers are written where they
-- are used, not named (40, the header's bytes; 2, its format; 16777216, the modulo of counts,
-- 2^24; 512, the largest limit under which a key of cost-1 requests keeps K = 0; 4096, the
-- bytes of entries from which a full ring grows in place; '<BBBI4I4I4i6i6i6I3I4', the
-- header's struct format), the hot paths halve by x - x % 2 rather than math.floor, and rare
-- paths call math.* by name.

local READ_PREVIOUS -- ARGV[1] asks for the previous release's rings (set below)
local EXISTING_ONLY -- ARGV[1] says Redis is full: count only where a key has room (below)

-- The history being decided, set by decide() for the helpers below: its header's fields, and
-- its entries' struct format (T = 3, K = 0: '<I3'; T = 5, K = 0: '<I5'; T = 5, K = 3:
-- '<I5I3'), width and times' modulo.
local key, T, K, entry, width, C, head, n, newest, oldest, expires, base, total, modulo
local seen -- the entries read for this check: entry j's time at 2j, its count at 2j + 1

-- The time and count of entry j, 0 = oldest (each read at most once per check).
local function read(j)
  local offset = 40 + ((head + j) % C) * width
  local raw = redis.call('GETRANGE', key, offset, offset + width - 1)
  local stamp, cum = struct.unpack(entry, raw)
  seen = seen or {}
  seen[2 * j] = newest - (newest % modulo - stamp) % modulo
  if K > 0 then
    seen[2 * j + 1] = cum
  end
end

-- The header holds the oldest and the newest entry's times.
local function time_at(j)
  if j == 0 then
    return oldest
  elseif j == n - 1 then
    return newest
  end
  local t = seen and seen[2 * j]
  if not t then
    read(j)
    t = seen[2 * j]
  end
  return t
end

-- The units held in entries 0..j-1.
local function before(j)
  if j == 0 then
    return 0
  elseif j == n then
    return total
  elseif K == 0 then
    return j
  end
  local cum = seen and seen[2 * j - 1]
  if not cum then
    read(j - 1)
    cum = seen[2 * j - 1]
  end
  return (cum - base) % 16777216
end

-- The first entry in lo..hi-1 newer than cutoff (hi if none), every entry before lo being
-- at most cutoff and every one from hi on newer: a bisection, after galloping forward from lo
-- (the oldest entries leave a window first) or, with `back`, back from hi (few entries inside
-- a short window). No closures: this runs for every check.
local function first_newer(lo, hi, cutoff, back)
  local step = 1
  while lo < hi do
    if back then
      local probe = hi - step
      if probe < lo then
        probe = lo
      end
      if time_at(probe) <= cutoff then
        lo = probe + 1
        break
      end
      hi = probe
    else
      local probe = lo + step - 1
      if probe >= hi then
        probe = hi - 1
      end
      if time_at(probe) > cutoff then
        hi = probe
        break
      end
      lo = probe + 1
    end
    step = step * 2
  end
  while lo < hi do
    local mid = lo + hi
    mid = (mid - mid % 2) / 2
    if time_at(mid) > cutoff then
      hi = mid
    else
      lo = mid + 1
    end
  end
  return lo
end

-- The previous release's ring of key `name` (see the top): a function giving its units newer
-- than a time, and its newest unit; nil if there is none (or the name holds another type).
-- Its name is the key's less ':2' if that ends in '}:2' (the end of a hash tag, so that both
-- are in one Cluster slot). The first call of a script call of several keys asks whether any
-- of them still has one (one EXISTS), and the others know; a call of one key reads its ring.
local previous_left
local function previous_ring(name)
  if previous_left == nil and #KEYS == 1 then
    previous_left = true
  elseif previous_left == nil then
    local rings, m = {unpack(KEYS)}, 0
    for k = 1, #rings do
      local key_name = rings[k]
      if string.find(key_name, '}:2', -3, true) then
        m = m + 1
        rings[m] = string.sub(key_name, 1, -3)
      end
    end
    previous_left = m > 0 and redis.call('EXISTS', unpack(rings, 1, m)) > 0
  end
  if not previous_left or not string.find(name, '}:2', -3, true) then
    return nil
  end
  local ring = string.sub(name, 1, -3)
  local header = redis.pcall('GETRANGE', ring, '0', '39')
  if type(header) ~= 'string' or #header < 40 then
    return nil
  end
  local capacity, ring_head, _, format, _, ring_newest = struct.unpack('<I4I4I4I4i8i8', header)
  if format ~= 1 or ring_newest <= 0 then
    return nil
  end
  local slots = {}
  return function(after)
    -- The ring's first slot newer than `after` (its slots run oldest to newest).
    local lo, hi = 0, capacity
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if not slots[mid] then
        local offset = 40 + ((ring_head + mid) % capacity) * 8
        slots[mid] = struct.unpack('<i8', redis.call('GETRANGE', ring, offset, offset + 7))
      end
      if slots[mid] > after then
        hi = mid
      else
        lo = mid + 1
      end
    end
    return capacity - lo
  end, ring_newest
end

local out = {} -- the call's reply (see the top)

-- Writes the decision on `check` at `now` into `out` from `at` (see the top) and returns
-- whether it is allowed; `first` is the first entry inside the longest window, `previous`
-- the previous release's ring. For each window: its spare, and its retry_after.
local function judge_all(check, now, last, first, previous, at)
  local cost, limits, windows = check.cost, check.limits, check.windows
  local allowed = true
  out[at + 1], out[at + 2] = now, last
  for i = 1, check.count do
    local limit, window, f = limits[i], windows[i], first
    local cutoff = now - window
    if i > 1 then
      f = first_newer(first, n, cutoff, true)
    end
    local gone = 0
    if f > 0 then
      gone = before(f)
    end
    local units = total - gone
    if previous then
      units = units + previous(cutoff)
    end
    local need = units + cost - limit
    local spare, retry = limit - units, 0
    if need > 0 then
      allowed = false
      if spare < 0 then
        spare = 0
      end
      if not previous then
        -- The entry holding the need-th oldest unit in the window.
        local unit = gone + need - 1
        local j, hi = unit, n - 1
        if K > 0 then
          j = f
          while j < hi do
            local mid = j + hi
            mid = (mid - mid % 2) / 2
            if before(mid + 1) > unit then
              hi = mid
            else
              j = mid + 1
            end
          end
        end
        retry = time_at(j) + window - now
      else
        -- Two histories: the first time by which need units of both have left (rare: a
        -- rollout), a bisection over time.
        local lo, hi = cutoff + 1, now
        while lo < hi do
          local t = math.floor((lo + hi) / 2)
          if units - (total - before(first_newer(f, n, t)) + previous(t)) >= need then
            hi = t
          else
            lo = t + 1
          end
        end
        retry = lo + window - now
      end
    end
    out[at + 2 * i + 1], out[at + 2 * i + 2] = spare, retry
  end
  out[at] = allowed and 1 or 0
  return allowed
end

-- Counts an allowed request of `cost` under `check` at `now` (`clock`: the call's own clock) in
-- entries of t_bytes + k_bytes, having found `first`, the first entry inside the longest
-- window: drops the entries before it, then adds one (or, at the newest entry's millisecond,
-- adds to it).
local function record(name, exists, check, cost, now, clock, first, t_bytes, k_bytes)
  local longest = check.windows[1]
  if not exists then
    key, T, K, C, head, n, newest, oldest, expires, base, total = name, t_bytes, k_bytes, 1, 0, 0, 0, now, 0, 0, 0
    first = 0
  end
  local next_oldest = first < n and time_at(first) or now
  local dropped = before(first)
  local new_base = (base + dropped) % 16777216
  local kept = n - first
  local new_expires = expires
  if expires < now + longest then
    local slack = longest / 8
    new_expires = now + longest + slack - slack % 1
  end
  local held = total - dropped + cost
  local same = exists and t_bytes == T and k_bytes == K
  if same and kept >= C and C * width >= 4096 then
    -- A full ring of 4096 bytes or more grows where it lies, not through Lua: Redis extends
    -- the string with zeros and the entries before the head are copied past the old end, so
    -- the ring's entries lie unwrapped from the head. (Redis may over-allocate a string grown
    -- so, by up to twice below 1 MB: a small price at this size, too much for small keys,
    -- which are rewritten at their exact size.)
    local capacity = C + math.max(head + 1, math.min(C, check.capacity - C), math.floor(C / 4))
    redis.call('SETRANGE', key, 40 + capacity * width - 1, '\0')
    if head > 0 then
      redis.call('SETRANGE', key, 40 + C * width, redis.call('GETRANGE', key, 40, 40 + head * width - 1))
    end
    C = capacity
  end
  local at_newest = same and k_bytes > 0 and kept > 0 and newest == now
  if at_newest or (same and kept < C) then
    -- At the newest entry's millisecond its count grows, no entry is added; else one is.
    local last = n
    if at_newest then
      last, kept = n - 1, kept - 1
    end
    redis.call('SETRANGE', key, 40 + ((head + last) % C) * width,
      struct.pack(entry, now % modulo, (base + total + cost) % 16777216))
    redis.call('SETRANGE', key, '0', struct.pack('<BBBI4I4I4i6i6i6I3I4', 2, T, K, C, (head + first) % C, kept + 1,
      now, next_oldest, new_expires, new_base, held))
  else
    -- New, wider or full: the whole value written once at its exact size (a SETRANGE past
    -- the end would over-allocate), the ring grown by up to twice, at most to the limit (or
    -- by a quarter, if it holds that much already: a limit lowered).
    local capacity = 1
    if exists then
      capacity = C
      if kept >= C then
        capacity = math.min(2 * C, check.capacity)
        if capacity <= kept then
          capacity = kept + math.max(1, math.floor(kept / 4))
        end
      end
    end
    -- The entries kept, as they lie or widened, then the new one, then room for the rest.
    local format = t_bytes == 3 and '<I3' or k_bytes == 0 and '<I5' or '<I5I3'
    local wrap, body = t_bytes == 3 and 16777216 or 1099511627776, ''
    if kept > 0 then
      local all = redis.call('GETRANGE', key, 40, 40 + C * width - 1)
      if same then
        local from, to = (head + first) % C, (head + n) % C
        if from < to then
          body = string.sub(all, from * width + 1, to * width)
        else
          body = string.sub(all, from * width + 1) .. string.sub(all, 1, to * width)
        end
      else
        local parts = {}
        for j = first, n - 1 do
          local stamp, cum = struct.unpack(entry, all, ((head + j) % C) * width + 1)
          if K == 0 then
            cum = base + j + 1
          end
          local t = newest - (newest % modulo - stamp) % modulo
          parts[#parts + 1] = struct.pack(format, t % wrap, cum % 16777216)
        end
        body = table.concat(parts)
      end
    end
    local value = struct.pack('<BBBI4I4I4i6i6i6I3I4', 2, t_bytes, k_bytes, capacity, 0, kept + 1, now,
      next_oldest, new_expires, new_base, held) .. body ..
      struct.pack(format, now % wrap, (base + total + cost) % 16777216) ..
      string.rep('\0', (capacity - kept - 1) * (t_bytes + k_bytes))
    if not exists then
      -- Its expiry relative to the call's clock, so a caller clock behind Redis's expires
      -- nothing early.
      redis.call('SET', key, value, 'PX', new_expires - clock)
      return
    end
    redis.call('SET', key, value, 'KEEPTTL')
  end
  if new_expires ~= expires then
    redis.call('PEXPIRE', key, new_expires - clock)
  end
end

-- Decides `check` (a parsed argument, see parse() below) for `name` (as a peek with
-- `peek_only`): the script's work for one check (see the top). Writes the decision's values
-- into `out` from index `at`, or a string there saying what is wrong with the key, having
-- written nothing else; returns the next index.
local function decide(name, check, clock, at, peek_only)
  local done = at + (check.age and 1 or 3 + 2 * check.count)
  -- The key's header; it holds history if it has entries and has not expired on this clock.
  key, seen = name, nil
  local header = redis.pcall('GETRANGE', name, '0', '39')
  if type(header) == 'table' then
    -- A name of another type fails its check alone; any other error ends the call, as does
    -- one of a later write (READONLY on a demoted master, OOM, ...): such an error stops the
    -- call's first write, so nothing was written, and the caller must see what Redis said.
    if string.sub(header.err, 1, 9) ~= 'WRONGTYPE' then
      error(header)
    end
    out[at] = header.err
    return at + 1
  end
  local exists = false
  if #header > 0 then
    local format = 0
    if #header == 40 then
      format, T, K, C, head, n, newest, oldest, expires, base, total = struct.unpack('<BBBI4I4I4i6i6i6I3I4', header)
    end
    if format ~= 2 or not (K == 0 and (T == 3 or T == 5) or K == 3 and T == 5) then
      out[at] = 'ERR ratelimitd: key ' .. name .. ' does not hold a format 2 ratelimitd history'
      return at + 1
    end
    entry, width = T == 3 and '<I3' or K == 0 and '<I5' or '<I5I3', T + K
    modulo = T == 3 and 16777216 or 1099511627776
    exists = clock < expires and n > 0
  end
  if not exists then
    n, total = 0, 0
  end
  local longest, cost, now, first = check.windows[1], check.cost, clock, 0
  if check.age then
    -- Owed (see "Owed requests" at the top): counted, up to the limit, at its time.
    out[at] = 1
    now = clock - check.age
    local last = exists and newest or 0
    if last > now then
      now = last
    end
    if now <= clock - longest then
      return done
    end
    if n > 0 and oldest <= now - longest then
      first = first_newer(1, n, now - longest)
    end
    cost = math.min(cost, check.capacity - (total - before(first)))
    if cost <= 0 then
      return done
    end
  else
    local last = exists and newest or 0
    if last > now then
      now = last
    end
    if n > 0 and oldest <= now - longest then
      first = first_newer(1, n, now - longest)
    end
    local allowed = judge_all(check, now, last, first, nil, at)
    if allowed and READ_PREVIOUS then
      -- The previous release's units can only deny more: a denial needs no look at them
      -- (its retry_after may then be short while both releases run; see the top).
      local previous, previous_newest = previous_ring(name)
      if previous and previous_newest > now - longest then
        if previous_newest > last then
          last = previous_newest
          if last > now then
            now = last
            if n > 0 and oldest <= now - longest then
              first = first_newer(1, n, now - longest)
            end
          end
        end
        allowed = judge_all(check, now, last, first, previous, at)
      end
    end
    if check.peek then
      return done
    elseif not allowed then
      if exists and newest + longest > expires and not peek_only then
        -- Denied under a longer window than the key was kept for: it keeps what it holds
        -- that long (nothing is counted); 27 is the expiry's offset in the header.
        local keep = newest + longest + math.floor(longest / 8)
        redis.call('SETRANGE', key, 27, struct.pack('<i6', keep))
        redis.call('PEXPIRE', key, keep - clock)
      end
      return done
    end
  end
  -- The entry format counting it needs: K = 3 once a request costs more than 1 or a limit is
  -- above 512 (or the key has it), else 0; T = 3 for a key of units (K = 0) under windows
  -- below 2^22 ms (70 minutes), else 5, and never less than the key's. Every entry held is
  -- within the longest window of the newest, and times decode exactly within a quarter of
  -- 2^(8T) ms. Only keys of units (at most 512 entries) ever change format.
  local t_bytes, k_bytes = 5, 0
  if cost > 1 or check.capacity > 512 or (exists and K > 0) then
    k_bytes = 3
  elseif longest < 4194304 then
    t_bytes = 3
  end
  if exists and T > t_bytes then
    t_bytes = T
  end
  if EXISTING_ONLY and
      not (exists and t_bytes == T and k_bytes == K and (n - first < C or (K > 0 and newest == now))) then
    -- Redis is full: only a request that needs no new key and no bigger or wider value. The
    -- decision's values written are not part of the reply.
    for i = at + 1, done - 1 do
      out[i] = nil
    end
    out[at] = 'OOM ratelimitd: Redis is full (maxmemory) and key ' .. name .. ' has no room for ' ..
      (check.age and 'an owed request' or 'this request') .. '; nothing was counted'
    return at + 1
  elseif not peek_only then
    record(name, exists, check, cost, now, clock, first, t_bytes, k_bytes)
  end
  return done
end

-- A check's argument parsed (see the top), or false if it is not a valid check: 1 to 4
-- windows, every limit below 2^22 and window below 2^38 ms, longest first, 1 <= cost <= every
-- limit.
local function parse(arg)
  local cost, mode, at = string.match(arg, '^(%d+) (%l+)()')
  local age
  if mode == 'owed' then
    age, at = string.match(arg, '^ (%d+)()', at)
    age = tonumber(age)
  end
  if not cost or (mode ~= 'consume' and mode ~= 'peek' and mode ~= 'all' and mode ~= 'ask' and not age) then
    return false
  end
  local limits, windows, count, capacity, smallest = {}, {}, 0, 0, 4194304
  while at <= #arg do
    local l, w, next_at = string.match(arg, '^ (%d+) (%d+)()', at)
    if not l or count == 4 then
      return false
    end
    l, w = tonumber(l), tonumber(w)
    if l < 1 or l >= 4194304 or w < 1 or w >= 274877906944 or (count > 0 and w >= windows[count]) then
      return false
    end
    count = count + 1
    limits[count], windows[count] = l, w
    if l > capacity then
      capacity = l
    end
    if l < smallest then
      smallest = l
    end
    at = next_at
  end
  cost = tonumber(cost)
  if count == 0 or cost < 1 or cost > smallest then
    return false
  end
  return {cost = cost, peek = mode == 'peek' or mode == 'ask', count = count, limits = limits, windows = windows,
          capacity = capacity, group = mode == 'all' or mode == 'ask', age = age}
end

if #KEYS == 0 or #ARGV ~= #KEYS + 1 then
  return redis.error_reply('ERR ratelimitd: invalid arguments: need the clock, then one argument per key: its check, "<cost> consume|peek <limit> <window ms> ..."')
end

-- ARGV[1] (see the top), in few steps for the forms the service sends (no clock): its words
-- are one of four strings, then ' by <deadline>'.
local words, clock, by = ARGV[1], nil, nil
local by_at = string.find(words, ' by ', 1, true)
if by_at then
  by = tonumber(string.match(words, '^%d+$', by_at + 4))
  words = string.sub(words, 1, by_at - 1)
end
if words ~= '' and words ~= ' previous' and words ~= ' existing' and words ~= ' previous existing' then
  local digits
  digits, words = string.match(words, '^(%d+)(.*)$')
  clock = tonumber(digits)
end
READ_PREVIOUS = words == ' previous' or words == ' previous existing'
EXISTING_ONLY = words == ' existing' or words == ' previous existing'
if (by_at and not by) or not (READ_PREVIOUS or EXISTING_ONLY or words == '') then
  return redis.error_reply('ERR ratelimitd: invalid arguments: the first argument must be "[<clock ms>][ previous][ existing][ by <deadline ms>]"')
end
if not clock or by then
  local t = redis.call('TIME')
  local redis_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if by and redis_now > by then
    return redis.error_reply('LATE ratelimitd: the call ran ' .. (redis_now - by) .. ' ms after its deadline; nothing was decided')
  end
  clock = clock or redis_now
end

local function main()
  -- Each distinct argument is parsed once (Redis interns Lua strings: looking one up is cheap).
  local parsed, checks, grouped, named = {}, {}, 0, nil
  for k = 1, #KEYS do
    local arg = ARGV[k + 1]
    if parsed[arg] == nil then
      parsed[arg] = parse(arg)
    end
    checks[k] = parsed[arg]
    if checks[k] and checks[k].group then
      named = named or {}
      grouped = grouped + (named[KEYS[k]] and 0 or 1)
      named[KEYS[k]] = true
    end
  end
  if grouped > 0 then
    if grouped ~= #KEYS then
      error({fatal = 'ERR ratelimitd: invalid arguments: a call with "all" or "ask" checks must have only such checks, each of another key'})
    end
    -- One all-or-nothing decision: every check peeked; the 'all' ones counted only if all fit.
    local positions, at, fits = {}, 1, true
    for k = 1, #KEYS do
      positions[k] = at
      at = decide(KEYS[k], checks[k], clock, at, true)
      fits = fits and out[positions[k]] == 1
    end
    for k = 1, #KEYS do
      if fits and not checks[k].peek then
        -- The same decision as the peek (same clock, nothing written in between), now counted.
        decide(KEYS[k], checks[k], clock, positions[k])
      end
    end
    return
  end
  local at = 1
  for k = 1, #KEYS do
    if checks[k] then
      at = decide(KEYS[k], checks[k], clock, at)
    else
      out[at] = 'ERR ratelimitd: invalid arguments for key ' .. KEYS[k] .. ': need "<cost> consume|peek <limit> <window ms> ...", 1 to 4 windows, longest first, limits below 2^22 and windows below 2^38 ms, at least 1, and 1 <= cost <= every limit'
      at = at + 1
    end
  end
end

local ok, failure = pcall(main)
if not ok then
  return redis.error_reply(type(failure) == 'table' and (failure.fatal or failure.err) or tostring(failure))
end
return out
