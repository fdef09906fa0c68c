"""Authenticator: from a request's credentials to a ``Principal``, with the caches that keep
the hot path free of database round trips.

Accepted: ``Authorization: Bearer <jwt or API key>``, ``api-key: <key>``, ``x-api-key: <key>``.
- A verified JWT is cached until it expires (verification is pure CPU, ~20 µs).
- A user's state (active, role, name) is cached ``key_cache_seconds``; so is an API key's
  lookup, including a miss; concurrent misses for one credential share one lookup. A revoked
  key, or a disabled user's JWT or key, is therefore refused
  at most that long after the change, on every replica.
Caches are bounded; the oldest entries go first.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from gwproxy import log
from gwproxy.auth.principal import Principal
from gwproxy.auth.tokens import Claims, InvalidToken, TokenCodec
from gwproxy.auth.users import UserService
from gwproxy.errors import ServiceUnavailable, Unauthorized

_log = log.get("gwproxy.auth")

K = TypeVar("K")
V = TypeVar("V")

MAX_ENTRIES = 50_000


class TtlCache(Generic[K, V]):
    """A bounded mapping whose entries expire at a monotonic deadline."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, now: float) -> tuple[bool, V | None]:
        hit = self._data.get(key)
        if hit is None or hit[1] <= now:
            return False, None
        return True, hit[0]

    def put(self, key: K, value: V, until: float) -> None:
        self._data[key] = (value, until)
        if len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


def credential(headers: Mapping[str, str]) -> str | None:
    """The presented credential, or None when the request carries none."""
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Malformed Authorization header: expected 'Bearer <token or API key>'")
        return value.strip()
    return headers.get("api-key") or headers.get("x-api-key")


class Authenticator:
    def __init__(
        self,
        users: UserService,
        codec: TokenCodec,
        ttl: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = users
        self.codec = codec
        self.ttl = ttl
        self.clock = clock
        self.monotonic = monotonic
        self._jwts: TtlCache[str, Claims] = TtlCache()
        self._keys: TtlCache[str, Principal | None] = TtlCache()
        self._users: TtlCache[int, Principal | None] = TtlCache()
        self._inflight: dict[object, asyncio.Future[Principal | None]] = {}

    async def _once(self, key: object, lookup: Callable[[], Awaitable[Principal | None]]) -> Principal | None:
        """One database lookup per credential at a time: when a cache entry expires under load,
        the requests that find it gone wait for the first one's answer instead of all asking."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            try:
                result = await lookup()
            except (SQLAlchemyError, OSError) as exc:  # the database is away: not the client's fault
                _log.warning("credential lookup failed", error=f"{type(exc).__name__}: {exc}")
                raise ServiceUnavailable(
                    "Credentials cannot be checked right now (the user database is unavailable); retry shortly",
                    code="auth_unavailable",
                ) from None
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        value = credential(headers)
        if value is None:
            raise Unauthorized(
                "No credentials: send 'Authorization: Bearer <API key or access token>' (the OpenAI SDK's api_key)"
            )
        mono = self.monotonic()
        if value.startswith("gwp-"):
            found, principal = self._keys.get(value, mono)
            if not found:
                principal = await self._once(value, lambda: self.users.resolve_key(value))
                self._keys.put(value, principal, mono + self.ttl)
            if principal is None:
                raise Unauthorized("Invalid, revoked or expired API key")
            return principal
        found, claims = self._jwts.get(value, mono)
        if not found or claims is None:
            now = self.clock()
            try:
                claims = self.codec.verify(value, now)
            except InvalidToken as exc:
                raise Unauthorized(f"Invalid access token: {exc}") from None
            self._jwts.put(value, claims, mono + (claims.expires_at - now))
        elif claims.expires_at <= self.clock():
            raise Unauthorized("Invalid access token: token expired")
        found, user = self._users.get(claims.user_id, mono)
        if not found:
            user_id = claims.user_id
            user = await self._once(user_id, lambda: self.users.principal(user_id))
            self._users.put(user_id, user, mono + self.ttl)
        if user is None:
            raise Unauthorized("This account is disabled or no longer exists")
        return user

    def forget(self) -> None:
        """Drop every cached decision (used after an admin changes a user on this replica)."""
        self._keys.clear()
        self._users.clear()
