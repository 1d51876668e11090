-- Not loaded as one file: src/store/cluster/scripts.rs cuts it into one script per `--@ name`
-- section and puts the shared functions of the first section in front of each.
-- Time is Redis's own (TIME), never a node's clock. Every key a script touches besides its
-- KEYS is derived from them with the same prefixes (standalone Redis only: see docs/cluster.md).

--@ common
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A token bucket as GCRA, in microseconds: `burst` at once, refilled at `rate` per second.
-- Returns 0 when the request passes, else the milliseconds until one would.
local function gcra(key, now, rate, burst)
  if rate <= 0 then return 0 end
  local now_us = now * 1000
  local interval = math.floor(1000000 / rate)
  local tat = tonumber(redis.call('GET', key)) or now_us
  if tat < now_us then tat = now_us end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now_us then return math.ceil((allow_at - now_us) / 1000) end
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil(interval * burst / 1000) + 1000)
  return 0
end

-- The waiters of every live node on the id at `key`. A node whose heartbeat ran out is not
-- counted, but its field is kept: it may only have been cut off for a while, and it does not
-- write counts that did not change. Fields of nodes gone for an hour (the heartbeat script
-- forgets them) are deleted on the way. The calling node's own count is the one it passes
-- (exact now), not the one it last wrote.
local function waiting(key, nodes, now, self_node, self_count)
  local fields = redis.call('HGETALL', key)
  local sum = tonumber(self_count)
  local own = 'w.' .. self_node
  for i = 1, #fields, 2 do
    local f = fields[i]
    if f ~= own and string.sub(f, 1, 2) == 'w.' then
      local alive = redis.call('HGET', nodes, string.sub(f, 3))
      if not alive then
        redis.call('HDEL', key, f)
      elseif tonumber(alive) > now then
        sum = sum + tonumber(fields[i + 1])
      end
    end
  end
  return sum
end

local function epoch(key)
  return redis.call('HGET', key, 'ep') or '0'
end

--@ create
-- KEYS: id hash, the app's id set, the app's create bucket, then every app's id set.
-- ARGV: app, origin ('' for none), idle ttl ms, app quota, max_ids, rate, burst, id
local now = now_ms()
local wait = gcra(KEYS[3], now, tonumber(ARGV[6]), tonumber(ARGV[7]))
if wait > 0 then return {'rate', tostring(wait)} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'taken'} end
local total = 0
for i = 4, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  total = total + redis.call('ZCARD', KEYS[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {'quota'} end
if total >= tonumber(ARGV[5]) then return {'full'} end
local ttl = tonumber(ARGV[3])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'a', ARGV[1], 's', 0, 'c', now, 'o', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'a', ARGV[1], 's', 0, 'c', now)
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[8])
return {'ok'}

--@ notify
-- KEYS: id hash, the app's id set, the app's notify bucket, partition counters, epoch, nodes
-- ARGV: app, info, idle ttl ms, partition, channel, rate, burst, id, node, its waiters
local now = now_ms()
local wait = gcra(KEYS[3], now, tonumber(ARGV[6]), tonumber(ARGV[7]))
if wait > 0 then return {'rate', tostring(wait)} end
if redis.call('HGET', KEYS[1], 'a') ~= ARGV[1] then return {'unknown'} end
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('HSET', KEYS[1], 'v', ARGV[2])
local ttl = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], 'XX', now + ttl, ARGV[8])
local hv = redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
local ep = epoch(KEYS[5])
redis.call('PUBLISH', ARGV[5], hv .. '|n|' .. seq .. '|' .. ep .. '|' .. now .. '|' .. ARGV[8] .. '|' .. ARGV[2])
return {'ok', tostring(seq), tostring(waiting(KEYS[1], KEYS[6], now, ARGV[9], ARGV[10])), ep}

--@ delete
-- KEYS: id hash, the app's id set, partition counters, epoch
-- ARGV: app, partition, channel, id
if redis.call('HGET', KEYS[1], 'a') ~= ARGV[1] then return {'unknown'} end
local now = now_ms()
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[4])
local hv = redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('PUBLISH', ARGV[3], hv .. '|d|0|' .. epoch(KEYS[4]) .. '|' .. now .. '|' .. ARGV[4] .. '|')
return {'ok'}

--@ touch
-- A browser's look at an id, counted as activity; with ARGV[3] ~= '' it also records how
-- many clients this node holds on it.
-- KEYS: id hash, epoch, nodes
-- ARGV: idle ttl ms, node, waiters on this node ('' to leave it), id
local r = redis.call('HMGET', KEYS[1], 'a', 'o', 's', 'v')
if not r[1] then return {} end
local now = now_ms()
local ttl = tonumber(ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', 'ch:app:' .. r[1], 'XX', now + ttl, ARGV[4])
if ARGV[3] ~= '' then
  if tonumber(ARGV[3]) > 0 then
    redis.call('HSET', KEYS[1], 'w.' .. ARGV[2], ARGV[3])
  else
    redis.call('HDEL', KEYS[1], 'w.' .. ARGV[2])
  end
end
return {r[1], r[2] or '', r[3], r[4] or '', epoch(KEYS[2])}

--@ status
-- KEYS: id hash, nodes
-- ARGV: app, node, its waiters
local r = redis.call('HMGET', KEYS[1], 'a', 'o', 's', 'c')
if r[1] ~= ARGV[1] then return {} end
local now = now_ms()
return {r[2] or '', r[3], r[4], tostring(redis.call('PTTL', KEYS[1])), tostring(waiting(KEYS[1], KEYS[2], now, ARGV[2], ARGV[3]))}

--@ heartbeat
-- KEYS: nodes. ARGV: node, how long it counts as alive (ms)
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
-- Forget nodes dead for an hour (their waiter fields are pruned lazily by `waiting`).
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now - 3600000 then redis.call('HDEL', KEYS[1], all[i]) end
end
return now

--@ ensure_epoch
-- KEYS: epoch. ARGV: this Redis's run_id, a fresh epoch to use if it is not the one recorded
if redis.call('HGET', KEYS[1], 'rid') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'rid', ARGV[1], 'ep', ARGV[2])
end
return redis.call('HGET', KEYS[1], 'ep')
