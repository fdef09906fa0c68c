"""Models loaded on demand (``switch.on_demand``), with the process backend running real simulator
processes on a hardware snapshot: one 24 GiB GPU (21.6 GiB at 0.9) on which the switched model
``alpha`` (7.6 GiB with its KV cache and reserve) and one of ``beta`` (10.6) or ``gamma`` (9.6)
fit together, not all three; ``giant`` never fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gwproxy.keys import GATE, SWITCHER, USERS
from gwproxy.switcher.fleet import Fleet
from tests.support.procs import free_port
from tests.support.switching import start_switching_app, write_profile

SIM = f"{sys.executable} -m gwproxy sim --ttft-ms 20 --itl-ms 5"
SLOW_START = [sys.executable, "-m", "gwproxy", "sim", "--ttft-ms", "20", "--itl-ms", "5", "--startup-delay", "1.5"]


def _profiles(directory: Path, **beta: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_profile(directory, "alpha", default=True, weights_gib=6.0)
    write_profile(
        directory, "beta", **{"weights_gib": 9.0, "served_names": ["beta-chat"], "command": SLOW_START, **beta}
    )
    write_profile(directory, "gamma", weights_gib=8.0)
    write_profile(directory, "giant", weights_gib=30.0)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    base = free_port()
    return {
        "GWPROXY_SWITCH_BACKEND": "process",
        "GWPROXY_SWITCH_ON_DEMAND": "true",
        "GWPROXY_SWITCH_PROFILES_DIR": str(tmp / "profiles"),
        "GWPROXY_SWITCH_HARDWARE": "1 x Test GPU 24GiB",
        "GWPROXY_SWITCH_PROCESS_COMMAND": SIM,
        "GWPROXY_SWITCH_STATE_DIR": str(tmp / "state"),
        "GWPROXY_SWITCH_VLLM_HOST": "127.0.0.1",
        "GWPROXY_SWITCH_READY_POLL": "0.1",
        "GWPROXY_SWITCH_HOLD_SECONDS": "15",
        "GWPROXY_SWITCH_RETRY_AFTER": "2",
        "GWPROXY_SWITCH_STOP_TIMEOUT": "5",
        "GWPROXY_SWITCH_STOP_ON_EXIT": "true",
        "GWPROXY_SWITCH_MIN_RESIDENCY": "0.5",
        "GWPROXY_SWITCH_PORT_RANGE": f"{base + 1}-{base + 40}" if base + 40 < 65535 else "20000-20040",
        "GWPROXY_RATELIMIT_ENABLED": "false",
        **extra,
    }


async def _up(tmp: Path, port: int | None = None, **extra: str) -> TestServer:
    """A gateway whose switcher starts ``alpha`` (on ``port``); returned once alpha serves."""
    server: TestServer = await start_switching_app(port or free_port(), 30, **_env(tmp, **extra))
    return server


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[TestServer]:
    _profiles(tmp_path / "profiles")
    server = await _up(tmp_path)
    yield server
    await server.close()


def fleet(server: TestServer) -> Fleet:
    found = server.app[SWITCHER].fleet
    assert found is not None
    return found


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, **extra}


async def post(s: aiohttp.ClientSession, server: TestServer, body: Any, path: str = "/v1/chat/completions") -> Any:
    async with s.post(server.make_url(path), json=body) as r:
        data = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, data, r.headers


async def test_a_request_for_a_model_not_running_loads_it_while_the_others_keep_serving(gateway: TestServer) -> None:
    async with aiohttp.ClientSession() as s:
        timings: list[float] = []
        loading = asyncio.create_task(post(s, gateway, chat("beta-chat")))  # loads for 1.5 s
        while not loading.done():
            started = time.monotonic()
            status, body, _ = await post(s, gateway, chat("alpha"))
            assert status == 200 and body["model"] == "alpha"
            timings.append(time.monotonic() - started)
        status, body, _ = await loading
        assert status == 200 and body["model"] == "beta-chat"
        assert len(timings) >= 5 and max(timings) < 1.0  # alpha was never held up by beta's load
        # The profile id names it too (rewritten to the served name vLLM knows).
        status, body, _ = await post(s, gateway, chat("beta"))
        assert status == 200 and body["model"] == "beta-chat"
        async with s.get(gateway.make_url("/api/models/status")) as r:
            status_doc = await r.json()
    [beta] = status_doc["instances"]
    assert status_doc["on_demand"] is True
    shown = (beta["profile_id"], beta["state"], beta["gpus"], beta["memory_gib_per_gpu"])
    assert shown == ("beta", "ready", [0], 10.5)  # 9 GiB of weights, 4 MiB of KV cache, 1.5 GiB reserve
    assert any(u["name"] == "beta" and u["models"] == ["beta-chat"] for u in status_doc["upstreams"])


async def test_requests_for_one_loading_model_share_one_load(gateway: TestServer) -> None:
    async with aiohttp.ClientSession() as s:
        answers = await asyncio.gather(*(post(s, gateway, chat("gamma")) for _ in range(6)))
    assert [a[0] for a in answers] == [200] * 6
    loads = gateway.app[SWITCHER].metrics.load_seconds.series
    assert sum(loads["gamma"][0]) == 1  # one load for the six


async def test_memory_short_evicts_the_idle_model_never_a_busy_one(gateway: TestServer) -> None:
    f = fleet(gateway)
    async with aiohttp.ClientSession() as s:
        assert (await post(s, gateway, chat("beta")))[0] == 200
        await asyncio.sleep(0.6)  # past the minimum residency
        assert (await post(s, gateway, chat("gamma")))[0] == 200  # beta (idle) makes room
        assert set(f.residents) == {"gamma"}
        await asyncio.sleep(0.6)

        # gamma streams for about 3 s: busy, so a request for beta cannot evict it and waits.
        async def stream() -> bytes:
            body = chat("gamma", max_tokens=600, ignore_eos=True, stream=True)
            async with s.post(gateway.make_url("/v1/chat/completions"), json=body) as r:
                assert r.status == 200
                return await r.read()

        streaming = asyncio.create_task(stream())
        await asyncio.sleep(0.3)
        started = time.monotonic()
        status, _, _ = await post(s, gateway, chat("beta"))
        waited = time.monotonic() - started
        streamed = await streaming
        assert streamed.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"length"' in streamed  # whole
        assert status == 200 and waited > 1.5  # it waited for gamma to finish, then evicted it
        assert set(f.residents) == {"beta"}


async def test_a_request_that_waits_too_long_gets_503_with_retry_after(tmp_path: Path) -> None:
    _profiles(tmp_path / "profiles")
    server = await _up(tmp_path, GWPROXY_SWITCH_HOLD_SECONDS="1")
    try:
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 20
            while (answer := await post(s, server, chat("gamma")))[0] != 200:  # its load may outlast the hold
                assert answer[0] == 503 and answer[2]["Retry-After"] == "2" and time.monotonic() < deadline
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.6)
            body = chat("gamma", max_tokens=400, ignore_eos=True, stream=True)
            async with s.post(server.make_url("/v1/chat/completions"), json=body) as busy:
                assert busy.status == 200
                status, err, headers = await post(s, server, chat("beta"))  # beta (1.5 s to start) or room
                assert status == 503 and headers["Retry-After"] == "2"
                assert err["error"]["code"] == "model_not_ready" and "beta" in err["error"]["message"]
                assert (await busy.read()).endswith(b"data: [DONE]\n\n")
    finally:
        await server.close()


async def test_ttl_unloads_an_idle_model(tmp_path: Path) -> None:
    _profiles(tmp_path / "profiles", ttl=1)
    server = await _up(tmp_path)
    try:
        f = fleet(server)
        async with aiohttp.ClientSession() as s:
            assert (await post(s, server, chat("beta")))[0] == 200
        pid = int(f.residents["beta"].instance.handle)  # type: ignore[union-attr]
        deadline = time.monotonic() + 6
        while "beta" in f.residents and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "beta" not in f.residents

        def running() -> bool:
            try:
                return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]
            except OSError:
                return False  # gone

        while running() and time.monotonic() < deadline + 10:  # SIGTERM, then its exit
            await asyncio.sleep(0.1)
        assert not running()
    finally:
        await server.close()


async def test_model_list_unknown_models_and_what_never_fits(gateway: TestServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.make_url("/v1/models")) as r:
            cards = {c["id"]: c for c in (await r.json())["data"]}
        assert set(cards) == {"alpha", "beta-chat", "gamma", "giant"}
        assert "gwproxy" not in cards["alpha"] and cards["alpha"]["owned_by"] == "vllm"  # running: vLLM's card
        assert cards["beta-chat"]["gwproxy"] == {"state": "loadable", "profile_id": "beta", "name": "Beta"}
        status, err, _ = await post(s, gateway, chat("nobody"))
        assert status == 404 and err["error"]["type"] == "NotFoundError"
        assert "Valid aliases: alpha" in err["error"]["message"]
        status, err, headers = await post(s, gateway, chat("giant"))
        assert status == 503 and err["error"]["code"] == "model_does_not_fit" and "Retry-After" in headers
        assert "giant" in err["error"]["message"] and "GiB" in err["error"]["message"]


async def test_load_and_unload_through_the_admin_api(gateway: TestServer) -> None:
    f = fleet(gateway)
    async with aiohttp.ClientSession() as s:
        status, body, _ = await post(s, gateway, {"profile_id": "gamma"}, "/api/models/load")
        assert status == 202 and body["state"] == "loading" and body["instance"]["profile_id"] == "gamma"
        deadline = time.monotonic() + 10
        while not (f.residents.get("gamma") and f.residents["gamma"].state == "ready"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        status, body, _ = await post(s, gateway, {"profile_id": "gamma"}, "/api/models/load")
        assert status == 200 and body["state"] == "ready"
        status, body, _ = await post(s, gateway, {"profile_id": "giant"}, "/api/models/load")
        assert status == 409 and "does not fit" in body["error"]["message"] and "GiB" in body["error"]["message"]
        status, body, _ = await post(s, gateway, {"profile_id": "nope"}, "/api/models/load")
        assert status == 404
        status, body, _ = await post(s, gateway, {"profile_id": "alpha"}, "/api/models/unload")
        assert status == 409  # the switched model: switch instead
        status, body, _ = await post(s, gateway, {"profile_id": "gamma"}, "/api/models/unload")
        assert status == 200 and "gamma" not in f.residents
        status, _, _ = await post(s, gateway, chat("gamma"))  # and it comes back on demand
        assert status == 200


async def test_users_cause_loads_only_when_their_role_may(tmp_path: Path) -> None:
    _profiles(tmp_path / "profiles")
    server = await _up(tmp_path, GWPROXY_AUTH_ENABLED="true", GWPROXY_SWITCH_ON_DEMAND_ROLES="admin")
    try:
        users = server.app[USERS]
        bob = await users.create_user("bob", "bob-password")
        key, _ = await users.create_key(bob.id)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
            status, err, _ = await post(s, server, chat("gamma"))
            assert status == 403 and err["error"]["code"] == "load_not_allowed"
            status, _, _ = await post(s, server, chat("alpha"))
            assert status == 200  # what runs, anyone may use
    finally:
        await server.close()


async def test_a_restarted_gateway_adopts_the_models_it_loaded(tmp_path: Path) -> None:
    _profiles(tmp_path / "profiles")
    write_profile(tmp_path / "profiles", "delta", weights_gib=2.0)  # 3.5 GiB: fits beside alpha and gamma
    port = free_port()
    server = await _up(tmp_path, port, GWPROXY_SWITCH_STOP_ON_EXIT="false")
    pids: list[int] = []
    try:
        async with aiohttp.ClientSession() as s:
            assert (await post(s, server, chat("gamma")))[0] == 200
        gamma = fleet(server).residents["gamma"]
        pids = [int(gamma.instance.handle)]  # type: ignore[union-attr]
        primary = server.app[SWITCHER].instance
        assert primary is not None
        pids.append(int(primary.handle))
        async with aiohttp.ClientSession() as s:
            assert (await post(s, server, chat("delta")))[0] == 200
        assert set(fleet(server).residents) == {"gamma", "delta"}
        pids.append(int(fleet(server).residents["delta"].instance.handle))  # type: ignore[union-attr]
        await server.close()
        os.killpg(pids[2], signal.SIGKILL)  # delta dies while no gateway watches
        server = await _up(tmp_path, port, GWPROXY_SWITCH_STOP_ON_EXIT="true")
        async with aiohttp.ClientSession() as s, s.get(server.make_url("/api/models/status")) as r:
            interrupted = (await r.json())["interrupted"]
        assert len(interrupted) == 1 and "'delta'" in interrupted[0]  # said in the status
        assert "delta" not in fleet(server).residents
        adopted = fleet(server).residents["gamma"]
        assert int(adopted.instance.handle) == pids[0]  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while adopted.state != "ready":  # routed to once it answers again
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as s:
            status, body, _ = await post(s, server, chat("gamma"))
            assert status == 200 and body["model"] == "gamma"
    finally:
        await server.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


async def test_clients_alternating_between_three_models_get_completions_or_503s(gateway: TestServer) -> None:
    """10 clients, each cycling through alpha, beta and gamma for a minute: only two fit at once,
    so loads and evictions go on all the time; every answer is a completion or a 503 with
    Retry-After."""
    seen: Counter[int] = Counter()
    other: list[str] = []
    stop = time.monotonic() + 60
    models = ("alpha", "beta-chat", "gamma")

    async def client(n: int, s: aiohttp.ClientSession) -> None:
        i = n
        while time.monotonic() < stop:
            body = chat(models[i % 3], max_tokens=6, stream=n % 2 == 0)
            i += 1
            async with s.post(gateway.make_url("/v1/chat/completions"), json=body) as r:
                text = await r.text()
                seen[r.status] += 1
                if r.status == 503 and "Retry-After" in r.headers:
                    await asyncio.sleep(0.2)
                elif r.status != 200 or "error" in text[:200]:
                    other.append(f"{r.status} {text[:200]}")

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(client(n, s) for n in range(10)))
    assert not other, other[:5]
    assert seen[200] > 50, seen


async def test_eviction_puts_a_sleep_mode_model_to_sleep_and_a_request_wakes_it(tmp_path: Path) -> None:
    """beta sleeps (vLLM's sleep mode, level 1) instead of stopping when gamma needs the room; a
    request for beta then wakes it where it sleeps — faster than its cold start — after gamma
    (idle) makes room again. The simulator's /sleep and /wake_up are served only in vLLM's dev
    mode, which the gateway sets for such instances (and keeps private: it does not forward them)."""
    _profiles(tmp_path / "profiles", sleep_level=1, command=[*SLOW_START, "--sleep-ms", "100", "--wake-ms", "300"])
    server = await _up(tmp_path)
    try:
        f = fleet(server)
        async with aiohttp.ClientSession() as s:
            assert (await post(s, server, chat("beta")))[0] == 200
            beta = f.residents["beta"]
            cold = beta.last_start
            assert cold is not None and cold["kind"] == "cold" and cold["seconds"] > 1.5
            pid = int(beta.instance.handle)  # type: ignore[union-attr]
            await asyncio.sleep(0.6)
            assert (await post(s, server, chat("gamma")))[0] == 200
            assert beta.state == "sleeping" and beta.asleep == 1 and Path(f"/proc/{pid}").exists()
            async with s.get(server.make_url("/api/models/status")) as r:
                shown = {i["profile_id"]: i for i in (await r.json())["instances"]}
            assert shown["beta"]["state"] == "sleeping" and shown["beta"]["memory_gib_per_gpu"] == 1.2
            assert shown["beta"]["host_gib"] == 9.0
            async with s.post(server.make_url("/sleep"), params={"level": "1"}) as r:
                assert r.status == 404  # the gateway does not expose vLLM's dev-mode routes
            await asyncio.sleep(0.6)
            status, body, _ = await post(s, server, chat("beta-chat"))
            assert status == 200 and body["model"] == "beta-chat"
        woke = f.residents["beta"]
        assert woke is beta and int(woke.instance.handle) == pid  # the same process, woken
        assert woke.last_start is not None and woke.last_start["kind"] == "wake"
        assert woke.last_start["seconds"] < cold["seconds"]
        assert "gamma" not in f.residents  # idle gamma made room
        metrics = server.app[SWITCHER].metrics
        assert sum(metrics.wake_seconds.series["beta"][0]) == 1
    finally:
        await server.close()


async def test_loading_feedback_comments_while_a_stream_waits_and_sdks_ignore_them(tmp_path: Path) -> None:
    """``switch.loading_feedback``: a stream naming a model that is loading gets a 200 at once and
    SSE comments with the phase and the requests waiting, then vLLM's events; the OpenAI SDK reads
    it as any stream. A load that cannot be ends the stream with an error event and [DONE]."""
    from openai import AsyncOpenAI

    _profiles(tmp_path / "profiles")
    server = await _up(tmp_path, GWPROXY_SWITCH_LOADING_FEEDBACK="true")
    try:
        body = chat("beta-chat", stream=True)
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/v1/chat/completions"), json=body) as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                raw = await r.read()
        lines = raw.split(b"\n\n")
        assert lines[0].startswith(b": gwproxy loading beta-chat: ") and b"1 request(s) waiting" in lines[0]
        events = [line for line in lines if line.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]" and b'"model":"beta-chat"' in events[0]
        await f_unload(server, "beta")
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused")
        stream = await client.chat.completions.create(
            model="beta-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/v1/chat/completions"), json=chat("giant", stream=True)) as r:
                raw = await r.read()
        assert r.status == 200 and b'"code":"model_does_not_fit"' in raw and raw.endswith(b"data: [DONE]\n\n")
    finally:
        await server.close()


async def f_unload(server: TestServer, pid: str) -> None:
    await fleet(server).unload(pid)


async def test_a_switch_holds_only_its_own_model(gateway: TestServer) -> None:
    """While the switched model changes (alpha → beta, 1.5 s to start), a model loaded on demand
    answers at its usual latency (p99 within 50 ms of before, none held), and requests for the
    switched model wait for the new one."""

    async def timed(s: aiohttp.ClientSession) -> float:
        started = time.monotonic()
        status, body, _ = await post(s, gateway, chat("gamma"))
        assert status == 200 and body["model"] == "gamma", body
        return time.monotonic() - started

    def p99(values: list[float]) -> float:
        return sorted(values)[min(len(values) - 1, round(0.99 * (len(values) - 1)))]

    async with aiohttp.ClientSession() as s:
        assert (await post(s, gateway, chat("gamma")))[0] == 200  # loaded on demand beside alpha
        before = [await timed(s) for _ in range(50)]
        job, _ = gateway.app[SWITCHER].switch("beta")
        gate = gateway.app[GATE]
        while gate.is_open and not job.done:  # the job plans first; the switch holds from its stop
            await asyncio.sleep(0.005)
        held = asyncio.create_task(post(s, gateway, chat("current")))
        during = []
        while not job.done:
            during.append(await timed(s))
        status, body, _ = await held
    assert job.outcome == "switched", job.public()
    assert status == 200 and body["model"] == "beta-chat"  # waited for the new model
    assert len(during) >= 10, during  # gamma kept answering through the whole switch
    assert p99(during) <= p99(before) + 0.05, (before, during)
