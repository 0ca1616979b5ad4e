-- Apply durable levels and drop the request's hold (receive, release, ship, adjust, rebuild).
-- Levels carry the database row version: an older or repeated settle changes nothing.
-- KEYS[1] holds  KEYS[2] this request's hold  KEYS[3] this request's marker
-- KEYS[4..] level hashes
-- ARGV[1] tag prefix  ARGV[2] request id ('' when none)  ARGV[3] marker ttl seconds
-- ARGV[4] request fingerprint ('' to keep the marker as it is)
-- ARGV[5..] per level: on_hand, reserved, version
local n = #KEYS - 3
if n < 0 or #ARGV ~= 4 + 3 * n then
  return redis.error_reply('PSI bad arity')
end
for i = 5, #ARGV do
  local x = tonumber(ARGV[i])
  if not x or x < 0 or x ~= math.floor(x) then
    return redis.error_reply('PSI bad number at argument ' .. i)
  end
end
if ARGV[2] ~= '' and not tonumber(ARGV[3]) then
  return redis.error_reply('PSI bad marker ttl')
end

local tag = ARGV[1]
if ARGV[2] ~= '' then
  drop_hold(tag, KEYS[1], ARGV[2])
  -- the marker outlives the hold, so a replay is recognised even after a degraded first try
  if ARGV[4] ~= '' then
    redis.call('SET', KEYS[3], ARGV[4], 'EX', tonumber(ARGV[3]))
  elseif redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
  end
end

local applied = 0
for i = 1, n do
  local base = 4 + 3 * (i - 1)
  if settle_level(KEYS[3 + i], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]) then
    applied = applied + 1
  end
end
return applied
