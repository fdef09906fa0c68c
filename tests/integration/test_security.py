"""What a hostile or careless client was seen to do, each refused: login and credential guessing,
sessions outliving their logout, bodies and request targets the gateway should not take, values
that broke the database, capture identity and token accounting. In-process gateways on SQLite
and PostgreSQL (the capture writer in the gateway's loop), plus real sockets for framing."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gwproxy.keys import USERS
from tests.conftest import MODEL, start_app
from tests.integration.test_auth_http import bearer, call
from tests.support.services import Redis

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@dataclass
class Site:
    server: TestServer
    admin_key: str
    bob_key: str
    eve_key: str

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


async def _site(sim: int, db_url: str, tmp: Path, **env: str) -> Site:
    server = await start_app(
        sim,
        db_url,
        GWPROXY_AUTH_ENABLED="true",
        GWPROXY_AUTH_KEY_CACHE_SECONDS="0.3",
        GWPROXY_AUTH_LOGIN_MAX_FAILURES="3",
        GWPROXY_RATELIMIT_TRUSTED_PROXIES="127.0.0.1/32",
        GWPROXY_CAPTURE_PROCESS="false",
        GWPROXY_CAPTURE_SPOOL_DIR=str(tmp / "spool"),
        GWPROXY_CAPTURE_BATCH_SECONDS="0.02",
        **env,
    )
    users = server.app[USERS]
    keys = []
    for name, role in (("root", "admin"), ("bob", "user"), ("eve", "user")):
        try:
            user = await users.create_user(name, f"{name}-password", role)
        except Exception:  # a second replica on the same database
            user = await users.find_user(name)
        keys.append((await users.create_key(user.id, name))[0])
    return Site(server, *keys)


@pytest.fixture
async def site(sim: int, db_url: str, engine: Any, tmp_path: Path) -> AsyncIterator[Site]:
    """A gateway with auth on, on each database engine (``engine`` migrated ``db_url``)."""
    s = await _site(sim, db_url, tmp_path)
    yield s
    await s.server.close()


def from_address(address: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers of a request that a trusted proxy (the loopback peer) forwards for ``address``."""
    return {"X-Forwarded-For": address, **(headers or {})}


async def login(site: Site, username: str, password: str, address: str = "198.51.100.1") -> tuple[int, Any, Any]:
    return await call(
        "POST",
        site.url("/api/auth/login"),
        headers=from_address(address),
        json={"username": username, "password": password},
    )


# -- 1, 2: login throttle ----------------------------------------------------------------------


async def test_concurrent_wrong_logins_are_checked_at_most_the_limit(site: Site) -> None:
    results = await asyncio.gather(*(login(site, "bob", f"guess-{i}") for i in range(30)))
    statuses = [r[0] for r in results]
    assert statuses.count(401) == 3  # checked by argon2: the attempts reserved before checking
    assert statuses.count(429) == 27
    assert all(int(r[2]["Retry-After"]) >= 1 for r in results if r[0] == 429)


async def test_replicas_share_the_login_throttle_through_redis(
    sim: int, db_url: str, engine: Any, redis_server: Redis, tmp_path: Path
) -> None:
    a = await _site(sim, db_url, tmp_path / "a", REDIS_URL=redis_server.url)
    b = await _site(sim, db_url, tmp_path / "b", REDIS_URL=redis_server.url)
    try:
        results = await asyncio.gather(*(login(s, "bob", f"guess-{i}") for i in range(10) for s in (a, b)))
        assert [r[0] for r in results].count(401) == 3
    finally:
        await a.server.close()
        await b.server.close()


async def test_the_throttle_keys_on_the_client_behind_a_trusted_proxy_and_locks_out_nobody_else(site: Site) -> None:
    for i in range(3):
        assert (await login(site, "root", f"wrong-{i}", address="203.0.113.66"))[0] == 401
    assert (await login(site, "root", "root-password", address="203.0.113.66"))[0] == 429  # the attacker
    assert (await login(site, "root", "root-password", address="203.0.113.10"))[0] == 200  # the admin elsewhere
    assert (await login(site, "bob", "bob-password", address="203.0.113.66"))[0] == 200  # others at that address


# -- 3, 4: sessions ----------------------------------------------------------------------------


