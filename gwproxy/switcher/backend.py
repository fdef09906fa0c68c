"""Backend: the seam between the switcher and what runs vLLM (a container, a local process).

A backend runs at most one model instance at a time for the switcher, labelled with the
profile it serves and the profile it replaced, so a restarted gateway can ``find`` it again.
Its output lines feed ``progress``, which turns vLLM's log lines into a phase and a fraction.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from gwproxy import log
from gwproxy.switcher.profiles import Profile

_log = log.get("gwproxy.switcher")


@dataclass(frozen=True, slots=True)
class Launch:
    profile: Profile
    previous: str | None  # profile id this replaces (kept on the instance, for recovery)
    tensor_parallel: int
    host: str
    port: int
    utilization: float | None = None  # its share of each GPU when it shares them (else the profile's)
    gpus: tuple[int, ...] | None = None  # the GPU indices it runs on (None: from the first)

    def args(self) -> list[str]:
        return self.profile.vllm_args(self.host, self.port, self.tensor_parallel, self.utilization)


@dataclass(frozen=True, slots=True)
class Instance:
    """What a backend finds running (or exited) under its labels."""

    profile_id: str
    previous: str | None
    handle: str  # container id or process id
    running: bool
    exit_code: int | None = None


class Backend(Protocol):
    name: str

    async def start(self, launch: Launch) -> Instance:
        """Create and start the instance; returns once it is started (not ready)."""

    def logs(self, instance: Instance) -> AsyncIterator[str]:
        """The instance's output, line by line, from its start; ends when it exits."""

    async def state(self, instance: Instance) -> Instance:
        """The instance now: running, or exited with its code."""

    async def stop(self, instance: Instance, grace: float) -> None:
        """SIGTERM, then kill after ``grace`` seconds; remove what is left. Idempotent."""

    async def find(self) -> Instance | None:
        """The instance this backend started earlier, if any is still there (restart recovery)."""

    async def close(self) -> None: ...


# vLLM's start-up log lines, in the order they appear, → (phase label, progress fraction).
_SHARDS = re.compile(r"Loading (?:safetensors|pt) checkpoint shards:\s*(\d+)% Completed")
_STEPS: tuple[tuple[re.Pattern[str], str, float], ...] = (
    (re.compile(r"Starting to load model|Loading model weights|Loading weights"), "loading weights", 0.1),
    (re.compile(r"Loading weights took|Model loading took"), "weights loaded", 0.6),
    (re.compile(r"# GPU blocks|KV cache|Maximum concurrency"), "allocating KV cache", 0.7),
    (re.compile(r"Capturing (?:CUDA )?graph|Capturing cudagraph", re.IGNORECASE), "capturing CUDA graphs", 0.8),
    (re.compile(r"Graph capturing finished|init engine .* took", re.IGNORECASE), "CUDA graphs captured", 0.9),
    (re.compile(r"Application startup complete|Uvicorn running on"), "server started", 0.95),
)


async def follow(backend: Backend, instance: Instance, on_step: Callable[[str, float], None],
                 on_line: Callable[[str], None] = lambda line: None) -> None:  # fmt: skip
    """Read ``instance``'s output to its end: every line to ``on_line``, and each phase a line marks
    further on than any before (``progress``) to ``on_step``. A broken log stream only ends the
    reading: progress is a nicety, never a reason to fail a load."""
    reached = 0.0
    try:
        async for line in backend.logs(instance):
            on_line(line)
            step = progress(line)
            if step is not None and step[1] > reached:
                reached = step[1]
                on_step(*step)
    except Exception as exc:
        _log.info("log stream ended", profile=instance.profile_id, error=f"{type(exc).__name__}: {exc}")


def progress(line: str) -> tuple[str, float] | None:
    """The phase and fraction a vLLM log line marks, or None for any other line."""
    m = _SHARDS.search(line)
    if m:
        return "loading weights", 0.1 + 0.45 * int(m[1]) / 100
    for pattern, phase, fraction in reversed(_STEPS):  # "Loading weights took" before "Loading weights"
        if pattern.search(line):
            return phase, fraction
    return None
