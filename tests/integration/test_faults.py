"""The promises on the recovery paths, with real faults: PostgreSQL stopped (``pg_ctl stop``),
Redis killed and restarted or frozen (SIGSTOP), an upstream slow to its first token."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gwproxy.keys import USERS
from tests.conftest import MODEL, Gateway, gwproxy_cli, provision, start_app, start_replicas
from tests.integration.test_ratelimit import fire
from tests.support.procs import start_gateway, start_sim
from tests.support.services import Postgres, Redis

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def slow_first_token(log_dir: Path) -> Iterator[int]:
    """A simulator that queues and prefills for 1.5 s before the first token, then 10 ms a token."""
    proc, port = start_sim(log_dir, "--seed", "7", "--model", MODEL, "--ttft-ms", "1500", "--itl-ms", "10",
                           name="slow-first-token-sim")  # fmt: skip
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    yield port
    proc.stop()


async def _stream(url: str) -> tuple[int, list[str]]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={**CHAT, "stream": True}) as r:
            return r.status, re.findall(r"data: (.*)\n\n", (await r.read()).decode())


async def test_a_stream_waits_for_its_first_token_as_long_as_a_plain_request(slow_first_token: int) -> None:
    server = await start_app(
        slow_first_token, GWPROXY_UPSTREAM_IDLE_TIMEOUT="0.5", GWPROXY_UPSTREAM_FIRST_BYTE_TIMEOUT="5"
    )
    try:
        url = str(server.make_url("/v1/chat/completions"))
        status, events = await _stream(url)
        assert status == 200 and events[-1] == "[DONE]"
        assert all("error" not in orjson.loads(e) for e in events[:-1])  # its plain twin succeeds too:
        async with aiohttp.ClientSession() as s, s.post(url, json=CHAT) as r:
            assert r.status == 200
    finally:
        await server.close()


async def test_the_first_token_is_bounded_by_the_first_byte_timeout(slow_first_token: int) -> None:
    server = await start_app(
        slow_first_token, GWPROXY_UPSTREAM_IDLE_TIMEOUT="30", GWPROXY_UPSTREAM_FIRST_BYTE_TIMEOUT="0.5"
    )
    try:
        started = time.monotonic()
        status, events = await _stream(str(server.make_url("/v1/chat/completions")))
        assert status == 200 and events[-1] == "[DONE]" and time.monotonic() - started < 1.4
        error = orjson.loads(events[-2])["error"]
        assert error["code"] == 504 and "first chunk" in error["message"]
    finally:
        await server.close()


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    pg = Postgres()  # its own server: the test stops it
    yield pg
    pg.stop()


async def test_the_database_away_is_a_503_on_every_api_route(
    log_dir: Path, sim: int, own_postgres: Postgres, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": own_postgres.create_database("faults"), "JWT_SECRET": "faults-" + "k" * 40}
    gwproxy_cli(env, "migrate")
    gwproxy_cli(env, "user", "add", "ann", "--password-stdin", stdin="ann-password\n")
    auth = {"Authorization": "Bearer " + gwproxy_cli(env, "key", "create", "--user", "ann").strip()}
    proc, port = start_gateway(
        log_dir, sim, name="gateway-db-away",
        env={**env, "GWPROXY_AUTH_KEY_CACHE_SECONDS": "600", "GWPROXY_CAPTURE_SPOOL_DIR": str(tmp_path / "spool"),
             "GWPROXY_CAPTURE_BATCH_SECONDS": "0.02", "GWPROXY_RATELIMIT_ENABLED": "false"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=auth) as s:
            async with s.post(f"{base}/api/chat", json={"messages": CHAT["messages"], "max_tokens": 4}) as r:
                assert r.status == 200
                cid = r.headers["X-Conversation-Id"]
            async with s.post(f"{base}/api/conversations", json={"title": "older"}) as r:
                older = (await r.json())["id"]  # known to the database only
            own_postgres.halt()
            turn = {"conversation_id": cid, "messages": [{"role": "user", "content": "and then?"}], "max_tokens": 4}
            async with s.post(f"{base}/api/chat", json=turn) as r:
                assert r.status == 200  # just served here: its branch is at hand without the database
            for method, path, body in (
                ("POST", "/api/chat", {**turn, "conversation_id": older}),
                ("GET", "/api/conversations", None),
                ("GET", f"/api/conversations/{cid}", None),
                ("GET", "/api/usage", None),
            ):
                async with s.request(method, base + path, json=body) as r:
                    answer = await r.json()
                    assert r.status == 503, (path, answer)
                    assert answer["error"]["code"] == "database_unavailable" and int(r.headers["Retry-After"]) >= 1
            async with s.post(f"{base}/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200  # chats go on: captured turns are spooled meanwhile
            own_postgres.start()
            for _ in range(100):
                async with s.post(f"{base}/api/chat", json={**turn, "conversation_id": older}) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert r.status == 200
    finally:
        proc.stop()


# -- Redis: a restart must not open the gates; a lost release holds nobody out past one lease --


@pytest.fixture
def limited_replicas(log_dir: Path, sim: int, redis_server: Redis, tmp_path: Path) -> Iterator[list[Gateway]]:
    env, key = provision(tmp_path)
    env = {**env, "REDIS_URL": redis_server.url, "RATE_LIMIT_REQUESTS": "50", "RATE_LIMIT_WINDOW": "60",
           "GWPROXY_CAPTURE_ENABLED": "false"}  # fmt: skip
    gateways = start_replicas(log_dir, sim, env, key, 3, "gateway-restart")
    yield gateways
    for g in gateways:
        g.proc.stop()


async def test_a_redis_restart_does_not_open_the_gates(limited_replicas: list[Gateway], redis_server: Redis) -> None:
    urls = [g.url for g in limited_replicas]
    auth = limited_replicas[0].auth
    assert (await fire(urls, 30, auth, concurrency=30)).count(200) == 30  # every replica pools connections
    redis_server.kill()
    redis_server.start()  # empty: every bucket is full again, every pooled connection is stale
    await asyncio.sleep(2)
    started = time.monotonic()
    statuses = await fire(urls, 300, auth, concurrency=300)
    refill = 50 / 60 * (time.monotonic() - started)
    assert statuses.count(200) <= 50 + refill + 1, statuses.count(200)
    assert statuses.count(200) >= 50  # and Redis, not a fallback, decided: nothing under-admitted
    assert set(statuses) == {200, 429}


async def held_out_for(url: str, auth: dict[str, str], limit: float) -> float:
    """Seconds until a request of ``auth``'s user is admitted again (polling), at most ``limit``."""
    started = time.monotonic()
    async with aiohttp.ClientSession(headers=auth) as s:
        while time.monotonic() - started < limit:
            async with s.post(url + "/v1/chat/completions", json=CHAT) as r:
                await r.read()
                if r.status == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.1)
    return limit


