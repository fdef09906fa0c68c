"""Health, readiness, Prometheus metrics and the access log of a gateway process."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest

from tests.conftest import MODEL, Gateway


async def test_health_ready_and_index(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.url + "/health") as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "ok"
            assert body["components"]["upstream"]["status"] == "up"
            assert MODEL in body["components"]["upstream"]["models"]
        async with s.get(gateway.url + "/health/ready") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with s.get(gateway.url + "/") as r:
            info = await r.json()
            assert info["service"] == "gwproxy" and info["endpoints"]["openai"] == "/v1"


async def test_metrics_count_requests_tokens_and_latency(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "count me"}],
            "max_tokens": 4,
            "stream": True,
        }
        async with s.post(
            gateway.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": "metrics-1", **gateway.auth}
        ) as r:
            assert b'"usage"' not in await r.read()
        async with s.get(gateway.url + "/metrics") as r:
            text = await r.text()
    assert r.headers["Content-Type"].startswith("text/plain")
    assert re.search(r'gwproxy_requests_total\{model="sim-model",route="/v1/chat/completions",status="200"\} \d', text)
    assert re.search(r'gwproxy_completion_tokens_total\{model="sim-model"\} [1-9]', text)
    assert re.search(r'gwproxy_prompt_tokens_total\{model="sim-model"\} [1-9]', text)
    assert 'gwproxy_time_to_first_token_seconds_count{model="sim-model"}' in text
    assert 'gwproxy_request_duration_seconds_bucket{le="0.005",route="/v1/chat/completions"}' in text
    assert "gwproxy_requests_in_flight" in text
    assert "process_cpu_seconds_total" in text


@pytest.mark.parametrize("model", ["made-up-model-1", "made-up-model-2"])
async def test_unknown_models_do_not_grow_metric_labels(gateway: Gateway, model: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gateway.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "x"}]},
            headers=gateway.auth,
        ) as r:
            assert r.status == 404
        async with s.get(gateway.url + "/metrics") as r:
            text = await r.text()
    assert model not in text
    assert 'model="other"' in text


async def test_access_log_line_per_request(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "secret prompt text"}],
            "max_tokens": 3,
        }
        async with s.post(
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"X-Request-ID": "log-check-1", **gateway.auth},
        ) as r:
            assert r.status == 200
    found: list[dict[str, Any]] = []
    for _ in range(100):  # the line is written once the response is over, after the client has it
        lines = [json.loads(line) for line in gateway.proc.output().splitlines() if line.startswith("{")]
        found = [entry for entry in lines if entry.get("request_id") == "log-check-1"]
        if found:
            break
        await asyncio.sleep(0.02)
    [line] = found
    assert line["event"] == "request" and line["level"] == "info"
    assert line["route"] == "/v1/chat/completions" and line["model"] == MODEL and line["status"] == 200
    assert line["duration_ms"] > 0 and line["ttft_ms"] > 0
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] == 3
    output = gateway.proc.output()
    assert "secret prompt text" not in output and gateway.key not in output
