"""The gateway in front of real vLLM (0.32's CPU build, a tiny random Llama): what a client gets
through it is what vLLM sends for the request the client made — byte for byte, streams included,
for every ``stream_options`` — and tokens are counted exactly.

Greedy decoding with prefix caching off gives the same tokens from one request to the next; a
direct request is sent with the request id the gateway sent upstream (``upstream_id``), so ids
match too. Only ``created`` (a clock second) and tool-call ids (random in vLLM) are left out of
byte comparisons."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import orjson
import pytest
from langchain_openai import ChatOpenAI

from tests.conftest import migrated_sqlite, provision
from tests.integration.test_auth_http import bearer, call
from tests.integration.test_fidelity import STREAM_OPTIONS
from tests.integration.test_security import Site, _site, usage_of
from tests.support.ids import upstream_id
from tests.support.procs import start_gateway
from tests.support.vllm import SERVED, Vllm

CHAT: dict[str, Any] = {
    "model": SERVED,
    "messages": [{"role": "user", "content": "Say something."}],
    "max_tokens": 8,
    "temperature": 0,
}
COMPLETION: dict[str, Any] = {"model": SERVED, "prompt": "Say something.", "max_tokens": 8, "temperature": 0}
_CREATED = re.compile(rb'"created(?:_at)?":\d+')
_TOOL_CALL_ID = re.compile(rb'"id":"chatcmpl-tool-[0-9a-f]+"')


def timeless(raw: bytes) -> bytes:
    """``raw`` with every ``created`` second set to 0 (two requests may straddle a second) and
    vLLM's random tool-call ids blanked."""
    return _TOOL_CALL_ID.sub(b'"id":"chatcmpl-tool-"', _CREATED.sub(b'"created":0', raw))


@pytest.fixture
async def site(real_vllm: Vllm, tmp_path: Path) -> AsyncIterator[Site]:
    """A gateway (auth on, capture on, SQLite) in front of the tier's vLLM."""
    s = await _site(real_vllm.port, await migrated_sqlite(), tmp_path, GWPROXY_RATELIMIT_ENABLED="false")
    yield s
    await s.server.close()


async def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body, headers=headers) as r:
            return r.status, await r.read(), dict(r.headers)


async def through_and_direct(
    site: Site, vllm: Vllm, path: str, body: dict[str, Any]
) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """The same request through the gateway (as bob) and straight to vLLM with the gateway's id."""
    status, via, _ = await post(site.url(path), body, bearer(site.bob_key))
    rid = upstream_id(via)
    d_status, direct, _ = await post(vllm.url + path, body, {"X-Request-ID": rid} if rid else {})
    return (status, via), (d_status, direct)


