"""Redis store: the buckets of every replica in one Redis, updated atomically by Lua.

``ADMIT`` is the bucket arithmetic of ``bucket.take`` in Lua, on Redis's own clock (``TIME``),
so replicas with skewed clocks agree; one ``EVALSHA`` per request checks and takes from all of
its buckets and claims its concurrency slot. Buckets expire once they would be full again;
slot counters expire an hour after their last use, so a crashed replica cannot leak slots
forever.

When Redis does not answer: with ``fail_open`` the request is decided by an in-process
``MemoryStore`` and ``gwproxy_ratelimit_backend_errors_total`` counts it; Redis is tried again
after ``RETRY_AFTER_FAILURE`` seconds. With ``fail_open = false`` the request is answered 503.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as redis
from redis.exceptions import RedisError

from gwproxy import log
from gwproxy.errors import ServiceUnavailable
from gwproxy.metrics import Metrics
from gwproxy.ratelimit.bucket import Decision, Limit, Reading
from gwproxy.ratelimit.store import SLOT_FULL_RETRY, MemoryStore, Slot, Ticket

_log = log.get("gwproxy.ratelimit")

RETRY_AFTER_FAILURE = 1.0

# Redis's clock, and ``bucket.level`` in Lua: both scripts start with it.
PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, cap, rate)
  local h = redis.call('HMGET', key, 't', 'u')
  if not h[1] then return cap end
  local elapsed = now - tonumber(h[2])
  if elapsed < 0 then elapsed = 0 end
  return math.min(cap, tonumber(h[1]) + elapsed * rate)
end
"""

ADMIT = (
    PRELUDE
    + """
local n = tonumber(ARGV[1])
local levels, caps, rates, costs = {}, {}, {}, {}
local allowed = true
for i = 1, n do
  local cap = tonumber(ARGV[(i - 1) * 3 + 2])
  local rate = tonumber(ARGV[(i - 1) * 3 + 3])
  local cost = tonumber(ARGV[(i - 1) * 3 + 4])
  if cost > cap then cost = cap end
  local lv = level(KEYS[i], cap, rate)
  levels[i], caps[i], rates[i], costs[i] = lv, cap, rate, cost
  if lv < cost then allowed = false end
end
local slot_limit = tonumber(ARGV[n * 3 + 2])
local slot_full = false
if allowed and slot_limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
  if used >= slot_limit then slot_full = true; allowed = false end
end
local retry = 0
if allowed then
  for i = 1, n do
    levels[i] = levels[i] - costs[i]
    redis.call('HSET', KEYS[i], 't', tostring(levels[i]), 'u', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((caps[i] - levels[i]) / rates[i] * 1000) + 1000)
  end
  if slot_limit > 0 then
    redis.call('INCR', KEYS[n + 1])
    redis.call('EXPIRE', KEYS[n + 1], 3600)
  end
elseif not slot_full then
  for i = 1, n do
    if levels[i] < costs[i] then
      local wait = (costs[i] - levels[i]) / rates[i]
      if wait > retry then retry = wait end
    end
  end
end
local out = {allowed and 1 or 0, tostring(retry), slot_full and 1 or 0}
for i = 1, n do out[#out + 1] = tostring(levels[i]) end
return out
"""
)

SETTLE = (
    PRELUDE
    + """
if KEYS[1] ~= '' then
  local cap, rate, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
  local lv = math.max(-cap, math.min(cap, level(KEYS[1], cap, rate) - delta))
  redis.call('HSET', KEYS[1], 't', tostring(lv), 'u', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((cap - lv) / rate * 1000) + 1000)
end
if KEYS[2] ~= '' then
  local v = redis.call('DECR', KEYS[2])
  if v <= 0 then redis.call('DEL', KEYS[2]) end
end
return 1
"""
)


class BackendUnavailable(ServiceUnavailable):
    """Redis is down and the limiter fails closed."""

    code = "ratelimit_unavailable"


class RedisStore:
    def __init__(self, client: redis.Redis, metrics: Metrics, fail_open: bool = True) -> None:
        self.client = client
        self.metrics = metrics
        self.fail_open = fail_open
        self.fallback = MemoryStore()
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._down_until = 0.0

    def _failed(self, exc: Exception) -> None:
        self.metrics.count_ratelimit_backend_error()
        if time.monotonic() >= self._down_until:
            _log.warning("rate-limit store unreachable", error=f"{type(exc).__name__}: {exc}", fail_open=self.fail_open)
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE
        if not self.fail_open:
            raise BackendUnavailable(
                "The rate limiter's store is unavailable and the gateway fails closed", retry_after=1
            ) from None

    async def admit(
        self, keys: Sequence[str], limits: Sequence[Limit], costs: Sequence[float], slot: Slot | None
    ) -> tuple[Decision, Ticket | None]:
        if time.monotonic() < self._down_until:
            if not self.fail_open:
                raise BackendUnavailable("The rate limiter's store is unavailable", retry_after=1)
            self.metrics.count_ratelimit_backend_error()
            return await self.fallback.admit(keys, limits, costs, slot)
        args: list[float | int | str] = [len(keys)]
        for lim, cost in zip(limits, costs, strict=True):
            args += [repr(float(lim.capacity)), repr(float(lim.rate)), repr(float(cost))]
        args.append(slot.limit if slot is not None else 0)
        try:
            raw = await self._admit(keys=[*keys, *([slot.key] if slot else [])], args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return await self.fallback.admit(keys, limits, costs, slot)
        allowed, retry, slot_full = bool(int(raw[0])), float(raw[1]), bool(int(raw[2]))
        levels = [float(v) for v in raw[3:]]
        readings = tuple(
            Reading(lim.capacity, max(0.0, lv), (lim.capacity - lv) / lim.rate if lim.rate > 0 else 0.0)
            for lim, lv in zip(limits, levels, strict=True)
        )
        if slot_full:
            retry = SLOT_FULL_RETRY
        decision = Decision(allowed, retry, readings)
        return decision, (Ticket(self, slot) if allowed else None)

    async def settle(self, ticket: Ticket, key: str | None, limit: Limit | None, delta: float) -> None:
        if key is None or limit is None or not delta:
            if ticket.slot is None:
                return
            key, limit, delta = None, None, 0.0
        args = [repr(float(limit.capacity)), repr(float(limit.rate)), repr(float(delta))] if limit else [0, 1, 0]
        try:
            await self._settle(keys=[key or "", ticket.slot.key if ticket.slot else ""], args=args)
        except (RedisError, OSError) as exc:
            self.metrics.count_ratelimit_backend_error()
            _log.warning("rate-limit settle failed", error=f"{type(exc).__name__}: {exc}")
