"""The fleet on real vLLM: the process backend starts ``vllm serve`` (vLLM's CPU build) for a
profile of the tiny model, follows its real loading lines to ready, scrapes its real
``vllm:*`` metrics for the balancer, and loads and unloads a LoRA adapter at run time through the
gateway; vLLM's sleep endpoints (dev mode) answer the calls the sleep tier makes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer

from gwproxy.keys import SWITCHER, UPSTREAM, USERS
from gwproxy.switcher.backend import progress
from tests.integration.test_auth_http import bearer, call
from tests.support import vllm
from tests.support.procs import free_port
from tests.support.switching import start_switching_app, write_profile

ARCH = {"parameters_b": 0.001, "layers": 2, "attention_heads": 2, "kv_heads": 2, "head_dim": 64, "context": 2048}


@pytest.fixture
async def fleet(vllm_installed: None, tmp_path: Path) -> AsyncIterator[tuple[TestServer, str, str]]:
    """A gateway whose process backend runs the tiny model's profile as real vLLM (one request at a
    time, so a second one waits in vLLM's queue); yields it with an admin's and a user's key."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(
        profiles, "tiny", default=True, model=str(vllm.MODEL), served_names=[vllm.SERVED], architecture=ARCH,
        max_model_len=512, dtype="bfloat16", startup_timeout=int(vllm.START_SECONDS),
        command=[str(vllm.VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"],
        env=vllm.ENV, extra_args=["--max-num-seqs", "1", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"],
    )  # fmt: skip
    env = {
        "GWPROXY_AUTH_ENABLED": "true",
        "GWPROXY_SWITCH_BACKEND": "process",
        "GWPROXY_SWITCH_PROFILES_DIR": str(profiles),
        "GWPROXY_SWITCH_HARDWARE": "1 x Test GPU 24GiB",
        "GWPROXY_SWITCH_STATE_DIR": str(tmp_path / "state"),
        "GWPROXY_SWITCH_VLLM_HOST": "127.0.0.1",
        "GWPROXY_SWITCH_STOP_ON_EXIT": "true",
        "GWPROXY_SWITCH_STOP_TIMEOUT": "20",
        "GWPROXY_RATELIMIT_ENABLED": "false",
        "GWPROXY_UPSTREAM_POLL_INTERVAL": "0.5",
    }
    server = await start_switching_app(free_port(), vllm.START_SECONDS, **env)
    users = server.app[USERS]
    admin = await users.create_user("root", "root-password", "admin")
    bob = await users.create_user("bob", "bob-password")
    keys = (await users.create_key(admin.id, "a"))[0], (await users.create_key(bob.id, "b"))[0]
    yield server, *keys
    await server.close()


async def test_real_vllm_started_followed_scraped_and_given_an_adapter(fleet: tuple[TestServer, str, str]) -> None:
    server, admin, bob = fleet
    url = str(server.make_url(""))
    status = await server.app[SWITCHER].status()
    assert status["state"] == "ready" and status["current_profile"] == "tiny" and status["served_models"] == ["tiny"]
    lines = "\n".join(status["log_tail"])
    assert "(APIServer pid=" in lines  # the tail of vLLM's own log (its phases: the test below)

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    status_code, answer, _ = await call("POST", url + "/v1/chat/completions", headers=bearer(bob), json=chat)
    assert status_code == 200 and answer["model"] == "tiny", answer

    # The balancer's scrape of vLLM's labelled metrics (the registry runs it with several
    # upstreams; here it is called as it calls it): one request at a time, so others wait.
    registry = server.app[UPSTREAM]
    [upstream] = registry.upstreams
    long = {**chat, "max_tokens": 480, "ignore_eos": True}
    running = [asyncio.create_task(call("POST", url + "/v1/chat/completions", headers=bearer(bob), json=long))
               for _ in range(6)]  # fmt: skip
    seen = 0.0
    while seen < 1 and not all(t.done() for t in running):  # while five of them wait their turn
        await asyncio.sleep(0.1)
        await upstream.scrape(registry.session)
        seen = max(seen, upstream.waiting)
    results = await asyncio.gather(*running)
    assert all(r[0] == 200 for r in results)
    assert seen >= 1, "vllm:num_requests_waiting was not read from the real /metrics"

    # A LoRA adapter at run time, through the gateway (admins only).
    adapter = {"lora_name": "tiny-lora", "lora_path": str(vllm.LORA)}
    status_code, _, _ = await call("POST", url + "/v1/load_lora_adapter", headers=bearer(bob), json=adapter)
    assert status_code == 403
    async with httpx.AsyncClient() as c:
        r = await c.post(url + "/v1/load_lora_adapter", headers=bearer(admin), json=adapter)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while "tiny-lora" not in registry.state.models:  # the registry's poll of /v1/models
            assert time.monotonic() < deadline, registry.state.models
            await asyncio.sleep(0.2)
        cards = (await c.get(url + "/v1/models", headers=bearer(bob))).json()["data"]
        assert {c["id"]: c["parent"] for c in cards} == {"tiny": None, "tiny-lora": "tiny"}
        lora_chat = await c.post(url + "/v1/chat/completions", headers=bearer(bob), json={**chat, "model": "tiny-lora"})
        assert lora_chat.status_code == 200 and lora_chat.json()["model"] == "tiny-lora"
        r = await c.post(url + "/v1/unload_lora_adapter", headers=bearer(admin), json={"lora_name": "tiny-lora"})
        assert r.status_code == 200, r.text


def test_vllms_sleep_endpoints_answer_the_sleep_tiers_calls(real_vllm: vllm.Vllm) -> None:
    """With VLLM_SERVER_DEV_MODE=1 (what the fleet sets for a sleeping profile) vLLM's CPU build
    answers /sleep, /is_sleeping and /wake_up — it frees nothing on CPU, and refuses
    ``--enable-sleep-mode`` there (so sleep frees no memory the planner could count on)."""
    base = real_vllm.url
    assert httpx.get(base + "/is_sleeping").json() == {"is_sleeping": False}
    assert httpx.post(base + "/sleep", params={"level": "1"}, timeout=60).status_code == 200
    assert httpx.get(base + "/is_sleeping").json() == {"is_sleeping": True}
    assert httpx.post(base + "/wake_up", timeout=60).status_code == 200
    assert httpx.get(base + "/is_sleeping").json() == {"is_sleeping": False}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(base + "/v1/chat/completions", json=chat, timeout=60).status_code == 200


def test_readiness_phases_are_read_from_vllms_real_log(real_vllm: vllm.Vllm) -> None:
    """The lines a switch or load follows (``backend.progress``) are found in vLLM 0.32's own
    start-up log, in order, so a load's progress moves through its phases on real vLLM too."""
    phases = [found for line in real_vllm.output().splitlines() if (found := progress(line)) is not None]
    names = list(dict.fromkeys(phase for phase, _ in phases))
    for expected in ("loading weights", "weights loaded", "allocating KV cache", "server started"):
        assert expected in names, names
    fractions = [fraction for _, fraction in phases]
    assert fractions[-1] == max(fractions) == 0.95  # the server's start comes last
