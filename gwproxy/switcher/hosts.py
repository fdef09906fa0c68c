"""Hosts: the machines the fleet runs models on demand on, and how it runs them there.

A ``ProcessHost`` is this machine: each instance a process (``ProcessBackend``) in
``<state_dir>/fleet/<profile>/``, recorded there (``placement.json``: port, GPUs, memory) so a
restarted gateway adopts it. A ``DockerHost`` is a Docker Engine API (``unix://`` or ``tcp://``,
with TLS when configured) — one per GPU host: each instance a container named
``gwproxy-fleet-<profile>`` with host networking, its GPUs as device ids, and labels that record
it (``gwproxy.fleet``, profile, port, GPUs, memory), so a restarted gateway adopts what runs on
every host. A host has its own hardware (a snapshot, or this machine's probe) and the address its
model servers answer at (the upstream URL follows the host).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from gwproxy import log
from gwproxy.config import SwitchConfig
from gwproxy.switcher.backend import Backend, Instance
from gwproxy.switcher.hardware import Hardware
from gwproxy.switcher.planner import Placement
from gwproxy.switcher.processes import ProcessBackend
from gwproxy.switcher.profiles import Profile

_log = log.get("gwproxy.fleet")

FLEET_LABEL = "gwproxy.fleet"


@dataclass(frozen=True, slots=True)
class Adopted:
    """An instance a previous gateway started that is still running."""

    profile: Profile
    placement: Placement
    port: int
    backend: Backend
    instance: Instance


class Host(Protocol):
    name: str
    address: str  # where its model servers answer
    local: bool  # this machine: a port can be checked for being free
    hardware: Callable[[], Hardware]
    lost: list[str]  # what ``adopt`` found recorded but no longer running, in words

    def backend(self, profile: Profile, placement: Placement, port: int) -> Backend: ...

    def record(self, placement: Placement, port: int) -> None: ...

    def forget(self, profile_id: str) -> None: ...

    async def adopt(self, profiles: Mapping[str, Profile]) -> list[Adopted]: ...

    async def close(self) -> None: ...


def _instance_env(env: Mapping[str, str], profile: Profile) -> dict[str, str]:
    out = dict(env)
    if profile.sleep_level:
        out["VLLM_SERVER_DEV_MODE"] = "1"  # vLLM serves /sleep and /wake_up only in dev mode: kept private
    return out


class ProcessHost:
    local = True

    def __init__(self, cfg: SwitchConfig, hardware: Callable[[], Hardware], env: Mapping[str, str]) -> None:
        self.name = "local"
        self.address = "127.0.0.1"
        self.lost: list[str] = []
        self.hardware = hardware
        self.cfg = cfg
        self.env = dict(env)
        self.dir = Path(cfg.state_dir) / "fleet"

    def backend(self, profile: Profile, placement: Placement, port: int) -> Backend:
        env = {**_instance_env(self.env, profile), "CUDA_VISIBLE_DEVICES": ",".join(map(str, placement.gpus))}
        return ProcessBackend(shlex.split(self.cfg.process_command), self.dir / profile.id, env)

    def record(self, placement: Placement, port: int) -> None:
        p = placement
        record = {"port": port, "gpus": list(p.gpus), "per_gpu": p.per_gpu, "tp": p.tensor_parallel}
        (self.dir / p.profile_id / "placement.json").write_text(json.dumps(record))

    def forget(self, profile_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.dir / profile_id / "placement.json").unlink()

    async def adopt(self, profiles: Mapping[str, Profile]) -> list[Adopted]:
        out = []
        for place_file in sorted(self.dir.glob("*/placement.json")):
            pid = place_file.parent.name
            try:
                record = json.loads(place_file.read_text())
                placement = Placement(pid, tuple(record["gpus"]), int(record["per_gpu"]), int(record["tp"]), self.name)
                port = int(record["port"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            profile = profiles.get(pid)
            backend = self.backend(profile, placement, port) if profile else None
            found = await backend.find() if backend else None
            if profile is None or backend is None or found is None:
                _log.warning("a model loaded on demand did not survive the restart", profile=pid, port=port)
                self.lost.append(f"'{pid}' (port {port}) was gone when the gateway restarted")
                self.forget(pid)
                continue
            out.append(Adopted(profile, placement, port, backend, found))
        return out

    async def close(self) -> None:
        return None


def _address(url: str) -> str:
    """Where a Docker host's containers (host networking) answer: its TCP host, else this machine."""
    parts = urlsplit(url)
    return parts.hostname if parts.scheme in ("tcp", "http", "https") and parts.hostname else "127.0.0.1"


