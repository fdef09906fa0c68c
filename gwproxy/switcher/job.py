"""Job: one switch job as status and the events stream show it, and the states of the switcher
it walks through (the diagram is in ``switcher``'s docstring). Only the switcher writes a job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gwproxy.switcher.planner import Plan


class State(StrEnum):
    UNMANAGED = "unmanaged"  # no backend: someone else runs vLLM
    STOPPED = "stopped"  # a backend, nothing running
    PENDING = "pending"
    VALIDATING = "validating"
    STOPPING = "stopping"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"


@dataclass(slots=True)
class Job:
    id: str
    profile_id: str
    previous: str | None
    dry_run: bool = False
    force: bool = False
    resumed: bool = False  # started by an earlier gateway, which was stopped or killed mid-switch
    state: State = State.PENDING
    phase: str = "queued"
    progress: float = 0.0
    outcome: str | None = None  # switched | already_serving | dry_run | refused | rolled_back | failed
    error: str | None = None
    plan: Plan | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    history: list[tuple[str, float]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "profile_id": self.profile_id,
            "previous_profile_id": self.previous,
            "dry_run": self.dry_run,
            "force": self.force,
            "resumed": self.resumed,
            "state": self.state.value,
            "phase": self.phase,
            "progress": round(self.progress, 3),
            "done": self.done,
            "outcome": self.outcome,
            "error": self.error,
            "plan": self.plan.public() if self.plan else None,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "history": [{"state": s, "at": at} for s, at in self.history],
        }
