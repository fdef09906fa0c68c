"""The simulator held to real vLLM: the same requests to ``gwproxy sim`` and to vLLM's CPU build,
compared by *shape* — field names and their order, value types, null versus absent, the sequence
of a stream's events, status codes, content types, error envelopes, metric names and labels —
never by the (random) text. Any drift fails, naming the request and where the shapes part."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.procs import Proc, start_sim
from tests.support.vllm import SERVED, Vllm

Shape = Any

# Greedy, and ignore_eos: every choice makes its max_tokens, so a random model's early end cannot
# change the sequence of events (one case without it). Tool calls are not compared: a random model
# under vLLM's structured output never completes one (tests/vllm/test_gateway.py drives the loop);
# nor are sampled streams of several choices: where a random token ends inside a UTF-8 character,
# vLLM holds its text back and finishes with an empty delta.
CHAT: dict[str, Any] = {
    "model": SERVED,
    "messages": [{"role": "user", "content": "Say something."}],
    "max_tokens": 5,
    "temperature": 0,
    "ignore_eos": True,
}
COMPLETION: dict[str, Any] = {
    "model": SERVED,
    "prompt": "Say something.",
    "max_tokens": 5,
    "temperature": 0,
    "ignore_eos": True,
}
CASES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("chat", "POST", "/v1/chat/completions", CHAT),
    ("chat, may end early", "POST", "/v1/chat/completions", {**CHAT, "ignore_eos": False}),
    ("chat stream", "POST", "/v1/chat/completions", {**CHAT, "stream": True}),
    ("chat stream {}", "POST", "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {}}),
    (
        "chat stream, usage",
        "POST",
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    ),
    (
        "chat stream, continuous usage",
        "POST",
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    ),
    ("n=2, greedy", "POST", "/v1/chat/completions", {**CHAT, "n": 2}),
    ("completion", "POST", "/v1/completions", COMPLETION),
    ("completion stream", "POST", "/v1/completions", {**COMPLETION, "stream": True}),
    (
        "completion stream, usage",
        "POST",
        "/v1/completions",
        {**COMPLETION, "stream": True, "stream_options": {"include_usage": True}},
    ),
    ("unknown model", "POST", "/v1/chat/completions", {**CHAT, "model": "nope"}),
    ("over max_model_len", "POST", "/v1/chat/completions", {**CHAT, "max_tokens": 600}),
    ("stream_options without stream", "POST", "/v1/chat/completions",
     {**CHAT, "stream_options": {"include_usage": True}}),
    ("responses", "POST", "/v1/responses", {"model": SERVED, "input": "Say something.", "max_output_tokens": 5}),
    ("models", "GET", "/v1/models", None),
    ("tokenize", "POST", "/tokenize", {"model": SERVED, "prompt": "hello world"}),
    ("health", "GET", "/health", None),
]  # fmt: skip
# What the gateway reads from /metrics (the balancer's load, the fleet's figures).
METRICS = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_count",
    "vllm:e2e_request_latency_seconds_count",
]


def shape(value: Any) -> Shape:
    """The JSON value with every leaf replaced by its type; objects keep their key order; a list
    becomes the distinct shapes of its items, in order of first appearance."""
    if isinstance(value, dict):
        return ("{", tuple((k, shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        items: list[Shape] = []
        for item in value:
            s = shape(item)
            if s not in items:
                items.append(s)
        return ("[", tuple(items))
    if value is None:
        return "null"
    return type(value).__name__  # bool, int, float, str


def stream_shape(raw: bytes) -> list[Shape]:
    """An event stream's events as shapes, runs of equal shapes counted once."""
    out: list[Shape] = []
    for event in raw.split(b"\n\n"):
        if not event:
            continue
        assert event.startswith(b"data: ") and b"\r" not in event, event
        data = event[len(b"data: ") :]
        s = "[DONE]" if data == b"[DONE]" else shape(orjson.loads(data))
        if not out or out[-1] != s:
            out.append(s)
    return out


def answer(base: str, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    r = httpx.request(method, base + path, json=body, timeout=60)
    kind = r.headers.get("content-type", "").split(";")[0]
    out: dict[str, Any] = {"status": r.status_code, "type": kind}
    if kind == "text/event-stream":
        out["events"] = stream_shape(r.content)
    elif kind == "application/json":
        data = r.json()
        out["shape"] = shape(data)
        if r.status_code >= 400:
            error = data["error"]
            out["error"] = {k: error[k] for k in ("type", "param", "code")}
            out["message"] = re.sub(r"`[^`]*`|\d+", "#", error["message"])
    else:
        out["body"] = r.content
    return out


def metrics(base: str) -> dict[str, set[str]]:
    """Each metric the gateway reads, with its label names."""
    text = httpx.get(base + "/metrics").text
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z0-9_:]+)\{([^}]*)\} ", line)
        if m and m.group(1) in METRICS:
            found[m.group(1)] = {kv.split("=")[0] for kv in m.group(2).split(",")}
    return found


@pytest.fixture(scope="module")
def sim(log_dir: Path) -> Iterator[Proc]:
    """The simulator serving the tier's model name and length."""
    proc, port = start_sim(log_dir, "--model", SERVED, "--max-model-len", "512", name="sim-shapes")
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.mark.parametrize(("name", "method", "path", "body"), CASES, ids=[c[0] for c in CASES])
def test_the_simulator_answers_in_vllms_shapes(
    real_vllm: Vllm, sim: Proc, name: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    real = answer(real_vllm.url, method, path, body)
    simulated = answer(sim.url, method, path, body)  # type: ignore[attr-defined]
    assert simulated == real, name


def test_the_simulators_metrics_are_vllms(real_vllm: Vllm, sim: Proc) -> None:
    for base in (real_vllm.url, sim.url):  # type: ignore[attr-defined]
        httpx.post(base + "/v1/chat/completions", json=CHAT, timeout=60)
    deadline = time.monotonic() + 30
    while set(real := metrics(real_vllm.url)) != set(METRICS):  # vLLM publishes after the request
        assert time.monotonic() < deadline, f"vLLM exports {sorted(real)}"
        time.sleep(0.2)
    assert metrics(sim.url) == real  # type: ignore[attr-defined]
