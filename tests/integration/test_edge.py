"""The gateway's edge: CORS for browsers, allowed Host names, several workers on one port, and
graceful shutdown with streams in flight."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import aiohttp
import httpx
import psutil
import pytest

from gwproxy.middlewares.hosts import host_allowed
from tests.conftest import MODEL, provision, start_app
from tests.support.procs import start_gateway

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_cors_allowed_refused_and_preflight(sim: int) -> None:
    server = await start_app(sim, CORS_ORIGINS="https://app.example.com")
    try:
        async with aiohttp.ClientSession() as s:
            origin = {"Origin": "https://app.example.com"}
            async with s.post(server.make_url("/v1/chat/completions"), json=CHAT, headers=origin) as r:
                assert r.status == 200
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
                exposed = r.headers["Access-Control-Expose-Headers"].lower()
                assert "x-request-id" in exposed and "x-ratelimit-remaining-requests" in exposed
            async with s.post(
                server.make_url("/v1/chat/completions"), json=CHAT, headers={"Origin": "https://evil.example"}
            ) as r:
                assert "Access-Control-Allow-Origin" not in r.headers
            preflight = {
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            async with s.options(server.make_url("/v1/chat/completions"), headers=preflight) as r:
                assert r.status == 200  # answered by the gateway, not forwarded to vLLM
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
                assert "POST" in r.headers["Access-Control-Allow-Methods"]
                assert "AUTHORIZATION" in r.headers["Access-Control-Allow-Headers"].upper()
            async with s.options(
                server.make_url("/api/auth/login"), headers={**preflight, "Origin": "https://evil.example"}
            ) as r:
                assert r.status == 403
    finally:
        await server.close()


def test_host_patterns() -> None:
    assert host_allowed("gw.example.com:8080", ["gw.example.com"])
    assert host_allowed("a.b.example.com", ["*.example.com"])
    assert not host_allowed("example.com.evil", ["*.example.com"])
    assert not host_allowed("evil.com", ["gw.example.com"])
    assert host_allowed("[::1]:8080", ["::1"])


async def test_foreign_host_is_refused(sim: int) -> None:
    server = await start_app(sim, ALLOWED_HOSTS="gw.example.com,127.0.0.1")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/health")) as r:
                assert r.status == 200
            async with s.get(server.make_url("/health"), headers={"Host": "attacker.example"}) as r:
                assert r.status == 400
                assert (await r.json())["error"]["code"] == "host_not_allowed"
    finally:
        await server.close()


CHATS = 41  # odd: two workers' counts differ, so /metrics shows which answered


def test_workers_share_the_port_and_stop_together(log_dir: Path, sim: int, tmp_path: Path) -> None:
    env, key = provision(tmp_path)
    env["GWPROXY_CAPTURE_SPOOL_DIR"] = str(tmp_path / "spool")
    proc, port = start_gateway(log_dir, sim, "--workers", "2", env=env, name="gateway-workers")
    try:
        parent = psutil.Process(proc.popen.pid)
        deadline = time.monotonic() + 10
        while len(parent.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = parent.children()
        assert len(workers) == 2
        for _ in range(CHATS):
            with httpx.Client() as c:  # new connections, spread by the kernel
                r = c.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert r.status_code == 200
        counts = set()  # each worker's /metrics counts the chats it answered (an odd total: never equal)
        for _ in range(40):
            with httpx.Client() as c:
                text = c.get(f"http://127.0.0.1:{port}/metrics").text
            found = re.search(r'gwproxy_requests_total\{[^}]*route="/v1/chat/completions"[^}]*\} (\S+)', text)
            counts.add(float(found.group(1)) if found else 0.0)
        assert len(counts) == 2 and sum(counts) == CHATS and 0 not in counts, f"both workers answered: {counts}"
        # Each worker captures through its own writer process and spool: none shares a spool file.
        everyone = workers + [c for w in workers for c in w.children()]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            usage = httpx.get(f"http://127.0.0.1:{port}/api/usage", headers={"Authorization": f"Bearer {key}"})
            if usage.json()["total"]["requests"] == CHATS:
                break
            time.sleep(0.2)
        assert usage.json()["total"]["requests"] == CHATS
        assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["worker-0", "worker-1"]
    finally:
        proc.stop(signal.SIGTERM)
    assert proc.popen.returncode == 0
    assert len(everyone) == 4  # two workers, each with its capture writer
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in everyone)


async def test_sigterm_lets_streams_finish(log_dir: Path, paced_sim: int, tmp_path: Path) -> None:
    env, key = provision(tmp_path)
    proc, port = start_gateway(log_dir, paced_sim, env=env, name="gateway-graceful")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {**CHAT, "max_tokens": 30, "ignore_eos": True, "stream": True}  # ~1.3 s of tokens
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
            await r.content.readuntil(b"\n\n")
            proc.popen.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(aiohttp.ClientConnectionError):  # no new connections once stopping
                async with aiohttp.ClientSession() as other:
                    await other.get(f"http://127.0.0.1:{port}/health")
            rest = await r.read()
    assert rest.endswith(b"data: [DONE]\n\n")  # the stream in flight finished
    assert proc.popen.wait(timeout=15) == 0
    proc.stop()


async def test_preflight_needs_no_credentials_when_auth_is_on(sim: int) -> None:
    server = await start_app(sim, CORS_ORIGINS="https://app.example.com", GWPROXY_AUTH_ENABLED="true")
    try:
        preflight = {
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with aiohttp.ClientSession() as s:
            async with s.options(server.make_url("/v1/chat/completions"), headers=preflight) as r:
                assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            async with s.post(
                server.make_url("/v1/chat/completions"), json=CHAT, headers={"Origin": preflight["Origin"]}
            ) as r:
                assert r.status == 401  # the real request still needs its key
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    finally:
        await server.close()
