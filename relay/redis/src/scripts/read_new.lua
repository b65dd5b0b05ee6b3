-- READ_NEW_LUA in relay/redis/src/group.rs says what this script does, its KEYS, ARGV and reply.
local group, consumer = ARGV[1], ARGV[2]
local count, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for k = 1, #g, 2 do
    if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'last-delivered-id' then delivered = g[k + 1] end
  end
  if name == group then last = delivered end
end
if not last then
  return redis.error_reply('NOGROUP No such consumer group ' .. group .. ' for key name ' .. KEYS[1])
end
local n, bytes = 0, 0
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', count)) do
  n = n + 1
  for _, v in ipairs(e[2]) do bytes = bytes + #v end
  if bytes >= budget then break end
end
if n == 0 then return {} end
local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', KEYS[1], '>')
if not reply then return {} end
return reply[1][2]
