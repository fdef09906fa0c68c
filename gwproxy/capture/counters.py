"""Counters: what the capture pipeline counts — records written, spooled, replayed, dropped,
rejected, and the queue waiting for the writer. The writer (in process, or in the worker) keeps
one; the courier adds up its workers' reports; ``/metrics`` reads ``snapshot`` at scrape time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

NAMES = ("written", "spooled", "replayed", "dropped", "rejected")


@dataclass(slots=True)
class Counters:
    written: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    rejected: int = 0
    queue: Callable[[], int] = field(default=lambda: 0)  # records waiting for the writer

    def snapshot(self) -> dict[str, int]:
        """Every count and the queue depth, by name (also the worker's report to the courier)."""
        return {"written": self.written, "spooled": self.spooled, "replayed": self.replayed,
                "dropped": self.dropped, "rejected": self.rejected, "queue": self.queue()}  # fmt: skip
