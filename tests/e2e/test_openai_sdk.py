"""The official openai SDK, sync and async, against a gateway process in front of the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.conftest import MODEL, Gateway, provision
from tests.support.procs import free_port, start_gateway

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def client(gateway: Gateway) -> Iterator[OpenAI]:
    with OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as c:
        yield c


def test_chat_non_stream(client: OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
    assert resp.model == MODEL
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 8


def test_chat_stream_without_usage_gets_no_usage_chunk(client: OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="current", messages=MESSAGES, max_tokens=6, stream=True))  # type: ignore[arg-type]
    assert all(c.choices for c in chunks)  # the injected usage-only chunk was removed
    assert chunks[-1].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(text.split()) == 6
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_with_usage(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_tool_calls(client: OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools)  # type: ignore[arg-type]
    call = resp.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in call.function.arguments  # type: ignore[union-attr]


def test_completions_embeddings_and_models(client: OpenAI) -> None:
    comp = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4)
    assert comp.choices[0].text and comp.usage is not None and comp.usage.completion_tokens == 4
    streamed = list(client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices)
    emb = client.embeddings.create(model=MODEL, input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 64
    assert MODEL in {m.id for m in client.models.list()}


def test_parallel_tool_calls_logprobs_and_model_card(client: OpenAI) -> None:
    """vLLM features the SDK parses, through the gateway: parallel tool-call deltas assembled by
    index, token logprobs, token ids (vLLM's extra fields), one model's card by alias."""
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"properties": {"q": {"type": "string"}}}}}
        for name in ("search", "lookup")
    ]
    stream = client.chat.completions.create(
        model="current",
        messages=MESSAGES,
        tools=tools,
        parallel_tool_calls=True,
        stream=True,  # type: ignore[arg-type]
    )
    calls: dict[int, list[str]] = {}
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            entry = calls.setdefault(delta.index, ["", ""])
            entry[0] += (delta.function and delta.function.name) or ""
            entry[1] += (delta.function and delta.function.arguments) or ""
    assert [calls[i][0] for i in sorted(calls)] == ["search", "lookup"]
    assert all('"q"' in calls[i][1] for i in calls)

    resp = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, logprobs=True, top_logprobs=2,  # type: ignore[arg-type]
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    assert resp.choices[0].logprobs is not None and len(resp.choices[0].logprobs.content or []) == 3
    assert len(resp.choices[0].model_extra["token_ids"]) == 3  # type: ignore[index]
    assert client.models.retrieve("current").id == MODEL
    emb = client.embeddings.create(model=MODEL, input="a", encoding_format="base64")
    assert isinstance(emb.data[0].embedding, str)


async def test_async_client(gateway: Gateway) -> None:
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as client:
        resp = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
        assert resp.choices[0].message.content
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, stream=True)  # type: ignore[arg-type]
        parts = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p or "" for p in parts)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]


def test_bad_key_is_authentication_error(gateway: Gateway) -> None:
    with OpenAI(base_url=gateway.url + "/v1", api_key="gwp-not-a-real-key", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as exc:
            c.models.list()
    assert exc.value.code == "invalid_api_key"


def test_error_classes(client: OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert "does not exist" in nf.value.message
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1)  # type: ignore[arg-type]
    assert br.value.param == "temperature"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="cannot be greater than max_model_len"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100000)  # type: ignore[arg-type]
    with pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * (33 * 1024 * 1024)}])
    assert big.value.status_code == 413


def test_gateway_side_failures_are_status_errors_not_connection_errors(log_dir: Path, tmp_path: Path) -> None:
    env, key = provision(tmp_path)
    proc, port = start_gateway(log_dir, free_port(), name="gateway-no-upstream", env=env)
    try:
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0) as c:
            with pytest.raises(openai.InternalServerError) as exc:
                c.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
            assert exc.value.status_code == 502 and "unreachable" in exc.value.message
            with pytest.raises(openai.InternalServerError) as exc:
                c.chat.completions.create(model="current", messages=MESSAGES)  # type: ignore[arg-type]
            assert exc.value.status_code == 503
            assert exc.value.response.headers["retry-after"]
    finally:
        proc.stop()


def test_raw_http_client_sees_request_id(gateway: Gateway) -> None:
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2},
        headers={"X-Request-ID": "sdk-1", **gateway.auth},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "sdk-1"
