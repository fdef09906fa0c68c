"""The browser the tests drive: Debian's chromium (``make test`` installs it as root); no browser
is downloaded. Under CI a missing chromium is a failure, elsewhere the test is skipped."""

from __future__ import annotations

import os
import shutil

import pytest

# Chromium's own background traffic is refused by this closed network: turned off.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError("chromium not found: `make test` installs it (Debian's chromium package)")
        pytest.skip("chromium is not installed (make test installs it as root)")
    return found
