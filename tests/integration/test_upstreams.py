"""Several upstreams, with real simulator processes: two serve model A, one serves model B.

Routing by model, spread over A's replicas under load, conversation affinity, a replica killed
under load (no request lost that had not started streaming), ejection and return, per-upstream
metrics and status, the 404 that names what is served, the merged /v1/models, and the repeatable
``--upstream`` flag of ``gwproxy serve``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gwproxy.keys import UPSTREAM, USERS
from tests.conftest import MODEL, provision, start_app
from tests.support.procs import Proc, free_port, start_gateway, start_sim

A, B = "model-a", "model-b"


@dataclass
class Replica:
    name: str
    proc: Proc
    port: int
    model: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start(log_dir: Path, name: str, model: str, *extra: str, port: int | None = None) -> Replica:
    proc, port = start_sim(log_dir, "--model", model, *extra, name=name, port=port)
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    return Replica(name, proc, port, model)


def _fleet(log_dir: Path, prefix: str, *extra: str) -> list[Replica]:
    return [
        _start(log_dir, f"{prefix}-a1", A, *extra),
        _start(log_dir, f"{prefix}-a2", A, *extra),
        _start(log_dir, f"{prefix}-b", B, *extra),
    ]


def _upstreams(replicas: list[Replica]) -> str:
    return ",".join(f"{r.name}={r.url}/v1" for r in replicas)


@pytest.fixture(scope="module")
def fleet(log_dir: Path) -> Iterator[list[Replica]]:
    """a1 and a2 serve A, b serves B; each answers after 20 ms, 2 ms a token."""
    replicas = _fleet(log_dir, "fleet", "--ttft-ms", "20", "--itl-ms", "2")
    yield replicas
    for r in replicas:
        r.proc.stop()


@pytest.fixture
async def gateway(fleet: list[Replica]) -> AsyncIterator[TestServer]:
    server = await start_app(
        fleet[0].port,
        GWPROXY_UPSTREAMS=_upstreams(fleet),
        GWPROXY_UPSTREAM_METRICS_INTERVAL="0.2",
        GWPROXY_RATELIMIT_ENABLED="false",
    )
    yield server
    await server.close()


async def finished(session: aiohttp.ClientSession, replica: Replica) -> int:
    """Requests the replica finished (vLLM's ``vllm:request_success_total``, every reason)."""
    async with session.get(replica.url + "/metrics") as r:
        text = await r.text()
    return int(sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M)))


async def counts(session: aiohttp.ClientSession, replicas: list[Replica]) -> dict[str, int]:
    return {r.name: await finished(session, r) for r in replicas}


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


async def test_each_model_goes_to_the_upstreams_serving_it(gateway: TestServer, fleet: list[Replica]) -> None:
    url = str(gateway.make_url("/v1/chat/completions"))
    async with aiohttp.ClientSession() as s:
        before = await counts(s, fleet)
        for _ in range(4):
            async with s.post(url, json=chat(B, "to b")) as r:
                assert r.status == 200 and (await r.json())["model"] == B
        after = await counts(s, fleet)
        assert after[fleet[2].name] - before[fleet[2].name] == 4
        assert after[fleet[0].name] == before[fleet[0].name] and after[fleet[1].name] == before[fleet[1].name]

        async with s.get(gateway.make_url("/v1/models")) as r:  # one list, each model once
            listed = await r.json()
        assert listed["object"] == "list" and [c["id"] for c in listed["data"]] == [A, B]
        assert all(c["object"] == "model" and c["owned_by"] for c in listed["data"])
        async with s.get(gateway.make_url(f"/v1/models/{B}")) as r:
            assert r.status == 200 and (await r.json())["id"] == B

        async with s.post(url, json=chat("model-z", "nobody serves me")) as r:
            assert r.status == 404
            err = (await r.json())["error"]
        assert err["type"] == "NotFoundError" and err["code"] == 404 and err["param"] == "model"
        assert err["message"] == f"The model `model-z` does not exist. Valid aliases: {A}, {B}."


async def _load(url: str, model: str, clients: int, seconds: float) -> list[int]:
    """``clients`` callers, each sending distinct prompts back to back for ``seconds``."""
    statuses: list[int] = []
    stop = time.monotonic() + seconds
    seq = itertools.count()

    async def client(s: aiohttp.ClientSession, n: int) -> None:
        while time.monotonic() < stop:
            body = chat(model, f"client {n} request {next(seq)}", max_tokens=8)
            async with s.post(url, json=body) as r:
                await r.read()
                statuses.append(r.status)

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(client(s, n) for n in range(clients)))
    return statuses


