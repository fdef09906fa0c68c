"""Routes: admins set per-user and per-key rate-limit overrides.

``PUT /api/admin/users/{id}/limits`` and ``PUT /api/admin/keys/{id}/limits`` replace the
overrides (a field left out or null means the configured default); ``GET`` on the same paths
shows them and the limits in effect. Replicas pick changes up within ``auth.key_cache_seconds``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import select

from gwproxy.bodies import identifier, json, load
from gwproxy.errors import NotFound
from gwproxy.keys import DATABASE, LIMITER, USERS
from gwproxy.operations import Access, operation
from gwproxy.ratelimit.policy import OVERRIDABLE, set_overrides
from gwproxy.store.tables import api_keys, rate_limits

INT32 = 2**31 - 1  # the columns are INTEGER


class LimitsBody(Schema):
    class Meta:
        unknown = RAISE

    requests = fields.Integer(
        strict=True, allow_none=True, load_default=None, validate=validate.Range(min=1, max=INT32)
    )
    window = fields.Float(
        allow_none=True, load_default=None, validate=validate.Range(min=0, min_inclusive=False, max=10 * 365 * 86400)
    )
    tokens_per_minute = fields.Integer(
        strict=True, allow_none=True, load_default=None, validate=validate.Range(min=0, max=INT32)
    )
    concurrency = fields.Integer(
        strict=True, allow_none=True, load_default=None, validate=validate.Range(min=0, max=INT32)
    )


class Limits(Schema):
    """A user's or key's overrides and the limits in effect."""

    user_id = fields.Integer()
    key_id = fields.Integer()
    overrides = fields.Dict(required=True)
    effective = fields.Dict(required=True)


def _target(request: web.Request) -> tuple[str, int]:
    kind = "user_id" if "user_id" in request.match_info else "key_id"
    value = identifier(request.match_info[kind], kind)
    if value is None:
        raise NotFound(f"no such {kind}")
    return kind, value


async def _exists(request: web.Request, kind: str, ident: int) -> None:
    if kind == "user_id":
        await request.app[USERS].get_user(ident)
        return
    async with request.app[DATABASE].connect() as conn:
        if (await conn.execute(select(api_keys.c.id).where(api_keys.c.id == ident))).first() is None:
            raise NotFound(f"no API key with id {ident}")


async def _render(request: web.Request, kind: str, ident: int) -> web.Response:
    column = rate_limits.c.user_id if kind == "user_id" else rate_limits.c.key_id
    async with request.app[DATABASE].connect() as conn:
        row = (await conn.execute(select(rate_limits).where(column == ident))).first()
    overrides: dict[str, Any] = {f: (row._mapping[f] if row is not None else None) for f in OVERRIDABLE}
    defaults = request.app[LIMITER].policy.defaults
    effective = replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
    return json({kind: ident, "overrides": overrides, "effective": effective.public()})


async def _get(request: web.Request) -> web.Response:
    kind, ident = _target(request)
    await _exists(request, kind, ident)
    return await _render(request, kind, ident)


async def _put(request: web.Request) -> web.Response:
    kind, ident = _target(request)
    body = await load(request, LimitsBody())
    await _exists(request, kind, ident)
    await set_overrides(
        request.app[DATABASE],
        user_id=ident if kind == "user_id" else None,
        key_id=ident if kind == "key_id" else None,
        values=body,
    )
    request.app[LIMITER].policy.forget()
    return await _render(request, kind, ident)


@operation("A user's rate-limit overrides and limits in effect", "admin", answer=Limits, access=Access.ADMIN,
           errors=(404,))  # fmt: skip
async def get_user_limits(request: web.Request) -> web.Response:
    return await _get(request)


@operation("Replace a user's rate-limit overrides", "admin", body=LimitsBody, answer=Limits, access=Access.ADMIN,
           errors=(400, 404))  # fmt: skip
async def put_user_limits(request: web.Request) -> web.Response:
    return await _put(request)


@operation("An API key's rate-limit overrides", "admin", answer=Limits, access=Access.ADMIN, errors=(404,))
async def get_key_limits(request: web.Request) -> web.Response:
    return await _get(request)


@operation("Replace an API key's rate-limit overrides", "admin", body=LimitsBody, answer=Limits,
           access=Access.ADMIN, errors=(400, 404))  # fmt: skip
async def put_key_limits(request: web.Request) -> web.Response:
    return await _put(request)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/admin/users/{user_id}/limits", get_user_limits)
    app.router.add_put("/api/admin/users/{user_id}/limits", put_user_limits)
    app.router.add_get("/api/admin/keys/{key_id}/limits", get_key_limits)
    app.router.add_put("/api/admin/keys/{key_id}/limits", put_key_limits)
