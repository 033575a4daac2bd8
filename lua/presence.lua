-- presence.lua: how many ratelimitd replicas share this Redis, for the `local` failure mode
-- (each replica admits its share of a limit while Redis cannot answer).
--
-- Every replica calls it every second with its own id; a replica counts until `ttl` ms after
-- its last call, on Redis's clock, so one that stopped (or cannot reach Redis) leaves the
-- count by itself.
-- KEYS[1]  the sorted set of replicas: <prefix>replicas, members scored by their last call
-- ARGV[1]  this replica's id (random, chosen at start-up)
-- ARGV[2]  ttl, in ms (a decimal integer, at least 1)
-- Returns the number of replicas counted now, this one included, or an error for bad
-- arguments (changing nothing).

local ttl = tonumber(ARGV[2])
if #KEYS ~= 1 or not ARGV[1] or ARGV[1] == '' or not ttl or ttl < 1 then
  return redis.error_reply('ERR ratelimitd presence: need one key, a replica id and a ttl in ms')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
