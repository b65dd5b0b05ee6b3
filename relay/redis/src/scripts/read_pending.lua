-- READ_PENDING_LUA in relay/redis/src/group.rs says what this script does, its KEYS, ARGV and reply.
local group, consumer = ARGV[1], ARGV[2]
local count, budget, after = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n, bytes = 0, 0
for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, '(' .. after, '+', count, consumer)) do
  n = n + 1
  local e = redis.call('XRANGE', KEYS[1], p[1], p[1])[1]
  if e then
    for _, v in ipairs(e[2]) do bytes = bytes + #v end
  end
  if bytes >= budget then break end
end
if n == 0 then return {} end
local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', KEYS[1], after)
if not reply then return {} end
return reply[1][2]
