-- Apply one model's share of a batch of predictions, atomically and at most once.
--
-- KEYS[1] offsets hash (field "<topic>|<partition>" -> last applied offset: the replay guard)
-- KEYS[2] meta hash (last_event_s, events)   KEYS[3] versions hash (version -> newest minute)
-- KEYS[4] labels waiting for their prediction (hash)   KEYS[5] their expiry times (zset)
-- KEYS[6] version -> minute first seen (hash)   KEYS[7] recent unfavourable decisions (zset)
-- KEYS[8] the newest raw events (list, evidence)   KEYS[9] shapes (shape id -> [version, prefixes])
-- KEYS[10] the bytes of KEYS[7]'s members   KEYS[11..] the keys the share's parts name by index.
-- ARGV[1] JSON share: {guard: [[field, min, max]...], minute_key, hour_key, now, minute_ttl, hour_ttl,
--   last_event_s, events, versions: {version: minute}, ttl_s,
--   totals_key (index in KEYS of the model's totals hash), totals_expire_at,
--   buckets: [[key_index, expire_at, [field, incr, ...]]...],
--   users: [[key_index, [score, user, ...]]...], users_since, users_ttl,
--   joins: [[key_index, expire_at, day, [request digest, record, ...]]...] (monitor/aggregates/joins.py),
--   shapes: [shape id, JSON [version, prefixes], ...], shapes_key (9), shapes_expire_at,
--   unfavourable: [score, member, ...], unfavourable_max, unfavourable_max_bytes, unfavourable_ttl}
--
-- Returns {0, labels_matched} when applied, or {1, field, stored_offset, ...} when part of the
-- share was applied before: nothing is written and the caller resends only the new events.
local share = cjson.decode(ARGV[1])

local refused = guard(KEYS[1], share.guard)
if refused then return refused end

apply_buckets(share.buckets)

-- Who asked (users_seen) and who was served (users_served): each user's newest event time. ZADD GT
-- never moves a user back, so a late or replayed event changes nothing it should not; users older
-- than the longest users window are dropped, which bounds the sets by the recent users.
for _, u in ipairs(share.users) do
  local key, flat = KEYS[u[1]], u[2]
  for i = 1, #flat, 1000 do
    redis.call('ZADD', key, 'GT', unpack(flat, i, math.min(i + 999, #flat)))
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. share.users_since)
  redis.call('EXPIRE', key, share.users_ttl)
end

-- The shapes the share's join records and unfavourable decisions name (before a waiting label
-- below needs one).
if #share.shapes > 0 then
  hset_many(KEYS[9], share.shapes)
  redis.call('EXPIREAT', KEYS[9], share.shapes_expire_at)
end

-- A label can arrive before its prediction; it waits in KEYS[4] and is counted now.
local matched = 0
local waiting = redis.call('HLEN', KEYS[4]) > 0
for _, j in ipairs(share.joins) do
  local key, day, items = KEYS[j[1]], j[3], j[4]
  if waiting then
    local keep = {}
    for i = 1, #items, 2 do
      local label = redis.call('HGET', KEYS[4], items[i])
      if label then
        apply_label(share, items[i + 1], label, day)
        redis.call('HDEL', KEYS[4], items[i])
        redis.call('ZREM', KEYS[5], items[i])
        matched = matched + 1
      else
        keep[#keep + 1] = items[i]
        keep[#keep + 1] = items[i + 1]
      end
    end
    items = keep
  end
  if #items > 0 then
    hset_many(key, items)
    redis.call('EXPIREAT', key, j[2])
  end
end

-- Who got an unfavourable decision: newest kept, the oldest dropped past the count bound, past the
-- bound on the members' bytes (their sum is kept in KEYS[10]) and past the set's TTL.
local unfav = share.unfavourable
if #unfav > 0 then
  local kept, size_key = KEYS[7], KEYS[10]
  local bytes = 0
  if redis.call('EXISTS', kept) == 1 then bytes = tonumber(redis.call('GET', size_key) or '0') end
  for i = 1, #unfav, 2 do
    if redis.call('ZADD', kept, unfav[i], unfav[i + 1]) == 1 then bytes = bytes + #unfav[i + 1] end
  end
  local old = redis.call('ZRANGEBYSCORE', kept, '-inf', '(' .. (share.now - share.unfavourable_ttl))
  for _, member in ipairs(old) do
    redis.call('ZREM', kept, member)
    bytes = bytes - #member
  end
  local count = redis.call('ZCARD', kept)
  while count > 0 and (count > share.unfavourable_max or bytes > share.unfavourable_max_bytes) do
    bytes = bytes - #redis.call('ZPOPMIN', kept)[1]
    count = count - 1
  end
  redis.call('SET', size_key, bytes, 'EX', share.unfavourable_ttl)
  redis.call('EXPIRE', kept, share.unfavourable_ttl)
end

if #share.recent > 0 then
  redis.call('LPUSH', KEYS[8], unpack(share.recent))
  redis.call('LTRIM', KEYS[8], 0, share.recent_max - 1)
  redis.call('EXPIRE', KEYS[8], share.ttl_s)
end

keep_max(KEYS[2], 'last_event_s', share.last_event_s)
redis.call('HINCRBY', KEYS[2], 'events', share.events)
for version, seen in pairs(share.versions) do
  keep_max(KEYS[3], version, seen)
  redis.call('HSETNX', KEYS[6], version, share.first_minutes[version])
end
for _, k in ipairs({1, 2, 3, 6}) do
  redis.call('EXPIRE', KEYS[k], share.ttl_s)
end
return {0, matched}
