-- Finish a flushed batch (group commit): answer every waiter, drop its hold, keep the marker
-- of each committed request, take the durable levels (versioned), then pass the lead on to
-- the oldest waiting entry, or release it. Only the leader of the latest take does this: a
-- leader fenced off (another took the lead, or took the batch again) changes nothing.
-- KEYS[1] lead  KEYS[2] journal  KEYS[3] in-flight  KEYS[4] holds  KEYS[5] fencing token
-- ARGV[1] tag prefix  ARGV[2] owner  ARGV[3] marker ttl s  ARGV[4] reply ttl s
-- ARGV[5] lead ttl ms  ARGV[6] the take's fencing token  ARGV[7] number of answers m
-- ARGV[8..7+3m] per answer: request id, marker ('' = not committed: drop the marker;
--   '?<fingerprint>' = outcome unknown: kept flagged), reply
-- then per level: sku, on_hand, reserved, version
-- Returns the request id the lead passed to, or '' ; nil when fenced off.
local m = tonumber(ARGV[7])
if not m or m < 0 or (#ARGV - 7 - 3 * m) % 4 ~= 0 then
  return redis.error_reply('PSI bad arity')
end
for i = 3, 5 do
  if not tonumber(ARGV[i]) or tonumber(ARGV[i]) < 1 then
    return redis.error_reply('PSI bad ttl at argument ' .. i)
  end
end
for i = 8 + 3 * m, #ARGV, 4 do
  for j = 1, 3 do
    local x = tonumber(ARGV[i + j])
    if not x or x < 0 or x ~= math.floor(x) then
      return redis.error_reply('PSI bad number at argument ' .. (i + j))
    end
  end
end

local tag, owner = ARGV[1], ARGV[2]
local lead = redis.call('GET', KEYS[1])
if redis.call('GET', KEYS[5]) ~= ARGV[6] or (lead and lead ~= owner) then
  return false
end
for a = 0, m - 1 do
  local req, fingerprint, reply = ARGV[8 + 3 * a], ARGV[9 + 3 * a], ARGV[10 + 3 * a]
  drop_hold(tag, KEYS[4], req)
  if fingerprint ~= '' then
    redis.call('SET', tag .. ':req:' .. req, fingerprint, 'EX', tonumber(ARGV[3]))
  else
    redis.call('DEL', tag .. ':req:' .. req)
  end
  if req ~= owner then
    redis.call('RPUSH', tag .. ':reply:' .. req, reply)
    redis.call('EXPIRE', tag .. ':reply:' .. req, tonumber(ARGV[4]))
  end
end

for i = 8 + 3 * m, #ARGV, 4 do
  settle_level(tag .. ':lvl:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end

redis.call('DEL', KEYS[3])
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then
  redis.call('DEL', KEYS[1])
  return ''
end
local next_req = string.match(head, '^(%S+)')
redis.call('SET', KEYS[1], next_req, 'PX', tonumber(ARGV[5]))
redis.call('RPUSH', tag .. ':reply:' .. next_req, 'lead')
redis.call('EXPIRE', tag .. ':reply:' .. next_req, tonumber(ARGV[4]))
return next_req
