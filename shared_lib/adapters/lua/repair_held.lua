-- Reconcile: compare each level's held count (hd) with the holds that really exist - the sum
-- of the hold hashes of every request in the holds zset - and, when asked, set it to that.
-- A count that drifted (a hold counted twice, or given back twice) otherwise stays wrong for
-- good: no rebuild, settle or repair of the levels touches hd.
-- KEYS[1] holds  KEYS[2..] level hashes
-- ARGV[1] tag prefix  ARGV[2] '1' to repair  ARGV[3..] the skus of KEYS[2..]
-- Returns {sku, held, expected, ...} for every level that differs.
if #ARGV ~= #KEYS + 1 then
  return redis.error_reply('PSI bad arity')
end
local tag = ARGV[1]
local expected = {}
for _, req in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HGETALL', tag .. ':hold:' .. req)
  for j = 1, #fields, 2 do
    expected[fields[j]] = (expected[fields[j]] or 0) + tonumber(fields[j + 1])
  end
end
local out = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local sku = ARGV[i + 1]
    local held = tonumber(redis.call('HGET', KEYS[i], 'hd') or '0')
    local want = expected[sku] or 0
    if held ~= want then
      if ARGV[2] == '1' then
        redis.call('HSET', KEYS[i], 'hd', want)
      end
      out[#out + 1] = sku
      out[#out + 1] = held
      out[#out + 1] = want
    end
  end
end
return out
