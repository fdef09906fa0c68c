"""Authentication over HTTP: the auth middleware, /api/auth and /api/admin/users, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gwproxy.keys import USERS
from tests.conftest import MODEL, start_app

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@dataclass
class Env:
    server: TestServer
    admin_key: str
    user_key: str
    user_id: int

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def env(sim: int) -> AsyncIterator[Env]:
    server = await start_app(
        sim,
        GWPROXY_AUTH_ENABLED="true",
        GWPROXY_AUTH_KEY_CACHE_SECONDS="0.3",
        GWPROXY_AUTH_LOGIN_MAX_FAILURES="3",
        GWPROXY_AUTH_METRICS_PUBLIC="false",
    )
    users = server.app[USERS]
    admin = await users.create_user("root", "root-password", "admin")
    bob = await users.create_user("bob", "bob-password")
    admin_key, _ = await users.create_key(admin.id, "admin")
    user_key, _ = await users.create_key(bob.id, "bob")
    yield Env(server, admin_key, user_key, bob.id)
    await server.close()


async def call(
    method: str, url: str, *, headers: dict[str, str] | None = None, json: object = None
) -> tuple[int, dict[str, object], dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, headers=headers, json=json) as r:
            body = await r.json() if r.content_type == "application/json" else {}
            return r.status, body, dict(r.headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_v1_needs_credentials_in_any_accepted_header(env: Env) -> None:
    status, body, _ = await call("POST", env.url("/v1/chat/completions"), json=CHAT)
    assert status == 401
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_api_key"  # type: ignore[index]
    for headers in (bearer(env.user_key), {"api-key": env.user_key}, {"x-api-key": env.user_key}):
        status, body, _ = await call("POST", env.url("/v1/chat/completions"), headers=headers, json=CHAT)
        assert status == 200, headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "gwp-abc"},
        {"Authorization": "Bearer gwp-unknown-key-unknown-key-unknown-key-unknown-k"},
        {"Authorization": "Bearer not-a-jwt"},
        {"x-api-key": "gwp-wrong"},
    ],
)
async def test_missing_and_malformed_credentials_are_401(env: Env, headers: dict[str, str]) -> None:
    status, body, _ = await call("GET", env.url("/v1/models"), headers=headers)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"  # type: ignore[index]


async def test_open_routes_stay_open(env: Env) -> None:
    for path in ("/health", "/health/ready", "/"):
        status, _, _ = await call("GET", env.url(path))
        assert status == 200, path
    status, _, _ = await call("GET", env.url("/metrics"))
    assert status == 401  # metrics_public = false
    status, _, _ = await call("GET", env.url("/metrics"), headers=bearer(env.user_key))
    assert status == 403
    async with aiohttp.ClientSession() as s:
        async with s.get(env.url("/metrics"), headers=bearer(env.admin_key)) as r:
            assert r.status == 200 and "gwproxy_requests_total" in await r.text()


async def test_login_me_refresh_logout(env: Env) -> None:
    status, tokens, _ = await call(
        "POST", env.url("/api/auth/login"), json={"username": "bob", "password": "bob-password"}
    )
    assert status == 200 and tokens["token_type"] == "bearer" and tokens["expires_in"] == 24 * 3600
    access, refresh = str(tokens["access_token"]), str(tokens["refresh_token"])
    status, me, _ = await call("GET", env.url("/api/auth/me"), headers=bearer(access))
    assert status == 200 and me == {"id": env.user_id, "username": "bob", "role": "user", "auth": "jwt", "key_id": None}
    status, _, _ = await call("POST", env.url("/v1/chat/completions"), headers=bearer(access), json=CHAT)
    assert status == 200
    status, rotated, _ = await call("POST", env.url("/api/auth/refresh"), json={"refresh_token": refresh})
    assert status == 200 and rotated["refresh_token"] != refresh
    status, body, _ = await call("POST", env.url("/api/auth/refresh"), json={"refresh_token": refresh})
    assert status == 401 and "already used" in body["error"]["message"]  # type: ignore[index]
    status, _, _ = await call("POST", env.url("/api/auth/refresh"), json={"refresh_token": rotated["refresh_token"]})
    assert status == 401  # the whole family went with the replay
    status, again, _ = await call(
        "POST", env.url("/api/auth/login"), json={"username": "bob", "password": "bob-password"}
    )
    status, _, _ = await call("POST", env.url("/api/auth/logout"), json={"refresh_token": again["refresh_token"]})
    assert status == 204
    status, _, _ = await call("POST", env.url("/api/auth/refresh"), json={"refresh_token": again["refresh_token"]})
    assert status == 401


async def test_bad_login_bodies(env: Env) -> None:
    status, body, _ = await call("POST", env.url("/api/auth/login"), json={"username": "bob"})
    assert status == 400 and body["error"]["param"] == "password"  # type: ignore[index]
    status, body, _ = await call(
        "POST", env.url("/api/auth/login"), json={"username": "bob", "password": "x", "extra": 1}
    )
    assert status == 400 and body["error"]["param"] == "extra"  # type: ignore[index]


async def test_login_brute_force_is_throttled(env: Env) -> None:
    for _ in range(3):
        status, body, _ = await call(
            "POST", env.url("/api/auth/login"), json={"username": "bob", "password": "guess-1234"}
        )
        assert status == 401 and body["error"]["code"] == "invalid_credentials"  # type: ignore[index]
    status, body, headers = await call(
        "POST", env.url("/api/auth/login"), json={"username": "bob", "password": "bob-password"}
    )
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"  # type: ignore[index]
    # Refused even with the right password, until the next attempt refills: the 300 s window / 3 attempts.
    assert int(headers["Retry-After"]) == 100
    # Only this username from this address is slowed: the address may still sign in as someone else
    # (an attacker cannot lock out everyone behind one address, nor the victim elsewhere).
    status, _, _ = await call(
        "POST", env.url("/api/auth/login"), json={"username": "root", "password": "root-password"}
    )
    assert status == 200


async def test_revoked_key_is_refused_within_the_cache_bound(env: Env) -> None:
    status, created, _ = await call(
        "POST", env.url("/api/auth/keys"), headers=bearer(env.user_key), json={"name": "ci"}
    )
    assert status == 201 and str(created["key"]).startswith("gwp-")
    key = str(created["key"])
    assert (await call("GET", env.url("/v1/models"), headers=bearer(key)))[0] == 200
    status, listed, _ = await call("GET", env.url("/api/auth/keys"), headers=bearer(env.user_key))
    assert {k["name"] for k in listed["data"]} == {"bob", "ci"}  # type: ignore[union-attr, index]
    assert all("key" not in k for k in listed["data"])  # type: ignore[union-attr]
    status, _, _ = await call("DELETE", env.url(f"/api/auth/keys/{created['id']}"), headers=bearer(env.user_key))
    assert status == 204
    await asyncio.sleep(0.35)
    assert (await call("GET", env.url("/v1/models"), headers=bearer(key)))[0] == 401


async def test_disabled_user_is_refused_within_the_cache_bound(env: Env) -> None:
    _, tokens, _ = await call("POST", env.url("/api/auth/login"), json={"username": "bob", "password": "bob-password"})
    access = str(tokens["access_token"])
    assert (await call("GET", env.url("/v1/models"), headers=bearer(access)))[0] == 200
    status, user, _ = await call(
        "PATCH", env.url(f"/api/admin/users/{env.user_id}"), headers=bearer(env.admin_key), json={"active": False}
    )
    assert status == 200 and user["active"] is False
    await asyncio.sleep(0.35)
    for cred in (access, env.user_key):
        assert (await call("GET", env.url("/v1/models"), headers=bearer(cred)))[0] == 401


async def test_admin_routes(env: Env) -> None:
    status, body, _ = await call("GET", env.url("/api/admin/users"), headers=bearer(env.user_key))
    assert status == 403 and body["error"]["type"] == "permission_error"  # type: ignore[index]
    status, created, _ = await call(
        "POST",
        env.url("/api/admin/users"),
        headers=bearer(env.admin_key),
        json={"username": "carol", "password": "carol-pass"},
    )
    assert status == 201 and created["role"] == "user"
    status, _, _ = await call(
        "POST",
        env.url("/api/admin/users"),
        headers=bearer(env.admin_key),
        json={"username": "carol", "password": "carol-pass"},
    )
    assert status == 409
    status, changed, _ = await call(
        "PATCH", env.url(f"/api/admin/users/{created['id']}"), headers=bearer(env.admin_key), json={"role": "admin"}
    )
    assert status == 200 and changed["role"] == "admin"
    status, listed, _ = await call("GET", env.url("/api/admin/users"), headers=bearer(env.admin_key))
    assert {u["username"] for u in listed["data"]} == {"root", "bob", "carol"}  # type: ignore[union-attr, index]
    status, _, _ = await call(
        "PATCH", env.url("/api/admin/users/999"), headers=bearer(env.admin_key), json={"role": "user"}
    )
    assert status == 404
    status, _, _ = await call(
        "PATCH", env.url(f"/api/admin/users/{created['id']}"), headers=bearer(env.admin_key), json={"active": "no"}
    )
    assert status == 400
    # Deleting: a user's key stops working at once on this replica; admins cannot delete themselves.
    carol_key, _ = await env.server.app[USERS].create_key(created["id"], "c")  # type: ignore[index]
    assert (await call("GET", env.url("/api/auth/me"), headers=bearer(carol_key)))[0] == 200
    status, _, _ = await call("DELETE", env.url(f"/api/admin/users/{created['id']}"), headers=bearer(env.user_key))
    assert status == 403
    status, _, _ = await call("DELETE", env.url(f"/api/admin/users/{created['id']}"), headers=bearer(env.admin_key))
    assert status == 204
    assert (await call("GET", env.url("/api/auth/me"), headers=bearer(carol_key)))[0] == 401
    status, _, _ = await call("DELETE", env.url(f"/api/admin/users/{created['id']}"), headers=bearer(env.admin_key))
    assert status == 404
    status, me, _ = await call("GET", env.url("/api/auth/me"), headers=bearer(env.admin_key))
    status, _, _ = await call("DELETE", env.url(f"/api/admin/users/{me['id']}"), headers=bearer(env.admin_key))  # type: ignore[index]
    assert status == 400


async def test_keys_of_others(env: Env) -> None:
    # An admin may create and list keys for anyone; a user only their own, and others' are 404.
    status, made, _ = await call(
        "POST", env.url("/api/auth/keys"), headers=bearer(env.admin_key), json={"user_id": env.user_id}
    )
    assert status == 201 and made["user_id"] == env.user_id
    status, _, _ = await call("POST", env.url("/api/auth/keys"), headers=bearer(env.user_key), json={"user_id": 1})
    assert status == 403
    status, all_keys, _ = await call("GET", env.url("/api/auth/keys?user_id=all"), headers=bearer(env.admin_key))
    assert len(all_keys["data"]) == 3  # type: ignore[arg-type]
    admin_key_id = next(k["id"] for k in all_keys["data"] if k["name"] == "admin")  # type: ignore[union-attr, index]
    status, _, _ = await call("DELETE", env.url(f"/api/auth/keys/{admin_key_id}"), headers=bearer(env.user_key))
    assert status == 404
    status, _, _ = await call("GET", env.url("/api/auth/keys?user_id=all"), headers=bearer(env.user_key))
    assert status == 403


async def test_users_and_keys_are_listed_a_page_at_a_time(env: Env) -> None:
    users = env.server.app[USERS]
    for name in ("carol", "carl", "dave", "c_x"):
        made = await users.create_user(name, f"{name}-password")
        await users.create_key(made.id, f"{name}-key")
    admin = bearer(env.admin_key)

    async def walk(path: str, limit: int) -> list[list[str]]:
        pages, cursor = [], ""
        while True:
            sep = "&" if "?" in path else "?"
            status, body, _ = await call("GET", env.url(f"{path}{sep}limit={limit}&cursor={cursor}"), headers=admin)
            assert status == 200, body
            pages.append([str(item.get("username") or item.get("name")) for item in body["data"]])  # type: ignore[attr-defined]
            if not body["has_more"]:
                assert body["next_cursor"] is None
                return pages
            cursor = str(body["next_cursor"])

    assert await walk("/api/admin/users", 2) == [["root", "bob"], ["carol", "carl"], ["dave", "c_x"]]
    assert await walk("/api/admin/users?q=car", 10) == [["carol", "carl"]]
    assert await walk("/api/admin/users?q=c_", 10) == [["c_x"]]  # a prefix, wildcards as text
    keys = await walk("/api/auth/keys?user_id=all", 4)
    assert [len(p) for p in keys] == [4, 2] and keys[0][:2] == ["admin", "bob"]
    status, body, _ = await call("GET", env.url("/api/auth/keys?limit=1"), headers=bearer(env.user_key))
    assert status == 200 and [k["name"] for k in body["data"]] == ["bob"] and body["has_more"] is False  # type: ignore[index]
    for path, param in (("/api/admin/users?limit=0", "limit"), ("/api/admin/users?limit=1001", "limit"),
                        ("/api/auth/keys?cursor=x", "cursor"), ("/api/admin/users?cursor=-1", "cursor")):  # fmt: skip
        status, body, _ = await call("GET", env.url(path), headers=admin)
        assert status == 400 and body["error"]["param"] == param, (path, body)  # type: ignore[index]
