-- Apply one model's share of a batch of access-log events, atomically and at most once.
--
-- KEYS[1] offsets hash (the replay guard)   KEYS[2] access facts: since (first event time)
-- KEYS[3] principal|resource -> first access (who is known to which data)
-- KEYS[4] principal|source_ip -> first login (who is known to log in from where)
-- KEYS[5] principal -> time of its last login from a new source
-- KEYS[6] recent access records (list, newest first, bounded)   KEYS[7..] buckets by index
-- ARGV[1] JSON share: {guard, minute_key, hour_key, version, now, minute_ttl, hour_ttl, ttl_s,
--   learning_s, follow_s, first_ts, buckets: [[key_index, expire_at, [field, incr, ...]]...],
--   stateful: [[ts, minute, principal, action, resource_type, resource, source_ip,
--   privileged]...], recent: [...], recent_max}
local share = cjson.decode(ARGV[1])

local refused = guard(KEYS[1], share.guard)
if refused then return refused end

apply_buckets(share.buckets)

-- "New" means nothing until the model has a learning period of access history.
redis.call('HSETNX', KEYS[2], 'since', share.first_ts)
local since = tonumber(redis.call('HGET', KEYS[2], 'since'))

local new_principal, new_source = 0, 0
for _, e in ipairs(share.stateful) do
  local ts, minute, principal, action, rtype = e[1], e[2], e[3], e[4], e[5]
  local learned = ts - since >= share.learning_s
  if rtype == 'training_data' then
    if redis.call('HSETNX', KEYS[3], principal .. '|' .. e[6], ts) == 1 and learned then
      bump(share, minute, 'snp|' .. principal)
      new_principal = new_principal + 1
    end
  end
  if action == 'login' and e[7] ~= '' then
    if redis.call('HSETNX', KEYS[4], principal .. '|' .. e[7], ts) == 1 and learned then
      redis.call('HSET', KEYS[5], principal, ts)
      new_source = new_source + 1
    end
  end
  if e[8] == 1 then
    local since_new = redis.call('HGET', KEYS[5], principal)
    if since_new and ts >= tonumber(since_new) and ts - tonumber(since_new) <= share.follow_s then
      bump(share, minute, 'snsp|' .. principal)
    end
  end
end

if #share.recent > 0 then
  for i = 1, #share.recent, 1000 do
    redis.call('LPUSH', KEYS[6], unpack(share.recent, i, math.min(i + 999, #share.recent)))
  end
  redis.call('LTRIM', KEYS[6], 0, share.recent_max - 1)
end
for k = 1, 6 do
  redis.call('EXPIRE', KEYS[k], share.ttl_s)
end
return {0, new_principal, new_source}
