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

The client address is the peer's, unless the peer is a trusted proxy: then the right-most
``X-Forwarded-For`` entry that is not itself a trusted proxy.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.auth.authenticator import TtlCache
from gwproxy.auth.principal import Principal
from gwproxy.config import RateLimitConfig
from gwproxy.ratelimit.bucket import Limit
from gwproxy.ratelimit.store import Slot
from gwproxy.store.tables import rate_limits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
class Plan:
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


def client_ip(peer: str | None, forwarded: str | None, trusted: Sequence[Network]) -> str:
    if peer is None:
        return "unknown"
    if not forwarded or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a forged or garbled entry: fall back to what we know
    return hops[0] if hops else peer


def _trusted(addr: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def estimate_tokens(body: dict[str, Any] | None, default_max_tokens: int) -> tuple[int, int]:
    """(prompt, completion) token estimates: a quarter of the prompt's characters (a token is
    ~4 characters), and max_tokens (times n)."""
    if body is None:
        return 0, default_max_tokens
    out = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    prompt = body.get("prompt") if messages is None else None
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) if isinstance(p, str) else 1 for p in prompt)
    return chars // 4, int(out if isinstance(out, int) else default_max_tokens) * max(1, n or 1)


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

    def plan(self, principal: Principal, ip: str, user: Limits, key: Limits | None, estimate: tuple[int, int]) -> Plan:
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
        if tpm:
            token_bucket = (f"gwrl:{who}:tok", Limit.per_window(tpm, 60.0))
            keys.append(token_bucket[0])
            limits.append(token_bucket[1])
            costs.append(float(sum(estimate)))
            names.append("tokens")
        concurrency = key.concurrency if key is not None and key.concurrency else user.concurrency
        slot = Slot(f"gwrl:{who}:inflight", concurrency) if concurrency else None
        return Plan(keys, limits, costs, names, slot, token_bucket, estimate[0], sum(estimate))


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
