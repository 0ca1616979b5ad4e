-- Compensation: the durable write failed, so the request's hold goes away, and its marker
-- too - unless the write's outcome is unknown (the commit may have happened): then the
-- marker stays as '?<fingerprint>', so a retry asks the database instead of the stock.
-- KEYS[1] holds  KEYS[2] this request's hold  KEYS[3] this request's marker
-- ARGV[1] tag prefix  ARGV[2] request id  ARGV[3] fingerprint if unknown, else ''
-- ARGV[4] marker ttl seconds
if #KEYS ~= 3 or #ARGV ~= 4 then
  return redis.error_reply('PSI bad arity')
end
if not tonumber(ARGV[4]) or tonumber(ARGV[4]) < 1 then
  return redis.error_reply('PSI bad marker ttl')
end
local dropped = drop_hold(ARGV[1], KEYS[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('DEL', KEYS[3])
else
  redis.call('SET', KEYS[3], '?' .. ARGV[3], 'EX', tonumber(ARGV[4]))
end
return dropped
