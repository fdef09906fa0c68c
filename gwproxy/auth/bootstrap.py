"""Bootstrap: the auth services of a running gateway, and its first admin.

``auth_context`` builds the token codec, the users service and the authenticator on the app's
database engine (and the guard that ``buckets_context`` made, which throttles credential checks).
When no admin exists and ``auth.admin_password`` (or ``GWPROXY_ADMIN_PASSWORD``) is set, it
creates ``auth.admin_username`` with that password.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gwproxy import log
from gwproxy.auth.authenticator import Authenticator
from gwproxy.auth.passwords import dummy_hash
from gwproxy.auth.tokens import TokenCodec
from gwproxy.auth.users import UserService
from gwproxy.config import AuthConfig
from gwproxy.errors import Conflict
from gwproxy.keys import AUTHENTICATOR, CONFIG, DATABASE, DEMO, GUARD, USERS

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


async def auth_context(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG].auth
    # Without auth (or in the demo) a missing secret is replaced by one that dies with the process.
    codec = TokenCodec(cfg, demo=app.get(DEMO, False) or not cfg.enabled)
    users = UserService(app[DATABASE], codec, cfg.refresh_expire_days)
    await dummy_hash()  # now, so that the first login for an unknown name takes no longer than the rest
    await ensure_admin(users, cfg)
    app[USERS] = users
    app[AUTHENTICATOR] = Authenticator(users, codec, cfg.key_cache_seconds, checks=app[GUARD])
    yield
