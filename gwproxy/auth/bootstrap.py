"""Bootstrap: the auth services of a running gateway, and its first admin.

``open_auth`` builds the token codec, the users service and the authenticator on the database
engine (and the guard, which throttles credential checks).
When no admin exists and ``auth.admin_password`` (or ``GWPROXY_ADMIN_PASSWORD``) is set, it
creates ``auth.admin_username`` with that password.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy import log
from gwproxy.auth.authenticator import Authenticator, Checks
from gwproxy.auth.passwords import dummy_hash
from gwproxy.auth.tokens import TokenCodec
from gwproxy.auth.users import UserService
from gwproxy.config import AuthConfig
from gwproxy.errors import Conflict

_log = log.get("gwproxy.auth")


async def ensure_admin(users: UserService, cfg: AuthConfig) -> None:
    if not cfg.admin_password or await users.count_admins() > 0:
        return
    try:
        user = await users.create_user(cfg.admin_username, cfg.admin_password, "admin")
    except Conflict:
        user = await users.find_user(cfg.admin_username)
        await users.update_user(user.id, role="admin", active=True)
        await users.set_password(user.id, cfg.admin_password)
    _log.info("first admin created from configuration", username=user.username)


@asynccontextmanager
async def open_auth(
    cfg: AuthConfig, engine: AsyncEngine, guard: Checks, demo: bool = False
) -> AsyncIterator[tuple[UserService, Authenticator]]:
    """The users service and the authenticator, with the first admin made if configured."""
    # Without auth (or in the demo) a missing secret is replaced by one that dies with the process.
    codec = TokenCodec(cfg, demo=demo or not cfg.enabled)
    users = UserService(engine, codec, cfg.refresh_expire_days)
    await dummy_hash()  # now, so that the first login for an unknown name takes no longer than the rest
    await ensure_admin(users, cfg)
    yield users, Authenticator(users, codec, cfg.key_cache_seconds, checks=guard)
