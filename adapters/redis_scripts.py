"""The Lua scripts the Redis store runs: each an all-or-nothing write (shared by the
synchronous store and the asyncio Decide/Feedback I/O)."""

from __future__ import annotations

INDEX_ENTRY = """
local function index_entry(stream, index, id, ttl)
  redis.call('ZADD', index, string.match(id, '^%d+'), id)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if first then  -- entries trimmed from the log leave the index too
    redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. string.match(first[1], '^%d+'))
  end
  redis.call('EXPIRE', index, ttl)
end
"""
"""Index a learning-log entry under its user (a sorted set by the entry's time, for
ForgetProfile), dropping the ids of entries the log no longer holds, so an active
customer's index stays as long as the log, not as long as their history."""

COMMIT_FEEDBACK = INDEX_ENTRY + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local profile = redis.call('GET', KEYS[3])
if string.sub(ARGV[2], 1, 1) == '0' then
  if profile then return 0 end
elseif profile ~= string.sub(ARGV[2], 2) then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then ttl = tonumber(ARGV[6]) * 1000 end
redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
if ARGV[4] ~= '' then
  if ARGV[10] ~= '0' then
    redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[10])
  else
    redis.call('SET', KEYS[3], ARGV[4])
  end
end
local i = 12
for _ = 1, tonumber(ARGV[11]) do
  redis.call('HINCRBYFLOAT', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
index_entry(KEYS[4], KEYS[5], redis.call('XADD', KEYS[4], '*', 'e', ARGV[8]), ARGV[7])
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[6], now + math.ceil(ttl / 1000), ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. now)
local keep = math.max(tonumber(ARGV[7]), math.ceil(ttl / 1000))
if redis.call('TTL', KEYS[6]) < keep then redis.call('EXPIRE', KEYS[6], keep) end
redis.call('SET', KEYS[2], ARGV[5], 'PX', ttl)
return 1
"""
"""A feedback's effects, all or nothing, if what they were computed from is unchanged
(compare-and-set). KEYS: decision, idempotency key, profile, learning stream, the user's
log-entry and key indexes (sorted sets: entry time, key expiry; what has gone leaves
them), then the arm hashes. ARGV: the decision as read, the profile
as read ("0" = none, else "1" and its bytes), their new values ("" = profile
unchanged), fingerprint, key TTL (used only when the decision has none: the key
otherwise lives as long as its decision), index TTL, learning event, key name, the profile's
retention in seconds ("0": for ever), the number of arm increments, then (key index,
field, delta) for each. Returns 1, or 0 on a conflict."""

CHANGE_ITEMS = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[2])
end
local version = redis.call('INCR', KEYS[2])
for i = 3, #ARGV, 2 do
  local id, item = ARGV[i], ARGV[i + 1]
  if item == '!' then
    item = ''
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
  elseif item == '' then
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZADD', KEYS[5], version, id)
  else
    local held = redis.call('HGET', KEYS[1], id)
    if not held or held == '' then
      redis.call('ZADD', KEYS[4], version, id)
      redis.call('ZREM', KEYS[5], id)
    end
  end
  redis.call('HSET', KEYS[1], id, item)
  redis.call('ZADD', KEYS[3], version, id)
end
local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', version - tonumber(ARGV[1]),
                       'WITHSCORES', 'LIMIT', 0, 1000)
for j = 1, #old, 2 do
  redis.call('HDEL', KEYS[1], old[j])
  redis.call('ZREM', KEYS[3], old[j])
  redis.call('ZREM', KEYS[5], old[j])
end
if #old > 0 then
  redis.call('SET', KEYS[6], old[#old])
end
return version
"""
"""Catalogue changes (ARGV: how many versions a removal's mark is kept, the version to
start from should there be none (an epoch: a wiped store's versions are not its old
ones), then id, item, ...; an empty item is a removal, ``!`` one whose mark is kept for
good) under a new
version, each id indexed by it, an item added (not held, or removed) by the version it
was added at, a removed one by the version it was removed at; then the marks of
removals older than the horizon deleted (a thousand at a time) and the newest of their
versions noted. KEYS: the items hash, the version, the version index, the added-at
index, the removed-at index, the newest version whose marks are deleted."""

LOG_ENTRY = INDEX_ENTRY + """
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1])
index_entry(KEYS[1], KEYS[2], id, ARGV[2])
return id
"""
"""A learning-log entry and its place in the user's index (for ForgetProfile)."""

