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


def _listening(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on ``port`` at (from the kernel's table)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def _banner_key(banner: str) -> str:
    return banner.split("API key: ", 1)[1].split()[0]


def test_demo_listens_locally_reuses_its_key_and_says_when_its_port_is_taken(log_dir: Path, tmp_path: Path) -> None:
    """A second `make run` prints the key the first one did (saved 0600 beside the database); the
    demo listens on 127.0.0.1 unless told otherwise; a port another server holds is one line with
    the PORT= hint and exit 1 — no traceback, nothing started."""
    import socket

    port = free_port()
    env = {"GWPROXY_DATABASE_SQLITE_PATH": str(tmp_path / "demo.db")}
    keys = []
    for run in range(2):
        proc = Proc(f"demo-reuse-{run}", ["demo", "--port", str(port)], log_dir, env=env)
        try:
            keys.append(_banner_key(proc.wait_output("Press Ctrl-C to stop.")))
            if run == 0:
                assert _listening(port) == {"127.0.0.1"}
        finally:
            proc.stop()
    assert keys[0] == keys[1]
    saved = tmp_path / ".gwproxy" / "demo.json"
    assert saved.stat().st_mode & 0o777 == 0o600 and keys[0] in saved.read_text()

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        for args in (["demo", "--port", str(port)], ["serve", "--host", "127.0.0.1", "--port", str(port)]):
            out = subprocess.run(
                [sys.executable, "-m", "gwproxy", *args],
                capture_output=True, text=True, cwd=tmp_path, timeout=60,
                env={**os.environ, **env, "GWPROXY_UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1", "JWT_SECRET": "s" * 40},
            )  # fmt: skip
            assert out.returncode == 1, out.stderr
            lines = [line for line in out.stderr.splitlines() if line.startswith("gwproxy:")]
            assert len(lines) == 1 and f"port {port} on 127.0.0.1 is already in use" in lines[0], out.stderr
            assert "Traceback" not in out.stderr and f"--port {port + 1}" in lines[0]
            if args[0] == "demo":
                assert f"PORT={port + 1}" in lines[0] and "simulator serving" not in out.stdout + out.stderr


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
