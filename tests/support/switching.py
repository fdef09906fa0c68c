"""Shared by the model-switching tests: test profiles, a steady chat load, and API helpers."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

TINY = {"parameters_b": 0.5, "layers": 4, "attention_heads": 8, "kv_heads": 2, "head_dim": 64, "context": 4096}


def write_profile(directory: Path, pid: str, **fields: Any) -> None:
    body: dict[str, Any] = {
        "name": pid.title(),
        "model": f"test-org/{pid}",
        "served_names": [pid],
        "architecture": TINY,
        "max_model_len": 2048,
        "startup_timeout": 30,
        **fields,
    }
    (directory / f"{pid}.yml").write_text(json.dumps(body))  # JSON is YAML


def write_test_profiles(directory: Path, **common: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_profile(directory, "alpha", default=True, **common)
    write_profile(directory, "beta", **common)
    write_profile(directory, "broken", extra_args=["--fail-on-start", "CUDA out of memory"], **common)
    write_profile(directory, "huge", architecture={**TINY, "parameters_b": 500}, **common)


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    unexplained: list[str] = field(default_factory=list)


async def chat_load(base: str, headers: dict[str, str], stop: asyncio.Event, workers: int = 6) -> LoadResult:
    """Steady chat requests (half streamed) until ``stop``; every answer must be a completion or
    a 503 with Retry-After, anything else is recorded as unexplained."""
    result = LoadResult()

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        stream = n % 2 == 0
        while not stop.is_set():
            body = {"model": "current", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            if stream:
                body["stream"] = True
            try:
                async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as r:
                    text = await r.text()
                    result.statuses[r.status] += 1
                    if r.status == 200:
                        if stream:
                            ok = text.rstrip().endswith("data: [DONE]") and '"error"' not in text
                            first = json.loads(text.split("data: ", 2)[1].split("\n")[0])
                        else:
                            first = json.loads(text)
                            ok = bool(first["choices"][0]["message"]["content"])
                        result.models[first["model"]] += 1
                        if not ok:
                            result.unexplained.append(f"200 without a whole completion: {text[:300]}")
                    elif r.status == 503 and r.headers.get("Retry-After"):
                        assert json.loads(text)["error"]["code"] == "model_not_ready", text
                    else:
                        result.unexplained.append(f"{r.status}: {text[:300]}")
            except (aiohttp.ClientError, AssertionError, ValueError, KeyError, IndexError) as exc:
                result.unexplained.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(i, session) for i in range(workers)))
    return result


async def get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    async with session.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def wait_status(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], timeout: float = 60, **want: Any
) -> dict[str, Any]:
    """Poll /api/models/status until every ``want`` key matches (``job_done=True`` allowed)."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = await get_json(session, f"{base}/api/models/status", headers)
        job = status.get("job") or {}
        seen = {**status, "job_done": job.get("done"), "job_outcome": job.get("outcome")}
        if all(seen.get(k) == v for k, v in want.items()):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never matched {want}: {json.dumps(status)[:2000]}")


async def switch(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], profile: str, **extra: Any
) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{base}/api/models/switch", json={"profile_id": profile, **extra}, headers=headers) as r:
        return r.status, await r.json()


async def collect_events(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], profile: str, timeout: float = 60
) -> list[dict[str, Any]]:
    """The /api/models/events stream's events for the next switch to ``profile``, until it is done;
    the stream must then end by itself. Start it before the switch (the stream's first event,
    ``status``, says it is listening). Each job event is merged into the job as known so far (the
    stream sends what changed), and recorded with its size as ``_bytes``."""
    events: list[dict[str, Any]] = []
    limit = aiohttp.ClientTimeout(total=timeout)
    async with session.get(f"{base}/api/models/events", headers=headers, timeout=limit) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        kind = None
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "job":
                event = json.loads(line[5:])
                if event["job"]["profile_id"] == profile and not event["job"]["dry_run"]:
                    known = dict(events[-1]["job"]) if events else {}
                    added = event["job"].pop("history", [])
                    known.update(event["job"])
                    known["history"] = (known.get("history") if events else []) + added
                    events.append({**event, "job": known, "_bytes": len(line), "_sent": set(event["job"])})
                    if known["done"]:
                        rest = await asyncio.wait_for(r.content.read(), 5)  # the stream ends here
                        assert b"event: job" not in rest, rest
                        return events
    return events


async def start_switching_app(upstream_port: int, timeout: float, **env: str) -> Any:
    """An in-process gateway whose switcher starts its default profile; returned once it serves."""
    from gwproxy.keys import SWITCHER
    from tests.conftest import start_app

    server = await start_app(upstream_port, **env)
    switcher = server.app[SWITCHER]
    deadline = time.monotonic() + timeout
    while switcher.state.value != "ready":
        assert time.monotonic() < deadline, await switcher.status()
        await asyncio.sleep(0.1)
    return server