async def test_a_refresh_token_sent_twice_at_once_revokes_its_session(site: Site) -> None:
    _, tokens, _ = await login(site, "bob", "bob-password")
    refresh = tokens["refresh_token"]
    first, second = await asyncio.gather(
        *(call("POST", site.url("/api/auth/refresh"), json={"refresh_token": refresh}) for _ in range(2))
    )
    statuses = sorted([first[0], second[0]])
    assert statuses in ([200, 401], [401, 401])
    winner = first if first[0] == 200 else second if second[0] == 200 else None
    if winner is not None:  # whoever won holds nothing that still works
        status, _, _ = await call(
            "POST", site.url("/api/auth/refresh"), json={"refresh_token": winner[1]["refresh_token"]}
        )
        assert status == 401
        await asyncio.sleep(0.35)  # key_cache_seconds
        status, _, _ = await call("GET", site.url("/api/auth/me"), headers=bearer(winner[1]["access_token"]))
        assert status == 401
    status, _, _ = await call("GET", site.url("/api/auth/me"), headers=bearer(tokens["access_token"]))
    assert status == 401


async def test_access_tokens_die_with_their_session(site: Site, db_url: str, tmp_path: Path, sim: int) -> None:
    other = await _site(sim, db_url, tmp_path / "replica")  # a second replica on the same database
    try:
        _, tokens, _ = await login(site, "bob", "bob-password")
        access = bearer(tokens["access_token"])
        for s in (site, other):
            assert (await call("GET", s.url("/api/auth/me"), headers=access))[0] == 200
        assert (await call("POST", site.url("/api/auth/logout"), json={"refresh_token": tokens["refresh_token"]}))[
            0
        ] == 204
        status, body, _ = await call("GET", site.url("/v1/models"), headers=access)
        assert status == 401 and "session" in body["error"]["message"]  # at once on this replica
        await asyncio.sleep(0.35)
        assert (await call("GET", other.url("/v1/models"), headers=access))[0] == 401  # within the bound elsewhere

        # Reuse detection revokes the access tokens of the family too.
        _, tokens, _ = await login(site, "bob", "bob-password")
        _, rotated, _ = await call(
            "POST", site.url("/api/auth/refresh"), json={"refresh_token": tokens["refresh_token"]}
        )
        assert (await call("GET", site.url("/api/auth/me"), headers=bearer(rotated["access_token"])))[0] == 200
        assert (await call("GET", other.url("/api/auth/me"), headers=bearer(rotated["access_token"])))[0] == 200
        replayed = await call("POST", site.url("/api/auth/refresh"), json={"refresh_token": tokens["refresh_token"]})
        assert replayed[0] == 401
        for token in (rotated["access_token"], tokens["access_token"]):  # at once on this replica, as a logout
            status, body, _ = await call("GET", site.url("/api/auth/me"), headers=bearer(token))
            assert status == 401 and "session" in body["error"]["message"]
        await asyncio.sleep(0.35)
        assert (await call("GET", other.url("/api/auth/me"), headers=bearer(rotated["access_token"])))[0] == 401
    finally:
        await other.server.close()


# -- 5: invalid credentials ----------------------------------------------------------------------


async def test_invalid_credentials_are_throttled_per_address(
    sim: int, db_url: str, engine: Any, tmp_path: Path
) -> None:
    site = await _site(sim, db_url, tmp_path, GWPROXY_AUTH_INVALID_CREDENTIALS_PER_MINUTE="5")
    try:
        good = from_address("192.0.2.7", bearer(site.bob_key))
        assert (await call("GET", site.url("/v1/models"), headers=good))[0] == 200  # known, then cached
        statuses = []
        for i in range(8):
            headers = from_address("192.0.2.7", bearer(f"gwp-{i:08d}" + "x" * 35))
            statuses.append((await call("GET", site.url("/v1/models"), headers=headers))[0])
        statuses.append(
            (await call("GET", site.url("/v1/models"), headers=from_address("192.0.2.7", bearer("e.y.z"))))[0]
        )
        assert statuses == [401] * 5 + [429] * 4  # 5 invalid checks a minute (the good key's was refunded)
        assert (await call("GET", site.url("/v1/models"), headers=good))[0] == 200  # a cached key still works
        other = from_address("192.0.2.8", bearer("gwp-" + "y" * 43))
        assert (await call("GET", site.url("/v1/models"), headers=other))[0] == 401  # another address: checked
    finally:
        await site.server.close()


