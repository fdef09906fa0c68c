"""The switch gate (hold, open, down, drain) and the reading of vLLM's start-up log lines."""

from __future__ import annotations

import asyncio
import time

import pytest

from gwproxy.errors import ModelNotReady
from gwproxy.switcher.backend import progress
from gwproxy.switcher.gate import Gate


async def test_open_gate_lets_requests_through_and_counts_them() -> None:
    gate = Gate()
    assert gate.is_open
    gate.enter()
    gate.enter()
    assert gate.inflight == 2
    assert not await gate.drained(0.05)
    gate.leave()
    gate.leave()
    assert await gate.drained(0.05)


async def test_held_requests_wait_and_pass_when_it_opens() -> None:
    gate = Gate()
    gate.hold("switching to 'beta'")
    waiter = asyncio.create_task(gate.wait(5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    gate.open()
    await asyncio.wait_for(waiter, 1)


async def test_held_too_long_is_a_503_with_retry_after() -> None:
    gate = Gate(retry_after=7)
    gate.hold("switching to 'beta'")
    started = time.monotonic()
    with pytest.raises(ModelNotReady) as info:
        await gate.wait(0.1)
    assert 0.1 <= time.monotonic() - started < 1
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "7"
    assert "switching to 'beta'" in info.value.message


async def test_down_refuses_at_once_and_wakes_waiters() -> None:
    gate = Gate()
    gate.hold("switching")
    waiter = asyncio.create_task(gate.wait(30))
    await asyncio.sleep(0.02)
    gate.down("switch and rollback both failed")
    with pytest.raises(ModelNotReady, match="rollback both failed"):
        await asyncio.wait_for(waiter, 1)
    started = time.monotonic()
    with pytest.raises(ModelNotReady):
        await gate.wait(30)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("line", "phase", "fraction"),
    [
        ("INFO 05-01 [gpu_model_runner.py:1] Starting to load model Qwen/Qwen2-7B-Instruct...", "loading weights", 0.1),
        ("Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:01<00:01]", "loading weights", 0.325),
        ("INFO [default_loader.py:262] Loading weights took 3.52 seconds", "weights loaded", 0.6),
        ("INFO [gpu_model_runner.py:1] Model loading took 14.25 GiB and 4.1 seconds", "weights loaded", 0.6),
        (
            "INFO [kv_cache_utils.py:1] Maximum concurrency for 32768 tokens per request: 12.3x",
            "allocating KV cache",
            0.7,
        ),
        (
            "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|██████████| 67/67",
            "capturing CUDA graphs",
            0.8,
        ),
        ("INFO [gpu_model_runner.py:1] Graph capturing finished in 7 secs, took 0.50 GiB", "CUDA graphs captured", 0.9),
        ("INFO:     Application startup complete.", "server started", 0.95),
    ],
)
def test_vllm_log_lines_mark_progress(line: str, phase: str, fraction: float) -> None:
    assert progress(line) == (phase, pytest.approx(fraction))


def test_other_lines_mark_nothing() -> None:
    assert progress("INFO: 127.0.0.1:5555 - GET /health HTTP/1.1 200 OK") is None


def test_a_job_event_carries_what_changed() -> None:
    from gwproxy.switcher.routes import JOB_ALWAYS, job_delta

    first = {k: None for k in JOB_ALWAYS} | {"id": "j1", "plan": {"big": 1}, "error": None, "history": [1]}
    assert job_delta(first, None) == first
    later = {**first, "phase": "loading", "progress": 0.5, "history": [1, 2]}
    delta = job_delta(later, first)
    assert set(delta) == {*JOB_ALWAYS, "history"} and delta["history"] == [2] and "plan" not in delta
    failed = {**later, "error": "boom", "history": [1, 2]}
    assert job_delta(failed, later)["error"] == "boom" and "history" not in job_delta(failed, later)


async def test_the_gate_covers_only_the_switched_model() -> None:
    """A switch holds its own model — the names going and coming, ``current``, no model named —
    and nothing else."""
    gate = Gate()
    gate.open(frozenset({"alpha", "alpha-chat"}))
    gate.hold("switching to 'beta'", frozenset({"beta"}))
    for model in ("alpha", "alpha-chat", "beta", "current", None):
        assert gate.covers(model), model
    assert not gate.covers("gamma")  # another model: never held, never counted
    gate.open(frozenset({"beta"}))
    assert gate.covers("beta") and not gate.covers("alpha")  # the old names go with the old model
