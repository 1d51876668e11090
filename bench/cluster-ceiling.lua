-- bench/cluster.sh's Redis ceiling: the shape of one cluster notify in one atomic step, run by
-- redis-benchmark as `EVALSHA <sha> 1 <id key> <16-byte info>`, unpipelined. Bump the id's
-- seq, store its newest info, refresh its idle TTL, and tell the nodes on a fixed channel.
-- CEILING_LUA=path replaces this file with another script taking the same KEYS[1] and ARGV[1].
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'info', ARGV[1])
redis.call('PEXPIRE', KEYS[1], 86400000)
redis.call('PUBLISH', 'cb:hints', KEYS[1] .. ' ' .. seq)
return seq
