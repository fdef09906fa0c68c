"""The simulator's own tests: the vLLM features it reproduces so the gateway's tests can see them —
token ids (vLLM ≥ 0.10.2), logprobs, parallel tool calls, reasoning, structured output, base64
embeddings, one model's card, and events split across writes."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gwproxy.sim import engine
from gwproxy.sim.server import SimConfig, create_sim_app

MODEL = "sim-model"
ASK = [{"role": "user", "content": "What is the weather?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        },
    },
}
TIME = {"type": "function", "function": {"name": "time", "parameters": {"properties": {"zone": {"type": "string"}}}}}


async def _server(**cfg: Any) -> TestServer:
    server = TestServer(create_sim_app(SimConfig(models=(MODEL,), seed=7, **cfg)), port=0)
    await server.start_server()
    return server


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    server = await _server()
    yield str(server.make_url(""))
    await server.close()


async def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, await r.read()


def _events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: ") and block != b"data: [DONE]":
            out.append(orjson.loads(block[6:]))
    return out


async def test_token_ids_are_null_unless_asked_and_listed_when_asked(sim_url: str) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5}
    _, raw = await _post(f"{sim_url}/v1/chat/completions", body)
    plain = orjson.loads(raw)
    assert plain["choices"][0]["token_ids"] is None and plain["prompt_token_ids"] is None
    assert list(plain).index("prompt_token_ids") == list(plain).index("prompt_logprobs") + 1
    _, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "return_token_ids": True})
    asked = orjson.loads(raw)
    assert len(asked["choices"][0]["token_ids"]) == asked["usage"]["completion_tokens"] == 5
    assert len(asked["prompt_token_ids"]) == asked["usage"]["prompt_tokens"]

    _, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "stream": True})
    events = _events(raw)
    assert raw.count(b'"prompt_token_ids":null') == 1 and "prompt_token_ids" in events[0]
    assert all(e["choices"][0]["token_ids"] is None for e in events[1:])
    assert b'"finish_reason":null,"token_ids":null}' in raw  # vLLM's field order
    _, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "stream": True, "return_token_ids": True})
    events = _events(raw)
    assert events[0]["prompt_token_ids"] == engine.encode(engine.render_chat(ASK))
    assert sum(len(e["choices"][0]["token_ids"]) for e in events[1:]) == 5

    _, raw = await _post(f"{sim_url}/v1/completions", {"model": MODEL, "prompt": "Hi there", "max_tokens": 3})
    choice = orjson.loads(raw)["choices"][0]
    assert choice["token_ids"] is None and choice["prompt_token_ids"] is None
    stream = {"model": MODEL, "prompt": "Hi there", "max_tokens": 3, "stream": True, "return_token_ids": True}
    _, raw = await _post(f"{sim_url}/v1/completions", stream)
    chunks = [e["choices"][0] for e in _events(raw)]
    assert chunks[0]["prompt_token_ids"] == engine.encode("Hi there")
    assert all(c["prompt_token_ids"] is None for c in chunks[1:])
    assert sum(len(c["token_ids"]) for c in chunks) == 3


async def test_logprobs_and_top_logprobs(sim_url: str) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, "logprobs": True, "top_logprobs": 3}
    _, raw = await _post(f"{sim_url}/v1/chat/completions", body)
    content = orjson.loads(raw)["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert entry["logprob"] < 0 and bytes(entry["bytes"]).decode() == entry["token"]
        assert len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token"] == entry["token"]
    _, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "stream": True})
    streamed = [e["choices"][0]["logprobs"] for e in _events(raw) if e["choices"]]
    assert streamed[0] is None  # the role chunk
    assert sum(len(lp["content"]) for lp in streamed[1:]) == 4

    status, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "logprobs": False})
    assert status == 400 and b"`logprobs` must be set to true" in raw
    status, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "top_logprobs": 21})
    assert status == 400

    prompt = {"model": MODEL, "prompt": "Hi", "max_tokens": 3, "logprobs": 2}
    _, raw = await _post(f"{sim_url}/v1/completions", prompt)
    lp = orjson.loads(raw)["choices"][0]["logprobs"]
    assert list(lp) == ["text_offset", "token_logprobs", "tokens", "top_logprobs"]
    assert len(lp["tokens"]) == 3 and all(len(t) == 2 for t in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0 and lp["text_offset"][1] == len(lp["tokens"][0])


async def test_parallel_tool_calls_stream_each_call_by_its_index(sim_url: str) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "parallel_tool_calls": True}
    _, raw = await _post(f"{sim_url}/v1/chat/completions", body)
    message = orjson.loads(raw)["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["weather", "time"]
    args = [orjson.loads(c["function"]["arguments"]) for c in message["tool_calls"]]
    assert args[0]["unit"] in ("c", "f") and set(args[1]) == {"zone"}

    _, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "stream": True})
    calls: dict[int, dict[str, str]] = {}
    for event in _events(raw):
        for delta in event["choices"][0]["delta"].get("tool_calls", []):
            call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
            call["name"] += delta["function"].get("name", "")
            call["arguments"] += delta["function"].get("arguments", "")
    assert [calls[i]["name"] for i in sorted(calls)] == ["weather", "time"]
    streamed = [orjson.loads(calls[i]["arguments"]) for i in sorted(calls)]
    assert streamed[0]["unit"] in ("c", "f") and set(streamed[1]) == {"zone"}
    assert _events(raw)[-1]["choices"][0]["finish_reason"] == "tool_calls"

    _, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "parallel_tool_calls": False})
    assert len(orjson.loads(raw)["choices"][0]["message"]["tool_calls"]) == 1


async def test_response_format_json_schema_is_answered_with_valid_json(sim_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["a", "b"]},
        },
        "required": ["name", "age"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    body = {"model": MODEL, "messages": ASK, "response_format": fmt}
    _, raw = await _post(f"{sim_url}/v1/chat/completions", body)
    answer = orjson.loads(orjson.loads(raw)["choices"][0]["message"]["content"])
    assert isinstance(answer["name"], str) and 18 <= answer["age"] <= 99 and answer["kind"] in ("a", "b")
    _, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "stream": True})
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in _events(raw) if e["choices"])
    streamed = orjson.loads(text)
    assert isinstance(streamed["name"], str) and 18 <= streamed["age"] <= 99 and isinstance(streamed["tags"], list)
    _, raw = await _post(f"{sim_url}/v1/chat/completions", {**body, "response_format": {"type": "json_object"}})
    assert isinstance(orjson.loads(orjson.loads(raw)["choices"][0]["message"]["content"]), dict)


async def test_a_reasoning_model_thinks_before_it_answers() -> None:
    server = await _server(reasoning=True)
    try:
        url = str(server.make_url("/v1/chat/completions"))
        _, raw = await _post(url, {"model": MODEL, "messages": ASK, "max_tokens": 30})
        message = orjson.loads(raw)["choices"][0]["message"]
        assert message["reasoning"] and message["content"]
        _, raw = await _post(url, {"model": MODEL, "messages": ASK, "max_tokens": 30, "stream": True})
        deltas = [e["choices"][0]["delta"] for e in _events(raw) if e["choices"]]
        kinds = [next(iter(k for k in d if k in ("reasoning", "content")), None) for d in deltas[1:-1]]
        first_content = kinds.index("content")
        assert set(kinds[:first_content]) == {"reasoning"} and set(kinds[first_content:]) == {"content"}
        assert "".join(d.get("reasoning", "") for d in deltas).strip()
    finally:
        await server.close()


async def test_base64_embeddings_decode_to_the_float_vector(sim_url: str) -> None:
    body = {"model": MODEL, "input": ["one", "two"], "dimensions": 8}
    _, raw = await _post(f"{sim_url}/v1/embeddings", body)
    floats = [d["embedding"] for d in orjson.loads(raw)["data"]]
    _, raw = await _post(f"{sim_url}/v1/embeddings", {**body, "encoding_format": "base64"})
    for item, vector in zip(orjson.loads(raw)["data"], floats, strict=True):
        decoded = struct.unpack("<8f", base64.b64decode(item["embedding"]))
        assert decoded == pytest.approx(vector, rel=1e-6)
    status, _ = await _post(f"{sim_url}/v1/embeddings", {**body, "encoding_format": "hex"})
    assert status == 400


async def test_one_model_card_and_404_for_another(sim_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim_url}/v1/models/{MODEL}") as r:
            assert r.status == 200 and (await r.json())["id"] == MODEL
        async with s.get(f"{sim_url}/v1/models/org/other-model") as r:
            body = await r.json()
            assert r.status == 404 and body["error"]["type"] == "NotFoundError"


async def test_split_writes_cut_events_and_characters_without_changing_the_bytes() -> None:
    plain, split = await _server(), await _server(split_writes=True)
    body = {"model": MODEL, "messages": ASK, "max_tokens": 40, "stream": True, "ignore_eos": True}
    try:
        _, whole = await _post(str(plain.make_url("/v1/chat/completions")), body)
        reads: list[bytes] = []
        async with aiohttp.ClientSession() as s, s.post(split.make_url("/v1/chat/completions"), json=body) as r:
            async for data, _ in r.content.iter_chunks():
                reads.append(data)
        joined = b"".join(reads)
        assert len(_events(joined)) == len(_events(whole))
        assert any(not r.endswith(b"\n\n") for r in reads)  # events arrive in pieces
        broken = 0
        for r in reads:
            try:
                r.decode()
            except UnicodeDecodeError:
                broken += 1
        assert broken > 0  # some reads end inside a UTF-8 character
        assert any(ord(ch) > 127 for ch in joined.decode())
    finally:
        await plain.close()
        await split.close()


async def test_sleep_mode_endpoints_in_dev_mode_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--enable-sleep-mode`` with ``VLLM_SERVER_DEV_MODE=1``, as vLLM: /sleep?level=1|2 frees the
    GPU (generation is refused meanwhile), /is_sleeping says so, /wake_up takes ``wake_ms`` (level 2:
    three times, the weights reloaded). Without dev mode the routes are not there."""
    import time

    cfg = SimConfig(models=("m",), sleep_mode=True, sleep_ms=50, wake_ms=100)
    plain = TestServer(create_sim_app(cfg))
    await plain.start_server()
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    dev = TestServer(create_sim_app(cfg))
    await dev.start_server()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(plain.make_url("/sleep")) as r:
                assert r.status == 404
            async with s.get(dev.make_url("/is_sleeping")) as r:
                assert await r.json() == {"is_sleeping": False}
            async with s.post(dev.make_url("/sleep"), params={"level": "3"}) as r:
                assert r.status == 400
            async with s.post(dev.make_url("/sleep"), params={"level": "2"}) as r:
                assert r.status == 200
            async with s.get(dev.make_url("/is_sleeping")) as r:
                assert await r.json() == {"is_sleeping": True}
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            async with s.post(dev.make_url("/v1/chat/completions"), json=body) as r:
                assert r.status == 503
            started = time.monotonic()
            async with s.post(dev.make_url("/wake_up")) as r:
                assert r.status == 200
            assert time.monotonic() - started >= 0.3  # level 2: 3 x wake_ms
            async with s.post(dev.make_url("/v1/chat/completions"), json=body) as r:
                assert r.status == 200
    finally:
        await plain.close()
        await dev.close()
