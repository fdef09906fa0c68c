"""Headers both ways, against a recording upstream (a real HTTP server on loopback)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import start_app

MODELS = (
    b'{"object":"list","data":[{"id":"rec-model","object":"model","owned_by":"vllm","root":"r","max_model_len":100}]}'
)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[TestServer, list[web.Request]]]:
    seen: list[web.Request] = []

    async def models(request: web.Request) -> web.Response:
        return web.Response(body=MODELS, content_type="application/json")

    async def echo(request: web.Request) -> web.Response:
        seen.append(request)
        await request.read()
        return web.Response(
            body=b"gz-bytes",
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Encoding": "gzip",
                "X-Upstream-Thing": "kept",
                "Keep-Alive": "timeout=5",
                "Connection": "keep-alive, X-Private",
                "X-Private": "dropped",
            },
        )

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_route("*", "/v1/{tail:.*}", echo)
    server = TestServer(app, port=0)
    await server.start_server()
    yield server, seen
    await server.close()


async def test_request_and_response_headers(recorder: tuple[TestServer, list[web.Request]]) -> None:
    upstream, seen = recorder
    assert upstream.port is not None
    gateway = await start_app(upstream.port, VLLM_API_KEY="upstream-secret")
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            headers = {
                "Authorization": "Bearer client-token",
                "X-Api-Key": "client-key",
                "X-Request-ID": "req-42",
                "OpenAI-Organization": "org-1",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "hop",
            }
            url = URL(f"http://127.0.0.1:{gateway.port}/v1/custom/thing?x=1&y=%2F", encoded=True)
            async with s.post(url, json={"model": "current"}, headers=headers) as r:
                body = await r.read()
                assert r.status == 200
                assert body == b"gz-bytes"  # compressed bytes relayed as sent, not decoded
                assert r.headers["Content-Encoding"] == "gzip"
                assert r.headers["X-Upstream-Thing"] == "kept"
                assert r.headers["X-Request-ID"] == "req-42"
                assert "X-Private" not in r.headers and "Keep-Alive" not in r.headers
                assert "x-gwproxy-overhead-ms" in r.headers
        [req] = seen
        assert req.raw_path == "/v1/custom/thing?x=1&y=%2F"
        assert req.headers["Authorization"] == "Bearer upstream-secret"
        assert "X-Api-Key" not in req.headers
        assert "X-Hop" not in req.headers
        assert re.fullmatch(r"[0-9a-f]{32}", req.headers["X-Request-ID"])  # the gateway's own, not the client's
        assert req.headers["OpenAI-Organization"] == "org-1"
        assert (await req.json())["model"] == "rec-model"
    finally:
        await gateway.close()


async def test_request_ids_are_kept_as_sent_minted_when_absent_or_too_long(
    recorder: tuple[TestServer, list[web.Request]],
) -> None:
    upstream, seen = recorder
    assert upstream.port is not None
    gateway = await start_app(upstream.port)
    upstream_ids: list[str] = []
    try:
        async with aiohttp.ClientSession() as s:
            for sent in ("aGVsbG8+d29ybGQ/Lw==", "an id with spaces", "x" * 1024, "ü-ñ-id"):
                async with s.post(gateway.make_url("/v1/echo"), data=b"raw", headers={"X-Request-ID": sent}) as r:
                    assert r.headers["X-Request-ID"] == sent  # the client's, for correlation: kept
                    upstream_ids.append(seen[-1].headers["X-Request-ID"])  # never sent upstream
                    assert upstream_ids[-1] != sent
            for sent in (None, "x" * 1025):
                headers = {} if sent is None else {"X-Request-ID": sent}
                async with s.post(gateway.make_url("/v1/echo"), data=b"raw", headers=headers) as r:
                    rid = r.headers["X-Request-ID"]
                    assert rid != sent and re.fullmatch(r"[0-9a-f]{32}", rid)
                    assert seen[-1].headers["X-Request-ID"] == rid  # minted: the client's and vLLM's
                    upstream_ids.append(rid)
            async with s.post(gateway.make_url("/v1/echo"), data=b"raw", headers={"X-Request-ID": "a\tb"}) as r:
                body = await r.json()
                assert r.status == 400 and body["error"]["param"] == "X-Request-ID"
            async with s.get(gateway.make_url("/health"), headers={"X-Request-ID": "h-1"}) as r:
                assert r.headers["X-Request-ID"] == "h-1"
            async with s.get(gateway.make_url("/missing"), headers={"X-Request-ID": "e-1"}) as r:
                assert r.status == 404 and r.headers["X-Request-ID"] == "e-1"
        assert "Authorization" not in seen[-1].headers  # no VLLM_API_KEY: nothing sent
        assert len(set(upstream_ids)) == 6 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in upstream_ids)
    finally:
        await gateway.close()
