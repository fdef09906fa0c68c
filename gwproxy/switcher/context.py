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
from gwproxy.config import Config, ConfigError
from gwproxy.metrics import Metrics
from gwproxy.proxy.registry import UpstreamRegistry
from gwproxy.switcher import hardware
from gwproxy.switcher.backend import Backend
from gwproxy.switcher.fleet import Fleet
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


def build_backend(cfg: Config) -> Backend | None:
    sw = cfg.switch
    token_env = {"HF_TOKEN": sw.hf_token, "HUGGING_FACE_HUB_TOKEN": sw.hf_token} if sw.hf_token else {}
    if sw.backend == "process":
        from gwproxy.switcher.processes import ProcessBackend

        return ProcessBackend(shlex.split(sw.process_command), Path(sw.state_dir), token_env)
    if sw.backend == "docker":
        from gwproxy.switcher.containers import DockerBackend

        return DockerBackend(
            url=sw.docker_url or None,
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
    if sw.on_demand and sw.backend != "process":
        raise ConfigError(
            "config key 'switch.on_demand': loading models on demand needs switch.backend = 'process' "
            f"(got {sw.backend or 'none'!r}; on-demand Docker instances are not built yet)"
        )
    read = partial(load_profiles, Path(sw.profiles_dir))
    switcher = Switcher(sw, upstream, build_backend(config), read(), hardware_source(config), read, metrics)
    for problem in switcher.profiles.problems:
        _log.warning("profile not loaded", file=problem.file, field=problem.field, reason=problem.reason)
    metrics.model_info = switcher.served
    if sw.on_demand:
        token_env = {"HF_TOKEN": sw.hf_token, "HUGGING_FACE_HUB_TOKEN": sw.hf_token} if sw.hf_token else {}
        switcher.fleet = Fleet(
            sw,
            upstream,
            lambda: switcher.profiles,
            switcher.known_hardware,
            switcher.primary_claim,
            token_env,
            metrics,
            switcher.publish,
        )
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
