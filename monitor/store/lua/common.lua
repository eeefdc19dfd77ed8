-- Helpers shared by every ingest script; the store prepends this file to each script body.
--
-- Every script is one atomic step on one model's keys. The keys it finds only in Redis (a
-- label's prediction, a new principal's buckets) are built from the patterns the store passes
-- (`share.minute_key`, `share.hour_key`, `share.join_key`: string.format with the version and
-- start, or the day), so no key shape is spelled here; they carry the same hash tag as the
-- declared KEYS, so a script never leaves its hash slot (it runs unchanged on Redis Cluster).

-- The replay guard: a share whose offsets reach back to ones already applied is refused whole.
-- Returns nil after recording the share's offsets, or the refusal the script returns as it is:
-- {1, field, stored_offset, ...} (the caller resends only the events after the stored offsets).
local function guard(offsets_key, offsets)
  local refused = {1}
  for _, g in ipairs(offsets) do
    local stored = redis.call('HGET', offsets_key, g[1])
    if stored and tonumber(stored) >= g[2] then
      refused[#refused + 1] = g[1]
      refused[#refused + 1] = stored
    end
  end
  if #refused > 1 then
    return refused
  end
  for _, g in ipairs(offsets) do
    redis.call('HSET', offsets_key, g[1], string.format('%d', g[3]))
  end
  return nil
end

local function keep_max(key, field, value)
  local stored = redis.call('HGET', key, field)
  if not stored or tonumber(stored) < tonumber(value) then
    redis.call('HSET', key, field, value)
  end
end

-- A version as it appears in a totals field: Python's `escape` (`%` first, then `|`), reversible.
local function escape(part)
  return (part:gsub('%%', '%%25'):gsub('|', '%%7C'))
end

-- The shapes a script has read (shape id -> {version, prefixes}, or false when it is not there).
local shapes_read = {}

local function shape_of(share, id)
  local shape = shapes_read[id]
  if shape == nil then
    local body = redis.call('HGET', KEYS[share.shapes_key], id)
    shape = body and cjson.decode(body) or false
    shapes_read[id] = shape
  end
  return shape
end

-- Count one label against the prediction it belongs to, in that prediction's own minute and
-- hour buckets (accuracy is kept at prediction time), and in the model's totals hash
-- (KEYS[share.totals_key], fields "<escaped version>|<bucket field>"). A bucket that has already
-- expired is skipped rather than re-created without its TTL; the totals count every label, late
-- ones too, and have their expiry pushed to `share.totals_expire_at` as ingest does.
-- rec: the compact join record of a prediction of the UTC day `day` (monitor/aggregates/joins.py):
--   "<shape id, 8 chars><minute of the day, 4 digits><positive: - 0 1><prediction>", the shape's
--   version and group field prefixes in KEYS[share.shapes_key]
-- label: "<positive: - 0 1><label>"
-- Counts nothing when the shape is gone, which the shapes' TTL rules out.
local function apply_label(share, rec, label, day)
  local shape = shape_of(share, rec:sub(1, 8))
  if not shape then return end
  local version, prefixes = shape[1], shape[2]
  local minute = day + 60 * tonumber(rec:sub(9, 12))
  local predicted, actual = rec:sub(13, 13), label:sub(1, 1)
  local hour = minute - minute % 3600
  local stats = {'lab'}
  if rec:sub(14) == label:sub(2) then stats[#stats + 1] = 'cor' end
  if actual == '1' then stats[#stats + 1] = 'apos' end
  if actual == '1' and predicted == '0' then stats[#stats + 1] = 'fn' end
  local fields = {}
  for _, prefix in ipairs({'', unpack(prefixes)}) do
    for _, stat in ipairs(stats) do
      fields[#fields + 1] = prefix .. stat
    end
  end
  local targets = {}
  if minute + share.minute_ttl > share.now then
    targets[#targets + 1] = {string.format(share.minute_key, version, minute), minute + share.minute_ttl}
  end
  if hour + share.hour_ttl > share.now then
    targets[#targets + 1] = {string.format(share.hour_key, version, hour), hour + share.hour_ttl}
  end
  for _, target in ipairs(targets) do
    for _, f in ipairs(fields) do
      redis.call('HINCRBY', target[1], f, 1)
    end
    redis.call('EXPIREAT', target[1], string.format('%d', target[2]))
  end
  local totals = KEYS[share.totals_key]
  local head = escape(version) .. '|'
  -- A label is as late as its prediction's minute is old (LATE_EDGES_S, predictions.py).
  local age, tier = share.now - (minute + 60), 0
  for i, edge in ipairs(share.late_edges) do
    if age > edge then tier = i end
  end
  for _, f in ipairs(fields) do
    redis.call('HINCRBY', totals, head .. f, 1)
    if tier > 0 then redis.call('HINCRBY', totals, head .. '~' .. tier .. '|' .. f, 1) end
  end
  redis.call('EXPIREAT', totals, string.format('%d', share.totals_expire_at))
end

-- HSET many field/value pairs without passing Lua's argument limit.
local function hset_many(key, flat)
  for i = 1, #flat, 1000 do
    redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat)))
  end
end

-- Add counters to bucket hashes named in KEYS: buckets = [[key_index, expire_at, [field, incr, ...]]...]
local function apply_buckets(buckets)
  for _, b in ipairs(buckets) do
    local key, fields = KEYS[b[1]], b[3]
    for j = 1, #fields, 2 do
      redis.call('HINCRBY', key, fields[j], fields[j + 1])
    end
    redis.call('EXPIREAT', key, b[2])
  end
end

-- Count one event whose bucket keys are known only in the script (it depends on history): the
-- minute and hour buckets of `share.version` that have not expired yet.
local function bump(share, minute, field)
  local hour = minute - minute % 3600
  local targets = {
    {string.format(share.minute_key, share.version, minute), minute + share.minute_ttl},
    {string.format(share.hour_key, share.version, hour), hour + share.hour_ttl},
  }
  for _, t in ipairs(targets) do
    if t[2] > share.now then
      redis.call('HINCRBY', t[1], field, 1)
      redis.call('EXPIREAT', t[1], string.format('%d', t[2]))
    end
  end
end
