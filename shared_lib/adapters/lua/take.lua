-- The flush leader takes the next batch of journaled orders (group commit).
-- Entries move to the in-flight list until `complete` drops it, so a leader that dies
-- mid-flush leaves them for the next leader, who takes the in-flight list first.
-- Every take draws a new fencing token: `complete` acts only for the latest one, so a
-- leader that lost its lead while it wrote (paused past its ttl) changes nothing.
-- KEYS[1] lead  KEYS[2] journal  KEYS[3] in-flight  KEYS[4] fencing token
-- ARGV[1] owner (request id of the leader)  ARGV[2] batch limit  ARGV[3] lead ttl ms
-- Returns {token, entries...} (no entries: the lead is released), or nil when the caller
-- does not lead.
local limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
if not limit or limit < 1 or not ttl or ttl < 1 then
  return redis.error_reply('PSI bad take arguments')
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local token = redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[3]) == 1 then
  local items = redis.call('LRANGE', KEYS[3], 0, -1)
  table.insert(items, 1, token)
  return items
end
local items = redis.call('LRANGE', KEYS[2], 0, limit - 1)
if #items == 0 then
  redis.call('DEL', KEYS[1])
  return {token}
end
redis.call('LTRIM', KEYS[2], #items, -1)
redis.call('RPUSH', KEYS[3], unpack(items))
table.insert(items, 1, token)
return items
