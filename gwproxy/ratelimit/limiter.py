"""Limiter: admits or refuses a request against its buckets, and settles it afterwards.

``admit`` makes one store round trip (one Lua call with Redis) for all of a request's buckets
and its concurrency slot; a request refused for concurrency is told to retry after the typical
duration of the requests that hold slots here (a moving average, 1 s until one has finished), so
a client's retries land when a slot is likely free rather than while a long stream still runs;
``finish`` runs after the response — completed, failed or abandoned
by the client — in a task of its own, so a client that goes away cannot cancel the release of
its slot. ``close`` waits for those tasks at shutdown.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.config import RateLimitConfig
from gwproxy.errors import TooManyRequests
from gwproxy.metrics import Metrics
from gwproxy.principal import Principal
from gwproxy.ratelimit.bucket import Decision
from gwproxy.ratelimit.policy import Charge, Policy
from gwproxy.ratelimit.store import BucketStore, MemoryStore, Ticket
from gwproxy.trace import Trace

SLOT_EWMA = 0.2  # weight of the newest duration in the moving average
SLOT_RETRY_MAX = 60.0  # the longest Retry-After a concurrency refusal gives


@dataclass(slots=True)
class Admission:
    plan: Charge
    ticket: Ticket
    headers: dict[str, str]


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``450ms``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def headers_for(plan: Charge, decision: Decision) -> dict[str, str]:
    out: dict[str, str] = {}
    tightest = None
    for reading, name in zip(decision.readings, plan.names, strict=True):
        if name == "tokens":
            out["x-ratelimit-limit-tokens"] = str(int(reading.limit))
            out["x-ratelimit-remaining-tokens"] = str(int(reading.remaining))
            out["x-ratelimit-reset-tokens"] = duration(reading.reset_after)
        elif tightest is None or reading.remaining < tightest.remaining:
            tightest = reading
    if tightest is not None:
        out["x-ratelimit-limit-requests"] = str(int(tightest.limit))
        out["x-ratelimit-remaining-requests"] = str(int(tightest.remaining))
        out["x-ratelimit-reset-requests"] = duration(tightest.reset_after)
    return out


class Limiter:
    def __init__(self, policy: Policy, store: BucketStore, metrics: Metrics) -> None:
        self.policy = policy
        self.store = store
        self.metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()
        self.slot_seconds: float | None = None  # moving average of how long slot holders run

    async def admit(self, principal: Principal, ip: str, estimate: tuple[int, int] | None) -> Admission:
        """Admit the request or raise 429. A request whose token estimate exceeds the whole
        tokens-per-minute allowance could never be admitted: it is refused with
        ``x-should-retry: false`` (OpenAI SDKs then do not retry) instead of clamped and forgiven."""
        user, key = await self.policy.limits_for(principal)
        plan = self.policy.plan(principal, ip, user, key, estimate)
        if plan.token_bucket is not None and plan.estimate > plan.token_bucket[1].capacity:
            self.metrics.count_ratelimited("tokens")
            limit = int(plan.token_bucket[1].capacity)
            raise TooManyRequests(
                f"Request too large for tokens per min (TPM): Limit {limit}, Requested {plan.estimate}. "
                "Reduce the prompt or max_tokens to run successfully.",
                retry_after=60.0,
                headers={"x-should-retry": "false"},
            )
        decision, ticket = await self.store.admit(plan.keys, plan.limits, plan.costs, plan.slot)
        headers = headers_for(plan, decision)
        if not decision.allowed or ticket is None:
            which = self._refused_by(plan, decision)
            self.metrics.count_ratelimited(which)
            retry = decision.retry_after if math.isfinite(decision.retry_after) else 3600.0
            if which == "concurrency" and self.slot_seconds is not None:
                retry = min(max(retry, self.slot_seconds), SLOT_RETRY_MAX)
            headers["retry-after-ms"] = str(math.ceil(retry * 1000))
            raise TooManyRequests(
                f"Rate limit reached ({which}): retry in {duration(retry)}", retry_after=retry, headers=headers
            )
        return Admission(plan, ticket, headers)

    @staticmethod
    def _refused_by(plan: Charge, decision: Decision) -> str:
        costs = dict(zip(plan.names, plan.costs, strict=True))
        for reading, name in zip(decision.readings, plan.names, strict=True):
            if reading.remaining < min(costs[name], reading.limit):
                return name
        return "concurrency"

    def finish(self, admission: Admission, trace: Trace) -> None:
        """Settle real token usage and release the slot: at once in memory, in a task of its
        own for Redis. Nothing to do (no token limit, no slot): nothing is done."""
        plan = admission.plan
        if plan.token_bucket is None and plan.slot is None:
            return
        if plan.slot is not None:
            took = time.perf_counter() - trace.started
            last = self.slot_seconds
            self.slot_seconds = took if last is None else last + SLOT_EWMA * (took - last)
        key, limit = plan.token_bucket if plan.token_bucket else (None, None)
        if admission.ticket.store.settle_at_once(admission.ticket, key, limit, self._delta(plan, trace)):
            return
        task = asyncio.create_task(self._settle(admission, trace))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    def _delta(plan: Charge, trace: Trace) -> float:
        """Real usage minus the estimate that was taken at admission."""
        if plan.token_bucket is None:
            return 0.0
        if trace.prompt_tokens is not None:
            return (trace.prompt_tokens + (trace.completion_tokens or 0)) - plan.estimate
        if trace.stream_events:  # cut short: what was generated, roughly a token an event
            return plan.prompt_estimate + trace.stream_events - plan.estimate
        return 0.0

    async def _settle(self, admission: Admission, trace: Trace) -> None:
        plan = admission.plan
        key, limit = plan.token_bucket if plan.token_bucket else (None, None)
        await admission.ticket.store.settle(admission.ticket, key, limit, self._delta(plan, trace))

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


@asynccontextmanager
async def open_buckets(cfg: RateLimitConfig, metrics: Metrics) -> AsyncIterator[BucketStore]:
    """The bucket store: Redis when ``ratelimit.redis_url`` is set (replicas share it), else in
    process. The login/credential guard and the limiter both take from it."""
    if not cfg.redis_url:
        yield MemoryStore()
        return
    from gwproxy.ratelimit.redis_store import RedisStore, connect

    client = connect(cfg.redis_url)
    store = RedisStore(client, metrics, fail_open=cfg.fail_open, lease=cfg.lease_seconds)
    try:
        yield store
    finally:
        await store.close()
        await client.aclose()


@asynccontextmanager
async def open_limiter(
    cfg: RateLimitConfig, engine: AsyncEngine, buckets: BucketStore, metrics: Metrics, key_cache_seconds: float
) -> AsyncIterator[Limiter]:
    """The limiter: overrides from the database (cached ``key_cache_seconds``), buckets in the store;
    on close it waits for the settlements still in flight."""
    limiter = Limiter(Policy(cfg, engine, key_cache_seconds), buckets, metrics)
    try:
        yield limiter
    finally:
        await limiter.close()