@pytest.fixture
def leased(log_dir: Path, paced_sim: int, redis_server: Redis, tmp_path: Path) -> Iterator[list[Gateway]]:
    """Two replicas, at most 3 requests of a user at once, 3 s leases."""
    env, key = provision(tmp_path)
    env = {**env, "REDIS_URL": redis_server.url, "GWPROXY_RATELIMIT_CONCURRENCY": "3",
           "GWPROXY_RATELIMIT_LEASE_SECONDS": "3", "GWPROXY_CAPTURE_ENABLED": "false"}  # fmt: skip
    gateways = start_replicas(log_dir, paced_sim, env, key, 2, "gateway-lease")
    yield gateways
    for g in gateways:
        g.proc.stop()


LONG = {**CHAT, "max_tokens": 25, "ignore_eos": True, "stream": True}  # about 1 s on the paced simulator


async def test_slots_of_a_killed_replica_free_within_one_lease(leased: list[Gateway]) -> None:
    doomed, survivor = leased
    async with aiohttp.ClientSession(headers=doomed.auth) as s:
        streams = [
            await s.post(doomed.url + "/v1/chat/completions", json={**LONG, "max_tokens": 400}) for _ in range(3)
        ]
        assert all(r.status == 200 for r in streams)
        async with s.post(survivor.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 429  # three in flight on the other replica
        doomed.proc.stop(signal.SIGKILL)  # its releases never come
        for r in streams:
            r.close()
    waited = await held_out_for(survivor.url, survivor.auth, 15)
    assert waited <= 3 + 1, waited  # one lease (the last renewal was at most lease / 3 before the kill)


async def test_after_a_frozen_redis_nobody_is_held_out_past_one_lease(
    leased: list[Gateway], redis_server: Redis
) -> None:
    """Releases time out while Redis is stopped (SIGSTOP) and are retried; whichever comes first,
    the retried release or the lease's end, frees the user. (A release already written to the
    frozen server's socket still runs when it resumes, so this passed before leases too; the
    killed replica above is the release that never comes.)"""
    g = leased[0]
    async with aiohttp.ClientSession(headers=g.auth) as s:
        streams = [await s.post(g.url + "/v1/chat/completions", json=LONG) for _ in range(3)]
        redis_server.freeze()  # the three releases (and their first retries) time out
        try:
            for r in streams:
                await r.read()
            await asyncio.sleep(3)
        finally:
            redis_server.thaw()
    waited = await held_out_for(g.url, g.auth, 15)
    assert waited <= 3 + 1.5, waited  # one lease, and the second Redis is retried after a failure


# -- read-your-writes: the conversation id /api/chat hands out is usable at once --------------


async def _chat_site(sim: int, db_url: str, tmp: Path) -> tuple[Any, dict[str, str]]:
    server = await start_app(
        sim, db_url, GWPROXY_AUTH_ENABLED="true", GWPROXY_CAPTURE_PROCESS="false",
        GWPROXY_CAPTURE_SPOOL_DIR=str(tmp / "spool"), GWPROXY_CAPTURE_BATCH_SECONDS="0.5",
        GWPROXY_RATELIMIT_ENABLED="false",
    )  # fmt: skip
    users = server.app[USERS]
    try:
        user = await users.create_user("reader", "reader-password")
    except Exception:  # a second replica on the same database
        user = await users.find_user("reader")
    key, _ = await users.create_key(user.id)
    return server, {"Authorization": f"Bearer {key}"}


async def test_a_conversation_id_is_usable_the_moment_it_is_handed_out(
    sim: int, db_url: str, engine: Any, tmp_path: Path
) -> None:
    server, auth = await _chat_site(sim, db_url, tmp_path / "a")
    other, other_auth = await _chat_site(sim, db_url, tmp_path / "b")
    base = str(server.make_url("/api/chat"))
    try:
        async with aiohttp.ClientSession(headers=auth) as s:

            async def two_turns(n: int) -> str:
                first = {"messages": [{"role": "user", "content": f"conversation {n}"}], "max_tokens": 6}
                async with s.post(base, json=first) as r:
                    assert r.status == 200
                    cid = r.headers["X-Conversation-Id"]
                follow = {"conversation_id": cid, "messages": [{"role": "user", "content": "and then?"}],
                          "max_tokens": 6, "stream": n % 2 == 0}  # fmt: skip
                async with s.post(base, json=follow) as r:  # at once: the writer has not written turn one
                    assert r.status == 200, await r.text()
                    await r.read()
                return cid

            cids = await asyncio.gather(*(two_turns(n) for n in range(20)))
            async with aiohttp.ClientSession(headers=other_auth) as o:  # another replica, at once too
                async with o.get(other.make_url(f"/api/conversations/{cids[-1]}")) as r:
                    assert r.status == 200
            for n, cid in enumerate(cids):
                for _ in range(100):
                    async with s.get(server.make_url(f"/api/conversations/{cid}")) as r:
                        stored = await r.json()
                    if len(stored["messages"]) == 4:
                        break
                    await asyncio.sleep(0.05)
                assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"], stored
                assert stored["branch"] == [m["id"] for m in stored["messages"]]  # one branch: history was sent
                assert stored["title"] == f"conversation {n}"
            async with s.get(server.make_url("/api/conversations"), params={"limit": 100}) as r:
                assert len((await r.json())["data"]) == 20  # no turn started a conversation of its own
    finally:
        await server.close()
        await other.close()


async def test_a_refused_chat_leaves_no_empty_conversation(sim: int, db_url: str, engine: Any, tmp_path: Path) -> None:
    server, auth = await _chat_site(sim, db_url, tmp_path)
    try:
        async with aiohttp.ClientSession(headers=auth) as s:
            body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(server.make_url("/api/chat"), json=body) as r:
                assert r.status == 404  # vLLM's answer for an unknown model, passed on
                cid = r.headers["X-Conversation-Id"]
            async with s.get(server.make_url(f"/api/conversations/{cid}")) as r:
                assert r.status == 404
            async with s.get(server.make_url("/api/conversations")) as r:
                assert (await r.json())["data"] == []
    finally:
        await server.close()
