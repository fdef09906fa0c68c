"""Rate limits against a real Redis: shared by three gateway processes, live overrides, Redis
outages, spoofed X-Forwarded-For, released concurrency slots, token settlement, SDK retries."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from gwproxy.metrics import Metrics
from gwproxy.ratelimit.bucket import Limit
from gwproxy.ratelimit.redis_store import RedisStore
from gwproxy.ratelimit.store import MemoryStore
from tests.conftest import MODEL, Gateway, gwproxy_cli, provision, start_app, start_replicas
from tests.support.services import Redis

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_lua_and_python_buckets_agree(redis_server: Redis) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    shared, local = RedisStore(client, Metrics()), MemoryStore()
    rng = random.Random(5)
    limits = [Limit.per_window(20, 3600), Limit.per_window(7, 3600)]
    for i in range(60):
        costs = [rng.choice([1, 2, 3]), 1]
        keys = [f"a{i % 3}", "b"]
        d1, _ = await shared.admit(keys, limits, costs, None)
        d2, _ = await local.admit(keys, limits, costs, None)
        assert d1.allowed == d2.allowed, i
        for r1, r2 in zip(d1.readings, d2.readings, strict=True):
            assert r1.remaining == pytest.approx(r2.remaining, abs=0.05)
    await client.aclose()


@pytest.fixture
def three_gateways(
    log_dir: Path, sim: int, redis_server: Redis, tmp_path: Path
) -> Iterator[tuple[list[Gateway], Redis]]:
    env, key = provision(tmp_path)
    env = {
        **env,
        "REDIS_URL": redis_server.url,
        "RATE_LIMIT_REQUESTS": "100",
        "RATE_LIMIT_WINDOW": "3600",
        "GWPROXY_AUTH_KEY_CACHE_SECONDS": "0.5",
    }
    gateways = start_replicas(log_dir, sim, env, key, 3, "gateway-rl")
    yield gateways, redis_server
    for g in gateways:
        g.proc.stop()


async def fire(urls: list[str], n: int, headers: dict[str, str], concurrency: int = 500) -> list[int]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one(i: int) -> int:
            async with sem, s.post(urls[i % len(urls)] + "/v1/chat/completions", json=CHAT, headers=headers) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_exact_admission_across_three_replicas(three_gateways: tuple[list[Gateway], Redis]) -> None:
    gateways, _ = three_gateways
    statuses = await fire([g.url for g in gateways], 500, gateways[0].auth)
    assert statuses.count(200) == 100  # 100 per hour: no over- and no under-admission
    assert statuses.count(429) == 400
    async with aiohttp.ClientSession() as s:
        async with s.post(gateways[1].url + "/v1/chat/completions", json=CHAT, headers=gateways[1].auth) as r:
            assert r.status == 429
            body = await r.json()
            assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "rate_limit_error"
            assert int(r.headers["Retry-After"]) >= 30  # one token per 36 s
            assert r.headers["x-ratelimit-limit-requests"] == "100"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"


async def test_overrides_apply_live_on_every_replica(three_gateways: tuple[list[Gateway], Redis]) -> None:
    gateways, _ = three_gateways
    admin = gateways[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(admin.url + "/api/auth/me", headers=admin.auth) as r:
            me = await r.json()
        async with s.put(
            admin.url + f"/api/admin/users/{me['id']}/limits", headers=admin.auth, json={"requests": 5, "window": 3600}
        ) as r:
            assert r.status == 200
            shown = await r.json()
            assert shown["effective"]["requests"] == 5 and shown["overrides"]["tokens_per_minute"] is None
    await asyncio.sleep(0.6)  # the other replicas' caches expire
    statuses = await fire([g.url for g in gateways], 30, admin.auth, concurrency=10)
    assert statuses.count(200) == 5
    async with aiohttp.ClientSession() as s:  # back to the defaults
        async with s.put(admin.url + f"/api/admin/users/{me['id']}/limits", headers=admin.auth, json={}) as r:
            assert (await r.json())["effective"]["requests"] == 100


async def test_redis_outage_fails_open_then_recovers(three_gateways: tuple[list[Gateway], Redis]) -> None:
    gateways, redis_server = three_gateways
    g = gateways[0]
    assert (await fire([g.url], 3, g.auth)).count(200) == 3
    redis_server.kill()
    statuses = await fire([g.url], 10, g.auth, concurrency=2)
    assert statuses == [200] * 10  # served, limited in process meanwhile
    async with aiohttp.ClientSession() as s:
        async with s.get(g.url + "/metrics") as r:
            text = await r.text()
    errors = float(re.search(r"^gwproxy_ratelimit_backend_errors_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert errors >= 1
    redis_server.start()  # an empty Redis: buckets start full again
    await asyncio.sleep(1.2)
    statuses = await fire([g.url], 5, g.auth)
    assert statuses == [200] * 5
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    keys = await client.keys("gwrl:*")
    await client.aclose()
    assert keys, "after recovery the buckets live in Redis again"


async def test_fail_closed_answers_503(sim: int, redis_server: Redis) -> None:
    redis_server.kill()
    server = await start_app(sim, REDIS_URL=redis_server.url, GWPROXY_RATELIMIT_FAIL_OPEN="false")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/v1/chat/completions"), json=CHAT) as r:
                assert r.status == 503 and r.headers["Retry-After"]
                assert (await r.json())["error"]["code"] == "ratelimit_unavailable"
    finally:
        await server.close()


async def test_spoofed_forwarded_for_does_not_escape_the_ip_bucket(sim: int, redis_server: Redis) -> None:
    server = await start_app(
        sim, REDIS_URL=redis_server.url, RATE_LIMIT_REQUESTS="1000", GWPROXY_RATELIMIT_IP_REQUESTS="5"
    )
    try:
        async with aiohttp.ClientSession() as s:
            statuses = []
            for i in range(12):
                headers = {"X-Forwarded-For": f"198.51.100.{i}"}
                async with s.post(server.make_url("/v1/chat/completions"), json=CHAT, headers=headers) as r:
                    statuses.append(r.status)
        assert statuses.count(200) == 5  # the peer (127.0.0.1) is not a trusted proxy
    finally:
        await server.close()
    trusted = await start_app(
        sim,
        RATE_LIMIT_REQUESTS="1000",
        GWPROXY_RATELIMIT_IP_REQUESTS="5",
        GWPROXY_RATELIMIT_TRUSTED_PROXIES="127.0.0.1",
    )
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(12):  # behind a trusted proxy each client address has its own bucket
                headers = {"X-Forwarded-For": f"198.51.100.{i}"}
                async with s.post(trusted.make_url("/v1/chat/completions"), json=CHAT, headers=headers) as r:
                    assert r.status == 200
    finally:
        await trusted.close()


async def slot_count(redis_server: Redis) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    total = 0
    for key in await client.keys("gwrl:*:leases"):
        total += await client.zcount(key, time.time(), "+inf")  # leases not yet ended
    await client.aclose()
    return total


async def test_concurrency_slots_are_released(paced_sim: int, redis_server: Redis) -> None:
    server = await start_app(paced_sim, REDIS_URL=redis_server.url, GWPROXY_RATELIMIT_CONCURRENCY="2")
    url = server.make_url("/v1/chat/completions")
    long = {**CHAT, "max_tokens": 50, "ignore_eos": True, "stream": True}
    try:
        async with aiohttp.ClientSession() as s:
            first = await s.post(url, json=long)
            second = await s.post(url, json=long)
            async with s.post(url, json=long) as third:
                assert third.status == 429 and third.headers["Retry-After"] == "1"
            assert await slot_count(redis_server) == 2
            await first.read()  # completes
            second.close()  # the client goes away mid-stream
            async with s.post(url, json={**CHAT, "model": "no-such-model"}) as r:
                assert r.status == 404  # an upstream error also gives its slot back
            async with s.post(url, json={**CHAT, "temperature": -1}) as r:
                assert r.status == 400  # and a request the gateway refuses
        for _ in range(40):
            if await slot_count(redis_server) == 0:
                break
            await asyncio.sleep(0.05)
        assert await slot_count(redis_server) == 0
    finally:
        await server.close()


async def test_tokens_are_settled_to_real_usage(sim: int, redis_server: Redis) -> None:
    server = await start_app(sim, REDIS_URL=redis_server.url, GWPROXY_RATELIMIT_TOKENS_PER_MINUTE="1000")
    url = server.make_url("/v1/chat/completions")
    big = {**CHAT, "max_tokens": 600}  # estimated 600, really about 7 + 12..48
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=big) as r:
                assert r.status == 200 and r.headers["x-ratelimit-limit-tokens"] == "1000"
                assert int(r.headers["x-ratelimit-remaining-tokens"]) <= 400
            await asyncio.sleep(0.2)  # settlement runs after the response
            async with s.post(url, json=big) as r:
                assert r.status == 200  # admitted only because the first was refunded
            await asyncio.sleep(0.2)
            async with s.post(url, json={**big, "max_tokens": 1000}) as r:
                assert r.status == 429 and "tokens" in (await r.json())["error"]["message"]
    finally:
        await server.close()


async def test_sdk_retry_waits_for_the_refill(sim: int) -> None:
    server = await start_app(sim, RATE_LIMIT_REQUESTS="1", RATE_LIMIT_WINDOW="1.5")
    try:
        client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused", max_retries=3)
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], max_tokens=2)
        started = time.monotonic()
        resp = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "b"}], max_tokens=2
        )
        assert resp.choices[0].message.content
        assert 1.0 < time.monotonic() - started < 10  # it waited as Retry-After said, then succeeded
        await client.close()
    finally:
        await server.close()


def test_set_limits_from_the_command_line(tmp_path: Path) -> None:
    env, _ = provision(tmp_path)
    gwproxy_cli(env, "user", "set-limits", "admin", "--requests", "3", "--concurrency", "1")
    gwproxy_cli(env, "user", "set-limits", "admin")  # back to the defaults


async def test_rate_limit_headers_on_success(sim: int) -> None:
    server = await start_app(sim, RATE_LIMIT_REQUESTS="50", RATE_LIMIT_WINDOW="60")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/v1/chat/completions"), json=CHAT) as r:
                assert r.headers["x-ratelimit-limit-requests"] == "50"
                assert r.headers["x-ratelimit-remaining-requests"] == "49"
                assert r.headers["x-ratelimit-reset-requests"] == "2s"
    finally:
        await server.close()


async def test_sdk_without_retries_raises_rate_limit_error(sim: int) -> None:
    server = await start_app(sim, RATE_LIMIT_REQUESTS="1", RATE_LIMIT_WINDOW="60")
    try:
        client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0)
        await client.models.list()
        with pytest.raises(openai.RateLimitError) as exc:
            await client.models.list()
        assert exc.value.code == "rate_limit_exceeded"
        assert exc.value.response.headers["retry-after"] == "60"
        await client.close()
    finally:
        await server.close()


async def test_without_auth_each_address_has_its_own_bucket(sim: int) -> None:
    server = await start_app(sim, RATE_LIMIT_REQUESTS="3", GWPROXY_RATELIMIT_TRUSTED_PROXIES="127.0.0.1")
    try:
        async with aiohttp.ClientSession() as s:
            for client in ("198.51.100.1", "198.51.100.2"):
                statuses = []
                for _ in range(5):
                    headers = {"X-Forwarded-For": client}
                    async with s.post(server.make_url("/v1/chat/completions"), json=CHAT, headers=headers) as r:
                        statuses.append(r.status)
                assert statuses == [200, 200, 200, 429, 429], client  # not one bucket for everybody
    finally:
        await server.close()
