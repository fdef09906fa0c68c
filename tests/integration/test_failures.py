"""Honest failures: each kind of bad input or upstream trouble gets its status and envelope."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import MODEL, start_app
from tests.support.procs import free_port, start_sim

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def call(
    url: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object], dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=data, headers=headers or {"Content-Type": "application/json"}) as r:
            return r.status, orjson.loads(await r.read()), dict(r.headers)


def assert_envelope(
    body: dict[str, object], type_: str, code: object = None, param: object = None
) -> dict[str, object]:
    assert set(body) == {"error"}
    err = body["error"]
    assert isinstance(err, dict)
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == type_ and err["param"] == param and err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    return err


@pytest.mark.parametrize(
    ("data", "param", "code"),
    [
        (b'{"model": "sim-model", "messages": [', None, "invalid_json"),
        (b"[1, 2]", None, None),
        (orjson.dumps({**CHAT, "model": 3}), "model", None),  # vLLM refuses these too (a model is
        (orjson.dumps({**CHAT, "stream": "maybe"}), "stream", None),  # optional, "true" a boolean,
        (orjson.dumps({**CHAT, "temperature": -0.5}), "temperature", None),  # temperature 3 fine)
        (orjson.dumps({**CHAT, "messages": [{"role": 1, "content": "x"}]}), "messages[0].role", None),
        (orjson.dumps({**CHAT, "max_tokens": -1}), "max_tokens", None),
    ],
)
async def test_bad_input_is_400_naming_the_param(
    app_server: TestServer, data: bytes, param: str | None, code: str | None
) -> None:
    status, body, headers = await call(str(app_server.make_url("/v1/chat/completions")), data)
    assert status == 400
    assert_envelope(body, "invalid_request_error", code=code, param=param)
    assert headers["Content-Type"].startswith("application/json")


async def test_upstream_errors_pass_through_in_vllm_envelope(app_server: TestServer) -> None:
    status, body, _ = await call(
        str(app_server.make_url("/v1/chat/completions")), orjson.dumps({**CHAT, "model": "nope"})
    )
    assert status == 404
    assert_envelope(body, "NotFoundError", code=404, param="model")
    status, body, _ = await call(
        str(app_server.make_url("/v1/chat/completions")), orjson.dumps({**CHAT, "max_tokens": 5000})
    )
    assert status == 400
    err = assert_envelope(body, "BadRequestError", code=400, param="max_tokens")
    assert "max_tokens=5000 cannot be greater than max_model_len=2048" in str(err["message"])  # vLLM 0.32


async def test_oversize_body_is_413(sim: int) -> None:
    server = await start_app(sim, GWPROXY_PROXY_MAX_BODY_BYTES="2048")
    try:
        big = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]})
        status, body, _ = await call(str(server.make_url("/v1/chat/completions")), big)
        assert status == 413
        assert_envelope(body, "invalid_request_error", code="payload_too_large")
        status, _, _ = await call(str(server.make_url("/v1/chat/completions")), orjson.dumps(CHAT))
        assert status == 200
    finally:
        await server.close()


async def test_unknown_gateway_path_is_404_envelope(app_server: TestServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(app_server.make_url("/nothing-here")) as r:
            assert r.status == 404
            assert_envelope(await r.json(), "not_found_error")
        async with s.delete(app_server.make_url("/health")) as r:
            assert r.status == 405
            assert_envelope(await r.json(), "invalid_request_error", code="method_not_allowed")


async def test_upstream_down_is_502_and_not_ready() -> None:
    server = await start_app(free_port())
    try:
        status, body, _ = await call(str(server.make_url("/v1/chat/completions")), orjson.dumps(CHAT))
        assert status == 502
        err = assert_envelope(body, "upstream_error", code="upstream_unavailable")
        assert "unreachable" in str(err["message"])
        status, body, headers = await call(
            str(server.make_url("/v1/chat/completions")), orjson.dumps({**CHAT, "model": "current"})
        )
        assert status == 503 and headers["Retry-After"].isdigit()
        assert_envelope(body, "service_unavailable", code="model_not_ready")
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/health/ready")) as r:
                assert r.status == 503
                assert (await r.json())["reason"] == "upstream unreachable"
            async with s.get(server.make_url("/health")) as r:
                assert r.status == 200
                assert (await r.json())["components"]["upstream"]["status"] == "down"
    finally:
        await server.close()


async def test_first_byte_timeout_is_504(paced_sim: int) -> None:
    server = await start_app(paced_sim, GWPROXY_UPSTREAM_FIRST_BYTE_TIMEOUT="0.3")
    try:
        body = orjson.dumps({**CHAT, "max_tokens": 40, "ignore_eos": True})
        status, payload, _ = await call(str(server.make_url("/v1/chat/completions")), body)
        assert status == 504
        assert_envelope(payload, "upstream_error", code="upstream_timeout")
    finally:
        await server.close()


async def test_idle_upstream_mid_stream_ends_with_error_event(paced_sim: int) -> None:
    server = await start_app(paced_sim, GWPROXY_UPSTREAM_IDLE_TIMEOUT="0.02")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/v1/chat/completions"), json={**CHAT, "stream": True}) as r:
                assert r.status == 200
                text = (await r.read()).decode()
        events = re.findall(r"data: (.*)\n\n", text)
        assert events[-1] == "[DONE]"
        err = orjson.loads(events[-2])["error"]
        assert err["code"] == 504 and err["type"] == "upstream_error"
    finally:
        await server.close()


async def sim_metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_client_disconnect_aborts_the_upstream_generation(log_dir: Path) -> None:
    proc, port = start_sim(log_dir, "--model", MODEL, "--itl-ms", "50", name="abort-sim")
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    server = await start_app(port)
    try:
        abort = 'vllm:request_success_total{engine="0",finished_reason="abort"'
        assert await sim_metric(port, abort) == 0
        session = aiohttp.ClientSession()
        r = await session.post(
            server.make_url("/v1/chat/completions"),
            json={**CHAT, "max_tokens": 500, "ignore_eos": True, "stream": True},
        )
        await r.content.readuntil(b"\n\n")
        await r.content.readuntil(b"\n\n")
        r.close()  # the client goes away mid-stream
        await session.close()
        for _ in range(50):
            if await sim_metric(port, abort) == 1:
                break
            await asyncio.sleep(0.05)
        assert await sim_metric(port, abort) == 1
        assert await sim_metric(port, "vllm:num_requests_running") == 0
        async with aiohttp.ClientSession() as s, s.get(server.make_url("/metrics")) as m:
            text = await m.text()
        assert "gwproxy_requests_in_flight 1.0" in text  # only the /metrics request itself
        assert re.search(
            r'gwproxy_requests_total\{model="sim-model",route="/v1/chat/completions",status="499"\} 1\.0',
            text,
        )
    finally:
        await server.close()
        proc.stop()


async def test_upstream_dying_mid_stream_ends_with_error_event(log_dir: Path) -> None:
    proc, port = start_sim(log_dir, "--model", MODEL, "--itl-ms", "50", name="dying-sim")
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    server = await start_app(port)
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                server.make_url("/v1/chat/completions"),
                json={**CHAT, "max_tokens": 500, "ignore_eos": True, "stream": True},
            ) as r,
        ):
            first = await r.content.readuntil(b"\n\n")
            assert b'"role":"assistant"' in first
            proc.stop(signal.SIGKILL)
            rest = (await r.read()).decode()
        events = re.findall(r"data: (.*)\n\n", rest)
        assert events[-1] == "[DONE]"
        err = orjson.loads(events[-2])["error"]
        assert err["code"] == 502 and "mid-response" in err["message"]
        async with aiohttp.ClientSession() as s, s.get(server.make_url("/metrics")) as m:
            assert 'gwproxy_upstream_errors_total{kind="disconnected"} 1.0' in await m.text()
    finally:
        await server.close()
        proc.stop()