@pytest.mark.parametrize("options", STREAM_OPTIONS, ids=lambda o: orjson.dumps(o).decode())
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_streams_are_vllms_bytes_for_every_stream_options(
    site: Site, real_vllm: Vllm, path: str, options: dict[str, Any] | None
) -> None:
    """The gateway asks for usage when the client did not, and removes it again: the client still
    gets vLLM's bytes — ``system_fingerprint`` on the finish event, as vLLM writes it then."""
    body = {**(CHAT if path == "/v1/chat/completions" else COMPLETION), "stream": True}
    if options is not None:
        body["stream_options"] = options
    (status, via), (d_status, direct) = await through_and_direct(site, real_vllm, path, body)
    assert status == d_status == 200
    assert timeless(via) == timeless(direct)
    events = [e for e in via.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and b'"system_fingerprint":"vllm-' in events[-2]
    asked = options is not None and options.get("include_usage") is True  # vLLM 0.32: false by default
    assert (b'"choices":[],"usage"' in via) is asked


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_answers_are_vllms_bytes(site: Site, real_vllm: Vllm, path: str) -> None:
    body = CHAT if path == "/v1/chat/completions" else COMPLETION
    (status, via), (d_status, direct) = await through_and_direct(site, real_vllm, path, body)
    assert status == d_status == 200
    assert timeless(via) == timeless(direct)


async def test_tokens_are_counted_exactly(site: Site, real_vllm: Vllm) -> None:
    """Usage recorded for each kind of request is vLLM's own count."""
    fixed = {**CHAT, "max_tokens": 5, "ignore_eos": True}
    prompt = httpx.post(real_vllm.url + "/v1/chat/completions", json=fixed).json()["usage"]["prompt_tokens"]
    kinds = [fixed, {**fixed, "stream": True}, {**fixed, "stream": True, "stream_options": {"include_usage": True}}]
    for body in kinds:
        status, _, _ = await post(site.url("/v1/chat/completions"), body, bearer(site.bob_key))
        assert status == 200
    usage = await usage_of(site, site.bob_key, len(kinds))
    assert usage["total"]["requests"] == len(kinds)
    assert usage["total"]["prompt_tokens"] == prompt * len(kinds)
    assert usage["total"]["completion_tokens"] == 5 * len(kinds)


async def test_models_unknown_models_and_vllms_400s(site: Site, real_vllm: Vllm) -> None:
    status, listed, _ = await call("GET", site.url("/v1/models"), headers=bearer(site.bob_key))
    [card] = listed["data"]
    assert status == 200 and card["id"] == SERVED and card["owned_by"] == "vllm" and card["max_model_len"] == 512
    cases = [
        {**CHAT, "model": "nope"},  # the gateway's own 404, in vLLM's words
        {**CHAT, "max_tokens": 600},  # over max_model_len: vLLM's 400
        {**CHAT, "stream_options": {"include_usage": True}},  # stream options without a stream
    ]
    for body in cases:
        (status, via), (d_status, direct) = await through_and_direct(site, real_vllm, "/v1/chat/completions", body)
        assert status == d_status and status in (400, 404), via
        assert via == direct
    (status, via), (d_status, direct) = await through_and_direct(
        site, real_vllm, "/tokenize", {"model": SERVED, "prompt": "hello world"}
    )
    assert status == d_status == 200 and via == direct


def _metric(vllm: Vllm, name: str) -> float:
    text = httpx.get(vllm.url + "/metrics").text
    found = re.search(rf'^vllm:{name}\{{engine="0",model_name="tiny"\}} (\S+)$', text, re.M)
    assert found, f"vLLM exports vllm:{name} labelled {{engine, model_name}}"
    return float(found.group(1))


async def test_a_client_that_leaves_aborts_the_generation(real_vllm: Vllm, log_dir: Path, tmp_path: Path) -> None:
    """A gateway process; the client reads three events and drops the connection: vLLM stops
    generating (fewer than the 8 × 480 tokens asked for are made) and runs nothing afterwards."""
    env, key = provision(tmp_path)
    proc, port = start_gateway(log_dir, real_vllm.port, env=env, name="gateway-vllm-abort")
    try:
        before = _metric(real_vllm, "generation_tokens_total")
        # Eight choices of 480 tokens: seconds of work even for the tiny model on a loaded machine.
        body = {**CHAT, "max_tokens": 480, "ignore_eos": True, "stream": True, "n": 8, "temperature": 1.0}
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            async with s.post(url, json=body, headers=bearer(key)) as r:
                for _ in range(3):
                    await r.content.readuntil(b"\n\n")
                r.close()  # the connection dropped, as a client that goes away
        deadline = time.monotonic() + 10
        while _metric(real_vllm, "num_requests_running") != 0:
            assert time.monotonic() < deadline, "vLLM still generates for a client that left"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # vLLM's counters are published after each engine step
        made = _metric(real_vllm, "generation_tokens_total") - before
        assert 1 <= made < 8 * 480, made  # stopped before it was all made
    finally:
        proc.stop()


async def test_stored_responses_through_the_gateway(site: Site, real_vllm: Vllm) -> None:
    """vLLM's Responses API with its store on: made, retrieved and continued by its owner only."""
    bob = openai.AsyncOpenAI(base_url=site.url("/v1"), api_key=site.bob_key, max_retries=0, timeout=60)
    eve = openai.AsyncOpenAI(base_url=site.url("/v1"), api_key=site.eve_key, max_retries=0, timeout=60)
    made = await bob.responses.create(model=SERVED, input="Remember 42.", max_output_tokens=4)
    assert made.id.startswith("resp_") and made.usage is not None and made.usage.output_tokens == 4
    assert (await bob.responses.retrieve(made.id)).id == made.id  # from vLLM's store
    later = await bob.responses.create(model=SERVED, input="Which?", previous_response_id=made.id, max_output_tokens=2)
    assert later.previous_response_id == made.id
    assert later.usage is not None and later.usage.input_tokens > made.usage.input_tokens  # the history went in
    with pytest.raises(openai.NotFoundError):
        await eve.responses.retrieve(made.id)
    async with bob.responses.stream(model=SERVED, input="Stream it.", max_output_tokens=3) as events:
        streamed = await events.get_final_response()
    assert (await bob.responses.retrieve(streamed.id)).id == streamed.id
    await bob.close()
    await eve.close()


async def test_the_sdks_and_langchain_see_what_vllm_says(site: Site, real_vllm: Vllm) -> None:
    """Sync and async SDK, LangChain: the same text and metadata through the gateway as direct.
    (The sync clients run in a thread: the gateway runs on this test's event loop.)"""
    messages: Any = CHAT["messages"]
    args: dict[str, Any] = {"model": SERVED, "messages": messages, "max_tokens": 8, "temperature": 0}

    def sync_calls(base: str, key: str) -> tuple[Any, str, Any]:
        client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)
        answer = client.chat.completions.create(**args)
        chunks = list(client.chat.completions.create(**args, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return answer, text, chunks[-1]

    via = await asyncio.to_thread(sync_calls, site.url("/v1"), site.bob_key)
    direct = await asyncio.to_thread(sync_calls, real_vllm.url + "/v1", "none")
    assert via[0].choices[0].message.content == direct[0].choices[0].message.content == via[1] == direct[1]
    assert via[0].system_fingerprint == direct[0].system_fingerprint and via[0].system_fingerprint
    assert via[2].system_fingerprint == direct[2].system_fingerprint  # on the last chunk, both ways
    assert via[2].usage is None  # the usage the gateway asked for is not the client's

    client = openai.AsyncOpenAI(base_url=site.url("/v1"), api_key=site.bob_key, max_retries=0, timeout=60)
    answer = await client.chat.completions.create(**args)
    await client.close()
    assert answer.choices[0].message.content == via[1]

    metadata = []
    for base, key in ((site.url("/v1"), site.bob_key), (real_vllm.url + "/v1", "none")):
        llm = ChatOpenAI(
            base_url=base, api_key=key, model=SERVED, max_tokens=8, temperature=0, max_retries=0, timeout=60
        )  # type: ignore[arg-type]
        whole = None
        async for part in llm.astream("Say something."):
            whole = part if whole is None else whole + part
        assert whole is not None
        metadata.append((whole.content, whole.response_metadata.get("system_fingerprint")))
        invoked = await asyncio.to_thread(llm.invoke, "Say something.")
        assert invoked.content == whole.content
    assert metadata[0] == metadata[1] and metadata[0][1]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


async def test_an_agent_loop_with_tools(site: Site, real_vllm: Vllm) -> None:
    """A random model makes no sensible calls: a named tool choice (vLLM's structured output)
    makes it call one. Each turn of the loop — the call, the tool's answer, the next turn — is
    vLLM's answer through the gateway, streamed and not."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris today?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    for turn in range(2):
        body = {**CHAT, "messages": messages, "tools": TOOLS, "tool_choice": named, "max_tokens": 120}
        (status, via), (d_status, direct) = await through_and_direct(site, real_vllm, "/v1/chat/completions", body)
        assert status == d_status == 200 and timeless(via) == timeless(direct)
        message = orjson.loads(via)["choices"][0]["message"]
        (s_status, s_via), (_, s_direct) = await through_and_direct(
            site, real_vllm, "/v1/chat/completions", {**body, "stream": True}
        )
        assert s_status == 200 and timeless(s_via) == timeless(s_direct)
        calls = message.get("tool_calls") or []
        if calls:
            assert calls[0]["type"] == "function" and calls[0]["function"]["name"] == "get_weather"
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": f"Sunny, turn {turn}"})
        else:  # cut short by max_tokens inside the call: vLLM says so, and the loop goes on as a client would
            assert orjson.loads(via)["choices"][0]["finish_reason"] == "length"
            messages.append({"role": "assistant", "content": message["content"]})
            messages.append({"role": "user", "content": "Try again."})
    status, answer, _ = await post(
        site.url("/v1/chat/completions"), {**CHAT, "messages": messages}, bearer(site.bob_key)
    )
    assert status == 200 and orjson.loads(answer)["choices"][0]["message"]["role"] == "assistant"