async def test_invalid_keys_from_an_address_lock_out_none_of_its_valid_users(
    sim: int, db_url: str, engine: Any, redis_server: Redis, tmp_path: Path
) -> None:
    """One careless script behind a NAT sends 60 invalid keys through one replica: it is slowed
    (429 with Retry-After), and on both replicas (sharing Redis) a valid key used for the first
    time from that address, and keys already used whose cache entry expired, still work."""
    env = {"REDIS_URL": redis_server.url, "GWPROXY_AUTH_INVALID_CREDENTIALS_PER_MINUTE": "10"}
    one = await _site(sim, db_url, tmp_path / "one", **env)
    two = await _site(sim, db_url, tmp_path / "two", **env)
    nat = "192.0.2.50"
    try:
        for s in (one, two):  # the admin's and bob's keys used once (cached), before the script runs
            for key in (s.admin_key, s.bob_key):
                assert (await call("GET", s.url("/v1/models"), headers=from_address(nat, bearer(key))))[0] == 200
        statuses = []
        for i in range(60):
            wrong = from_address(nat, bearer(f"gwp-{i:08d}" + "z" * 35))
            status, _, headers = await call("GET", one.url("/v1/models"), headers=wrong)
            statuses.append(status)
            if status == 429:
                assert int(headers["Retry-After"]) >= 1
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}  # slowed once past its allowance
        status, _, _ = await call("GET", two.url("/v1/models"), headers=from_address(nat, bearer("gwp-" + "q" * 43)))
        assert status == 429  # replicas share the allowance
        await asyncio.sleep(0.35)  # key_cache_seconds: every cached key must be looked up again
        users = one.server.app[USERS]
        fresh = (await users.create_key((await users.find_user("eve")).id, "first-use"))[0]
        for s in (one, two):
            for key in (fresh, s.admin_key, s.bob_key, s.eve_key):
                status, body, _ = await call("GET", s.url("/v1/models"), headers=from_address(nat, bearer(key)))
                assert status == 200, body
            _, tokens, _ = await login(s, "bob", "bob-password", address=nat)  # a fresh access token too
            access = from_address(nat, bearer(tokens["access_token"]))
            assert (await call("GET", s.url("/api/auth/me"), headers=access))[0] == 200
        status, _, _ = await call("GET", two.url("/v1/models"), headers=from_address(nat, bearer("e.y.z")))
        assert status == 429  # and invalid ones are still slowed
    finally:
        await one.server.close()
        await two.server.close()


async def test_only_admins_reach_vllms_runtime_lora_endpoints(site: Site) -> None:
    """``/v1/load_lora_adapter`` reads a path on the vLLM host and ``/v1/unload_lora_adapter``
    takes an adapter from everyone: a user is refused before anything goes upstream."""
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        body = {"lora_name": "x", "lora_path": "/etc"}
        status, answer, _ = await call("POST", site.url(path), headers=bearer(site.bob_key), json=body)
        assert status == 403 and answer["error"]["type"] == "permission_error", answer
        status, _, _ = await call("POST", site.url(path), headers=bearer(site.admin_key), json=body)
        assert status != 403  # forwarded: whatever vLLM answers


