"""Instances: one model loaded on demand — where it runs, what it holds of the GPUs and host RAM,
how its last start went — and the ways a load ends early (refused, failed)."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from gwproxy.proxy.upstream import Upstream
from gwproxy.switcher import planner
from gwproxy.switcher.backend import Backend, Instance
from gwproxy.switcher.hosts import Host
from gwproxy.switcher.planner import Placement
from gwproxy.switcher.profiles import Profile

SLEEPER_BYTES = int(1.2 * 2**30)  # GPU memory a sleeping vLLM keeps (CUDA context, allocator)


class LoadRefused(Exception):
    """The model cannot be loaded now (busy instances in the way) or ever (does not fit)."""

    def __init__(self, message: str, *, never: bool) -> None:
        super().__init__(message)
        self.never = never


@dataclass(eq=False)
class Resident:
    """One instance loaded on demand."""

    profile: Profile
    placement: Placement
    port: int
    backend: Backend
    host: Host
    state: str = "loading"  # loading | ready | stopping | failed
    phase: str = "starting"
    progress: float = 0.0  # of the load, from the server's log lines (weights, KV cache, CUDA graphs)
    instance: Instance | None = None
    upstream: Upstream | None = None
    loaded_at: float = field(default_factory=time.monotonic)
    error: str | None = None
    asleep: int = 0  # the sleep level it is at (0: awake)
    last_start: dict[str, Any] | None = None  # how the last start went: cold or wake, seconds

    @property
    def claim(self) -> Placement:
        """What it holds of the GPUs now: its plan awake, ``SLEEPER_BYTES`` asleep."""
        if not self.asleep:
            return self.placement
        p = self.placement
        return Placement(p.profile_id, p.gpus, SLEEPER_BYTES, p.tensor_parallel, p.host)

    @property
    def base(self) -> str:
        """Its server's origin: the host's address, its port."""
        return f"http://{self.host.address}:{self.port}"

    @property
    def host_bytes(self) -> int:
        """Host RAM its offloaded weights take (asleep at level 1)."""
        return planner.weights_bytes(self.profile) if self.asleep == 1 else 0

    @property
    def idle_for(self) -> float:
        if self.upstream is None:
            return time.monotonic() - self.loaded_at if self.asleep else 0.0
        if self.upstream.in_flight:
            return 0.0
        return time.monotonic() - self.upstream.last_used

    @property
    def busy(self) -> bool:
        return self.upstream is not None and self.upstream.in_flight > 0

    def public(self) -> dict[str, Any]:
        return {
            "profile_id": self.profile.id,
            "served_names": list(self.profile.served_names),
            "state": self.state,
            "phase": self.phase,
            "progress": round(self.progress, 3),
            "gpus": list(self.placement.gpus),
            "memory_gib_per_gpu": round(self.claim.per_gpu / 2**30, 2),
            "sleep_level": self.asleep,
            "host_gib": round(self.host_bytes / 2**30, 2),
            "last_start": self.last_start,
            "tensor_parallel": self.placement.tensor_parallel,
            "host": self.host.name,
            "port": self.port,
            "pid": self.instance.handle if self.instance else None,
            "in_flight": self.upstream.in_flight if self.upstream else 0,
            "idle_s": round(self.idle_for, 1),
            "ttl": self.profile.ttl or None,
            "pinned": self.profile.pinned,
            "swappable": self.profile.swappable,
            "error": self.error,
        }


class LoadFailed(Exception):
    """The instance was started but never became ready (exited, or timed out)."""


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def retrieve(task: asyncio.Task[Any]) -> None:
    """A load nobody waits for any more must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
