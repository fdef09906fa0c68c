"""Redis store: the buckets of every replica in one Redis, updated atomically by Lua.

``ADMIT`` is the bucket arithmetic of ``bucket.take`` in Lua, on Redis's own clock (``TIME``),
so replicas with skewed clocks agree; one ``EVALSHA`` per request checks and takes from all of
its buckets and claims its concurrency slot. Buckets expire once they would be full again.

A concurrency slot is a lease: a member of the user's sorted set scored by when it ends (Redis
time + ``lease`` seconds). Admission first drops the ended ones, then counts. While the request
runs, this process renews all of its leases together every ``lease / 3`` seconds (one script
call); the release removes the member, retried with backoff when Redis does not answer. A
release that never arrives (a replica killed, Redis restarted or frozen past the retries) holds
the user out for one lease at most, never longer.

Connections: a pooled connection that went stale (Redis restarted) is retried on a fresh one
(``connect``: ``Retry`` on connection errors, health checks on idle connections) before the
command counts as failed, so a restart does not make every replica fall back at once.
When Redis really does not answer: with ``fail_open`` the request is decided by an in-process
``MemoryStore`` and ``gwproxy_ratelimit_backend_errors_total`` counts it; Redis is tried again
after ``RETRY_AFTER_FAILURE`` seconds. With ``fail_open = false`` the request is answered 503.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gwproxy import log
from gwproxy.errors import ServiceUnavailable
from gwproxy.metrics import Metrics
from gwproxy.ratelimit.bucket import Decision, Limit, Reading
from gwproxy.ratelimit.store import SLOT_FULL_RETRY, MemoryStore, Slot, Ticket

_log = log.get("gwproxy.ratelimit")

RETRY_AFTER_FAILURE = 1.0
RELEASE_BACKOFF = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds between the attempts of a failed release


def connect(url: str) -> redis.Redis:
    """A client whose commands survive a stale pooled connection: a connection error is retried
    twice on a new connection (10-100 ms apart); a timeout is not (a frozen Redis should cost one
    socket timeout, then the fallback)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        health_check_interval=5,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=2, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )


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
local lease = tonumber(ARGV[n * 3 + 3])
local slot_full = false
if allowed and slot_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', now)
  if redis.call('ZCARD', KEYS[n + 1]) >= slot_limit then slot_full = true; allowed = false end
end
local retry = 0
if allowed then
  for i = 1, n do
    levels[i] = levels[i] - costs[i]
    redis.call('HSET', KEYS[i], 't', tostring(levels[i]), 'u', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((caps[i] - levels[i]) / rates[i] * 1000) + 1000)
  end
  if slot_limit > 0 then
    redis.call('ZADD', KEYS[n + 1], now + lease, ARGV[n * 3 + 4])
    redis.call('PEXPIRE', KEYS[n + 1], math.ceil(lease * 1000) + 1000)
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
  redis.call('ZREM', KEYS[2], ARGV[4])
end
return 1
"""
)

# KEYS: lease sets; ARGV: the lease length, then one member per key. Only leases still held are
# extended (one already released or ended stays so).
RENEW = (
    PRELUDE
    + """
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
    redis.call('PEXPIRE', KEYS[i], math.ceil(lease * 1000) + 1000)
  end
end
return 1
"""
)


class BackendUnavailable(ServiceUnavailable):
    """Redis is down and the limiter fails closed."""

    code = "ratelimit_unavailable"


class RedisStore:
    def __init__(self, client: redis.Redis, metrics: Metrics, fail_open: bool = True, lease: float = 30.0) -> None:
        self.client = client
        self.metrics = metrics
        self.fail_open = fail_open
        self.lease = lease
        self.fallback = MemoryStore()
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._renew = client.register_script(RENEW)
        self._down_until = 0.0
        self._leases: dict[str, str] = {}  # lease id → its set, for the leases this process holds
        self._renewer: asyncio.Task[None] | None = None

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
        lease = os.urandom(8).hex() if slot is not None else ""
        args += [slot.limit if slot is not None else 0, repr(float(self.lease)), lease]
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
        if not allowed:
            return decision, None
        if slot is not None:
            self._leases[lease] = slot.key
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.create_task(self._renew_leases())
        return decision, Ticket(self, slot, lease)

    def settle_at_once(self, ticket: Ticket, key: str | None, limit: Limit | None, delta: float) -> bool:
        return False  # a round trip: ``settle``, in a task of its own

    async def settle(self, ticket: Ticket, key: str | None, limit: Limit | None, delta: float) -> None:
        """Charge the usage difference and release the slot's lease; a failure is retried (the
        lease ends by itself meanwhile, and this process stops renewing it at once)."""
        self._leases.pop(ticket.lease, None)
        if key is None or limit is None or not delta:
            if ticket.slot is None:
                return
            key, limit, delta = None, None, 0.0
        args: list[str | float] = [0, 1, 0, ticket.lease]
        if limit is not None:
            args = [repr(float(limit.capacity)), repr(float(limit.rate)), repr(float(delta)), ticket.lease]
        keys = [key or "", ticket.slot.key if ticket.slot else ""]
        for attempt, pause in enumerate((*RELEASE_BACKOFF, None)):
            try:
                await self._settle(keys=keys, args=args)
                return
            except (RedisError, OSError) as exc:
                self.metrics.count_ratelimit_backend_error()
                if pause is None:
                    _log.warning("rate-limit settle failed", error=f"{type(exc).__name__}: {exc}", attempts=attempt + 1)
                    return
                await asyncio.sleep(pause)

    async def _renew_leases(self) -> None:
        """Every lease / 3 seconds, extend every lease this process holds; ends when none is held."""
        while self._leases:
            await asyncio.sleep(self.lease / 3)
            held = list(self._leases.items())
            if not held:
                return
            try:
                await self._renew(keys=[k for _, k in held], args=[repr(float(self.lease)), *[m for m, _ in held]])
            except (RedisError, OSError) as exc:
                self.metrics.count_ratelimit_backend_error()
                _log.warning("rate-limit lease renewal failed", error=f"{type(exc).__name__}: {exc}", leases=len(held))

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
