"""Docker backend: one container per profile from the vLLM OpenAI image, through aiodocker.

The container gets the profile's arguments, a GPU device request for the planned tensor-parallel
size, ``ipc=host`` (vLLM's shared memory between workers), the Hugging Face cache bind-mounted
at ``/root/.cache/huggingface``, ``HF_TOKEN`` passed through, and the labels
``gwproxy.managed``/``gwproxy.profile``/``gwproxy.previous`` that let a restarted gateway find it.
Networking: ``host`` (vLLM listens on the upstream port of the host), or a named network on
which the container answers to the upstream URL's host name (compose). Stopping is Docker's
own: SIGTERM, then SIGKILL after the timeout; then the container is removed.

Works against any Docker Engine API (Docker, or Podman's compatible service).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiodocker
from aiodocker.containers import DockerContainer

from gwproxy import log
from gwproxy.switcher.backend import Instance, Launch

_log = log.get("gwproxy.switcher.docker")

LABEL = "gwproxy.managed"
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"


class DockerBackend:
    name = "docker"

    def __init__(
        self,
        *,
        url: str | None,
        image: str,
        network: str,
        alias: str,
        gpus: bool,
        hf_cache: str,
        binds: Sequence[str],
        env: Mapping[str, str],
        docker: aiodocker.Docker | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """``docker``: a client shared with other backends (not closed here); ``name`` and
        ``labels`` replace the switched model's (an on-demand instance's own)."""
        self._owned = docker is None
        self.docker = docker or aiodocker.Docker(url=url or None)
        self._name = name
        self._labels = dict(labels) if labels is not None else None
        self.image = image
        self.network = network
        self.alias = alias
        self.gpus = gpus
        self.hf_cache = hf_cache
        self.binds = list(binds)
        self.env = dict(env)

    def container_name(self, profile_id: str) -> str:
        return self._name or f"gwproxy-vllm-{profile_id}"

    def spec(self, launch: Launch) -> dict[str, Any]:
        """The Engine API ``ContainerCreate`` body for a launch."""
        profile = launch.profile
        binds = [*self.binds]
        if self.hf_cache:
            binds.append(f"{self.hf_cache}:{HF_CACHE_IN_CONTAINER}")
        host: dict[str, Any] = {"IpcMode": "host", "Binds": binds, "RestartPolicy": {"Name": "no"}}
        if self.gpus:
            wanted: dict[str, Any] = {"Driver": "nvidia", "Capabilities": [["gpu"]]}
            if launch.gpus is not None:  # placed on these GPUs of the host
                wanted["DeviceIDs"] = [str(g) for g in launch.gpus]
            else:
                wanted["Count"] = launch.tensor_parallel
            host["DeviceRequests"] = [wanted]
        spec: dict[str, Any] = {
            "Image": profile.image or self.image,
            "Cmd": launch.args(),
            "Env": [f"{k}={v}" for k, v in {**self.env, **dict(profile.env)}.items()],
            "Labels": self._labels
            if self._labels is not None
            else {
                LABEL: "true",
                "gwproxy.profile": profile.id,
                "gwproxy.previous": launch.previous or "",
                "gwproxy.served": profile.served_name,
            },
            "HostConfig": host,
        }
        if profile.command is not None:
            spec["Entrypoint"] = list(profile.command)
        if self.network == "host":
            host["NetworkMode"] = "host"
        else:
            host["NetworkMode"] = self.network
            spec["NetworkingConfig"] = {"EndpointsConfig": {self.network: {"Aliases": [self.alias]}}}
        return spec

    async def start(self, launch: Launch) -> Instance:
        name = self.container_name(launch.profile.id)
        container = await self.docker.containers.create_or_replace(name, self.spec(launch))
        await container.start()
        _log.info("container started", profile=launch.profile.id, container=container.id[:12], name=name)
        return Instance(launch.profile.id, launch.previous, container.id, True)

    def _container(self, instance: Instance) -> DockerContainer:
        return self.docker.containers.container(instance.handle)

    async def logs(self, instance: Instance) -> AsyncIterator[str]:
        pending = ""
        async for chunk in self._container(instance).log(stdout=True, stderr=True, follow=True):
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line.rstrip("\r")
        if pending:
            yield pending

    async def state(self, instance: Instance) -> Instance:
        try:
            info = await self._container(instance).show()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return Instance(instance.profile_id, instance.previous, instance.handle, False, None)
            raise
        st = info["State"]
        running = bool(st.get("Running")) or st.get("Status") in ("created", "running", "restarting")
        code = None if running else st.get("ExitCode")
        return Instance(instance.profile_id, instance.previous, instance.handle, running, code)

    async def stop(self, instance: Instance, grace: float) -> None:
        container = self._container(instance)
        try:
            await container.stop(t=max(1, round(grace)))
        except aiodocker.DockerError as exc:
            if exc.status not in (304, 404):  # already stopped / already gone
                raise
        try:
            await container.delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise
        _log.info("container stopped and removed", profile=instance.profile_id, container=instance.handle[:12])

    async def find(self) -> Instance | None:
        found = await self.docker.containers.list(all=True, filters=f'{{"label": ["{LABEL}=true"]}}')
        best: Instance | None = None
        best_created = ""
        for c in found:
            info = await c.show()
            labels = info["Config"].get("Labels") or {}
            instance = Instance(
                labels.get("gwproxy.profile", "?"), labels.get("gwproxy.previous") or None, c.id,
                bool(info["State"].get("Running")), info["State"].get("ExitCode"),
            )  # fmt: skip
            if not instance.running:
                _log.info("removing an exited gwproxy container", container=c.id[:12], profile=instance.profile_id)
                await c.delete(force=True)
            elif info.get("Created", "") > best_created:
                if best is not None:  # two running: keep the newest, stop the other
                    await self.stop(best, 10)
                best, best_created = instance, info.get("Created", "")
            else:
                await self.stop(instance, 10)
        return best

    async def close(self) -> None:
        if self._owned:
            await self.docker.close()


async def labelled(docker: aiodocker.Docker, label: str) -> list[tuple[str, bool, dict[str, str]]]:
    """(container id, running, labels) of every container carrying ``label=true``."""
    out = []
    for c in await docker.containers.list(all=True, filters=f'{{"label": ["{label}=true"]}}'):
        info = await c.show()
        out.append((c.id, bool(info["State"].get("Running")), dict(info["Config"].get("Labels") or {})))
    return out
