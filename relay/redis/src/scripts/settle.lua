-- SETTLE_LUA in relay/redis/src/group.rs says what this script does, its KEYS, ARGV and reply.
local group = ARGV[1]
local n = tonumber(ARGV[2])
local acked = 0
for first = 3, 2 + n, 500 do
  local last = math.min(first + 499, 2 + n)
  acked = acked + redis.call('XACK', KEYS[1], group, unpack(ARGV, first, last))
  redis.call('HDEL', KEYS[3], unpack(ARGV, first, last))
end
local written = {}
local i = 3 + n
while i <= #ARGV do
  local id = ARGV[i]
  local pairs_count = tonumber(ARGV[i + 1])
  -- NOGROUP: Redis lost the group (or the stream) since the entry was read; nothing is pending, and the
  -- reader, recreating the group from the start, reads the entry again if the stream still holds it.
  local pending = redis.pcall('XPENDING', KEYS[1], group, id, id, 1)
  if type(pending) == 'table' and pending.err then
    if string.sub(pending.err, 1, 7) ~= 'NOGROUP' then
      return redis.error_reply(pending.err)
    end
    pending = {}
  end
  if #pending > 0 then
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 2, i + 1 + 2 * pairs_count))
    acked = acked + redis.call('XACK', KEYS[1], group, id)
    redis.call('HDEL', KEYS[3], id)
    written[#written + 1] = 1
  else
    written[#written + 1] = 0
  end
  i = i + 2 + 2 * pairs_count
end
return {acked, written}
