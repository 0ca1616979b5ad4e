-- Compensation: the durable write failed, so the request's hold and marker go away.
-- KEYS[1] holds  KEYS[2] this request's hold  KEYS[3] this request's marker
-- ARGV[1] tag prefix  ARGV[2] request id
if #KEYS ~= 3 or #ARGV ~= 2 then
  return redis.error_reply('PSI bad arity')
end
local dropped = drop_hold(ARGV[1], KEYS[1], ARGV[2])
redis.call('DEL', KEYS[3])
return dropped
