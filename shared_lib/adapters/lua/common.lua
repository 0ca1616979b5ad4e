-- Loaded in front of the scripts that give held units back or take durable levels
-- (redis_gate.py).

-- drop_hold: the request's held units return to their levels, its hold disappears.
local function drop_hold(tag, holds_key, req)
  local hold_key = tag .. ':hold:' .. req
  local fields = redis.call('HGETALL', hold_key)
  for j = 1, #fields, 2 do
    local level_key = tag .. ':lvl:' .. fields[j]
    if redis.call('EXISTS', level_key) == 1 then
      if redis.call('HINCRBY', level_key, 'hd', -tonumber(fields[j + 1])) < 0 then
        redis.call('HSET', level_key, 'hd', 0)
      end
    end
  end
  redis.call('DEL', hold_key)
  redis.call('ZREM', holds_key, req)
  return #fields / 2
end

-- settle_level: the level takes the database's values when their row version is newer;
-- true when it did.
local function settle_level(level_key, on_hand, reserved, version)
  local current = redis.call('HGET', level_key, 'v')
  if current and tonumber(current) >= tonumber(version) then
    return false
  end
  redis.call('HSET', level_key, 'oh', on_hand, 'rs', reserved, 'v', version)
  return true
end