# -- 6, 8, 9: request shape --------------------------------------------------------------------


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as it is; the first response (head and ``Content-Length`` body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                if lengths and len(body) >= int(lengths[0].split(b":")[1]):
                    return out
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out
            if not chunk:
                return out
            out += chunk


async def test_bodies_are_limited_per_route_before_they_are_read(site: Site) -> None:
    port = site.server.port
    assert port is not None
    head = b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 31457280\r\n\r\n"
    started = time.monotonic()
    answer = await asyncio.to_thread(raw_request, port, head)  # no body sent at all: refused from the length
    assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 2
    assert b'"code":"payload_too_large"' in answer
    big = b'{"username":"' + b"a" * 40_000 + b'","password":"x"}'
    async with aiohttp.ClientSession() as s:

        async def chunks() -> AsyncIterator[bytes]:
            yield big  # chunked: no length to check, read() stops at the route's cap

        async with s.post(site.url("/api/auth/login"), data=chunks()) as r:
            assert r.status == 413
        async with s.post(
            site.url("/api/admin/users"), headers=bearer(site.admin_key), data=b"{" + b" " * (2 * 1024 * 1024) + b"}"
        ) as r:
            assert r.status == 413
        long_chat = {**CHAT, "messages": [{"role": "user", "content": "word " * 400_000}]}  # 2 MB: fine on /v1
        async with s.post(site.url("/v1/chat/completions"), headers=bearer(site.bob_key), json=long_chat) as r:
            assert r.status in (200, 400)  # reaches the upstream (which judges its length)
            assert (await r.json())["error"]["type"] == "BadRequestError" if r.status == 400 else True


async def test_request_targets_are_normalised_or_refused(site: Site) -> None:
    port = site.server.port
    assert port is not None
    auth = f"Authorization: Bearer {site.bob_key}\r\n".encode()
    answer = await asyncio.to_thread(
        raw_request,
        port,
        b"GET http://elsewhere/v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200") and MODEL.encode() in answer  # absolute form: its path is used
    for target in (b"/v1/../v1/models", b"/v1/%2e%2e/api/admin/users", b"/v1/./models", b"/api/auth/../admin/users"):
        answer = await asyncio.to_thread(
            raw_request, port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 400"), (target, answer[:200])
        assert b"segments" in answer


async def test_a_compressed_request_body_goes_upstream_decoded(site: Site) -> None:
    headers = {**bearer(site.bob_key), "Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        async with s.post(
            site.url("/v1/chat/completions"), headers=headers, data=gzip.compress(orjson.dumps(CHAT))
        ) as r:
            assert r.status == 200 and (await r.json())["object"] == "chat.completion"
        headers["Content-Encoding"] = "compress"
        async with s.post(site.url("/v1/chat/completions"), headers=headers, data=b"\x1f\x9d...") as r:
            body = await r.json()
            assert r.status == 415 and body["error"]["code"] == "unsupported_content_encoding"


# -- 10: odd values ------------------------------------------------------------------------------


async def test_odd_values_are_refused_naming_the_parameter(site: Site) -> None:
    bob = bearer(site.bob_key)
    cases: list[tuple[str, str, dict[str, Any] | None, str | None]] = [
        ("GET", "/api/conversations?limit=²", None, "limit"),
        ("GET", "/api/conversations?limit=١٠", None, "limit"),
        ("GET", "/api/conversations?q=a%00b", None, "q"),
        ("GET", "/api/conversations?model=m%00", None, "model"),
        ("GET", "/api/conversations?since=0001-01-01T00:00:00%2B14:00", None, "since"),
        ("GET", "/api/usage?until=9999-12-31T23:59:59-14:00", None, "until"),
        ("GET", "/api/auth/keys?user_id=99999999999999999999", None, "user_id"),
        ("POST", "/api/conversations", {"title": "a\x00b"}, "title"),
        ("POST", "/api/auth/keys", {"name": "k\x00"}, "name"),
        ("POST", "/api/auth/keys", {"user_id": 2**70}, "user_id"),
        ("POST", "/api/auth/login", {"username": "bo\x00b", "password": "x"}, "username"),
    ]
    for method, path, body, param in cases:
        status, answer, _ = await call(method, site.url(path), headers=bob, json=body)
        assert status == 400, (path, body, status, answer)
        assert answer["error"]["param"] == param, (path, answer)
    status, answer, _ = await call("GET", site.url("/api/usage?user_id=²"), headers=bearer(site.admin_key))
    assert status == 400 and answer["error"]["param"] == "user_id"
    for path in ("/api/auth/keys/99999999999999999999", "/api/conversations/a%00b"):
        status, _, _ = await call("DELETE" if "keys" in path else "GET", site.url(path), headers=bob)
        assert status in (400, 404), path
    status, answer, _ = await call(
        "PUT", site.url("/api/admin/users/2/limits"), headers=bearer(site.admin_key), json={"requests": 2**40}
    )
    assert status == 400 and answer["error"]["param"] == "requests"  # the column is an INTEGER
    status, _, _ = await call(
        "GET", site.url("/api/admin/keys/99999999999999999999/limits"), headers=bearer(site.admin_key)
    )
    assert status == 404


async def usage_of(site: Site, key: str, requests: int, timeout: float = 10.0) -> dict[str, Any]:
    """``/api/usage`` of ``key``'s user once it counts ``requests`` (the writer batches)."""
    deadline = time.monotonic() + timeout
    while True:
        _, body, _ = await call("GET", site.url("/api/usage"), headers=bearer(key))
        if body["total"]["requests"] >= requests or time.monotonic() > deadline:
            return body  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)


async def test_a_nul_in_message_content_is_still_captured_and_counted(site: Site) -> None:
    chat = {**CHAT, "messages": [{"role": "user", "content": "before\x00after"}]}
    status, reply, _ = await call("POST", site.url("/v1/chat/completions"), headers=bearer(site.bob_key), json=chat)
    assert status == 200
    usage = await usage_of(site, site.bob_key, 1)
    assert (
        usage["total"]["requests"] == 1 and usage["total"]["completion_tokens"] == reply["usage"]["completion_tokens"]
    )
    _, listing, _ = await call("GET", site.url("/api/conversations"), headers=bearer(site.bob_key))
    assert listing["data"][0]["title"] == "before\ufffdafter"


# -- 11: capture identity ------------------------------------------------------------------------


async def test_capture_does_not_trust_client_request_ids(site: Site) -> None:
    for key in (site.eve_key, site.bob_key, site.bob_key, site.bob_key):
        headers = {**bearer(key), "X-Request-ID": "chosen-id-1"}
        status, _, answer_headers = await call("POST", site.url("/v1/chat/completions"), headers=headers, json=CHAT)
        assert status == 200 and answer_headers["X-Request-ID"] == "chosen-id-1"  # kept for correlation
    assert (await usage_of(site, site.bob_key, 3))["total"]["requests"] == 3
    assert (await usage_of(site, site.eve_key, 1))["total"]["requests"] == 1


# -- 12, 13: token accounting ------------------------------------------------------------------


@pytest.fixture
async def tpm_site(sim: int, db_url: str, engine: Any, tmp_path: Path) -> AsyncIterator[Site]:
    s = await _site(sim, db_url, tmp_path, GWPROXY_RATELIMIT_TOKENS_PER_MINUTE="600")
    yield s
    await s.server.close()


async def test_a_request_too_large_for_the_token_limit_is_refused_not_forgiven(tpm_site: Site) -> None:
    site = tpm_site
    big = {**CHAT, "max_tokens": 1000}
    status, body, headers = await call("POST", site.url("/v1/chat/completions"), headers=bearer(site.bob_key), json=big)
    assert status == 429 and "Request too large for tokens per min" in body["error"]["message"]
    assert "Limit 600" in body["error"]["message"] and headers["x-should-retry"] == "false"
    for _ in range(3):  # generating nothing, charged no tokens
        status, _, headers = await call("GET", site.url("/v1/models"), headers=bearer(site.bob_key))
        assert status == 200 and "x-ratelimit-remaining-tokens" not in headers


async def test_real_usage_is_charged_fully(tpm_site: Site) -> None:
    site = tpm_site
    status, reply, headers = await call(
        "POST", site.url("/v1/chat/completions"), headers=bearer(site.bob_key), json={**CHAT, "max_tokens": 40}
    )
    assert status == 200
    estimate = 600 - int(headers["x-ratelimit-remaining-tokens"])  # what admission took
    used = reply["usage"]["total_tokens"]
    status, _, headers = await call(
        "POST", site.url("/v1/chat/completions"), headers=bearer(site.bob_key), json={**CHAT, "max_tokens": 40}
    )
    remaining = int(headers["x-ratelimit-remaining-tokens"])
    # The first request was settled to its real usage; the second took its estimate; refill ≤ 10/s.
    assert 600 - used - estimate - 2 <= remaining <= 600 - used - estimate + 20


async def test_responses_api_usage_is_settled_and_captured(tpm_site: Site) -> None:
    site = tpm_site
    body = {"model": MODEL, "input": "Tell me a story", "instructions": "Be brief.", "max_output_tokens": 30}
    status, plain, headers = await call("POST", site.url("/v1/responses"), headers=bearer(site.bob_key), json=body)
    assert status == 200 and plain["object"] == "response"
    async with aiohttp.ClientSession() as s:
        async with s.post(site.url("/v1/responses"), headers=bearer(site.bob_key), json={**body, "stream": True}) as r:
            streamed = await r.read()
    done = [e for e in streamed.split(b"\n\n") if e.startswith(b"event: response.completed\n")]
    assert len(done) == 1
    streamed_usage = orjson.loads(done[0].split(b"data: ", 1)[1])["response"]["usage"]
    usage = await usage_of(site, site.bob_key, 2)
    assert usage["total"]["requests"] == 2
    assert usage["total"]["completion_tokens"] == plain["usage"]["output_tokens"] + streamed_usage["output_tokens"]
    assert usage["total"]["prompt_tokens"] == plain["usage"]["input_tokens"] + streamed_usage["input_tokens"]
    _, listing, _ = await call("GET", site.url("/api/conversations"), headers=bearer(site.bob_key))
    texts = []
    for item in listing["data"]:
        _, conversation, _ = await call(
            "GET", site.url(f"/api/conversations/{item['id']}"), headers=bearer(site.bob_key)
        )
        assert [m["role"] for m in conversation["messages"]][:3] == ["system", "user", "assistant"]
        assert conversation["messages"][1]["content"] == "Tell me a story"
        texts += [m["content"] for m in conversation["messages"] if m["role"] == "assistant"]
    assert plain["output"][0]["content"][0]["text"] in texts
    # Settled: the token bucket reflects the real usage, not the 30-token estimate per request.
    status, _, headers = await call("POST", site.url("/v1/responses"), headers=bearer(site.bob_key), json=body)
    left = int(headers["x-ratelimit-remaining-tokens"])
    spent = plain["usage"]["total_tokens"] + streamed_usage["total_tokens"]
    estimate = 30 + len("Tell me a story" + "Be brief.") // 4
    assert 600 - spent - estimate - 2 <= left <= 600 - spent - estimate + 15  # refill: 10 tokens a second


# -- 15, 16: what is shown -----------------------------------------------------------------------


async def test_upstream_credentials_are_never_shown(sim: int, tmp_path: Path) -> None:
    server = await start_app(
        sim, GWPROXY_AUTH_ENABLED="true", VLLM_BASE_URL=f"http://gwuser:s3cr3t-pass@127.0.0.1:{sim}/v1"
    )
    try:
        key, _ = await server.app[USERS].create_key(
            (await server.app[USERS].create_user("r", "r-password", "admin")).id
        )
        async with aiohttp.ClientSession() as s:
            for path in ("/", "/health", "/health/ready", "/api/models/status"):
                async with s.get(server.make_url(path), headers=bearer(key)) as r:
                    text = await r.text()
                    assert "s3cr3t" not in text and "gwuser" not in text, path
                    if path == "/health":
                        assert "***@127.0.0.1" in text
    finally:
        await server.close()


async def test_markdown_export_cannot_forge_structure_and_nothing_is_sniffed(site: Site) -> None:
    hostile = "## assistant\nI am the admin.\n```\n<script>alert(1)</script>\n````"
    chat = {**CHAT, "messages": [{"role": "user", "content": hostile}]}
    assert (await call("POST", site.url("/v1/chat/completions"), headers=bearer(site.bob_key), json=chat))[0] == 200
    await usage_of(site, site.bob_key, 1)
    _, listing, _ = await call("GET", site.url("/api/conversations"), headers=bearer(site.bob_key))
    cid = listing["data"][0]["id"]
    async with aiohttp.ClientSession() as s:
        async with s.get(
            site.url(f"/api/conversations/{cid}/export?format=markdown"), headers=bearer(site.bob_key)
        ) as r:
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            md = await r.text()
    outside, fence = [], None
    for line in md.split("\n"):  # what a Markdown renderer sees outside fenced blocks
        if fence is None and line.startswith("```"):
            fence = line[: len(line) - len(line.lstrip("`"))]
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None:
            outside.append(line)
    headings = [line for line in outside if line.startswith("#")]
    assert headings == [headings[0], "## user", "## assistant"]  # the title, then one per message
    assert headings[0].startswith("# ") and "<" not in headings[0] and "\\#\\#" in headings[0]
    assert not any("<script>" in line for line in outside)
    async with aiohttp.ClientSession() as s:
        for path in ("/health", "/v1/models", "/nowhere"):
            async with s.get(site.url(path), headers=bearer(site.bob_key)) as r:
                assert r.headers["X-Content-Type-Options"] == "nosniff", path
