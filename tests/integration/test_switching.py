"""Model switching end to end, for each backend: ``process`` (``gwproxy sim`` as the model
server command) and ``docker`` (a real Docker Engine API, Podman's, running the simulator image);
a real gateway process, real HTTP clients under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Gateway, provision
from tests.support.podman import SIM_FLAGS, SIM_IMAGE, Podman
from tests.support.procs import Proc, free_port
from tests.support.switching import (
    TINY,
    chat_load,
    collect_events,
    get_json,
    switch,
    wait_status,
    write_profile,
    write_test_profiles,
)

SIM = " ".join([sys.executable, "-m", "gwproxy", "sim", *SIM_FLAGS])


def _kill_recorded(state_dir: Path) -> None:
    record = state_dir / "instance.json"
    if record.exists():
        pid = json.loads(record.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


async def assert_serving(s: aiohttp.ClientSession, gw: Gateway, model: str) -> None:
    """A chat for ``current`` through ``gw`` is answered by ``model``."""
    body = {"model": "current", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with s.post(f"{gw.url}/v1/chat/completions", json=body, headers=gw.auth) as r:
        assert r.status == 200 and (await r.json())["model"] == model


def _start(tmp: Path, env: dict[str, str], upstream: int, name: str) -> Gateway:
    port = free_port()
    proc = Proc(
        name,
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--upstream", f"http://127.0.0.1:{upstream}/v1"],
        tmp,
        env=env,
    )
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    return Gateway(proc, port, env["_KEY"], env)


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    engine = Podman()
    yield engine
    engine.stop()


@pytest.fixture(params=["process", "docker"])
def switching_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], int, Path]]:
    db_env, key = provision(tmp_path)
    profiles, state = tmp_path / "profiles", tmp_path / "state"
    write_test_profiles(profiles)
    write_profile(profiles, "slow", extra_args=["--startup-delay", "6"])  # the last flag wins
    env = {
        **db_env,
        "_KEY": key,
        "GWPROXY_UPSTREAM_POLL_INTERVAL": "0.5",
        "GWPROXY_RATELIMIT_ENABLED": "false",  # the load is steady on purpose
        "GWPROXY_SWITCH_BACKEND": request.param,
        "GWPROXY_SWITCH_PROFILES_DIR": str(profiles),
        "GWPROXY_SWITCH_HARDWARE": "1 x Test GPU 24GiB",
        "GWPROXY_SWITCH_PROCESS_COMMAND": SIM,
        "GWPROXY_SWITCH_STATE_DIR": str(state),
        "GWPROXY_SWITCH_VLLM_HOST": "127.0.0.1",
        "GWPROXY_SWITCH_READY_POLL": "0.2",
        "GWPROXY_SWITCH_HOLD_SECONDS": "1",
        "GWPROXY_SWITCH_DRAIN_SECONDS": "10",
        "GWPROXY_SWITCH_STOP_TIMEOUT": "5",
        "GWPROXY_SWITCH_RETRY_AFTER": "2",
    }
    engine: Podman | None = None
    if request.param == "docker":
        engine = request.getfixturevalue("podman")
        env |= {
            "GWPROXY_SWITCH_DOCKER_URL": engine.url,
            "GWPROXY_SWITCH_DOCKER_IMAGE": SIM_IMAGE,
            "GWPROXY_SWITCH_DOCKER_NETWORK": "host",
            "GWPROXY_SWITCH_DOCKER_GPUS": "false",  # no NVIDIA runtime here
            "GWPROXY_SWITCH_DOCKER_BINDS": "/:/host:ro",
            "GWPROXY_SWITCH_HF_CACHE": str(tmp_path / "hf-cache"),
        }
        (tmp_path / "hf-cache").mkdir()
    yield env, free_port(), state
    _kill_recorded(state)
    if engine is not None:
        engine.remove_managed()


async def test_switch_under_load_rollback_and_concurrent_calls(
    switching_env: tuple[dict[str, str], int, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env, upstream, state = switching_env
    gw = _start(tmp_path, {**env, "GWPROXY_SWITCH_STOP_ON_EXIT": "true"}, upstream, "gw-switch")
    base, auth = gw.url, gw.auth
    try:
        async with aiohttp.ClientSession() as s:
            # The default profile is started at boot; requests meanwhile wait or get 503.
            status = await wait_status(s, base, auth, state="ready", current_profile="alpha", job_done=True)
            assert status["backend"] == env["GWPROXY_SWITCH_BACKEND"] and status["served_models"] == ["alpha"]
            assert status["hardware"]["description"] == "1 x Test GPU (24 GiB)"

            stop = asyncio.Event()
            load = asyncio.create_task(chat_load(base, auth, stop))
            # A long stream on the old model, started before the switch, must finish whole.
            long_body = {
                "model": "alpha", "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 150, "ignore_eos": True, "stream": True,
            }  # fmt: skip
            long = asyncio.create_task(s.post(f"{base}/v1/chat/completions", json=long_body, headers=auth))
            await asyncio.sleep(0.3)
            events = asyncio.create_task(collect_events(s, base, auth, "beta"))
            await asyncio.sleep(0.3)

            code, first = await switch(s, base, auth, "beta")
            assert code == 202 and first["job"]["profile_id"] == "beta" and not first["joined"]
            code, joined = await switch(s, base, auth, "beta")
            assert code == 202 and joined["joined"] and joined["job"]["id"] == first["job"]["id"]
            code, refused = await switch(s, base, auth, "broken")
            assert code == 409 and refused["error"]["code"] == "switch_in_progress"

            seen = await events
            resp = await long
            text = await resp.text()
            assert resp.status == 200 and text.rstrip().endswith("data: [DONE]") and '"error"' not in text
            assert text.count('"model":"alpha"') >= 150

            states = [e["job"]["state"] for e in seen]
            for st in ("validating", "stopping", "starting", "loading", "ready"):
                assert st in states, states
            phases = {e["job"]["phase"] for e in seen}
            assert {"weights loaded", "capturing CUDA graphs"} <= phases, phases
            progress = [e["job"]["progress"] for e in seen]
            assert progress == sorted(progress) and progress[-1] == 1.0
            assert seen[-1]["job"]["outcome"] == "switched"
            assert sum("plan" in e["_sent"] for e in seen) <= 2  # sent when it appeared, not every time
            assert max(e["_bytes"] for e in seen[2:]) < 600, [e["_bytes"] for e in seen]  # changes, not the plan
            assert [h["state"] for h in seen[-1]["job"]["history"]][-1] == "ready"

            models = await get_json(s, f"{base}/v1/models", auth)
            assert [m["id"] for m in models["data"]] == ["beta"]

            # A profile whose server exits during start-up: rolled back to beta.
            code, _ = await switch(s, base, auth, "broken")
            assert code == 202
            status = await wait_status(s, base, auth, job_done=True, timeout=60)
            assert status["job"]["outcome"] == "rolled_back", status["job"]
            assert "CUDA out of memory" in status["job"]["error"] and "exited with code 1" in status["job"]["error"]
            assert (status["state"], status["current_profile"]) == ("ready", "beta")
            history = [h["state"] for h in status["job"]["history"]]
            assert history.index("failed") < history.index("rolling_back") < len(history) - 1, history
            assert history[-1] == "ready"

            await asyncio.sleep(1)
            stop.set()
            result = await load
            assert result.unexplained == [], result.unexplained[:5]
            assert result.statuses[200] > 20 and set(result.statuses) <= {200, 503}, result.statuses
            assert result.models["alpha"] > 0 and result.models["beta"] > 0, result.models
            assert result.statuses[503] > 0  # held longer than hold_seconds while the long stream drained

            # Planning refusals change nothing; a dry run says why.
            code, dry = await switch(s, base, auth, "huge", dry_run=True)
            assert code == 200 and dry["job"]["outcome"] == "dry_run" and not dry["job"]["plan"]["fits"]
            assert "24.0 GiB" in dry["job"]["plan"]["reason"]
            code, _job = await switch(s, base, auth, "huge")
            assert code == 202
            status = await wait_status(s, base, auth, job_done=True)
            assert status["job"]["outcome"] == "refused" and "force: true" in status["job"]["error"]
            assert (status["state"], status["current_profile"]) == ("ready", "beta")
            code, missing = await switch(s, base, auth, "nope")
            assert code == 404 and missing["error"]["param"] == "profile_id"
    finally:
        gw.proc.stop()
    # stop_on_exit: the model server went with the gateway.
    assert not (state / "instance.json").exists()
    if env["GWPROXY_SWITCH_BACKEND"] == "docker":
        assert request.getfixturevalue("podman").containers() == []


async def test_gateway_restarted_mid_switch_recovers(
    switching_env: tuple[dict[str, str], int, Path], tmp_path: Path
) -> None:
    env, upstream, _state = switching_env
    gw = _start(tmp_path, env, upstream, "gw-restart-1")
    async with aiohttp.ClientSession() as s:
        await wait_status(s, gw.url, gw.auth, state="ready", current_profile="alpha")
        code, _ = await switch(s, gw.url, gw.auth, "slow")
        assert code == 202
        loading = await wait_status(s, gw.url, gw.auth, state="loading", current_profile="slow")
        gw.proc.stop()  # SIGTERM mid-switch; the model server keeps loading

        again = _start(tmp_path, env, upstream, "gw-restart-2")
        try:
            status = await get_json(s, f"{again.url}/api/models/status", again.auth)
            assert status["current_profile"] == "slow" and status["state"] in ("loading", "ready")
            status = await wait_status(s, again.url, again.auth, state="ready", current_profile="slow", job_done=True)
            assert status["job"]["outcome"] == "switched"
            assert status["instance"] == loading["instance"]  # adopted, not started again
            await assert_serving(s, again, "slow")
        finally:
            again.proc.stop()


async def test_a_switch_cut_by_a_gateway_kill_in_its_drain_is_resumed(
    switching_env: tuple[dict[str, str], int, Path], tmp_path: Path
) -> None:
    """SIGKILL while the switch waits for a stream on the old model: the restarted gateway adopts
    the old model, then carries on with the switch it was asked for (the same job)."""
    env, upstream, state = switching_env
    gw = _start(tmp_path, env, upstream, "gw-drain-kill-1")
    async with aiohttp.ClientSession() as s:
        await wait_status(s, gw.url, gw.auth, state="ready", current_profile="alpha", job_done=True)
        long_body = {"model": "alpha", "messages": [{"role": "user", "content": "x"}],
                     "max_tokens": 2000, "ignore_eos": True, "stream": True}  # fmt: skip
        long = await s.post(f"{gw.url}/v1/chat/completions", json=long_body, headers=gw.auth)
        code, started = await switch(s, gw.url, gw.auth, "beta")
        assert code == 202
        await wait_status(s, gw.url, gw.auth, state="stopping")  # draining the long stream
        gw.proc.stop(signal.SIGKILL)
        long.close()
        assert json.loads((state / "switch-intent.json").read_text())["profile_id"] == "beta"

        again = _start(tmp_path, env, upstream, "gw-drain-kill-2")
        try:
            status = await wait_status(s, again.url, again.auth, state="ready", current_profile="beta",
                                       job_done=True, timeout=90)  # fmt: skip
            job = status["job"]
            assert job["id"] == started["job"]["id"] and job["resumed"] and job["outcome"] == "switched"
            assert job["previous_profile_id"] == "alpha"
            assert not (state / "switch-intent.json").exists()
            await assert_serving(s, again, "beta")
        finally:
            again.proc.stop()


async def test_a_switch_interrupted_too_often_is_reported_failed(
    switching_env: tuple[dict[str, str], int, Path], tmp_path: Path
) -> None:
    """An intent recorded by two gateways already: not resumed, reported failed in the events and in
    status, and the model that was served before is started as a boot would."""
    env, upstream, state = switching_env
    state.mkdir(parents=True, exist_ok=True)
    (state / "switch-intent.json").write_text(
        json.dumps({"job": "0123456789ab", "profile_id": "beta", "previous": "alpha", "force": False, "attempts": 2})
    )
    gw = _start(tmp_path, env, upstream, "gw-intent-failed")
    try:
        async with aiohttp.ClientSession() as s:
            status = await wait_status(s, gw.url, gw.auth, state="ready", current_profile="alpha", job_done=True)
            assert "switch to 'beta' (job 0123456789ab)" in status["error"]
            assert "interrupted by 2 gateway restarts" in status["error"]
            assert not (state / "switch-intent.json").exists()
            async with s.get(f"{gw.url}/api/models/events", headers=gw.auth) as r:  # the stream opens with it too
                async for raw in r.content:  # its first event: the status
                    if raw.startswith(b"data:"):
                        assert "interrupted by 2 gateway restarts" in raw.decode()
                        break
        assert "interrupted switch not resumed" in gw.proc.output()
    finally:
        gw.proc.stop()


async def test_a_default_profile_too_big_is_logged_and_the_best_fitting_one_started(
    switching_env: tuple[dict[str, str], int, Path], tmp_path: Path
) -> None:
    """The default needs more than the GPUs have: boot logs need against have, starts the profile
    that fits best instead, and status says so; with ``boot_fallback`` off nothing starts and
    status says why."""
    env, upstream, _ = switching_env
    profiles = Path(env["GWPROXY_SWITCH_PROFILES_DIR"])
    write_profile(profiles, "alpha")  # no longer the default
    write_profile(profiles, "huge", default=True, architecture={**TINY, "parameters_b": 500})
    gw = _start(tmp_path, {**env, "GWPROXY_SWITCH_STOP_ON_EXIT": "true"}, upstream, "gw-boot-fallback")
    try:
        async with aiohttp.ClientSession() as s:
            status = await wait_status(s, gw.url, gw.auth, state="ready", job_done=True)
            assert status["current_profile"] == "alpha"  # fits, and first of the equals
            assert status["boot"]["default"] == "huge" and status["boot"]["started"] == "alpha"
            assert "GiB per GPU" in status["boot"]["reason"] and "each GPU offers" in status["boot"]["reason"]
            await assert_serving(s, gw, "alpha")
            async with s.get(f"{gw.url}/metrics") as r:  # what is served, and how the boot's switch went
                metrics = await r.text()
            assert 'gwproxy_model_info{model="alpha",profile="alpha"} 1.0' in metrics
            assert 'gwproxy_model_switches_total{outcome="switched"} 1.0' in metrics
            assert 'gwproxy_model_load_duration_seconds_count{profile="alpha"} 1.0' in metrics
            assert 'gwproxy_model_switch_duration_seconds_count{outcome="switched"} 1.0' in metrics
        out = gw.proc.output()
        assert "default profile does not fit the GPUs" in out and "starting the best-fitting profile" in out
    finally:
        gw.proc.stop()  # stops the model too: the next boot finds none running
    gw = _start(tmp_path, {**env, "GWPROXY_SWITCH_BOOT_FALLBACK": "false"}, free_port(), "gw-boot-refused")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{gw.url}/api/models/status", headers=gw.auth) as r:
                status = await r.json()
            assert status["state"] == "stopped" and status["boot"]["started"] is None
            assert "'huge' was not started" in status["error"] and "boot_fallback is off" in status["error"]
    finally:
        gw.proc.stop()
