-- Apply one model's share of a batch of labels, atomically and at most once.
--
-- KEYS[1] offsets hash (the replay guard, as for predictions)
-- KEYS[2] labels waiting for their prediction (hash request_id -> label)   KEYS[3] their expiry (zset)
-- KEYS[4] the model's totals hash   KEYS[5] its shapes hash (shape id -> [version, prefixes])
-- ARGV[1] JSON share: {guard, minute_key, hour_key, join_key, now, minute_ttl, hour_ttl, wait_until,
--   totals_key (4), totals_expire_at, shapes_key (5),
--   days: [day start, ...] (join hashes to look in, newest first),
--   labels: [[request digest, slot, label record], ...] (monitor/aggregates/joins.py)}
--
-- A label whose prediction is in a join hash is counted in that prediction's buckets and in the
-- totals, and the join record is removed (a second label for the same request is not counted
-- twice). Otherwise the label waits until `wait_until` for its prediction. Returns {0, matched, waiting, expired} or,
-- on a replay, {1, field, stored_offset, ...} without writing anything.
local share = cjson.decode(ARGV[1])

local refused = guard(KEYS[1], share.guard)
if refused then return refused end

local matched, waiting = 0, 0
for _, item in ipairs(share.labels) do
  local request_id, slot, label = item[1], item[2], item[3]
  local found = false
  for _, day in ipairs(share.days) do
    local key = string.format(share.join_key, day, slot)
    local rec = redis.call('HGET', key, request_id)
    if rec then
      apply_label(share, rec, label, day)
      redis.call('HDEL', key, request_id)
      matched = matched + 1
      found = true
      break
    end
  end
  if not found then
    redis.call('HSET', KEYS[2], request_id, label)
    redis.call('ZADD', KEYS[3], share.wait_until, request_id)
    waiting = waiting + 1
  end
end

-- Labels whose prediction never came: drop them once their wait is over (bounded work per call).
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', share.now, 'LIMIT', 0, 500)
for _, request_id in ipairs(expired) do
  redis.call('HDEL', KEYS[2], request_id)
  redis.call('ZREM', KEYS[3], request_id)
end
redis.call('EXPIRE', KEYS[1], share.ttl_s)
redis.call('EXPIRE', KEYS[2], share.ttl_s)
redis.call('EXPIRE', KEYS[3], share.ttl_s)
return {0, matched, waiting, #expired}
