-- Not loaded as one file: src/store/cluster/scripts.rs cuts it into one script per `--@ name`
-- section and puts the shared functions of the first section in front of each.
-- Time is Redis's own (TIME), never a node's clock. Every key a script touches besides its
-- KEYS is derived from them with the same prefixes (standalone Redis only: see docs/cluster.md).

--@ common
-- Numbers become strings only through `int` ('%d'): Lua's own tostring, `..` and Redis's
-- conversion of number arguments all print '%.14g' or '%.17g' floats, which was the
-- biggest single cost of a notify in Redis (callgrind: a fifth of its instructions).
local function int(n)
  -- A one-digit number (a count of waiters, mostly) is a tenth of the price.
  if n >= 0 and n < 10 then return string.char(48 + n) end
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A token bucket as GCRA, in microseconds: `burst` at once, refilled at `rate` per second.
-- A bucket is read once (`gcra_load`), taken from any number of times, and written once
-- (`gcra_save`): a batch of notifies of one app costs it one GET and one SET.
local function gcra_load(key)
  return {key = key, tat = tonumber(redis.call('GET', key)) or 0, dirty = false}
end

-- Takes one request from `bucket`: 0 when it passes, else the milliseconds until one would.
local function gcra_take(bucket, now, rate, burst)
  local now_us = now * 1000
  local interval = math.floor(1000000 / rate)
  local tat = math.max(bucket.tat, now_us)
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now_us then return math.ceil((allow_at - now_us) / 1000) end
  bucket.tat, bucket.dirty = new_tat, true
  return 0
end

local function gcra_save(bucket, rate, burst)
  if not bucket.dirty then return end
  local interval = math.floor(1000000 / rate)
  redis.call('SET', bucket.key, int(bucket.tat), 'PX', int(math.ceil(interval * burst / 1000) + 1000))
end

-- One request through the bucket at `key` (a rate of 0 or less: no limit).
local function gcra(key, now, rate, burst)
  if rate <= 0 then return 0 end
  local bucket = gcra_load(key)
  local wait = gcra_take(bucket, now, rate, burst)
  gcra_save(bucket, rate, burst)
  return wait
end

-- Expiry in buckets. An id's key expires at the end of its bucket (its PEXPIRETIME, ms since
-- the epoch, a multiple of the granule: so the bucket costs the id nothing to store), and
-- each app counts its ids per bucket: `counts` is a
-- hash of bucket end -> ids, with `n` the app's total, and `ends` a sorted set of the bucket
-- ends. A bucket is forgotten once it has ended, with the ids that expired in it, so the
-- totals stay exact with nothing per id beside the id's own key; and an id touched again and
-- again moves (rewrites its TTL) once per granule, not at every notify.
local function bucket_end(now, ttl, granule)
  return math.ceil((now + ttl) / granule) * granule
end

-- Forgets the buckets of `counts`/`ends` that ended before `now`; returns the live total.
local function prune(counts, ends, now)
  local over = redis.call('ZRANGEBYSCORE', ends, '-inf', '(' .. int(now))
  if #over > 0 then
    local lost = 0
    for _, e in ipairs(over) do
      lost = lost + (tonumber(redis.call('HGET', counts, e)) or 0)
      redis.call('HDEL', counts, e)
    end
    redis.call('ZREMRANGEBYSCORE', ends, '-inf', '(' .. int(now))
    return redis.call('HINCRBY', counts, 'n', int(-lost))
  end
  return tonumber(redis.call('HGET', counts, 'n')) or 0
end

-- The bucket of the id at `key`: its expiry time as a bucket's name, or false.
local function bucket_of(key)
  local at = redis.call('PEXPIRETIME', key)
  if at < 0 then return false end
  return int(at)
end

-- Takes the id out of bucket `x` (false: in none, or in one already forgotten); returns
-- whether it was counted there.
local function unbucket(counts, ends, x)
  if not x or redis.call('HEXISTS', counts, x) == 0 then return false end
  if redis.call('HINCRBY', counts, x, '-1') <= 0 then
    redis.call('HDEL', counts, x)
    redis.call('ZREM', ends, x)
  end
  return true
end

