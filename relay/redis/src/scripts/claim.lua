-- CLAIM_LUA in relay/redis/src/group.rs says what this script does, its KEYS, ARGV and reply.
local group, consumer, min_idle, start = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local count, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local pending = redis.call('XPENDING', KEYS[1], group, 'IDLE', min_idle, start, '+', count)
local ids, gone, bytes, last = {}, 0, 0, nil
for _, p in ipairs(pending) do
  last = p[1]
  local e = redis.call('XRANGE', KEYS[1], p[1], p[1])[1]
  if e then
    ids[#ids + 1] = p[1]
    for _, v in ipairs(e[2]) do bytes = bytes + #v end
  else
    redis.call('XACK', KEYS[1], group, p[1])
    gone = gone + 1
  end
  if bytes >= budget then break end
end
local next_start = '0-0'
if last and (#pending == count or bytes >= budget) then next_start = '(' .. last end
local entries = {}
for first = 1, #ids, 500 do
  local claimed = redis.call('XCLAIM', KEYS[1], group, consumer, min_idle,
                             unpack(ids, first, math.min(first + 499, #ids)))
  for _, e in ipairs(claimed) do entries[#entries + 1] = e end
end
return {next_start, entries, gone}