UPDATE_PROFILES = INDEX_ENTRY + """
local replies = {}
for i = 2, #KEYS, 2 do
  local a = i / 2 * 3
  local current = redis.call('GET', KEYS[i])
  local same
  if string.sub(ARGV[a], 1, 1) == '0' then
    same = not current
  else
    same = current == string.sub(ARGV[a], 2)
  end
  if same then
    if ARGV[2] ~= '0' then
      redis.call('SET', KEYS[i], ARGV[a + 1], 'EX', ARGV[2])
    else
      redis.call('SET', KEYS[i], ARGV[a + 1])
    end
    if ARGV[a + 2] ~= '' then
      index_entry(KEYS[1], KEYS[i + 1], redis.call('XADD', KEYS[1], '*', 'e', ARGV[a + 2]),
                  ARGV[1])
    end
    replies[#replies + 1] = 1
  else
    replies[#replies + 1] = 0
  end
end
return replies
"""
"""Profile updates (TrackEvent's), each applied if the profile is as it was read
(compare-and-set), with its learning-log entry indexed under its user. KEYS: the
learning stream, then per update the profile and the user's log-entry index. ARGV: the
index's TTL, the profiles' retention in seconds ("0": for ever), then per update the
profile as read ("0" = none, else "1" and its bytes),
the new profile and the log entry ("" = none). Returns per update 1 (applied) or 0 (a
conflict: read again and retry)."""

NAMES_LISTS = """
local function names_lists()
  local lists = tonumber(ARGV[3])
  for i = 1, lists do
    local need = tonumber(ARGV[3 + i * 2])
    local left = redis.call('TTL', KEYS[i])
    if left == -2 or (left >= 0 and left < need) then
      redis.call('SET', KEYS[i], ARGV[2 + i * 2], 'EX', need + 86400)
    end
  end
  return 4 + lists * 2
end
"""
"""Write the feature names lists (KEYS[1..n], ARGV[3] = n, then per list the list and the
seconds it must live) that are missing or due to expire too soon; returns the index of
the first ARGV after them."""

SAVE_DECISIONS = NAMES_LISTS + """
local now, lists = tonumber(ARGV[1]), tonumber(ARGV[3])
local base = names_lists() - 1
for i = lists + 1, #KEYS, 2 do
  local a = base + (i - lists - 1) * 2
  redis.call('SET', KEYS[i], ARGV[a + 1], 'EX', ARGV[a + 2])
  redis.call('ZADD', KEYS[i + 1], now + tonumber(ARGV[a + 2]), ARGV[a + 4])
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 1], '-inf', ARGV[2])
  if redis.call('TTL', KEYS[i + 1]) < tonumber(ARGV[a + 3]) then
    redis.call('EXPIRE', KEYS[i + 1], ARGV[a + 3])
  end
end
return (#KEYS - lists) / 2
"""
"""Decision records and their places in their users' indexes, in one command (redis-py
spends ~10 µs of client CPU per pipelined command: four per record cost 55 µs, this 14),
with the feature names lists they refer to (``compact`` records,
:mod:`engine.feature_names`): a list is written when missing or due to expire before the
longest-lived record of this command that refers to it (then to live a day longer), so a
record is never stored without its names, whatever happened to Redis before.
KEYS: the names lists' keys, then per record its key and its user's decision index.
ARGV: now, the index's lower bound ("(" and a time: ids that expired before it leave),
the number of names lists, per list: the list and the seconds it must live, then per
record: the record, its TTL, the index's TTL (at least: an index is never made to expire
before an id it holds, whose placement may take feedback for longer) and the decision id
(scored by its expiry)."""

