"""Intent: the switch this gateway was asked to make, kept on disk (``<state_dir>/switch-intent.json``)
from the moment its job starts until the job ends, so that a gateway killed mid-switch (during the
drain, say) knows on restart what it was doing.

A restarted gateway first recovers whatever model the backend left running, then resumes the
recorded switch — once: a switch interrupted ``MAX_ATTEMPTS`` times is reported failed (in status
and in the events stream) instead of tried again, in case the switch itself is what kills the
gateway. Written atomically (a temporary file renamed over the old one).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_ATTEMPTS = 2
FILE = "switch-intent.json"


@dataclass(frozen=True, slots=True)
class Intent:
    job: str
    profile_id: str
    previous: str | None
    force: bool
    attempts: int  # how many gateways have started this switch


def save(state_dir: Path, intent: Intent) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(intent)))
    tmp.replace(state_dir / FILE)


def load(state_dir: Path) -> Intent | None:
    """The recorded intent; None if there is none or it cannot be read (then it is removed)."""
    path = state_dir / FILE
    try:
        data = json.loads(path.read_text())
        return Intent(str(data["job"]), str(data["profile_id"]), data.get("previous"), bool(data.get("force")),
                      int(data["attempts"]))  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        clear(state_dir)
        return None


def clear(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir / FILE).unlink()
