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
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from gwproxy import log
from gwproxy.config import Config, ConfigError
from gwproxy.keys import CONFIG, GATE, METRICS, SWITCHER, UPSTREAM
from gwproxy.switcher import hardware
from gwproxy.switcher.backend import Backend
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


async def switcher_context(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    if cfg.switch.backend and cfg.server.workers > 1:
        raise ConfigError(
            "config key 'switch.backend': one process must own the model; with server.workers > 1 run the "
            "switching gateway as its own single-worker process"
        )
    read = partial(load_profiles, Path(cfg.switch.profiles_dir))
    metrics = app[METRICS]
    switcher = Switcher(cfg.switch, app[UPSTREAM], build_backend(cfg), read(), hardware_source(cfg), read, metrics)
    metrics.model_info = switcher.served
    for problem in switcher.profiles.problems:
        _log.warning("profile not loaded", file=problem.file, field=problem.field, reason=problem.reason)
    app[SWITCHER] = switcher
    app[GATE] = switcher.gate
    await switcher.start()
    hup = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, switcher.reload)
        hup = True
    yield
    if hup:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    await switcher.close()
