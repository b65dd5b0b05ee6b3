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
-- Sized in steps, never more than about the budget in hand at once: the first step takes 16 entries, each
-- next one as many as the entries seen so far say fit in what is left of the budget (small entries: two
-- steps; 200 KB entries: about budget / 200 KB + 16, not `count` of them).
local n, bytes, from, step = 0, 0, '(' .. last, math.min(count, 16)
while n < count and bytes < budget do
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', step)
  if #entries == 0 then break end
  for _, e in ipairs(entries) do
    n = n + 1
    for _, v in ipairs(e[2]) do bytes = bytes + #v end
    from = '(' .. e[1]
    if bytes >= budget then break end
  end
  local fit = math.floor((budget - bytes) / math.max(1, bytes / n)) + 1
  step = math.max(1, math.min(count - n, fit))
end
if n == 0 then return {} end
local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', KEYS[1], '>')
if not reply then return {} end
return reply[1][2]
