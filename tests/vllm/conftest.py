"""The real-vLLM tier: vLLM's CPU build serving a tiny local model (``tests/support/vllm.py``).

Installing vLLM (minutes on a fresh machine, then cached) starts in the background as soon as
collection has selected a test of this tier, so it overlaps the rest of the suite; the server
itself starts when the first test of the tier needs it (an idle vLLM still costs CPU). Under
``CI=true`` a vLLM that cannot be installed or started fails the tier; elsewhere it is skipped
with the reason.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import vllm

_preparing: threading.Thread | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _preparing
    if any("tests/vllm/" in item.nodeid for item in session.items):
        _preparing = threading.Thread(target=vllm.ensure, name="vllm-install", daemon=True)
        _preparing.start()


def unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the real-vLLM tier cannot run: {why}", pytrace=False)
    pytest.skip(f"the real-vLLM tier cannot run here: {why.splitlines()[0]}")


@pytest.fixture(scope="session")
def vllm_installed() -> None:
    if _preparing is not None:
        _preparing.join()
    why = vllm.ensure()
    if why is not None:
        unavailable(why)


@pytest.fixture(scope="session")
def real_vllm(vllm_installed: None, log_dir: Path) -> Iterator[vllm.Vllm]:
    """One ``vllm serve`` of the tiny model for the tier (prefix caching off: a cold run each time,
    so greedy output is the same from one request to the next)."""
    server = vllm.start(log_dir, "vllm", "--no-enable-prefix-caching")
    try:
        server.wait_ready()
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        unavailable(str(exc))
    yield server
    server.stop()
