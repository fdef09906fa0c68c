"""The command line as operators use it: demo, serve flags, configuration errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from openai import OpenAI

from tests.procs import Proc, free_port


def test_demo_serves_the_printed_examples(log_dir: Path) -> None:
    port = free_port()
    proc = Proc("demo", ["demo", "--host", "127.0.0.1", "--port", str(port)], log_dir)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health/ready")
        banner = proc.output()
        assert f"http://localhost:{port}/v1/chat/completions" in banner
        assert f'base_url="http://localhost:{port}/v1"' in banner
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "--fail-with-body",
                f"http://127.0.0.1:{port}/v1/chat/completions",
                "-H",
                "Content-Type: application/json",
                "-d",
                '{"model": "current", "messages": [{"role": "user", "content": "Hello!"}]}',
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert '"object":"chat.completion"' in curl.stdout
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0) as client:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="current",
                    messages=[{"role": "user", "content": "Hello!"}],
                    stream=True,
                    max_tokens=3,
                )
                if c.choices
            )
            assert text
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
