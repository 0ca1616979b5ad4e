-- Compensation: the durable write failed, so the request's hold and marker go away.
-- KEYS[1] holds  KEYS[2] this request's hold  KEYS[3] this request's marker
-- ARGV[1] tag prefix  ARGV[2] request id
if #KEYS ~= 3 or #ARGV ~= 2 then
  return redis.error_reply('PSI bad arity')
end
local tag = ARGV[1]
local fields = redis.call('HGETALL', KEYS[2])
for j = 1, #fields, 2 do
  local level_key = tag .. ':lvl:' .. fields[j]
  if redis.call('EXISTS', level_key) == 1 then
    if redis.call('HINCRBY', level_key, 'hd', -tonumber(fields[j + 1])) < 0 then
      redis.call('HSET', level_key, 'hd', 0)
    end
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[2])
return #fields / 2
