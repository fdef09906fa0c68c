"""The backends on their own: what a container is created with, stopping something that
ignores SIGTERM (a real process, a real container), and an engine that is not there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gwproxy.switcher.backend import Launch
from gwproxy.switcher.containers import HF_CACHE_IN_CONTAINER, DockerBackend
from gwproxy.switcher.processes import ProcessBackend
from gwproxy.switcher.profiles import parse_profile
from tests.support.podman import Podman
from tests.support.switching import TINY

STUBBORN = ["sh", "-c", "trap '' TERM; echo Starting to load model; sleep 60"]


def _profile(**extra: object) -> object:
    body = {"name": "T", "model": "org/t", "served_names": ["t", "t2"], "architecture": TINY, "max_model_len": 1024}
    return parse_profile("t", {**body, **extra})


def _launch(tp: int = 2, **extra: object) -> Launch:
    return Launch(_profile(**extra), "previous-one", tp, "0.0.0.0", 8000)  # type: ignore[arg-type]


async def test_container_spec_carries_gpus_ipc_cache_token_labels_and_network() -> None:
    backend = DockerBackend(
        url="unix:///nonexistent.sock", image="vllm/vllm-openai:v0.9", network="gwproxy_default", alias="vllm",
        gpus=True, hf_cache="gwproxy_hf-cache", binds=["/models:/models:ro"], env={"HF_TOKEN": "hf_secret"},
    )  # fmt: skip
    spec = backend.spec(_launch(env={"VLLM_LOGGING_LEVEL": "DEBUG"}))
    host = spec["HostConfig"]
    assert spec["Image"] == "vllm/vllm-openai:v0.9"
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 2, "Capabilities": [["gpu"]]}]
    assert host["IpcMode"] == "host"
    assert host["Binds"] == ["/models:/models:ro", f"gwproxy_hf-cache:{HF_CACHE_IN_CONTAINER}"]
    assert set(spec["Env"]) == {"HF_TOKEN=hf_secret", "VLLM_LOGGING_LEVEL=DEBUG"}
    assert spec["Labels"] == {
        "gwproxy.managed": "true", "gwproxy.profile": "t", "gwproxy.previous": "previous-one", "gwproxy.served": "t",
    }  # fmt: skip
    assert host["NetworkMode"] == "gwproxy_default"
    assert spec["NetworkingConfig"]["EndpointsConfig"]["gwproxy_default"]["Aliases"] == ["vllm"]
    cmd = spec["Cmd"]
    assert cmd[:5] == ["--model", "org/t", "--served-model-name", "t", "t2"]
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and cmd[cmd.index("--port") + 1] == "8000"
    assert "Entrypoint" not in spec  # the image's own (vLLM's server)
    own = backend.spec(_launch(image="my/vllm:custom", command=["vllm", "serve"]))
    assert own["Image"] == "my/vllm:custom" and own["Entrypoint"] == ["vllm", "serve"]
    assert backend.spec(_launch(tp=1))["HostConfig"]["DeviceRequests"][0]["Count"] == 1
    await backend.close()


async def test_process_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    backend = ProcessBackend(STUBBORN, tmp_path, {})
    instance = await backend.start(_launch(tp=1))
    assert (await backend.find()) == instance  # recorded, and the record matches the live process
    lines = backend.logs(instance)
    assert "Starting to load model" in await anext(lines)
    started = time.monotonic()
    await backend.stop(instance, 1.0)
    assert 1.0 <= time.monotonic() - started < 5
    state = await backend.state(instance)
    assert not state.running
    assert await backend.find() is None and not (tmp_path / "instance.json").exists()
    await backend.stop(instance, 1.0)  # idempotent


async def test_a_stale_record_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "instance.json").write_text('{"pid": 1, "profile": "t", "previous": null, "cmdline": ["vllm"]}')
    assert await ProcessBackend(STUBBORN, tmp_path, {}).find() is None  # pid 1 is alive but is not vllm


@pytest.fixture(scope="module")
def podman() -> object:
    engine = Podman()
    yield engine
    engine.stop()


async def test_container_that_ignores_sigterm_is_killed_and_removed(podman: Podman) -> None:
    backend = DockerBackend(
        url=podman.url, image="localhost/gwproxy-sim-test:latest", network="host", alias="vllm",
        gpus=False, hf_cache="", binds=[], env={},
    )  # fmt: skip
    try:
        instance = await backend.start(_launch(tp=1, command=["/bin/sh", "-c", "trap '' TERM; echo up; sleep 60", "-"]))
        assert (await backend.state(instance)).running
        found = await backend.find()
        assert found is not None and (found.profile_id, found.previous) == ("t", "previous-one")
        started = time.monotonic()
        await backend.stop(instance, 1.0)
        assert 1.0 <= time.monotonic() - started < 10
        assert podman.containers() == []
        assert not (await backend.state(instance)).running
        await backend.stop(instance, 1.0)  # already gone: fine
    finally:
        await backend.close()


async def test_an_unreachable_engine_is_reported_not_fatal(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient

    from tests.conftest import start_app

    server = await start_app(
        1, GWPROXY_SWITCH_BACKEND="docker", GWPROXY_SWITCH_DOCKER_URL=f"unix://{tmp_path}/no-docker.sock",
        GWPROXY_SWITCH_HARDWARE="1 x L4 24GiB",
    )  # fmt: skip
    client = TestClient(server)
    await client.start_server()
    try:
        status = await (await client.get("/api/models/status")).json()
        assert status["state"] == "failed" and "docker backend is not usable" in status["error"]
        assert (await client.get("/health")).status == 200  # the gateway itself is up
    finally:
        await client.close()