-- Counts the id, until now in bucket `was` of `counts`/`ends` (false: in none), in bucket
-- `name` instead. An id whose bucket was forgotten (it ended as this script began) is
-- counted anew.
local function rebucket(counts, ends, was, name)
  if not unbucket(counts, ends, was) then
    redis.call('HINCRBY', counts, 'n', '1')
  end
  redis.call('HINCRBY', counts, name, '1')
  redis.call('ZADD', ends, name, name)
end

-- Every id of every app, counted as each app's are (same buckets), for `max_ids`: one
-- structure to read at a create, however many apps there are.
local ALL_COUNTS, ALL_ENDS = 'ch:gb', 'ch:ge'

-- Activity on the id at `key` of `app`: it lives for another `ttl`, rounded up to its
-- bucket's end, in its app's counts and in everyone's. Nothing is written while that is still
-- the bucket it is in.
local function keep(key, app, now, ttl, granule)
  local e = bucket_end(now, ttl, granule)
  local at = redis.call('PEXPIRETIME', key)
  if at == e then return end
  local name = int(e)
  local was = at >= 0 and int(at)
  rebucket('ch:ab:' .. app, 'ch:ae:' .. app, was, name)
  rebucket(ALL_COUNTS, ALL_ENDS, was, name)
  redis.call('PEXPIREAT', key, name)
end

-- The waiters of every live node, from the id's `fields` (HGETALL). A node whose heartbeat
-- ran out is not counted, but its field is kept: it may only have been cut off for a while,
-- and it does not write counts that did not change. Fields of nodes gone for an hour (the
-- heartbeat script forgets them) are deleted on the way. The calling node's own count is the
-- one it passes (exact now), not the one it last wrote; `own` is its field ('w.' .. node).
-- `alive` remembers, for one script, what `nodes` said of each node's field (its
-- heartbeat's end, or false). The other fields of an id are one or two letters long.
local function waiting(fields, key, nodes, now, own, self_count, alive)
  local sum = tonumber(self_count)
  for i = 1, #fields, 2 do
    local f = fields[i]
    if #f > 2 and f ~= own then
      local until_ms = alive[f]
      if until_ms == nil then
        until_ms = tonumber(redis.call('HGET', nodes, string.sub(f, 3))) or false
        alive[f] = until_ms
      end
      if not until_ms then
        redis.call('HDEL', key, f)
      elseif until_ms > now then
        sum = sum + tonumber(fields[i + 1])
      end
    end
  end
  return sum
end

