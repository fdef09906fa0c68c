"""Routes of /api/auth (login, refresh, logout, me, API keys) and /api/admin/users.

Thin: validate the body, call ``UserService``, render. A user manages their own keys; an admin
may name any ``user_id``. Another user's key answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gwproxy import log
from gwproxy.address import client_ip
from gwproxy.auth import schemas
from gwproxy.auth.users import UNCHANGED
from gwproxy.bodies import identifier, json, load
from gwproxy.errors import Forbidden, InvalidRequest, NotFound, RefreshReused, Unauthorized
from gwproxy.keys import AUTHENTICATOR, CONFIG, GUARD, PRINCIPAL, USERS
from gwproxy.operations import Access, operation
from gwproxy.principal import Principal, require_admin

_log = log.get("gwproxy.auth")


MAX_PAGE = 1000
PAGE = {"limit": f"1 to {MAX_PAGE} (default 100)", "cursor": "next_cursor of the previous page"}


def _page(request: web.Request) -> tuple[int, int]:
    """(the id after which the page starts, its size) from ``cursor`` and ``limit``."""
    limit = identifier(request.query.get("limit", "100"), "limit")
    if limit is None or not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_PAGE}", param="limit")
    raw = request.query.get("cursor") or "0"
    after = identifier(raw, "cursor")
    if after is None:
        raise InvalidRequest("'cursor' is not a cursor this API gave out", param="cursor")
    return after, limit


def _listed(items: list[dict[str, Any]], limit: int) -> web.Response:
    """A page: ``limit + 1`` rows were asked for, the last one only says there are more."""
    more = len(items) > limit
    items = items[:limit]
    cursor = str(items[-1]["id"]) if more else None
    return json({"object": "list", "data": items, "has_more": more, "next_cursor": cursor})


def _int(request: web.Request, name: str) -> int:
    value = identifier(request.match_info[name], name)
    if value is None:
        raise NotFound(f"no such {name}")
    return value


@operation("Sign in: an access token and a refresh token", "auth", body=schemas.Login, answer=schemas.TokenPair,
           access=Access.PUBLIC, errors=(400, 401, 429))  # fmt: skip
async def login(request: web.Request) -> web.Response:
    """The attempt is reserved with the guard before the password is checked (``ratelimit.guard``
    says how attempts are counted per username, address and both)."""
    body = await load(request, schemas.Login())
    username, password = body["username"], body["password"]
    guard = request.app[GUARD]
    trusted = request.app[CONFIG].ratelimit.trusted_networks()
    address = client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)
    ticket = await guard.reserve_login(username, address)
    user = await request.app[USERS].authenticate(username, password)
    if user is None:
        _log.info("login failed", username=username, remote=address)
        raise Unauthorized("Wrong username or password", code="invalid_credentials")
    await guard.login_succeeded(ticket, username, address)
    pair = await request.app[USERS].open_session(user)
    _log.info("login", user_id=user.id)
    return json(pair.public())


@operation("Trade a refresh token for a new pair", "auth", body=schemas.Refresh, answer=schemas.TokenPair,
           access=Access.PUBLIC, errors=(400, 401))  # fmt: skip
async def refresh(request: web.Request) -> web.Response:
    body = await load(request, schemas.Refresh())
    try:
        pair = await request.app[USERS].rotate(body["refresh_token"])
    except RefreshReused as reused:  # the session's access tokens die with it, as at a logout
        request.app[AUTHENTICATOR].forget_session(reused.session)
        raise
    return json(pair.public())


@operation("End a session (revoke its refresh token)", "auth", body=schemas.Refresh, status=204,
           access=Access.PUBLIC, errors=(400,))  # fmt: skip
async def logout(request: web.Request) -> web.Response:
    body = await load(request, schemas.Refresh())
    session = await request.app[USERS].close_session(body["refresh_token"])
    request.app[AUTHENTICATOR].forget_session(session)
    return web.Response(status=204)


@operation("Who you are", "auth", answer=schemas.Me)
async def me(request: web.Request) -> web.Response:
    p = request[PRINCIPAL]
    return json({"id": p.user_id, "username": p.username, "role": p.role, "auth": p.via, "key_id": p.key_id})


def _target_user(principal: Principal, requested: int | None) -> int:
    if requested is None or requested == principal.user_id:
        return principal.user_id
    if not principal.is_admin:
        raise Forbidden("Only admins may manage another user's keys")
    return requested


@operation("Create an API key (shown once)", "auth", body=schemas.NewKey, answer=schemas.NewApiKey, status=201,
           errors=(400, 403, 404))  # fmt: skip
async def create_key(request: web.Request) -> web.Response:
    body = await load(request, schemas.NewKey())
    user_id = _target_user(request[PRINCIPAL], body["user_id"])
    value, info = await request.app[USERS].create_key(
        user_id, body["name"], body["expires_days"], body["allowed_models"]
    )
    return json({**info.public(), "key": value}, status=201)


@operation("Your API keys (admins: ?user_id=N or all), by id, a page at a time", "auth", answer=schemas.KeyList,
           errors=(400, 403), query={"user_id": "admins: a user id, or 'all'", **PAGE})  # fmt: skip
async def list_keys(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    raw = request.query.get("user_id")
    if raw == "all":
        require_admin(request)
        user_id: int | None = None
    else:
        asked = identifier(raw, "user_id") if raw else None
        if raw and asked is None:
            raise InvalidRequest("user_id must be a number or 'all'", param="user_id")
        user_id = _target_user(principal, asked)
    after, limit = _page(request)
    keys = await request.app[USERS].list_keys(user_id, after=after, limit=limit + 1)
    return _listed([k.public() for k in keys], limit)


@operation("Revoke an API key", "auth", status=204, errors=(403, 404))
async def revoke_key(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    owner = None if principal.is_admin else principal.user_id
    await request.app[USERS].revoke_key(_int(request, "key_id"), owner)
    request.app[AUTHENTICATOR].forget()
    return web.Response(status=204)


@operation("Users by id, a page at a time", "admin", answer=schemas.UserList, access=Access.ADMIN, errors=(400,),
           query={"q": "usernames starting with this", **PAGE})  # fmt: skip
async def admin_list_users(request: web.Request) -> web.Response:
    after, limit = _page(request)
    users = await request.app[USERS].list_users(after=after, limit=limit + 1, prefix=request.query.get("q") or None)
    return _listed([u.public() for u in users], limit)


@operation("Create a user", "admin", body=schemas.NewUser, answer=schemas.User, status=201,
           access=Access.ADMIN, errors=(400, 409))  # fmt: skip
async def admin_create_user(request: web.Request) -> web.Response:
    body = await load(request, schemas.NewUser())
    user = await request.app[USERS].create_user(
        body["username"], body["password"], body["role"], body["allowed_models"]
    )
    return json(user.public(), status=201)


@operation("Change a user's role, active flag, capture or allowed models", "admin", body=schemas.UserChange,
           answer=schemas.User, access=Access.ADMIN, errors=(400, 404))  # fmt: skip
async def admin_update_user(request: web.Request) -> web.Response:
    admin = request[PRINCIPAL]  # an admin: the guard checked the operation's access
    body = await load(request, schemas.UserChange())
    user_id = _int(request, "user_id")
    if user_id == admin.user_id and (body.get("active") is False or body.get("role") == "user"):
        raise InvalidRequest("Admins cannot disable or demote themselves", param="user_id")
    user = await request.app[USERS].update_user(
        user_id,
        role=body.get("role"),
        active=body.get("active"),
        capture=body.get("capture"),
        allowed_models=body.get("allowed_models", UNCHANGED),
    )
    request.app[AUTHENTICATOR].forget()
    return json(user.public())


@operation("Delete a user with their keys, sessions and conversations", "admin", status=204, access=Access.ADMIN,
           errors=(400, 404, 409))  # fmt: skip
async def admin_delete_user(request: web.Request) -> web.Response:
    admin = request[PRINCIPAL]  # an admin: the guard checked the operation's access
    user_id = _int(request, "user_id")
    if user_id == admin.user_id:
        raise InvalidRequest("Admins cannot delete themselves", param="user_id")
    await request.app[USERS].delete_user(user_id)
    request.app[AUTHENTICATOR].forget()
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/auth/login", login)
    r.add_post("/api/auth/refresh", refresh)
    r.add_post("/api/auth/logout", logout)
    r.add_get("/api/auth/me", me)
    r.add_post("/api/auth/keys", create_key)
    r.add_get("/api/auth/keys", list_keys)
    r.add_delete("/api/auth/keys/{key_id}", revoke_key)
    r.add_get("/api/admin/users", admin_list_users)
    r.add_post("/api/admin/users", admin_create_user)
    r.add_patch("/api/admin/users/{user_id}", admin_update_user)
    r.add_delete("/api/admin/users/{user_id}", admin_delete_user)
