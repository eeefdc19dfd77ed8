-- Apply one model's share of a batch of model-registry events, atomically and at most once.
--
-- KEYS[1] offsets hash (the replay guard)   KEYS[2] "<version>|<sha256>" -> approval (hash)
-- KEYS[3] "<version>|<sha256>" -> the unapproved write or deployment seen (hash)
-- KEYS[4] deployments, newest first (list of JSON {version, sha256, ts, approved})
-- ARGV[1] JSON share: {guard, minute_key, hour_key, version, now, minute_ttl, hour_ttl, ttl_s,
--   events: [[event, version, sha256, ts, minute, actor, approval_ref, offset, escaped version]...]}
--
-- An artifact written or deployed whose checksum was never approved for that model and version is
-- counted as tampered ("sta|<version>|<sha256>") in the event's buckets and recorded in KEYS[3].
local share = cjson.decode(ARGV[1])

local refused = guard(KEYS[1], share.guard)
if refused then return refused end

local tampered, checked = 0, 0
for _, e in ipairs(share.events) do
  local kind, version, sha, ts = e[1], e[2], e[3], e[4]
  local id = version .. '|' .. sha
  if kind == 'approved' then
    redis.call('HSET', KEYS[2], id, cjson.encode({actor = e[6], approval_ref = e[7], ts = ts}))
  elseif kind == 'artifact_written' or kind == 'deployed' then
    local approved = redis.call('HEXISTS', KEYS[2], id) == 1
    checked = checked + 1
    if not approved then
      tampered = tampered + 1
      bump(share, e[5], 'sta|' .. e[9] .. '|' .. sha)
      redis.call('HSET', KEYS[3], id, cjson.encode(
        {event = kind, version = version, sha256 = sha, actor = e[6], ts = ts, offset = e[8]}))
    end
    if kind == 'deployed' then
      redis.call('LPUSH', KEYS[4], cjson.encode(
        {version = version, sha256 = sha, ts = ts, approved = approved, actor = e[6]}))
      redis.call('LTRIM', KEYS[4], 0, 999)
    end
  end
end
return {0, tampered, checked}
