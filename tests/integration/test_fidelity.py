"""Indistinguishable from vLLM: what a client gets through the gateway is what the (vLLM-shaped)
simulator sends it directly — for every ``stream_options`` a client may send, for requests vLLM
accepts that a stricter gateway used to refuse, and for request ids vLLM echoes as response ids."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import MODEL, start_app
from tests.support.ids import upstream_id
from tests.support.procs import start_sim

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 6}

STREAM_OPTIONS: list[dict[str, Any] | None] = [
    None,
    {},
    {"include_usage": True},
    {"include_usage": False},
    {"include_usage": None},
    {"continuous_usage_stats": True},
    {"include_usage": True, "continuous_usage_stats": True},
    {"include_usage": False, "continuous_usage_stats": True},
]


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], rid: str) -> tuple[int, bytes]:
    async with session.post(url, json=body, headers={"X-Request-ID": rid}) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("options", STREAM_OPTIONS, ids=lambda o: orjson.dumps(o).decode())
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_streams_are_byte_for_byte_vllms_for_every_stream_options(
    sim: int, options: dict[str, Any] | None, route: str
) -> None:
    server = await start_app(sim)
    body: dict[str, Any] = {**CHAT, "stream": True}
    if route == "/v1/completions":
        body = {"model": MODEL, "prompt": "Say something.", "max_tokens": 6, "stream": True}
    if options is not None:
        body["stream_options"] = options
    try:
        async with aiohttp.ClientSession() as s:
            through = await _post(s, str(server.make_url(route)), body, "fidelity-1")
            direct = await _post(s, f"http://127.0.0.1:{sim}{route}", body, upstream_id(through[1]) or "")
        assert through == direct
        events = [e for e in direct[1].split(b"\n\n") if e]
        final_usage = any(b'"choices":[],"usage"' in e for e in events)
        per_chunk = sum(b'"usage"' in e for e in events) > int(final_usage)
        include = options is not None and options.get("include_usage") is True
        assert final_usage == include  # vLLM 0.32's rule ({} asks for nothing), which the simulator follows
        assert per_chunk == (include and bool(options and options.get("continuous_usage_stats")))
    finally:
        await server.close()


async def test_usage_is_counted_whatever_the_client_asked(sim: int) -> None:
    server = await start_app(sim)
    try:
        async with aiohttp.ClientSession() as s:
            for options in STREAM_OPTIONS:
                body: dict[str, Any] = {**CHAT, "stream": True}
                if options is not None:
                    body["stream_options"] = options
                await _post(s, str(server.make_url("/v1/chat/completions")), body, f"u-{time.monotonic_ns()}")
            async with s.get(server.make_url("/metrics")) as r:
                text = await r.text()
        completion = [line for line in text.splitlines() if line.startswith("gwproxy_completion_tokens_total{")]
        assert completion and float(completion[0].rsplit(" ", 1)[1]) == 6 * len(STREAM_OPTIONS)
    finally:
        await server.close()


async def test_stream_options_without_stream_are_vllms_400(sim: int) -> None:
    server = await start_app(sim)
    body = {**CHAT, "stream_options": {"include_usage": True}}
    try:
        async with aiohttp.ClientSession() as s:
            direct = await _post(s, f"http://127.0.0.1:{sim}/v1/chat/completions", body, "r-400")
            through = await _post(s, str(server.make_url("/v1/chat/completions")), body, "r-400")
        assert direct == through and direct[0] == 400
        assert b"Stream options can only be defined when `stream=True`." in direct[1]
    finally:
        await server.close()


@pytest.mark.parametrize(
    "change",
    [
        {"model": None},  # no model: vLLM answers with the one it serves
        {"max_tokens": 6.0, "n": 1.0},
        {"stream": "false"},
        {"temperature": 2.5},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"image_url": {"url": "x"}}]}]},
    ],
)
async def test_what_vllm_accepts_the_gateway_passes(sim: int, change: dict[str, Any]) -> None:
    server = await start_app(sim)
    body = {k: v for k, v in {**CHAT, **change}.items() if v is not None}
    try:
        async with aiohttp.ClientSession() as s:
            status, raw = await _post(s, str(server.make_url("/v1/chat/completions")), body, "lenient-1")
        assert status == 200, raw[:300]
        assert orjson.loads(raw)["model"] == MODEL
    finally:
        await server.close()


async def test_vllms_response_id_is_the_gateways_own_never_the_clients(sim: int) -> None:
    """vLLM makes the request id its response id: the gateway sends its own (128 random bits, new
    for each request), so no client can choose, repeat or guess an id vLLM shows another user."""
    server = await start_app(sim)
    try:
        async with aiohttp.ClientSession() as s:
            seen = set()
            for rid in ("aGVsbG8rd29ybGQ=", "my request 7", "my request 7", None):
                headers = {} if rid is None else {"X-Request-ID": rid}
                async with s.post(server.make_url("/v1/chat/completions"), json=CHAT, headers=headers) as r:
                    answer = await r.json()
                    assert r.status == 200 and (rid is None or r.headers["X-Request-ID"] == rid)
                assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", answer["id"]), answer["id"]
                seen.add(answer["id"])
            assert len(seen) == 4
    finally:
        await server.close()


async def test_a_concurrency_refusal_waits_as_long_as_requests_run(paced_sim: int) -> None:
    """One request at a time, a stream of about 1.5 s running: the SDK's own two retries, told to
    wait the running requests' typical duration, get through (a flat 1 s ran them out)."""
    server = await start_app(paced_sim, GWPROXY_RATELIMIT_CONCURRENCY="1")
    url = str(server.make_url("/v1/chat/completions"))
    long = {**CHAT, "max_tokens": 36, "ignore_eos": True, "stream": True}
    try:
        async with aiohttp.ClientSession() as s:
            await _post(s, url, long, "warm-up")  # one finished: its duration is the estimate
            stream = asyncio.create_task(_post(s, url, long, "long"))
            await asyncio.sleep(0.3)
            async with s.post(url, json=CHAT) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) >= 2
            client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=2)
            reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content
            await stream
    finally:
        await server.close()


@pytest.fixture(scope="module")
def split_sim(log_dir: Path) -> Iterator[int]:
    """A seeded simulator that writes each event in three parts, cutting UTF-8 characters."""
    proc, port = start_sim(log_dir, "--seed", "7", "--model", MODEL, "--split-writes", name="split-sim")
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    yield port
    proc.stop()


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}, {"continuous_usage_stats": True}])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_events_split_across_reads_are_relayed_and_stripped_intact(
    split_sim: int, options: dict[str, Any] | None, route: str
) -> None:
    """Events and UTF-8 characters cut across the upstream's writes reach the client byte for byte,
    also when the gateway strips the usage event it asked for (``None``, ``include_usage: false``)."""
    server = await start_app(split_sim)
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 24, "ignore_eos": True, "stream": True}
    body.update({"messages": CHAT["messages"]} if route.endswith("chat/completions") else {"prompt": "Say it."})
    if options is not None:
        body["stream_options"] = options
    try:
        async with aiohttp.ClientSession() as s:
            through = await _post(s, str(server.make_url(route)), body, "split-1")
            direct = await _post(s, f"http://127.0.0.1:{split_sim}{route}", body, upstream_id(through[1]) or "")
        assert through == direct
        assert any(ord(ch) > 127 for ch in direct[1].decode())  # multi-byte characters were in play
    finally:
        await server.close()
