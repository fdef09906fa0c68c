"""Users: the accounts service — users, roles, API keys and refresh-token families.

Every method takes plain values and returns plain values (``User``, ``KeyInfo``, ``Principal``);
none builds an HTTP response. Failures are ``GatewayError``s the routes let through (404 for
what the caller may not see, 409 for a duplicate username). Times are UTC; ``now`` is injectable
for tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy import log
from gwproxy.auth import credentials
from gwproxy.auth.passwords import dummy_hash, hash_password, verify_password
from gwproxy.auth.tokens import TokenCodec
from gwproxy.errors import Conflict, InvalidRequest, NotFound, RefreshReused, Unauthorized
from gwproxy.principal import ROLES, Principal, Role
from gwproxy.store.tables import api_keys, refresh_tokens, users

_log = log.get("gwproxy.users")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class Unchanged:
    """The default of an update argument that may be set to None."""


UNCHANGED = Unchanged()


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: Role
    active: bool
    created_at: datetime
    capture: bool = True
    allowed_models: tuple[str, ...] | None = None  # None: any

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
            "capture": self.capture,
            "allowed_models": _listed(self.allowed_models),
        }


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    allowed_models: tuple[str, ...] | None = None  # None: as its user

    def public(self) -> dict[str, Any]:
        def iso(d: datetime | None) -> str | None:
            return None if d is None else d.isoformat()

        return {
            "id": self.id,
            "user_id": self.user_id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
            "allowed_models": _listed(self.allowed_models),
        }


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int

    def public(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_expires_in": self.refresh_expires_in,
        }


def _listed(models: tuple[str, ...] | None) -> list[str] | None:
    return None if models is None else list(models)


def _models(value: Any) -> tuple[str, ...] | None:
    """A stored ``allowed_models`` (a JSON list; NULL: no restriction)."""
    return None if value is None else tuple(str(v) for v in value)


def allowed(user: Any, key: Any = None) -> frozenset[str] | None:
    """The models a principal may name: its user's list narrowed by its key's (None: any)."""
    lists = [set(_models(v) or ()) for v in (user, key) if v is not None]
    if not lists:
        return None
    return frozenset(set.intersection(*lists))


def check_models(models: list[str] | None) -> list[str] | None:
    """An ``allowed_models`` as given: names without blanks, each once (None: no restriction)."""
    if models is None:
        return None
    names = list(dict.fromkeys(m.strip() for m in models))
    if any(not n or len(n) > 256 for n in names):
        raise InvalidRequest("allowed_models: each model name is 1-256 characters", param="allowed_models")
    return names


def _user(row: Row[Any]) -> User:
    m = row._mapping
    return User(
        m["id"],
        m["username"],
        m["role"],
        bool(m["active"]),
        cast(datetime, _aware(m["created_at"])),
        bool(m["capture"]),
        _models(m["allowed_models"]),
    )


def _key(row: Row[Any]) -> KeyInfo:
    m = row._mapping
    return KeyInfo(
        m["id"],
        m["user_id"],
        m["name"],
        m["prefix"],
        cast(datetime, _aware(m["created_at"])),
        _aware(m["expires_at"]),
        _aware(m["last_used_at"]),
        _aware(m["revoked_at"]),
        _models(m["allowed_models"]),
    )


def check_username(name: str) -> str:
    name = name.strip()
    if not (1 <= len(name) <= 64) or any(c.isspace() for c in name):
        raise InvalidRequest("usernames are 1-64 characters without spaces", param="username")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
    return role


class UserService:
    def __init__(
        self,
        engine: AsyncEngine,
        codec: TokenCodec,
        refresh_days: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.codec = codec
        self.refresh_lifetime = timedelta(days=refresh_days)
        self.clock = clock

    # -- users -------------------------------------------------------------------------------

    async def create_user(
        self, username: str, password: str, role: str = "user", allowed_models: list[str] | None = None
    ) -> User:
        username, role_ = check_username(username), check_role(role)
        models = check_models(allowed_models)
        hashed = await hash_password(password)
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    insert(users).values(
                        username=username,
                        password_hash=hashed,
                        role=role_,
                        active=True,
                        created_at=self.clock(),
                        allowed_models=models,
                    )
                )
                user_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        except IntegrityError:
            raise Conflict(f"user {username!r} already exists", param="username") from None
        _log.info("user created", user_id=user_id, username=username, role=role_)
        return await self.get_user(user_id)

    async def get_user(self, user_id: int) -> User:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        if row is None:
            raise NotFound(f"no user with id {user_id}")
        return _user(row)

    async def find_user(self, username: str) -> User:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).first()
        if row is None:
            raise NotFound(f"no user named {username!r}")
        return _user(row)

    async def list_users(self, *, after: int = 0, limit: int | None = None, prefix: str | None = None) -> list[User]:
        """By id: those after ``after``, ``limit`` of them (None: all), names starting with ``prefix``."""
        query = select(users).where(users.c.id > after).order_by(users.c.id).limit(limit)
        if prefix:
            query = query.where(users.c.username.startswith(prefix, autoescape=True))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_user(r) for r in rows]

    async def count_admins(self) -> int:
        async with self.engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(users).where(users.c.role == "admin"))
        return int(count or 0)

    async def update_user(
        self,
        user_id: int,
        *,
        role: str | None = None,
        active: bool | None = None,
        capture: bool | None = None,
        allowed_models: list[str] | Unchanged | None = UNCHANGED,
    ) -> User:
        """Change what is given; ``allowed_models=None`` lifts the restriction."""
        values: dict[str, Any] = {}
        if not isinstance(allowed_models, Unchanged):
            values["allowed_models"] = check_models(allowed_models)
        if capture is not None:
            values["capture"] = capture
        if role is not None:
            values["role"] = check_role(role)
        if active is not None:
            values["active"] = active
        if values:
            async with self.engine.begin() as conn:
                result = await conn.execute(update(users).where(users.c.id == user_id).values(**values))
                if result.rowcount == 0:
                    raise NotFound(f"no user with id {user_id}")
                if active is False:  # a disabled user's sessions end with it
                    await conn.execute(
                        update(refresh_tokens)
                        .where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
                        .values(revoked_at=self.clock())
                    )
            _log.info("user updated", user_id=user_id, **values)
        return await self.get_user(user_id)

    async def delete_user(self, user_id: int) -> User:
        """Delete a user with their keys, sessions, limits and conversations (the request log keeps
        their usage under the old id). The last active admin is not deleted."""
        user = await self.get_user(user_id)
        async with self.engine.begin() as conn:
            if user.role == "admin" and user.active:
                admins = await conn.scalar(
                    select(func.count()).select_from(users).where(users.c.role == "admin", users.c.active.is_(True))
                )
                if int(admins or 0) <= 1:
                    raise Conflict(f"{user.username} is the last active admin; make another admin first")
            await conn.execute(delete(users).where(users.c.id == user_id))
        _log.info("user deleted", user_id=user_id)
        return user

    async def set_password(self, user_id: int, password: str) -> None:
        hashed = await hash_password(password)
        async with self.engine.begin() as conn:
            result = await conn.execute(update(users).where(users.c.id == user_id).values(password_hash=hashed))
            if result.rowcount == 0:
                raise NotFound(f"no user with id {user_id}")
        _log.info("password changed", user_id=user_id)

    async def authenticate(self, username: str, password: str) -> User | None:
        """The active user with these credentials, else None (in about the same time either way)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).first()
        hashed = row._mapping["password_hash"] if row is not None else await dummy_hash()
        ok = await verify_password(hashed, password)
        if row is None or not ok:
            return None
        user = _user(row)
        return user if user.active else None

    async def principal(self, user_id: int, key_id: int | None = None) -> Principal | None:
        """The principal for an active user; None if the user is gone or disabled."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        if row is None or not row._mapping["active"]:
            return None
        m = row._mapping
        return Principal(
            m["id"], m["username"], m["role"], "api_key" if key_id else "jwt", key_id, m["capture"],
            allowed(m["allowed_models"]),
        )  # fmt: skip

    # -- API keys ----------------------------------------------------------------------------

    async def create_key(
        self, user_id: int, name: str = "", expires_days: float | None = None, allowed_models: list[str] | None = None
    ) -> tuple[str, KeyInfo]:
        """A new key (its value returned this once); ``allowed_models`` narrows what its user may name."""
        await self.get_user(user_id)
        secret = credentials.mint(credentials.API_KEY)
        now = self.clock()
        expires = now + timedelta(days=expires_days) if expires_days else None
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(api_keys).values(
                    user_id=user_id,
                    name=name,
                    prefix=secret.prefix,
                    key_hash=secret.digest,
                    created_at=now,
                    expires_at=expires,
                    allowed_models=check_models(allowed_models),
                )
            )
            key_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
        _log.info("api key created", user_id=user_id, key_id=key_id, prefix=secret.prefix)
        return secret.value, _key(row)

    async def list_keys(self, user_id: int | None, *, after: int = 0, limit: int | None = None) -> list[KeyInfo]:
        """By id: one user's keys (None: everyone's) after ``after``, ``limit`` of them (None: all)."""
        query = select(api_keys).where(api_keys.c.id > after).order_by(api_keys.c.id).limit(limit)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: int, owner: int | None) -> None:
        """Revoke a key; ``owner`` limits it to that user's keys (None: an admin, any key)."""
        cond = [api_keys.c.id == key_id]
        if owner is not None:
            cond.append(api_keys.c.user_id == owner)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys).where(*cond, api_keys.c.revoked_at.is_(None)).values(revoked_at=self.clock())
            )
            if result.rowcount == 0:
                exists = (await conn.execute(select(api_keys.c.id).where(*cond))).first()
                if exists is None:
                    raise NotFound(f"no API key with id {key_id}")
        _log.info("api key revoked", key_id=key_id)

    async def resolve_key(self, value: str) -> Principal | None:
        """The principal a presented API key stands for; None if unknown, revoked, expired or
        its user disabled. Records when the key was last used."""
        parts = credentials.split(value, credentials.API_KEY)
        if parts is None:
            return None
        prefix, presented = parts
        now = self.clock()
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        api_keys,
                        users.c.username,
                        users.c.role,
                        users.c.active,
                        users.c.capture,
                        users.c.allowed_models.label("user_models"),
                    )
                    .join(users, users.c.id == api_keys.c.user_id)
                    .where(api_keys.c.prefix == prefix)
                )
            ).first()
            if row is None or not credentials.matches(row._mapping["key_hash"], presented):
                return None
            m = row._mapping
            expires = _aware(m["expires_at"])
            if m["revoked_at"] is not None or (expires is not None and expires <= now) or not m["active"]:
                return None
            await conn.execute(update(api_keys).where(api_keys.c.id == m["id"]).values(last_used_at=now))
        models = allowed(m["user_models"], m["allowed_models"])
        return Principal(m["user_id"], m["username"], m["role"], "api_key", m["id"], m["capture"], models)

    # -- sessions: access + refresh tokens ----------------------------------------------------

    async def open_session(self, user: User) -> TokenPair:
        family = secrets.token_hex(16)
        refresh, pair = self._mint(user.id, user.role, family)
        async with self.engine.begin() as conn:
            await conn.execute(insert(refresh_tokens).values(**refresh))
        return pair

    def _mint(self, user_id: int, role: Role, family: str) -> tuple[dict[str, Any], TokenPair]:
        """A new token pair of session ``family``: the refresh token's row to insert, and the pair."""
        now = self.clock()
        access, claims = self.codec.issue(user_id, role, now.timestamp(), family)
        refresh = credentials.mint(credentials.REFRESH)
        row = {
            "user_id": user_id,
            "family": family,
            "prefix": refresh.prefix,
            "token_hash": refresh.digest,
            "created_at": now,
            "expires_at": now + self.refresh_lifetime,
        }
        pair = TokenPair(
            access,
            int(claims.expires_at - now.timestamp()),
            refresh.value,
            int(self.refresh_lifetime.total_seconds()),
        )
        return row, pair

    async def rotate(self, value: str) -> TokenPair:
        """Trade a refresh token for a new pair. A token presented a second time — after its
        rotation, or at the same moment as the rotation that wins — revokes its whole session:
        one of the two presenters is a thief, and the gateway cannot tell which.

        The claim and the new token are one transaction, so a revocation that follows a lost race
        sees (and revokes) the winner's new token too."""
        row = await self._refresh_row(value)
        m = row._mapping
        if m["used_at"] is None and m["revoked_at"] is None:
            principal = await self.principal(m["user_id"])
            if principal is None:
                raise Unauthorized("this account is disabled")
            minted, pair = self._mint(principal.user_id, principal.role, m["family"])
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(refresh_tokens)
                    .where(
                        refresh_tokens.c.id == m["id"],
                        refresh_tokens.c.used_at.is_(None),
                        refresh_tokens.c.revoked_at.is_(None),
                    )
                    .values(used_at=self.clock())
                )
                if result.rowcount == 1:
                    await conn.execute(insert(refresh_tokens).values(**minted))
                    return pair
        await self.revoke_session(m["family"])
        _log.warning("refresh token reused: session revoked", user_id=m["user_id"])
        raise RefreshReused(str(m["family"]))

    async def close_session(self, value: str) -> str:
        """Revoke the session of this refresh token (logout); returns the session id."""
        family = str((await self._refresh_row(value))._mapping["family"])
        await self.revoke_session(family)
        return family

    async def revoke_session(self, family: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.family == family, refresh_tokens.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )

    async def session_open(self, family: str) -> bool:
        """Whether the session still holds an unrevoked refresh token (its access tokens count)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(refresh_tokens.c.id)
                    .where(refresh_tokens.c.family == family, refresh_tokens.c.revoked_at.is_(None))
                    .limit(1)
                )
            ).first()
        return row is not None

    async def _refresh_row(self, value: str) -> Row[Any]:
        parts = credentials.split(value, credentials.REFRESH)
        if parts is None:
            raise Unauthorized("malformed refresh token")
        prefix, presented = parts
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(refresh_tokens).where(refresh_tokens.c.prefix == prefix))).first()
        if row is None or not credentials.matches(row._mapping["token_hash"], presented):
            raise Unauthorized("unknown refresh token")
        expires = _aware(row._mapping["expires_at"])
        if expires is not None and expires <= self.clock():
            raise Unauthorized("refresh token expired")
        return row
