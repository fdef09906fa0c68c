"""Authenticator: from a request's credentials to a ``Principal``, with the caches that keep
the hot path free of database round trips.

Accepted: ``Authorization: Bearer <jwt or API key>``, ``api-key: <key>``, ``x-api-key: <key>``.
- A verified JWT is cached until it expires (verification is pure CPU, ~20 µs).
- A user's state (active, role, name) is cached ``key_cache_seconds``; so is an API key's
  lookup, including a miss, and whether an access token's session (``sid``) is still open;
  concurrent misses for one credential share one lookup. A revoked key, a disabled user's JWT
  or key, or an access token of a session that was logged out or revoked for refresh-token
  reuse is therefore refused at most that long after the change, on every replica (at once on
  the replica that saw the logout).
- A credential that is not in the cache is checked, and only when it is invalid charged to the
  client's address by ``checks`` (the guard): a client presenting invalid keys or tokens is
  answered 429 after a few, and a valid credential from the same address is never refused for it.
Caches are bounded; the oldest entries go first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from gwproxy import log
from gwproxy.auth.tokens import Claims, InvalidToken, TokenCodec
from gwproxy.auth.users import UserService
from gwproxy.cache import TtlCache
from gwproxy.errors import ServiceUnavailable, Unauthorized
from gwproxy.principal import Principal

_log = log.get("gwproxy.auth")

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

MAX_ENTRIES = 50_000


class Checks(Protocol):
    """Charges invalid credentials to a client address (``ratelimit.guard.Guard``)."""

    async def check_failed(self, address: str) -> None:
        """Charge one; raise ``TooManyRequests`` past the address's allowance."""
        ...


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
        checks: Checks | None = None,
    ) -> None:
        self.users = users
        self.checks = checks
        self.codec = codec
        self.ttl = ttl
        self.clock = clock
        self.monotonic = monotonic
        self._jwts: TtlCache[str, Claims] = TtlCache()
        self._keys: TtlCache[str, Principal | None] = TtlCache()
        self._users: TtlCache[int, Principal | None] = TtlCache()
        self._sessions: TtlCache[str, bool] = TtlCache()
        self._inflight: dict[object, asyncio.Future[Any]] = {}

    async def _once(self, key: object, lookup: Callable[[], Awaitable[T]]) -> T:
        """One database lookup per credential at a time: when a cache entry expires under load,
        the requests that find it gone wait for the first one's answer instead of all asking."""
        pending = self._inflight.get(key)
        if pending is not None:
            shared: T = await asyncio.shield(pending)
            return shared
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
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

    async def authenticate(self, headers: Mapping[str, str], address: str = "") -> Principal:
        """The principal of the request's credential; ``address`` (the client's, resolved through
        trusted proxies) is what a check of an uncached credential is charged to."""
        value = credential(headers)
        if value is None:
            raise Unauthorized(
                "No credentials: send 'Authorization: Bearer <API key or access token>' (the OpenAI SDK's api_key)"
            )
        mono = self.monotonic()
        if value.startswith("gwp-"):
            found, principal = self._keys.get(value, mono)
            if not found:
                principal = await self._once(
                    value, lambda: self._checked(address, lambda: self._lookup_key(value, mono))
                )
            if principal is None:
                raise Unauthorized("Invalid, revoked or expired API key")
            return principal
        found, claims = self._jwts.get(value, mono)
        if found and claims is not None and claims.expires_at <= self.clock():
            raise Unauthorized("Invalid access token: token expired")
        if found and claims is not None:
            principal = await self._holder(claims, mono)
        else:
            principal = await self._once(
                ("jwt", value), lambda: self._checked(address, lambda: self._verify(value, mono))
            )
        if principal is None:
            raise Unauthorized("This account is disabled or no longer exists")
        return principal

    async def _checked(self, address: str, check: Callable[[], Awaitable[Principal | None]]) -> Principal | None:
        """Run ``check``; a credential it finds invalid is charged to ``address`` (the guard), one
        past the allowance answered 429. Called inside ``_once``: concurrent requests with one
        credential are charged once. The database away is not the client's fault: not charged."""
        try:
            principal = await check()
        except Unauthorized:
            if self.checks is not None:
                await self.checks.check_failed(address)
            raise
        if principal is None and self.checks is not None:
            await self.checks.check_failed(address)
        return principal

    async def _lookup_key(self, value: str, mono: float) -> Principal | None:
        principal = await self.users.resolve_key(value)
        self._keys.put(value, principal, mono + self.ttl)
        return principal

    async def _verify(self, value: str, mono: float) -> Principal | None:
        now = self.clock()
        try:
            claims = self.codec.verify(value, now)
        except InvalidToken as exc:
            raise Unauthorized(f"Invalid access token: {exc}") from None
        self._jwts.put(value, claims, mono + (claims.expires_at - now))
        return await self._holder(claims, mono)

    async def _holder(self, claims: Claims, mono: float) -> Principal | None:
        """The principal a verified token stands for, while its session is open."""
        session = claims.session
        found, open_ = self._sessions.get(session, mono)
        if not found:
            open_ = await self._session(session)
            self._sessions.put(session, bool(open_), mono + self.ttl)
        if not open_:
            raise Unauthorized("Invalid access token: its session was logged out or revoked")
        found, user = self._users.get(claims.user_id, mono)
        if not found:
            user_id = claims.user_id
            user = await self._once(user_id, lambda: self.users.principal(user_id))
            self._users.put(user_id, user, mono + self.ttl)
        return user

    async def _session(self, session: str) -> bool:
        return await self._once(("session", session), lambda: self.users.session_open(session))

    def forget_session(self, session: str) -> None:
        """This replica refuses the session's access tokens from now on (others within ``ttl``)."""
        self._sessions.put(session, False, self.monotonic() + self.ttl)

    def forget(self) -> None:
        """Drop every cached decision (used after an admin changes a user on this replica)."""
        self._keys.clear()
        self._users.clear()
        self._sessions.clear()
