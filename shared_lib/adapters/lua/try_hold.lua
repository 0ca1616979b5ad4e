-- Hold every line of one request, all or none (reserve, issue, transfer out).
-- KEYS[1] ready marker  KEYS[2] holds (zset: request -> deadline ms)
-- KEYS[3] this request's hold (hash: sku -> qty)  KEYS[4] this request's marker
-- KEYS[5..] one level hash per line (oh, rs, v, hd)
-- ARGV[1] tag prefix  ARGV[2] request id  ARGV[3] fingerprint  ARGV[4] hold ms
-- ARGV[5..4+n] skus  ARGV[5+n..4+2n] quantities
-- optional, to journal the request for group commit once held:
--   ARGV[5+2n] journal entry ('<request id> <payload>')  ARGV[6+2n] lead ttl ms
--   ARGV[7+2n] journal shard
-- Returns {'held', lead} (lead=1: the caller now leads the warehouse's next flush)
--       | {'dup'} | {'conflict'} | {'unknown'} | {'not_ready'}
-- A marker '?<fingerprint>' means the request's outcome is unknown (its database write may
-- have committed): the caller asks the database.
--       | {'short', i1, available1, known1, i2, ...} (1-based line index; known=0: no key)
local n = #KEYS - 4
local journaled = #ARGV == 7 + 2 * n
if n < 1 or (#ARGV ~= 4 + 2 * n and not journaled) then
  return redis.error_reply('PSI bad arity')
end
local lead_ms = journaled and tonumber(ARGV[6 + 2 * n])
if journaled and (not lead_ms or lead_ms < 1) then
  return redis.error_reply('PSI bad lead ttl')
end
local hold_ms = tonumber(ARGV[4])
if not hold_ms or hold_ms < 1 then
  return redis.error_reply('PSI bad hold ms')
end
local qty = {}
for i = 1, n do
  local q = tonumber(ARGV[4 + n + i])
  if not q or q < 1 or q ~= math.floor(q) then
    return redis.error_reply('PSI bad quantity on line ' .. i)
  end
  qty[i] = q
end

local seen = redis.call('GET', KEYS[4])
if seen then
  if seen == ARGV[3] then return {'dup'} end
  if seen == '?' .. ARGV[3] then return {'unknown'} end
  return {'conflict'}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_ready'}
end

local tag = ARGV[1]

-- every line's availability; the short ones as {i, available, known}
local function shortfalls()
  local short = {}
  for i = 1, n do
    local v = redis.call('HMGET', KEYS[4 + i], 'oh', 'rs', 'hd')
    local available = -1
    if v[1] then
      available = tonumber(v[1]) - tonumber(v[2] or 0) - tonumber(v[3] or 0)
    end
    if available < qty[i] then
      short[#short + 1] = i
      short[#short + 1] = math.max(available, 0)
      short[#short + 1] = v[1] and 1 or 0
    end
  end
  return short
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- holds whose request never settled (a crash between try and persist) give their units
-- back; an O(1) look at the oldest deadline first, so that the sweep runs only when due
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if oldest[2] and tonumber(oldest[2]) <= now then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)
  for _, req in ipairs(expired) do
    drop_hold(tag, KEYS[2], req)
  end
end
-- a hold is one per request: a retry whose marker ran out before the sweep reached its old
-- hold gives that hold back first, or its units would count twice in hd
if redis.call('EXISTS', KEYS[3]) == 1 then
  drop_hold(tag, KEYS[2], ARGV[2])
end

local short = shortfalls()
if #short > 0 then
  table.insert(short, 1, 'short')
  return short
end

for i = 1, n do
  redis.call('HINCRBY', KEYS[4 + i], 'hd', qty[i])
  redis.call('HSET', KEYS[3], ARGV[4 + i], qty[i])
end
redis.call('ZADD', KEYS[2], now + hold_ms, ARGV[2])
redis.call('SET', KEYS[4], ARGV[3], 'PX', hold_ms)
local lead = 0
if journaled then
  local shard = ':' .. ARGV[7 + 2 * n]
  -- answers left from an earlier attempt under this key are not this attempt's answers
  redis.call('DEL', tag .. ':reply:' .. ARGV[2])
  redis.call('RPUSH', tag .. ':journal' .. shard, ARGV[5 + 2 * n])
  if redis.call('SET', tag .. ':lead' .. shard, ARGV[2], 'NX', 'PX', lead_ms) then lead = 1 end
end
return {'held', lead}