async def test_a_model_is_spread_over_its_replicas_under_load(gateway: TestServer, fleet: list[Replica]) -> None:
    a1, a2 = fleet[0], fleet[1]
    async with aiohttp.ClientSession() as s:
        before = await counts(s, [a1, a2])
        statuses = await _load(str(gateway.make_url("/v1/chat/completions")), A, clients=10, seconds=3)
        after = await counts(s, [a1, a2])
    assert statuses and set(statuses) == {200}
    one, two = after[a1.name] - before[a1.name], after[a2.name] - before[a2.name]
    assert one + two == len(statuses)
    assert 0.4 <= one / (one + two) <= 0.6, (one, two)


async def test_a_conversation_sticks_to_one_replica(gateway: TestServer, fleet: list[Replica]) -> None:
    """Each turn of a conversation (same opening, growing history) reaches the replica its first
    turn went to, so vLLM's prefix cache there is reused; different conversations spread."""
    url = str(gateway.make_url("/v1/chat/completions"))
    a1, a2 = fleet[0], fleet[1]
    homes: set[str] = set()
    async with aiohttp.ClientSession() as s:
        for c in range(6):
            messages: list[dict[str, str]] = [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"conversation {c}: hello"},
            ]
            replicas: set[str] = set()
            for turn in range(4):
                before = await counts(s, [a1, a2])
                async with s.post(url, json={"model": A, "messages": messages, "max_tokens": 4}) as r:
                    assert r.status == 200
                    reply = (await r.json())["choices"][0]["message"]["content"]
                after = await counts(s, [a1, a2])
                replicas |= {name for name in after if after[name] != before[name]}
                messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"turn {turn}"}]
            assert len(replicas) == 1, f"conversation {c} moved between {replicas}"
            homes |= replicas
    assert homes == {a1.name, a2.name}  # the first turns are placed by load: both replicas get some


async def test_status_and_metrics_show_every_upstream(gateway: TestServer, fleet: list[Replica]) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.make_url("/v1/chat/completions"), json=chat(A, "count me")) as r:
            assert r.status == 200
        await asyncio.sleep(0.5)  # a scrape of each replica's /metrics
        async with s.get(gateway.make_url("/health")) as r:
            health = await r.json()
        async with s.get(gateway.make_url("/metrics")) as r:
            metrics = await r.text()
    shown = {u["name"]: u for u in health["components"]["upstreams"]}
    assert set(shown) == {r.name for r in fleet} and health["status"] == "ok"
    assert shown[fleet[2].name]["models"] == [B] and shown[fleet[0].name]["status"] == "up"
    assert shown[fleet[0].name]["metrics_fresh"] is True
    for r in fleet:
        assert f'gwproxy_upstream_up{{upstream="{r.name}"}} 1.0' in metrics
        assert f'gwproxy_upstream_ejected{{upstream="{r.name}"}} 0.0' in metrics
        assert f'gwproxy_upstream_in_flight{{upstream="{r.name}"}}' in metrics
    sent = re.findall(r'^gwproxy_upstream_requests_total\{upstream="([^"]+)"\} (\S+)$', metrics, re.M)
    assert sum(float(v) for _, v in sent) >= 1


async def _mixed_load(url: str, stop: asyncio.Event, clients: int) -> list[tuple[bool, int, bool, str]]:
    """(stream?, status, started streaming?, how it ended) per request, until ``stop``."""
    results: list[tuple[bool, int, bool, str]] = []
    seq = itertools.count()

    async def client(s: aiohttp.ClientSession, n: int) -> None:
        while not stop.is_set():
            stream = n % 2 == 0
            body = chat(A, f"client {n} request {next(seq)}", max_tokens=40, stream=stream)
            try:
                async with s.post(url, json=body) as r:
                    raw = await r.read()
            except aiohttp.ClientPayloadError:
                results.append((stream, 200, True, "cut"))
                continue
            if not stream:
                results.append((stream, r.status, False, "whole" if r.status == 200 else raw.decode()[:200]))
                continue
            started = b'"object":"chat.completion.chunk"' in raw  # it had begun: an event came
            ended = "whole" if b'"finish_reason":"length"' in raw else "error event"
            results.append((stream, r.status, started, ended))

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(client(s, n) for n in range(clients)))
    return results


