"""Real processes for the tests: the simulator and the gateway, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Proc:
    """A ``python -m gwproxy …`` child process; output goes to a log file in ``log_dir``."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gwproxy", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def wait_http(self, url: str, timeout: float = 20.0, status: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == status:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == status:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer {url} in {timeout}s:\n{self.output()}")

    def wait_output(self, text: str, timeout: float = 60.0) -> str:
        """The output once it holds ``text`` (a banner printed after start-up, say)."""
        deadline = time.monotonic() + timeout
        while text not in (out := self.output()):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} never printed {text!r}:\n{out}")
            time.sleep(0.05)
        return out

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def start_sim(log_dir: Path, *extra: str, name: str = "sim", port: int | None = None) -> tuple[Proc, int]:
    port = port or free_port()
    proc = Proc(name, ["sim", "--host", "127.0.0.1", "--port", str(port), *extra], log_dir)
    return proc, port


def start_gateway(
    log_dir: Path, upstream_port: int, *extra: str, name: str = "gateway", env: dict[str, str] | None = None
) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        name,
        [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{upstream_port}/v1",
            *extra,
        ],
        log_dir,
        env={"GWPROXY_UPSTREAM_POLL_INTERVAL": "0.5", **(env or {})},
    )
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    return proc, port
