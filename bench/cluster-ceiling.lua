-- bench/cluster.sh's Redis ceiling: the commands of one cluster notify (src/store/cluster/
-- scripts.lua, `notify`, a batch of one with rate limits off and no waiters elsewhere), run by
-- redis-benchmark as `EVALSHA <sha> 1 <id key> <16-byte info>`, unpipelined: read the time
-- and the epoch, read the id, store its seq and newest info, keep its TTL (rewritten once per
-- granule), bump the partition's hint counter, and tell the nodes.
-- CEILING_LUA=path replaces this file with another script taking the same KEYS[1] and ARGV[1].
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ep = redis.call('HGET', 'cb:ep', 'ep') or '0'
local fields = redis.call('HGETALL', KEYS[1])
local seq = 1
for i = 1, #fields, 2 do
  if fields[i] == 's' then seq = tonumber(fields[i + 1]) + 1 end
end
redis.call('HSET', KEYS[1], 's', seq, 'v', ARGV[1])
local e = math.ceil((now + 86400000) / 60000) * 60000
if redis.call('PEXPIRETIME', KEYS[1]) ~= e then redis.call('PEXPIREAT', KEYS[1], e) end
local hv = redis.call('HINCRBY', 'cb:hv', '3', 1)
redis.call('PUBLISH', 'cb:hints', hv .. '|n|' .. seq .. '|' .. ep .. '|' .. now .. '|' .. KEYS[1] .. '|' .. ARGV[1])
return seq
