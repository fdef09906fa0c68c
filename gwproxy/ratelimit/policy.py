"""Policy: which limits apply to a request, and the buckets that enforce them.

Every admitted request of a signed-in principal takes from:
- the user's request bucket (``requests`` per ``window``; burst = ``requests``),
- the API key's own request bucket, when an admin gave that key limits of its own,
- the client address's request bucket (``ip_requests``, default the same as ``requests``),
- the user's token bucket (``tokens_per_minute``), by an estimate: ``max_tokens`` (or
  ``default_max_tokens``) plus the prompt's characters / 4, settled to the real usage afterwards;
and claims one of the user's ``concurrency`` slots while it runs. With auth off, the client
address stands in for the user. Defaults come from
configuration; an admin's per-user or per-key overrides come from the database, cached for
``ttl`` seconds, so a change reaches every replica within that time.

The client address is ``gwproxy.address.client_ip``'s.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.cache import TtlCache
from gwproxy.config import RateLimitConfig
from gwproxy.lax import lax_int
from gwproxy.principal import Principal
from gwproxy.ratelimit.bucket import Limit
from gwproxy.ratelimit.store import Slot
from gwproxy.store.tables import rate_limits


@dataclass(frozen=True, slots=True)
class Limits:
    requests: int
    window: float
    tokens_per_minute: int  # 0: unlimited
    concurrency: int  # 0: unlimited

    def public(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "window": self.window,
            "tokens_per_minute": self.tokens_per_minute,
            "concurrency": self.concurrency,
        }


OVERRIDABLE = ("requests", "window", "tokens_per_minute", "concurrency")


@dataclass(slots=True)
class Charge:
    """The buckets one request takes from, with its costs (what admission asks the store)."""

    keys: list[str]
    limits: list[Limit]
    costs: list[float]
    names: list[str]  # which limit each bucket is: requests, key, ip, tokens
    slot: Slot | None
    token_bucket: tuple[str, Limit] | None
    prompt_estimate: int
    estimate: int  # prompt and completion


@functools.lru_cache(maxsize=4096)
def _request_limit(limits: Limits) -> Limit:
    return Limit.per_window(limits.requests, limits.window)


def _chars(value: Any) -> int:
    """Characters of text in a prompt, message content or Responses API input (a token id: 4)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return 4
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        return _chars(value.get("content")) + _chars(value.get("text"))
    return 0


def estimate_tokens(body: dict[str, Any] | None, default_max_tokens: int, generates: bool = True) -> tuple[int, int]:
    """(prompt, completion) token estimates: a quarter of the prompt's characters (a token is
    ~4 characters), and the most the request may generate (``max_tokens`` and its newer names, or
    ``default_max_tokens``; times ``n``; 0 for a route that generates nothing)."""
    if body is None:
        return 0, default_max_tokens if generates else 0
    chars = _chars(body.get("messages")) + _chars(body.get("prompt")) + _chars(body.get("input"))
    chars += _chars(body.get("instructions"))
    if not generates:
        return chars // 4, 0
    asked = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    out = lax_int(asked) or default_max_tokens  # read as vLLM reads it: 5, 5.0, "5"
    return chars // 4, out * max(1, lax_int(body.get("n")) or 1)


class Policy:
    def __init__(self, cfg: RateLimitConfig, engine: AsyncEngine, ttl: float) -> None:
        self.cfg = cfg
        self.engine = engine
        self.ttl = ttl
        self.defaults = Limits(cfg.requests, cfg.window, cfg.tokens_per_minute, cfg.concurrency)
        self.ip_limit = Limit.per_window(cfg.ip_requests or cfg.requests, cfg.window)
        self.trusted = cfg.trusted_networks()
        self._cache: TtlCache[tuple[int, int | None], tuple[Limits, Limits | None]] = TtlCache()

    async def limits_for(self, principal: Principal) -> tuple[Limits, Limits | None]:
        """(the user's limits, the key's own limits or None), overrides applied."""
        cache_key = (principal.user_id, principal.key_id)
        now = time.monotonic()
        found, hit = self._cache.get(cache_key, now)
        if found and hit is not None:
            return hit
        user_changes: dict[str, Any] = {}
        key_changes: dict[str, Any] | None = None
        if principal.via != "anonymous":
            conds = [rate_limits.c.user_id == principal.user_id]
            if principal.key_id is not None:
                conds.append(rate_limits.c.key_id == principal.key_id)
            async with self.engine.connect() as conn:
                rows = (await conn.execute(select(rate_limits).where(or_(*conds)))).all()
            for row in rows:
                m = row._mapping
                changes = {f: m[f] for f in OVERRIDABLE if m[f] is not None}
                if m["user_id"] is not None:
                    user_changes = changes
                else:
                    key_changes = changes
        user = replace(self.defaults, **user_changes)
        key = replace(user, **key_changes) if key_changes is not None else None
        result = (user, key)
        self._cache.put(cache_key, result, now + self.ttl)
        return result

    def forget(self) -> None:
        """Drop cached overrides (this replica sees an admin's change at once; others within ttl)."""
        self._cache.clear()

    def plan(
        self, principal: Principal, ip: str, user: Limits, key: Limits | None, estimate: tuple[int, int] | None
    ) -> Charge:
        """The buckets of a request; ``estimate`` None: a route that is not charged tokens."""
        if principal.via == "anonymous":
            # Without auth nobody is a user: the address is the only identity, and its bucket
            # is the only request bucket (one shared "anonymous" bucket would throttle everyone).
            who = f"ip:{ip}"
            keys, limits, names = [f"gwrl:ip:{ip}:req"], [self.ip_limit], ["ip"]
        else:
            who = f"u{principal.user_id}"
            keys = [f"gwrl:{who}:req", f"gwrl:ip:{ip}:req"]
            limits = [_request_limit(user), self.ip_limit]
            names = ["requests", "ip"]
        if key is not None and principal.key_id is not None:
            keys.append(f"gwrl:k{principal.key_id}:req")
            limits.append(_request_limit(key))
            names.append("key")
        costs: list[float] = [1.0] * len(keys)
        token_bucket = None
        tpm = key.tokens_per_minute if key is not None and key.tokens_per_minute else user.tokens_per_minute
        if tpm and estimate is not None:
            token_bucket = (f"gwrl:{who}:tok", Limit.per_window(tpm, 60.0))
            keys.append(token_bucket[0])
            limits.append(token_bucket[1])
            costs.append(float(sum(estimate)))
            names.append("tokens")
        concurrency = key.concurrency if key is not None and key.concurrency else user.concurrency
        slot = Slot(f"gwrl:{who}:leases", concurrency) if concurrency else None
        prompt, total = (estimate[0], sum(estimate)) if estimate is not None else (0, 0)
        return Charge(keys, limits, costs, names, slot, token_bucket, prompt, total)


async def set_overrides(
    engine: AsyncEngine, *, user_id: int | None, key_id: int | None, values: dict[str, Any]
) -> None:
    """Replace the overrides of a user or a key (None values mean: the default)."""
    target = rate_limits.c.user_id == user_id if user_id is not None else rate_limits.c.key_id == key_id
    row = {f: values.get(f) for f in OVERRIDABLE}
    async with engine.begin() as conn:
        if all(v is None for v in row.values()):
            await conn.execute(delete(rate_limits).where(target))
            return
        result = await conn.execute(update(rate_limits).where(target).values(**row, updated_at=datetime.now(UTC)))
        if result.rowcount == 0:
            await conn.execute(
                insert(rate_limits).values(user_id=user_id, key_id=key_id, **row, updated_at=datetime.now(UTC))
            )
