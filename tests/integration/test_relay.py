"""Byte identity and timing: what the client gets through the gateway is what vLLM sent."""

from __future__ import annotations

import itertools
import time

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from tests.conftest import MODEL, start_app
from tests.support.ids import upstream_id

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about gateways"}], "max_tokens": 24}


async def post(
    url: str, body: object, rid: str | None = "relay-identity"
) -> tuple[int, dict[str, str], bytes, list[bytes]]:
    """POST ``body``; return status, headers, the whole body and the chunks as they arrived. vLLM
    (and the simulator) make the request id the response's ``id``: a direct request compared with
    one through the gateway is sent with the id the gateway sent upstream (``upstream_id``)."""
    chunks = []
    headers = {"Content-Type": "application/json", **({"X-Request-ID": rid} if rid else {})}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(url, data=orjson.dumps(body), headers=headers) as r:
            async for chunk in r.content.iter_any():
                chunks.append(chunk)
            return r.status, dict(r.headers), b"".join(chunks), chunks


async def test_non_stream_bytes_identical(sim: int, app_server: TestServer) -> None:
    via = await post(str(app_server.make_url("/v1/chat/completions")), CHAT)
    direct = await post(f"http://127.0.0.1:{sim}/v1/chat/completions", CHAT, upstream_id(via[2]))
    assert direct[0] == via[0] == 200
    assert via[2] == direct[2]
    assert via[1]["Content-Type"] == direct[1]["Content-Type"] == "application/json"
    assert via[1]["Content-Length"] == str(len(direct[2]))


async def test_stream_bytes_identical_with_and_without_include_usage(sim: int, app_server: TestServer) -> None:
    for options in (
        {},
        {"stream_options": {"include_usage": True}},
        {"stream_options": {"include_usage": False}},
    ):
        body = {**CHAT, "stream": True, **options}
        via = await post(str(app_server.make_url("/v1/chat/completions")), body)
        direct = await post(f"http://127.0.0.1:{sim}/v1/chat/completions", body, upstream_id(via[2]))
        assert via[0] == 200
        assert via[2] == direct[2], options
        assert via[2].endswith(b"data: [DONE]\n\n")
        assert (b'"choices":[],"usage"' in via[2]) is bool(options.get("stream_options", {}).get("include_usage"))
        assert via[1]["Content-Type"] == "text/event-stream; charset=utf-8"
        assert via[1]["X-Accel-Buffering"] == "no"


async def test_completions_and_embeddings_identical(sim: int, app_server: TestServer) -> None:
    cases = [
        ("/v1/completions", {"model": MODEL, "prompt": "Once", "max_tokens": 9}),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 4, "stream": True}),
        ("/v1/embeddings", {"model": MODEL, "input": ["one", "two"]}),
        ("/tokenize", {"model": MODEL, "prompt": "hello world"}),
        ("/detokenize", {"model": MODEL, "tokens": [1751477356, 1864398703, 1919706112]}),
    ]
    for path, body in cases:
        via = await post(str(app_server.make_url(path)), body)
        direct = await post(f"http://127.0.0.1:{sim}{path}", body, upstream_id(via[2]))
        assert via[0] == direct[0] == 200, path
        assert via[2] == direct[2], path


async def test_alias_current_resolves_to_the_served_model(sim: int, app_server: TestServer) -> None:
    via = await post(str(app_server.make_url("/v1/chat/completions")), {**CHAT, "model": "current"})
    direct = await post(f"http://127.0.0.1:{sim}/v1/chat/completions", CHAT, upstream_id(via[2]))
    assert via[0] == 200
    assert orjson.loads(via[2])["model"] == MODEL
    assert via[2] == direct[2]


async def test_get_routes_are_forwarded(sim: int, app_server: TestServer) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/models", "/version"):
            async with s.get(f"http://127.0.0.1:{sim}{path}") as d, s.get(app_server.make_url(path)) as v:
                assert v.status == d.status == 200
                assert await v.read() == await d.read()


async def test_stream_chunks_arrive_spread_out_as_sent(paced_sim: int) -> None:
    server = await start_app(paced_sim)
    try:
        body = {**CHAT, "max_tokens": 10, "stream": True, "ignore_eos": True}
        started = time.monotonic()
        arrivals = []
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/v1/chat/completions"), json=body) as r:
                async for chunk in r.content.iter_any():
                    arrivals.append((time.monotonic() - started, chunk))
        events = [a for a in arrivals if b'"content":"' in a[1] and b'"content":""' not in a[1]]
        # 10 content tokens 40 ms apart: they must arrive one by one, not in a burst at the end.
        assert len(events) >= 9
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(events)]
        assert sorted(gaps)[len(gaps) // 2] > 0.025
        assert events[-1][0] - events[0][0] > 0.25
        assert events[0][0] < 0.3  # the first token is not held back
    finally:
        await server.close()