def tls_context(cfg: SwitchConfig) -> ssl.SSLContext | None:
    """The client TLS for tcp:// Engine APIs (``switch.docker_tls_*``), or None."""
    if not (cfg.docker_tls_ca or cfg.docker_tls_cert):
        return None
    context = ssl.create_default_context(cafile=cfg.docker_tls_ca or None)
    if cfg.docker_tls_cert:
        context.load_cert_chain(cfg.docker_tls_cert, cfg.docker_tls_key or None)
    return context


class DockerHost:
    def __init__(
        self,
        name: str,
        url: str,
        cfg: SwitchConfig,
        hardware: Callable[[], Hardware],
        env: Mapping[str, str],
    ) -> None:
        import aiodocker

        self.name = name
        self.url = url
        self.lost: list[str] = []
        self.address = _address(url)
        self.local = self.address in ("127.0.0.1", "localhost", "::1")
        self.hardware = hardware
        self.cfg = cfg
        self.env = dict(env)
        context = tls_context(cfg) if urlsplit(url).scheme == "tcp" else None
        if context is not None:
            url = "https://" + url.split("://", 1)[1]  # aiodocker speaks TLS to an https URL
        self.docker = aiodocker.Docker(url=url, ssl_context=context)

    def backend(self, profile: Profile, placement: Placement, port: int) -> Backend:
        from gwproxy.switcher.containers import DockerBackend

        p = placement
        labels = {
            FLEET_LABEL: "true",
            "gwproxy.profile": profile.id,
            "gwproxy.port": str(port),
            "gwproxy.gpus": ",".join(map(str, p.gpus)),
            "gwproxy.per_gpu": str(p.per_gpu),
            "gwproxy.tp": str(p.tensor_parallel),
        }
        return DockerBackend(
            url=None,
            image=self.cfg.docker_image,
            network="host",  # the instance answers on the host's address, at its port
            alias="",
            gpus=self.cfg.docker_gpus,
            hf_cache=os.path.expanduser(self.cfg.hf_cache) if self.cfg.hf_cache else "",
            binds=self.cfg.docker_bind_list(),
            env=_instance_env(self.env, profile),
            docker=self.docker,
            name=f"gwproxy-fleet-{profile.id}",
            labels=labels,
        )

    def record(self, placement: Placement, port: int) -> None:
        return None  # the container's labels are the record

    def forget(self, profile_id: str) -> None:
        return None

    async def adopt(self, profiles: Mapping[str, Profile]) -> list[Adopted]:
        from gwproxy.switcher.containers import labelled

        out = []
        for cid, running, labels in await labelled(self.docker, FLEET_LABEL):
            pid = labels.get("gwproxy.profile", "")
            profile = profiles.get(pid)
            try:
                gpus = tuple(int(g) for g in labels.get("gwproxy.gpus", "").split(",") if g)
                placement = Placement(pid, gpus, int(labels["gwproxy.per_gpu"]), int(labels["gwproxy.tp"]), self.name)
                port = int(labels["gwproxy.port"])
            except (KeyError, ValueError):
                profile = None
            if profile is None or not running:
                _log.warning("removing a model container left by a previous gateway", host=self.name, profile=pid)
                self.lost.append(f"'{pid}' on {self.name} had exited when the gateway restarted")
                with contextlib.suppress(Exception):
                    await self.docker.containers.container(cid).delete(force=True)
                continue
            backend = self.backend(profile, placement, port)
            out.append(Adopted(profile, placement, port, backend, Instance(pid, None, cid, True)))
        return out

    async def close(self) -> None:
        await self.docker.close()
