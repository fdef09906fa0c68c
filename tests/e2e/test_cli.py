"""The command line as operators use it: demo, serve flags, configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.procs import Proc, free_port


def test_demo_serves_the_printed_examples(log_dir: Path, tmp_path: Path) -> None:
    """What `make run` prints is run exactly as printed: the curl command and the SDK script."""
    port = free_port()
    env = {"GWPROXY_DATABASE_SQLITE_PATH": str(tmp_path / "demo.db")}
    proc = Proc("demo", ["demo", "--host", "127.0.0.1", "--port", str(port)], log_dir, env=env)
    try:
        banner = proc.wait_output("Press Ctrl-C to stop.")
        curl = banner[banner.index("\ncurl ") : banner.index("\n\n", banner.index("\ncurl "))]
        script = banner[banner.index("\npython - <<'PY'") : banner.index("\nPY\n") + 4]
        shell_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, check=True, env=shell_env)
        assert '"object":"chat.completion"' in out.stdout
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=shell_env)
        assert len(out.stdout.split()) >= 3, out.stdout  # the streamed words, printed as they came
    finally:
        proc.stop()
    assert proc.popen.returncode == 0


def test_bad_configuration_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GWPROXY_UPSTREAM_IDLE_TIMEOUT": "soon"}
    out = subprocess.run(
        [sys.executable, "-m", "gwproxy", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
    )
    assert out.returncode == 2
    assert "upstream.idle_timeout" in out.stderr and "GWPROXY_UPSTREAM_IDLE_TIMEOUT" in out.stderr


def test_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "gwproxy", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("serve", "sim", "demo"):
        assert cmd in out.stdout
    out = subprocess.run([sys.executable, "-m", "gwproxy", "sim", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--model", "--max-model-len", "--ttft-ms", "--itl-ms", "--seed", "--startup-delay"):
        assert flag in out.stdout


def test_sim_keeps_its_port_closed_during_startup_delay(log_dir: Path) -> None:
    import socket
    import time

    port = free_port()
    proc = Proc("sim-delay", ["sim", "--port", str(port), "--startup-delay", "1.0"], log_dir)
    try:
        time.sleep(0.4)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # refused, as vLLM while loading
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout=10)
    finally:
        proc.stop()
