-- ATTEMPTS_LUA in relay/redis/src/group.rs says what this script does, its KEYS, ARGV and reply.
local counts = {}
for i = 2, #ARGV do
  local n = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[1])
  if n <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = 0
  end
  counts[#counts + 1] = n
end
return counts
