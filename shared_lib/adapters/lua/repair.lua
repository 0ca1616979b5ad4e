-- Reconcile: overwrite a level only if the gate still holds what the reconciler compared,
-- so a settle that landed in between is never rolled back.
-- KEYS[1..] level hashes
-- ARGV per level: seen version ('' when the key was missing), on_hand, reserved, version
if #ARGV ~= 4 * #KEYS then
  return redis.error_reply('PSI bad arity')
end
for i = 1, #KEYS do
  for k = 2, 4 do
    local x = tonumber(ARGV[4 * (i - 1) + k])
    if not x or x < 0 then return redis.error_reply('PSI bad number') end
  end
end
local repaired = 0
for i = 1, #KEYS do
  local base = 4 * (i - 1)
  local current = redis.call('HGET', KEYS[i], 'v')
  if (current or '') == ARGV[base + 1] then
    redis.call('HSET', KEYS[i], 'oh', ARGV[base + 2], 'rs', ARGV[base + 3], 'v', ARGV[base + 4])
    repaired = repaired + 1
  end
end
return repaired
