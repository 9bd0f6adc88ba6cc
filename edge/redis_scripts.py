"""The Lua that keeps edge's fleet-wide counters in Redis, as data: two functions and the
two scripts built from them.

Why one module: a request by a key with rpm/tpm limits and a budget must read (and later
add to) both counters in one round trip (SPEC §7 "Speed"), so the scripts share their
pieces instead of copying them. `window_step` is the rpm/tpm sliding window of
`edge.ratelimit` (its docstring says what the hash holds); `budget_step` is the spend of
one budget window of `edge.budgets`. `LIMITS_LUA` runs `window_step` on KEYS[1] and, when
a KEYS[2] is given, `budget_step` on it in the same call; `BUDGET_LUA` runs `budget_step`
alone (a key with a budget and no limits). Keys used together carry the same ``{hash tag}``
(`tagged`), so they map to one slot and the scripts run on Redis Cluster too.
"""

from __future__ import annotations

__all__ = ["BUDGET_LUA", "BUDGET_STEP", "LIMITS_LUA", "WINDOW_S", "WINDOW_STEP", "tagged"]

#: Length of the rolling window, seconds. Buckets are one second wide.
WINDOW_S = 60
#: Seconds a window hash outlives its last write (one bucket plus a second of slack).
_KEY_TTL_S = WINDOW_S + 2

#: budget_step(key, op, nano, expire_at): op "check" returns the spend in nano-USD (0 for
#: a missing key); "charge" adds `nano` (a decimal string, so no double rounds it) and
#: returns the new total; "seed" sets `nano` unless the key exists and returns the total.
#: expire_at (epoch s, 0: never) is set on every write, so a window's key disappears when
#: the window ends.
BUDGET_STEP = """
local function budget_step(key, op, nano, expire_at)
  if op == 'check' then
    return tonumber(redis.call('GET', key) or '0')
  end
  local total
  if op == 'charge' then
    total = redis.call('INCRBY', key, nano)
  else
    redis.call('SET', key, nano, 'NX')
    total = tonumber(redis.call('GET', key))
  end
  if expire_at > 0 then redis.call('EXPIREAT', key, expire_at) end
  return total
end
"""

#: window_step(key, now, op, rpm, tpm, tokens, unsent, at): the rpm/tpm window in hash
#: `key`. now: seconds (negative: use Redis TIME); op "admit" or "charge"; rpm, tpm: the
#: limits (0: none); tokens: what "charge" adds; then `unsent` triples in ARGV from index
#: `at` (kind "r" or "t", age in whole seconds, amount): counts made while Redis was away,
#: added first, into the bucket that many seconds before this one. Returns 1, 0 when
#: admitted or charged, 0, wait_ms when refused.
WINDOW_STEP = """
local function window_step(key, now, op, rpm, tpm, tokens, unsent, at)
  if now < 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  local window = __WINDOW__
  local cur = math.floor(now)
  local first = cur - window + 1
  local h = redis.call('HGET', key, 'h')
  local head = first
  if h then head = tonumber(h) end
  if head < first then
    if first - head >= window then
      redis.call('DEL', key)
    else
      local rn = tonumber(redis.call('HGET', key, 'rn') or '0')
      local tn = tonumber(redis.call('HGET', key, 'tn') or '0')
      for b = head, first - 1 do
        local r = redis.call('HGET', key, 'r' .. b)
        if r then rn = rn - tonumber(r) end
        local t = redis.call('HGET', key, 't' .. b)
        if t then tn = tn - tonumber(t) end
        redis.call('HDEL', key, 'r' .. b, 't' .. b)
      end
      redis.call('HSET', key, 'rn', rn, 'tn', tn, 'h', first)
    end
    head = first
  end
  -- Writes go to this second's bucket, or to `head` if the clock stepped back past it, so
  -- every bucket stays within head .. head + window, where expiry and free_at look.
  local wb = math.max(cur, head)

  for i = 0, unsent - 1 do
    local kind = ARGV[at + 3 * i]
    local b = math.min(cur - tonumber(ARGV[at + 1 + 3 * i]), wb)
    local amount = tonumber(ARGV[at + 2 + 3 * i])
    if b >= first then
      if b < head then head = b end
      redis.call('HINCRBY', key, kind .. b, amount)
      redis.call('HINCRBY', key, kind .. 'n', amount)
    end
  end
  if unsent > 0 then
    redis.call('HSET', key, 'h', head)
    redis.call('EXPIRE', key, __TTL__)
  end

  if op == 'charge' then
    redis.call('HINCRBY', key, 't' .. wb, tokens)
    redis.call('HINCRBY', key, 'tn', tokens)
    redis.call('HSET', key, 'h', head)
    redis.call('EXPIRE', key, __TTL__)
    return 1, 0
  end

  local function free_at(kind, total, limit)
    -- the end of the bucket whose expiry brings `total` under `limit`
    for b = head, head + window - 1 do
      local v = redis.call('HGET', key, kind .. b)
      if v then
        total = total - tonumber(v)
        if total < limit then return b + window - now end
      end
    end
    return cur + window - now
  end
  local wait = 0
  if tpm > 0 then
    local tn = tonumber(redis.call('HGET', key, 'tn') or '0')
    if tn >= tpm then wait = math.max(wait, free_at('t', tn, tpm)) end
  end
  if rpm > 0 then
    local rn = tonumber(redis.call('HGET', key, 'rn') or '0')
    if rn >= rpm then wait = math.max(wait, free_at('r', rn, rpm)) end
  end
  if wait > 0 then
    return 0, math.ceil(wait * 1000)
  end
  if rpm > 0 then
    redis.call('HINCRBY', key, 'r' .. wb, 1)
    redis.call('HINCRBY', key, 'rn', 1)
    redis.call('HSET', key, 'h', head)
    redis.call('EXPIRE', key, __TTL__)
  end
  return 1, 0
end
""".replace("__WINDOW__", str(WINDOW_S)).replace("__TTL__", str(_KEY_TTL_S))

#: KEYS[1]: the key's window hash; KEYS[2] (optional): its budget window's string.
#: ARGV[1..6]: now, op, rpm, tpm, tokens, n; then n unsent triples (see `window_step`);
#: then, with KEYS[2], `budget_step`'s op, nano and expire_at. Returns {allowed, wait_ms,
#: spend}: spend is budget_step's answer, or -1 without KEYS[2] or when refused (a refused
#: request reaches no upstream, so its budget needs no look).
LIMITS_LUA = BUDGET_STEP + WINDOW_STEP + """
local unsent = tonumber(ARGV[6])
local allowed, wait_ms = window_step(KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]),
                                     tonumber(ARGV[4]), tonumber(ARGV[5]), unsent, 7)
local spend = -1
if KEYS[2] and allowed == 1 then
  local b = 7 + 3 * unsent
  spend = budget_step(KEYS[2], ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]))
end
return {allowed, wait_ms, spend}
"""

#: KEYS[1]: a budget window's string; ARGV: op, nano, expire_at. Returns the spend (nano).
BUDGET_LUA = BUDGET_STEP + """
return budget_step(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))
"""


def tagged(prefix: str, name: str) -> str:
    """``{prefix}{{name}}``: the part of a counter's Redis key that names its owner, as a
    hash tag, so every counter of one owner lands in one Cluster slot."""
    return f"{prefix}{{{name}}}"
