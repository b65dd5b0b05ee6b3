-- ATTEMPTS_LUA in relay/redis/src/group.rs says what this script does, its KEYS, ARGV and reply.
-- A call whose token is the last one this consumer's calls left (ARGV[2] is the field that keeps it) is
-- a repeat (a client library re-sending after a lost reply): it changes nothing and answers the counts.
local repeated = redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3]
if not repeated then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
local counts = {}
for i = 4, #ARGV do
  local n
  if repeated then
    n = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  else
    n = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[1])
    if n <= 0 then
      redis.call('HDEL', KEYS[1], ARGV[i])
      n = 0
    end
  end
  counts[#counts + 1] = n
end
return counts