async def test_a_replica_killed_under_load_loses_no_request_that_had_not_started_streaming(
    log_dir: Path,
) -> None:
    replicas = _fleet(log_dir, "kill", "--ttft-ms", "30", "--itl-ms", "5")
    a1, a2 = replicas[0], replicas[1]
    server = await start_app(
        a1.port,
        GWPROXY_UPSTREAMS=_upstreams(replicas),
        GWPROXY_UPSTREAM_EJECT_AFTER="2",
        GWPROXY_UPSTREAM_EJECT_SECONDS="1",
        GWPROXY_UPSTREAM_PROBE_INTERVAL="0.2",
        GWPROXY_RATELIMIT_ENABLED="false",
    )
    try:
        url = str(server.make_url("/v1/chat/completions"))
        stop = asyncio.Event()
        load = asyncio.create_task(_mixed_load(url, stop, clients=8))
        await asyncio.sleep(1.0)
        a2.proc.stop(signal.SIGKILL)
        await asyncio.sleep(1.5)
        stop.set()
        results = await load
        # Every request answered whole, except streams that had begun on a2 when it died: those
        # end with vLLM's error event (or are cut); nothing that had not started fails.
        for stream, status, started, ended in results:
            assert status == 200, (stream, status, ended)
            if ended != "whole":
                assert stream and started, (stream, status, started, ended)
        assert sum(1 for r in results if r[3] == "whole") > 20
        registry = server.app[UPSTREAM]
        dead = next(u for u in registry.upstreams if u.name == a2.name)
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/health")) as r:
                health = await r.json()
            assert health["status"] == "degraded"
            shown = {u["name"]: u["status"] for u in health["components"]["upstreams"]}
            # Out of rotation: ejected by its failures (streams cut, connections refused) or
            # marked down by the poller, whichever saw it first.
            assert shown[a2.name] in {"ejected", "down"} and shown[a1.name] == "up"
            assert dead.ejected or not dead.state.reachable
            async with s.get(server.make_url("/metrics")) as r:
                metrics = await r.text()
            assert f'gwproxy_upstream_failures_total{{kind="disconnected",upstream="{a2.name}"}}' in metrics

            # Back on its port: the poller (or, once the cool-down is over, a /health probe)
            # returns it to rotation.
            back = _start(log_dir, "kill-a2-again", A, port=a2.port)
            replicas.append(back)
            deadline = time.monotonic() + 10
            while (dead.ejected or not dead.state.reachable) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not dead.ejected and dead.state.reachable
            before = await finished(s, back)
            await _load(url, A, clients=4, seconds=1)
            assert await finished(s, back) > before  # traffic reaches it again
    finally:
        await server.close()
        for r in replicas:
            r.proc.stop()


