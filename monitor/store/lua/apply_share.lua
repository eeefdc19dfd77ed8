-- Apply one model's share of a consumed batch, atomically and at most once.
--
-- KEYS[1] offsets hash (field "<topic>|<partition>" -> last applied offset: the replay guard)
-- KEYS[2] meta hash    (last_event_s, events)
-- KEYS[3] versions hash (version -> newest event time seen)
-- KEYS[4..] bucket hashes, in the order of share.buckets
-- ARGV[1] JSON share: {guard: [[field, min, max]...], last_event_s: "<float>", events: n,
--                      versions: {version: "<float>"}, ttl_s: n, buckets: [[expire_at, [field, incr, ...]]...]}
--
-- Returns {} when applied. When any partition of the share reaches back to an offset already
-- applied, nothing is written and the reply lists {field, stored_offset, ...} so the caller can
-- drop the replayed events and send the rest.
local share = cjson.decode(ARGV[1])

local conflicts = {}
for _, guard in ipairs(share.guard) do
  local stored = redis.call('HGET', KEYS[1], guard[1])
  if stored and tonumber(stored) >= guard[2] then
    conflicts[#conflicts + 1] = guard[1]
    conflicts[#conflicts + 1] = stored
  end
end
if #conflicts > 0 then
  return conflicts
end

for _, guard in ipairs(share.guard) do
  redis.call('HSET', KEYS[1], guard[1], string.format('%d', guard[3]))
end

for i, bucket in ipairs(share.buckets) do
  local key = KEYS[i + 3]
  local fields = bucket[2]
  for j = 1, #fields, 2 do
    redis.call('HINCRBY', key, fields[j], fields[j + 1])
  end
  redis.call('EXPIREAT', key, bucket[1])
end

local function keep_max(key, field, value)
  local stored = redis.call('HGET', key, field)
  if not stored or tonumber(stored) < tonumber(value) then
    redis.call('HSET', key, field, value)
  end
end

keep_max(KEYS[2], 'last_event_s', share.last_event_s)
redis.call('HINCRBY', KEYS[2], 'events', share.events)
for version, seen in pairs(share.versions) do
  keep_max(KEYS[3], version, seen)
end
for k = 1, 3 do
  redis.call('EXPIRE', KEYS[k], share.ttl_s)
end
return {}
