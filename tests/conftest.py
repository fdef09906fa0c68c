"""Shared fixtures: a seeded simulator process, a gateway process in front of it, and an
in-process gateway (for tests that read its logs or need its coverage)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gwproxy import log
from gwproxy.app import create_app
from gwproxy.config import Config, load_config
from tests.procs import Proc, start_gateway, start_sim

MODEL = "sim-model"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def sim(log_dir: Path) -> Iterator[int]:
    """A deterministic simulator (seed 7, no delays); yields its port."""
    proc, port = start_sim(log_dir, "--seed", "7", "--model", MODEL, "--model", "sim-alias", "--max-model-len", "2048")
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    yield port
    proc.stop()


@pytest.fixture(scope="session")
def paced_sim(log_dir: Path) -> Iterator[int]:
    """A seeded simulator with vLLM-like timing: 60 ms to the first token, 40 ms between tokens."""
    proc, port = start_sim(
        log_dir, "--seed", "7", "--model", MODEL, "--ttft-ms", "60", "--itl-ms", "40", name="paced-sim"
    )
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    yield port
    proc.stop()


@dataclass
class Gateway:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def gateway(log_dir: Path, sim: int) -> Iterator[Gateway]:
    """A gateway process in front of ``sim``."""
    proc, port = start_gateway(log_dir, sim)
    proc.wait_http(f"http://127.0.0.1:{port}/health/ready")
    yield Gateway(proc, port)
    proc.stop()


def make_config(upstream_port: int, **env: str) -> Config:
    return load_config(
        env={
            "VLLM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
            "GWPROXY_UPSTREAM_POLL_INTERVAL": "0.5",
            **env,
        }
    )


async def start_app(upstream_port: int, **env: str) -> TestServer:
    log.configure("info", json=True)
    server = TestServer(create_app(make_config(upstream_port, **env)), port=0)
    await server.start_server()  # TestServer sets handler_cancellation=True itself
    return server


@pytest.fixture
async def app_server(sim: int) -> AsyncIterator[TestServer]:
    """An in-process gateway in front of ``sim``."""
    server = await start_app(sim)
    yield server
    await server.close()


__all__ = ["MODEL", "Gateway", "Proc", "start_app"]
