"""Models on demand across two GPU hosts: two Podman Engine API services, each with its own
storage (so neither sees the other's containers), stand in for two machines with one 24 GiB GPU
each. The switched model ``alpha`` (7.5 GiB) runs on gpu1; ``beta`` (10.5 GiB) fits beside it;
``gamma`` (9.5 GiB) no longer does, so it is placed on gpu2 — by fit, without evicting anyone. A
restarted gateway adopts both from their containers' labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gwproxy.keys import SWITCHER
from tests.support.podman import SIM_IMAGE, Podman
from tests.support.procs import free_port
from tests.support.switching import start_switching_app, write_profile


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Podman, Podman]]:
    one = Podman(own_storage=True)
    try:
        two = Podman(own_storage=True)
    except BaseException:
        one.stop()
        raise
    yield one, two
    one.stop()
    two.stop()


def _env(tmp: Path, one: Podman, two: Podman, stop_on_exit: bool) -> dict[str, str]:
    base = free_port()
    return {
        "GWPROXY_SWITCH_BACKEND": "docker",
        "GWPROXY_SWITCH_ON_DEMAND": "true",
        "GWPROXY_SWITCH_DOCKER_HOSTS": f"gpu1={one.url},gpu2={two.url}",
        "GWPROXY_SWITCH_DOCKER_HARDWARE": "gpu1=1 x Test GPU 24GiB; gpu2=1 x Test GPU 24GiB",
        "GWPROXY_SWITCH_HARDWARE": "1 x Test GPU 24GiB",
        "GWPROXY_SWITCH_DOCKER_IMAGE": SIM_IMAGE,
        "GWPROXY_SWITCH_DOCKER_NETWORK": "host",
        "GWPROXY_SWITCH_DOCKER_GPUS": "false",  # no NVIDIA runtime here
        "GWPROXY_SWITCH_DOCKER_BINDS": "/:/host:ro",
        "GWPROXY_SWITCH_HF_CACHE": str(tmp / "hf-cache"),
        "GWPROXY_SWITCH_PROFILES_DIR": str(tmp / "profiles"),
        "GWPROXY_SWITCH_STATE_DIR": str(tmp / "state"),
        "GWPROXY_SWITCH_VLLM_HOST": "127.0.0.1",
        "GWPROXY_SWITCH_READY_POLL": "0.2",
        "GWPROXY_SWITCH_HOLD_SECONDS": "30",
        "GWPROXY_SWITCH_STOP_TIMEOUT": "5",
        "GWPROXY_SWITCH_MIN_RESIDENCY": "0",
        "GWPROXY_SWITCH_STOP_ON_EXIT": "true" if stop_on_exit else "false",
        "GWPROXY_SWITCH_PORT_RANGE": f"{base + 1}-{base + 30}" if base + 30 < 65535 else "21000-21030",
        "GWPROXY_RATELIMIT_ENABLED": "false",
    }


async def _up(tmp: Path, port: int, one: Podman, two: Podman, stop_on_exit: bool) -> TestServer:
    server: TestServer = await start_switching_app(port, 60, **_env(tmp, one, two, stop_on_exit))
    return server


async def _chat(server: TestServer, model: str) -> tuple[int, str]:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/v1/chat/completions"), json=body) as r:
        data = await r.json()
        return r.status, data.get("model") or str(data)


async def test_placement_by_fit_across_two_hosts_and_adoption_after_a_restart(
    hosts: tuple[Podman, Podman], tmp_path: Path
) -> None:
    one, two = hosts
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles, "alpha", default=True, weights_gib=6.0)
    write_profile(profiles, "beta", weights_gib=9.0)
    write_profile(profiles, "gamma", weights_gib=8.0)
    port = free_port()
    server = await _up(tmp_path, port, one, two, stop_on_exit=False)
    try:
        assert await _chat(server, "beta") == (200, "beta")
        assert await _chat(server, "gamma") == (200, "gamma")
        fleet = server.app[SWITCHER].fleet
        assert fleet is not None
        placed = {pid: (r.host.name, r.placement.gpus) for pid, r in fleet.residents.items()}
        assert placed == {"beta": ("gpu1", (0,)), "gamma": ("gpu2", (0,))}  # gamma no longer fits gpu1
        assert one.containers("gwproxy.fleet") == ["gwproxy-fleet-beta"]
        assert two.containers("gwproxy.fleet") == ["gwproxy-fleet-gamma"]
        async with aiohttp.ClientSession() as s, s.get(server.make_url("/api/models/status")) as r:
            shown = {i["profile_id"]: i["host"] for i in (await r.json())["instances"]}
        assert shown == {"beta": "gpu1", "gamma": "gpu2"}
        ids = {pid: r.instance.handle for pid, r in fleet.residents.items() if r.instance}
    finally:
        await server.close()

    # A new gateway finds both by their labels, on both hosts, and routes to them again.
    server = await _up(tmp_path, port, one, two, stop_on_exit=True)
    try:
        fleet = server.app[SWITCHER].fleet
        assert fleet is not None and set(fleet.residents) == {"beta", "gamma"}
        assert {pid: r.instance.handle for pid, r in fleet.residents.items() if r.instance} == ids
        assert await _chat(server, "gamma") == (200, "gamma")
        assert await _chat(server, "beta") == (200, "beta")
        assert {pid: r.host.name for pid, r in fleet.residents.items()} == {"beta": "gpu1", "gamma": "gpu2"}
    finally:
        await server.close()
    assert one.containers("gwproxy.fleet") == [] and two.containers("gwproxy.fleet") == []
