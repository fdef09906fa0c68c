"""Context: builds the switcher from the configuration and owns it for the app's lifetime.

Profiles are read from ``switch.profiles_dir`` (problems logged, not fatal); hardware is the
configured snapshot or the live probe; the backend is Docker, a local process, or none. SIGHUP
re-reads the profiles. On shutdown the running job is cancelled and, only with
``switch.stop_on_exit``, the model is stopped; otherwise it keeps serving and is found again by
the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from gwproxy import log
from gwproxy.config import Config, ConfigError, SwitchConfig, named_snapshots, named_urls
from gwproxy.metrics import Metrics
from gwproxy.proxy.registry import UpstreamRegistry
from gwproxy.switcher import hardware
from gwproxy.switcher.backend import Backend
from gwproxy.switcher.fleet import Fleet
from gwproxy.switcher.hosts import DockerHost, Host, ProcessHost
from gwproxy.switcher.profiles import load_profiles
from gwproxy.switcher.switcher import Switcher

_log = log.get("gwproxy.switcher")


def hardware_source(cfg: Config) -> hardware.HardwareSource:
    """The configured snapshot (checked now, so a typo fails at start) or the live probe."""
    if not cfg.switch.hardware:
        return hardware.probe
    try:
        snapshot = hardware.parse_snapshot(cfg.switch.hardware)
    except hardware.SnapshotError as exc:
        raise ConfigError(f"config key 'switch.hardware': {exc}") from None
    return lambda: snapshot


def _token_env(sw: SwitchConfig) -> dict[str, str]:
    return {"HF_TOKEN": sw.hf_token, "HUGGING_FACE_HUB_TOKEN": sw.hf_token} if sw.hf_token else {}


def fleet_hosts(cfg: Config, here: hardware.HardwareSource) -> list[Host]:
    """Where models load on demand: this machine (process backend), or each Docker host of
    ``switch.docker_hosts`` (else ``switch.docker_url``, as "local") with its snapshot from
    ``switch.docker_hardware`` — a host without one plans with ``here`` (switch.hardware or the probe)."""
    sw = cfg.switch
    if sw.backend == "process":
        return [ProcessHost(sw, here, _token_env(sw))]
    named = (
        named_urls(sw.docker_hosts) if sw.docker_hosts else [("local", sw.docker_url or "unix:///var/run/docker.sock")]
    )
    snapshots = named_snapshots(sw.docker_hardware)
    unknown = set(snapshots) - {name for name, _ in named}
    if unknown:
        raise ConfigError(f"config key 'switch.docker_hardware': no host named {', '.join(sorted(unknown))}")
    hosts: list[Host] = []
    for name, url in named:
        source = here
        if name in snapshots:
            try:
                snapshot = hardware.parse_snapshot(snapshots[name])
            except hardware.SnapshotError as exc:
                raise ConfigError(f"config key 'switch.docker_hardware' ({name}): {exc}") from None
            source = partial(lambda s: s, snapshot)
        hosts.append(DockerHost(name, url, sw, source, _token_env(sw)))
    return hosts


def build_backend(cfg: Config) -> Backend | None:
    sw = cfg.switch
    token_env = _token_env(sw)
    if sw.backend == "process":
        from gwproxy.switcher.processes import ProcessBackend

        return ProcessBackend(shlex.split(sw.process_command), Path(sw.state_dir), token_env)
    if sw.backend == "docker":
        from gwproxy.switcher.containers import DockerBackend

        first = named_urls(sw.docker_hosts)[0][1] if sw.docker_hosts else sw.docker_url  # the switched model's host
        return DockerBackend(
            url=first or None,
            image=sw.docker_image,
            network=sw.docker_network,
            alias=urlsplit(cfg.upstream.base_url).hostname or "vllm",
            gpus=sw.docker_gpus,
            hf_cache=os.path.expanduser(sw.hf_cache) if sw.hf_cache else "",
            binds=sw.docker_bind_list(),
            env=token_env,
        )
    return None


@asynccontextmanager
async def open_switcher(config: Config, upstream: UpstreamRegistry, metrics: Metrics) -> AsyncIterator[Switcher]:
    """The switcher on the upstream it starts models behind; SIGHUP re-reads the profiles."""
    if config.switch.backend and config.server.workers > 1:
        raise ConfigError(
            "config key 'switch.backend': one process must own the model; with server.workers > 1 run the "
            "switching gateway as its own single-worker process"
        )
    sw = config.switch
    if sw.on_demand and sw.backend not in ("process", "docker"):
        raise ConfigError(
            "config key 'switch.on_demand': loading models on demand needs switch.backend = 'process' or 'docker'"
        )
    read = partial(load_profiles, Path(sw.profiles_dir))
    switcher = Switcher(sw, upstream, build_backend(config), read(), hardware_source(config), read, metrics)
    for problem in switcher.profiles.problems:
        _log.warning("profile not loaded", file=problem.file, field=problem.field, reason=problem.reason)
    metrics.model_info = switcher.served
    if sw.on_demand:
        switcher.fleet = Fleet(
            sw, upstream, lambda: switcher.profiles, fleet_hosts(config, switcher.known_hardware),
            switcher.primary_claim, metrics, switcher.publish,
        )  # fmt: skip
        upstream.loader = switcher.fleet
    await switcher.start()
    if switcher.fleet is not None:
        await switcher.fleet.start()
    hup = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, switcher.reload)
        hup = True
    try:
        yield switcher
    finally:
        if hup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        upstream.loader = None
        await switcher.close()