SAVE_SHOWN_DECISIONS = NAMES_LISTS + INDEX_ENTRY + """
local now = tonumber(ARGV[1])
local a = names_lists()
local retention, count = ARGV[a], tonumber(ARGV[a + 1])
a = a + 2
local stream = KEYS[tonumber(ARGV[3]) + 1]
local k = tonumber(ARGV[3]) + 2
local clock = tonumber(redis.call('TIME')[1])
local replies = {}
for r = 1, count do
  local increments = tonumber(ARGV[a + 10])
  local current = redis.call('GET', KEYS[k + 3])
  local same
  if string.sub(ARGV[a + 4], 1, 1) == '0' then
    same = not current
  else
    same = current == string.sub(ARGV[a + 4], 2)
  end
  if same and redis.call('EXISTS', KEYS[k], KEYS[k + 2]) == 0 then
    local ttl, keep = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 9])
    redis.call('SET', KEYS[k], ARGV[a], 'EX', ttl)
    redis.call('ZADD', KEYS[k + 1], now + ttl, ARGV[a + 3])
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', ARGV[2])
    if redis.call('TTL', KEYS[k + 1]) < tonumber(ARGV[a + 2]) then
      redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 2])
    end
    if ARGV[a + 5] ~= '' then
      if retention ~= '0' then
        redis.call('SET', KEYS[k + 3], ARGV[a + 5], 'EX', retention)
      else
        redis.call('SET', KEYS[k + 3], ARGV[a + 5])
      end
    end
    local i = a + 11
    for _ = 1, increments do
      redis.call('HINCRBYFLOAT', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
      i = i + 3
    end
    index_entry(stream, KEYS[k + 4], redis.call('XADD', stream, '*', 'e', ARGV[a + 8]), keep)
    redis.call('ZADD', KEYS[k + 5], clock + ttl, ARGV[a + 7])
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 5], '-inf', '(' .. clock)
    if redis.call('TTL', KEYS[k + 5]) < math.max(keep, ttl) then
      redis.call('EXPIRE', KEYS[k + 5], math.max(keep, ttl))
    end
    redis.call('SET', KEYS[k + 2], ARGV[a + 6], 'EX', ttl)
    replies[r] = 1
  elseif same then
    replies[r] = 0
  elseif current then
    replies[r] = '1' .. current
  else
    replies[r] = '0'
  end
  a = a + 11 + 3 * increments
  k = k + 6
end
return replies
"""
"""New decision records each stored with its first outcome's effects (DecideBatch's
``record_impressions``): what ``SAVE_DECISIONS`` then ``COMMIT_FEEDBACK`` write, the same
keys and values, in one script, each record all or nothing: one whose customer's profile
is no longer as read is not stored at all, and its reply is the profile as it is now
(the caller decides again on it): "0" (none) or "1" and its bytes; one whose record or
key exists is not stored either (0: the caller stores it plainly and commits its
outcome as a Feedback). KEYS: the names lists,
the learning stream, then per record its key, its user's decision index, the outcome's
idempotency key, the profile, the user's log-entry and key indexes; then the arm hashes.
ARGV: now, the decision indexes' lower bound, the number of names lists and per list the
list and the seconds it must live (as ``SAVE_DECISIONS``), the profiles' retention in
seconds ("0": for ever), the number of records, then per record: the record with its
outcome, its TTL, its decision index's TTL, its id, the profile as read ("0" = none,
else "1" and its bytes), the new profile ("" = unchanged), the key's fingerprint, the
key's name, the learning event, the log-entry index's TTL, the number of arm increments
and (key index, field, delta) for each. Returns per record 1 (stored), the profile as
it is now (not stored: it changed) or 0 (not stored: the record or key exists)."""

CLAIM_REQUESTS = """
local held = {}
for i = 1, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if not value then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
    value = false
  end
  held[i] = value
end
return held
"""
"""Decide request ids' claims: for each key, what is kept under it, or (nil) after
keeping its claim there. KEYS: the ids' keys. ARGV: the claims' time to live in ms,
then each key's claim. (``SET NX GET`` would need Redis 7.0, and one command each.)"""

SAVE_ANSWERS = """
local now = tonumber(redis.call('TIME')[1])
for i = 1, #KEYS, 2 do
  local a = (i - 1) / 2 * 3
  local keep = math.ceil(tonumber(ARGV[a + 2]) / 1000)
  redis.call('SET', KEYS[i], ARGV[a + 1], 'PX', ARGV[a + 2])
  redis.call('ZADD', KEYS[i + 1], now + keep, ARGV[a + 3])
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 1], '-inf', '(' .. now)
  if redis.call('TTL', KEYS[i + 1]) < keep then redis.call('EXPIRE', KEYS[i + 1], keep) end
end
return #KEYS / 2
"""
"""Decide request ids' answers, each in place of its claim and indexed with its
customer's feedback keys (sorted by expiry: ForgetProfile deletes what the index names,
and what has expired leaves it). KEYS: per answer its key and its user's key index.
ARGV: per answer the answer, its TTL in ms, its name in the index."""

MAX_COMMIT_ATTEMPTS = 50
"""Reads-then-compare-and-set attempts of one feedback before it answers UNAVAILABLE."""


HOLD_LEASE = """
-- KEYS[1] the lease; ARGV[1] who asks, ARGV[2] its time to live in ms.
-- Renewed when ARGV[1] holds it, taken when nobody does: 1; else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""

RELEASE_LEASE = """
-- KEYS[1] the lease; ARGV[1] who lets it go (only its holder can).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

MARK_SPLIT = """
-- KEYS[1] the experiment's split mark, KEYS[2] its arm counters; ARGV[1] the split served.
-- Another split before: each arm's exposures so far become the new phase's baseline.
local seen = redis.call('HGET', KEYS[1], '=')
if seen == ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '=', ARGV[1])
if seen then
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, -7) == ':trials' and not string.find(name, '@', 1, true) then
      redis.call('HSET', KEYS[1], string.sub(name, 1, -8), fields[i + 1])
    end
  end
end
return 1
"""
"""engine.ports.Store.mark_split: the split's fingerprint under ``=`` and, when it
replaced another, each arm's exposures (its all-time ``trials``) at that moment."""