-- Hints: what one script changed, in ONE message on the hint channel `ch:h` (the nodes'
-- only subscription), numbered by the counter at `counter` so that a node sees a lost one.
-- The message is `number|epoch|time` and then, per change, a newline and
-- `kind|seq|id|bytes of info|info` (info may hold any character). `seq` is a string.
-- `lengths` (optional) keeps the lengths already printed, for a script that makes many hints:
-- `int` costs about as much as the rest of the hint (callgrind), and most infos of a batch
-- are as long as each other.
local function hint(kind, seq, id, info, lengths)
  local length = lengths and lengths[#info]
  if not length then
    length = int(#info)
    if lengths then lengths[#info] = length end
  end
  return '\n' .. kind .. '|' .. seq .. '|' .. id .. '|' .. length .. '|' .. info
end

local function publish(counter, ep, now, hints)
  if #hints == 0 then return end
  local number = redis.call('INCR', counter)
  redis.call('PUBLISH', 'ch:h', int(number) .. '|' .. ep .. '|' .. int(now) .. table.concat(hints))
end

-- The value of `name` in `fields` (HGETALL), or false.
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return false
end

local function epoch(key)
  return redis.call('HGET', key, 'ep') or '0'
end

-- A node's count of its clients on the id at `key`.
local function report(key, node, count)
  if tonumber(count) > 0 then
    redis.call('HSET', key, 'w.' .. node, count)
  else
    redis.call('HDEL', key, 'w.' .. node)
  end
end

--@ create
-- KEYS: id hash, the app's counts, the app's bucket ends, the app's create bucket, the
-- counts and bucket ends of every id.
-- ARGV: app, origin ('' for none), idle ttl ms, granule ms, app quota, max_ids, rate, burst
local now = now_ms()
local wait = gcra(KEYS[4], now, tonumber(ARGV[7]), tonumber(ARGV[8]))
if wait > 0 then return {'rate', int(wait)} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'taken'} end
if prune(KEYS[2], KEYS[3], now) >= tonumber(ARGV[5]) then return {'quota'} end
if prune(KEYS[5], KEYS[6], now) >= tonumber(ARGV[6]) then return {'full'} end
-- Created in whole seconds, as the API shows it (and 4 bytes in the listpack, not 8).
local created = math.floor(now / 1000)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'a', ARGV[1], 's', '0', 'c', int(created), 'o', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'a', ARGV[1], 's', '0', 'c', int(created))
end
keep(KEYS[1], ARGV[1], now, tonumber(ARGV[3]), tonumber(ARGV[4]))
return {'ok'}

--@ census
-- KEYS: the counts and bucket ends of every id (or of one app's). Returns how many are live.
return prune(KEYS[1], KEYS[2], now_ms())

--@ notify
-- Notifies in a batch (the ones a node's publishers made while its previous batches were in
-- Redis): each one as if alone, in order, in one atomic step, with one hint message for all.
-- KEYS: hint counter, epoch, nodes, then one id hash per notify.
-- ARGV: idle ttl ms, granule ms, node, idempotency window ms, then per notify: app, info,
-- this node's waiters on the id, its idempotency record ('' for none: see
-- src/idempotency.rs), its app's notify rate and burst (every notify of one app carries
-- the same), and how long it waits for its deliveries in ms (`?wait=`: its hint is then
-- 'w<ms>', which tells the nodes to count them in the id's tally for that long), else '0'. A notify whose record exists
-- was made before: it is answered as it was then and not made again.
-- Returns the epoch, then per notify three values: 'ok', seq, waiting; 'unknown', '', '';
-- or 'rate', the milliseconds to wait, ''.
local now = now_ms()
local ttl, granule = tonumber(ARGV[1]), tonumber(ARGV[2])
local own = 'w.' .. ARGV[3]
local ep = epoch(KEYS[2])
local out = {ep}
local hints, buckets, alive, lengths = {}, {}, {}, {}
local function answer(a, b, c)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3] = a, b, c
end
-- What to read of each id: 'a', 's' and the waiter fields of the other live nodes, with one
-- HMGET (a fraction of an HGETALL of the whole hash, info and origin included); false when
-- there are more than READ_NODES of them, then the whole hash is read (and the fields of
-- nodes long gone are pruned on the way, which the HMGET leaves to reads by `status`).
local READ_NODES = 8
local plan = nil
local function read_plan()
  local nodes = redis.call('HGETALL', KEYS[3])
  local fields = {'a', 's'}
  for j = 1, #nodes, 2 do
    local f = 'w.' .. nodes[j]
    if f ~= own and tonumber(nodes[j + 1]) > now then fields[#fields + 1] = f end
  end
  if #fields > 2 + READ_NODES then return false end
  return fields
end
local window = ARGV[4]
for i = 4, #KEYS do
  local key = KEYS[i]
  local at = 5 + (i - 4) * 7
  local app, info, mark = ARGV[at], ARGV[at + 1], ARGV[at + 3]
  local made = mark ~= '' and redis.call('GET', mark)
  local wait = 0
  if made then
    local bar = string.find(made, '|', 1, true)
    answer('ok', string.sub(made, 1, bar - 1), string.sub(made, bar + 1))
  elseif ARGV[at + 4] ~= '0' then
    -- The rate is read once per app and batch (every notify of one app carries the same):
    -- a string to number conversion costs as much as a fifth of a redis.call.
    local bucket = buckets[app]
    if not bucket then
      -- One bucket per app and rate (src/store/cluster.rs, `bucket_key`).
      bucket = gcra_load('ch:rl:n:' .. app .. ':' .. ARGV[at + 4] .. '/' .. ARGV[at + 5])
      bucket.rate, bucket.burst = tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5])
      buckets[app] = bucket
    end
    wait = gcra_take(bucket, now, bucket.rate, bucket.burst)
  end
  if made then
    -- Answered above.
  elseif wait > 0 then
    answer('rate', int(wait), '')
  else
    if plan == nil then plan = read_plan() end
    local owner, seq, sum
    local fields
    if plan then
      local r = redis.call('HMGET', key, unpack(plan))
      owner, seq = r[1], r[2]
      sum = ARGV[at + 2] == '0' and 0 or tonumber(ARGV[at + 2])
      for j = 3, #plan do sum = sum + (tonumber(r[j]) or 0) end
    else
      fields = redis.call('HGETALL', key)
      owner, seq = field(fields, 'a'), field(fields, 's')
    end
    if owner ~= app then
      answer('unknown', '', '')
    else
      seq = int((tonumber(seq) or 0) + 1)
      redis.call('HSET', key, 's', seq, 'v', info)
      keep(key, app, now, ttl, granule)
      local kind = ARGV[at + 6] ~= '0' and ('w' .. ARGV[at + 6]) or 'n'
      hints[#hints + 1] = hint(kind, seq, string.sub(key, 6), info, lengths)
      if fields then sum = waiting(fields, key, KEYS[3], now, own, ARGV[at + 2], alive) end
      if mark ~= '' then redis.call('SET', mark, seq .. '|' .. int(sum), 'PX', window) end
      answer('ok', seq, int(sum))
    end
  end
end
for _, bucket in pairs(buckets) do gcra_save(bucket, bucket.rate, bucket.burst) end
publish(KEYS[1], ep, now, hints)
return out

--@ delete
-- KEYS: id hash, the app's counts, the app's bucket ends, hint counter, epoch
-- ARGV: app, id
if redis.call('HGET', KEYS[1], 'a') ~= ARGV[1] then return {'unknown'} end
local now = now_ms()
local x = bucket_of(KEYS[1])
redis.call('DEL', KEYS[1], 'ch:dc:' .. ARGV[2])
if unbucket(KEYS[2], KEYS[3], x) then redis.call('HINCRBY', KEYS[2], 'n', -1) end
if unbucket(ALL_COUNTS, ALL_ENDS, x) then redis.call('HINCRBY', ALL_COUNTS, 'n', -1) end
publish(KEYS[4], epoch(KEYS[5]), now, {hint('d', '0', ARGV[2], '')})
return {'ok'}

--@ touch
-- Browsers' looks at ids (polls, streams, iframe pages), in a batch, each counted as activity;
-- with a count it also records how many clients this node holds on the id.
-- KEYS: epoch, then one id hash per look.
-- ARGV: idle ttl ms, granule ms, node, then per look this node's waiters ('' to leave it).
-- Returns the epoch, then per look its app, origin, seq and info ('', '', '', '' when the id
-- does not exist).
local now = now_ms()
local ttl, granule, node = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out = {epoch(KEYS[1])}
for i = 2, #KEYS do
  local key = KEYS[i]
  local r = redis.call('HMGET', key, 'a', 'o', 's', 'v')
  local n = #out
  if r[1] then
    keep(key, r[1], now, ttl, granule)
    if ARGV[2 + i] ~= '' then report(key, node, ARGV[2 + i]) end
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = r[1], r[2] or '', r[3], r[4] or ''
  else
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = '', '', '', ''
  end
end
return out

--@ counts
-- This node's counts of its clients on many ids at once (the end of a wait is activity too).
-- KEYS: the id hashes. ARGV: idle ttl ms, granule ms, node, then one count per key.
-- Returns the positions (1-based) of the ids that no longer exist.
local now = now_ms()
local ttl, granule = tonumber(ARGV[1]), tonumber(ARGV[2])
local gone = {}
for i, key in ipairs(KEYS) do
  local app = redis.call('HGET', key, 'a')
  if app then
    keep(key, app, now, ttl, granule)
    report(key, ARGV[3], ARGV[3 + i])
  else
    gone[#gone + 1] = i
  end
end
return gone

--@ delivered
-- The newest `seq` this node delivered of each of many ids since its last call: each id keeps
-- the newest any node delivered, and when it first was ('ds', 'dt', for `status`). Nothing
-- else is read or written: a delivery is not activity of its own (the poll or stream that
-- made it was).
-- KEYS: the id hashes. ARGV: one seq per key.
local now = int(now_ms())
for i, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 's', 'ds')
  local seq = tonumber(ARGV[i])
  if r[1] and seq <= tonumber(r[1]) and seq > (tonumber(r[2]) or -1) then
    -- The node printed the seq as `int` would: no second printing of each.
    redis.call('HSET', key, 'ds', ARGV[i], 'dt', now)
  end
end
return 0

--@ status
-- KEYS: id hash, nodes
-- ARGV: app, node, its waiters
local fields = redis.call('HGETALL', KEYS[1])
if field(fields, 'a') ~= ARGV[1] then return {} end
local now = now_ms()
return {field(fields, 'o') or '', field(fields, 's'), field(fields, 'c'), int(redis.call('PTTL', KEYS[1])), int(waiting(fields, KEYS[1], KEYS[2], now, 'w.' .. ARGV[2], ARGV[3], {})), field(fields, 'ds') or '', field(fields, 'dt') or ''}

--@ heartbeat
-- KEYS: nodes. ARGV: node, how long it counts as alive (ms)
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[1], int(now + tonumber(ARGV[2])))
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