async def test_a_502_before_the_first_byte_is_retried_on_another_replica(log_dir: Path, fleet: list[Replica]) -> None:
    """An upstream that answers 502 (a proxy in front of a dead vLLM, say) costs the client
    nothing while another replica serves the model."""
    from aiohttp import web

    mended = False

    async def broken(request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": A, "object": "model", "owned_by": "x"}]})
        if mended and request.path == "/health":
            return web.Response(status=200)
        return web.Response(status=502, text="bad gateway")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", broken)
    bad = TestServer(app, port=free_port())
    await bad.start_server()
    server = await start_app(
        fleet[0].port,
        GWPROXY_UPSTREAMS=f"bad=http://127.0.0.1:{bad.port}/v1,good={fleet[0].url}/v1",
        GWPROXY_UPSTREAM_EJECT_SECONDS="0.5",
        GWPROXY_UPSTREAM_PROBE_INTERVAL="0.1",
    )
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(6):
                async with s.post(server.make_url("/v1/chat/completions"), json=chat(A, f"try {i}")) as r:
                    assert r.status == 200, await r.text()
        registry = server.app[UPSTREAM]
        failing = next(u for u in registry.upstreams if u.name == "bad")
        assert failing.errors.get("status_502", 0) == 3 and failing.ejected  # three in a row: out
        assert failing.ejections == 1
        await asyncio.sleep(1.0)  # past the cool-down: probes of its /health keep failing
        assert failing.ejected
        mended = True
        deadline = time.monotonic() + 5
        while failing.ejected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not failing.ejected and failing.failures == 0  # a /health probe answered 200: back
    finally:
        await server.close()
        await bad.close()


def test_serve_takes_repeated_upstream_flags(log_dir: Path, fleet: list[Replica], tmp_path: Path) -> None:
    """``gwproxy serve --upstream URL --upstream URL``: every one polled, named by host:port."""
    a1, b = fleet[0], fleet[2]
    env, _ = provision(tmp_path)
    proc, port = start_gateway(log_dir, a1.port, "--upstream", f"{b.url}/v1", name="gateway-two-upstreams", env=env)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health/ready")
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as r:
            upstreams = orjson.loads(r.read())["components"]["upstreams"]
        assert [u["name"] for u in upstreams] == [f"127.0.0.1:{a1.port}", f"127.0.0.1:{b.port}"]
        assert [u["models"] for u in upstreams] == [[A], [B]]
        assert "gwproxy serving" in proc.output()
    finally:
        proc.stop()


async def _call(
    s: aiohttp.ClientSession, method: str, url: Any, token: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    async with s.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json() if r.content_type == "application/json" else {}


async def test_allowed_models_on_users_and_keys(fleet: list[Replica]) -> None:
    """A user's list, a key's list (narrowing its user's), enforced on routing and on /v1/models;
    set through the admin API and the key API, lifted with null."""
    server = await start_app(
        fleet[0].port,
        GWPROXY_UPSTREAMS=_upstreams(fleet),
        GWPROXY_AUTH_ENABLED="true",
        GWPROXY_AUTH_KEY_CACHE_SECONDS="0.1",
        GWPROXY_RATELIMIT_ENABLED="false",
    )
    users = server.app[USERS]
    admin = await users.create_user("root", "root-password", "admin")
    admin_key, _ = await users.create_key(admin.id, "admin")
    url = server.make_url
    try:
        async with aiohttp.ClientSession() as s:
            new_user = {"username": "carol", "password": "carol-password", "allowed_models": [A]}
            status, carol = await _call(s, "POST", url("/api/admin/users"), admin_key, new_user)
            assert status == 201 and carol["allowed_models"] == [A]
            carol_key, _ = await users.create_key(carol["id"], "carol")
            status, _ = await _call(s, "POST", url("/v1/chat/completions"), carol_key, chat(A, "mine"))
            assert status == 200
            status, body = await _call(s, "POST", url("/v1/chat/completions"), carol_key, chat(B, "not mine"))
            assert status == 403
            assert body["error"]["code"] == "model_not_allowed" and body["error"]["param"] == "model"
            assert f"`{B}`" in body["error"]["message"] and A in body["error"]["message"]
            status, listed = await _call(s, "GET", url("/v1/models"), carol_key)
            assert [c["id"] for c in listed["data"]] == [A]
            status, _ = await _call(s, "GET", url(f"/v1/models/{B}"), carol_key)
            assert status == 403

            # A key narrows its user's list: carol's key for [A, B] still may not use B.
            status, key = await _call(s, "POST", url("/api/auth/keys"), carol_key, {"allowed_models": [A, B]})
            assert status == 201 and key["allowed_models"] == [A, B]
            status, _ = await _call(s, "POST", url("/v1/chat/completions"), key["key"], chat(B, "still not"))
            assert status == 403

            # The admin's own key limited to B.
            status, only_b = await _call(s, "POST", url("/api/auth/keys"), admin_key, {"allowed_models": [B]})
            assert status == 201
            status, _ = await _call(s, "POST", url("/v1/chat/completions"), only_b["key"], chat(A, "no"))
            assert status == 403
            status, _ = await _call(s, "POST", url("/v1/chat/completions"), only_b["key"], chat(B, "yes"))
            assert status == 200
            status, listed = await _call(s, "GET", url("/v1/models"), only_b["key"])
            assert [c["id"] for c in listed["data"]] == [B]
            status, listed = await _call(s, "GET", url("/v1/models"), admin_key)
            assert [c["id"] for c in listed["data"]] == [A, B]

            # Lifted: null means any model again (within the key cache's lifetime).
            status, changed = await _call(s, "PATCH", url(f"/api/admin/users/{carol['id']}"), admin_key,
                                          {"allowed_models": None})  # fmt: skip
            assert status == 200 and changed["allowed_models"] is None
            await asyncio.sleep(0.2)
            status, _ = await _call(s, "POST", url("/v1/chat/completions"), carol_key, chat(B, "now mine"))
            assert status == 200
            status, body = await _call(s, "PATCH", url(f"/api/admin/users/{carol['id']}"), admin_key,
                                       {"allowed_models": [""]})  # fmt: skip
            assert status == 400
    finally:
        await server.close()


async def test_a_limited_key_sees_a_filtered_model_list_with_one_upstream(sim: int) -> None:
    """With one upstream the list is vLLM's own bytes, unless the caller is limited: then the
    gateway builds it, with only what the caller may name."""
    server = await start_app(sim, GWPROXY_AUTH_ENABLED="true")
    users = server.app[USERS]
    admin = await users.create_user("root", "root-password", "admin")
    everything, _ = await users.create_key(admin.id, "all")
    nothing, _ = await users.create_key(admin.id, "none", allowed_models=["no-such-model"])
    try:
        async with aiohttp.ClientSession() as s:
            status, listed = await _call(s, "GET", server.make_url("/v1/models"), everything)
            assert status == 200 and len(listed["data"]) >= 1
            status, listed = await _call(s, "GET", server.make_url("/v1/models"), nothing)
            assert status == 200 and listed == {"object": "list", "data": []}
            status, body = await _call(s, "POST", server.make_url("/v1/chat/completions"), nothing, chat(MODEL, "x"))
            assert status == 403 and body["error"]["code"] == "model_not_allowed"
            # a request naming no model is the current model's: refused too
            status, body = await _call(s, "POST", server.make_url("/v1/chat/completions"), nothing,
                                       {"messages": [{"role": "user", "content": "x"}]})  # fmt: skip
            assert status == 403
    finally:
        await server.close()
