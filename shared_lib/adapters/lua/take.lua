-- The flush leader takes the next batch of journaled orders (group commit).
-- Entries move to the in-flight list until `complete` drops it, so a leader that dies
-- mid-flush leaves them for the next leader, who takes the in-flight list first.
-- Every take draws a new fencing token: `complete` acts only for the latest one, so a
-- leader that lost its lead while it wrote (paused past its ttl) changes nothing.
-- Each entry comes with what is left of its hold (ms, by Redis's own clock; -1: none left):
-- the leader does not commit an order whose units the gate may be giving back.
-- KEYS[1] lead  KEYS[2] journal  KEYS[3] in-flight  KEYS[4] fencing token  KEYS[5] holds
-- ARGV[1] owner (request id of the leader)  ARGV[2] batch limit  ARGV[3] lead ttl ms
-- Returns {token, entry, hold ms left, entry, hold ms left, ...} (no entries: the lead is
-- released), or nil when the caller does not lead.
local limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
if not limit or limit < 1 or not ttl or ttl < 1 then
  return redis.error_reply('PSI bad take arguments')
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local token = redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[1], ttl)
local items
if redis.call('EXISTS', KEYS[3]) == 1 then
  items = redis.call('LRANGE', KEYS[3], 0, -1)
else
  items = redis.call('LRANGE', KEYS[2], 0, limit - 1)
  if #items == 0 then
    redis.call('DEL', KEYS[1])
    return {token}
  end
  redis.call('LTRIM', KEYS[2], #items, -1)
  redis.call('RPUSH', KEYS[3], unpack(items))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {token}
for _, item in ipairs(items) do
  local deadline = redis.call('ZSCORE', KEYS[5], string.match(item, '^(%S+)'))
  out[#out + 1] = item
  out[#out + 1] = deadline and math.floor(tonumber(deadline) - now) or -1
end
return out