--@ registry_put
-- The apps registered at runtime, as one document with a version (src/registry.rs).
-- KEYS: the document, its version. ARGV: the version the change was made on, the document,
-- and the version to give it ('' for the next one).
-- Returns the version it now has, or -1 when another change came first.
if (tonumber(redis.call('GET', KEYS[2])) or 0) ~= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] == '' then return redis.call('INCR', KEYS[2]) end
redis.call('SET', KEYS[2], ARGV[3])
return tonumber(ARGV[3])

--@ purge
-- The ids of an app that was removed, from one SCAN step: each one of `app` created no later
-- than `before` (seconds) is deleted as `delete` would, and its waiters everywhere released.
-- KEYS: hint counter, epoch, then the id hashes. ARGV: app, before.
-- Returns how many were deleted.
local now = now_ms()
local app, before = ARGV[1], tonumber(ARGV[2])
local counts, ends = 'ch:ab:' .. app, 'ch:ae:' .. app
local hints = {}
for i = 3, #KEYS do
  local key = KEYS[i]
  local r = redis.call('HMGET', key, 'a', 'c')
  if r[1] == app and (tonumber(r[2]) or 0) <= before then
    local x = bucket_of(key)
    redis.call('DEL', key)
    if unbucket(counts, ends, x) then redis.call('HINCRBY', counts, 'n', -1) end
    if unbucket(ALL_COUNTS, ALL_ENDS, x) then redis.call('HINCRBY', ALL_COUNTS, 'n', -1) end
    hints[#hints + 1] = hint('d', '0', string.sub(key, 6), '')
  end
end
publish(KEYS[1], epoch(KEYS[2]), now, hints)
return #hints

--@ idem_begin
-- An Idempotency-Key's record (src/idempotency.rs): 'P' or 'D', the request's fingerprint
-- (32 bytes), and for 'D' the answer's status (3 digits) and body.
-- KEYS: the record. ARGV: the fingerprint, how long a request being answered holds it (ms).
-- Returns {'fresh'} (now held for this request), {'pending'}, {'reused'} or
-- {'done', status, body}.
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'P' .. ARGV[1], 'PX', ARGV[2])
  return {'fresh'}
end
if string.sub(v, 2, 33) ~= ARGV[1] then return {'reused'} end
if string.sub(v, 1, 1) == 'P' then return {'pending'} end
return {'done', string.sub(v, 34, 36), string.sub(v, 37)}

--@ idem_finish
-- KEYS: the record. ARGV: the fingerprint, the status ('' to forget the key), the body, the
-- window (ms). Only the request holding the record finishes it.
if redis.call('GET', KEYS[1]) ~= 'P' .. ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('SET', KEYS[1], 'D' .. ARGV[1] .. ARGV[2] .. ARGV[3], 'PX', ARGV[4])
return 1

--@ challenge_issue
-- A self-registration token (src/registration.rs) for an origin, within the bounds on the
-- tokens handed out: per client and in all, counted over the last token lifetime.
-- KEYS: the token, the client's count, the count of all. ARGV: origin, lifetime (ms), the
-- client's bound, the bound of all. Returns 1, or 0 when a bound is reached.
local mine = redis.call('INCR', KEYS[2])
local all = redis.call('INCR', KEYS[3])
if mine > tonumber(ARGV[3]) or all > tonumber(ARGV[4]) then
  redis.call('DECR', KEYS[2])
  redis.call('DECR', KEYS[3])
  return 0
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
