"""Shared fixtures: a seeded simulator process, a gateway process in front of it, and an
in-process gateway (for tests that read its logs or need its coverage)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy import log
from gwproxy.app import create_app
from gwproxy.config import Config, DatabaseConfig, load_config
from gwproxy.store import migrator
from gwproxy.store.engine import create_engine
from tests.support.procs import Proc, start_gateway, start_sim
from tests.support.services import Postgres, Redis

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


ADMIN_PASSWORD = "admin-password-123"


@dataclass
class Gateway:
    proc: Proc
    port: int
    key: str  # an API key of the admin user "admin"
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def gwproxy_run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a gwproxy command with ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "gwproxy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def gwproxy_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run a gwproxy command that must succeed; return its stdout."""
    out = gwproxy_run(env, *args, stdin=stdin)
    assert out.returncode == 0, f"gwproxy {' '.join(args)} failed ({out.returncode}):\n{out.stderr}"
    return out.stdout


def provision(tmp: Path) -> tuple[dict[str, str], str]:
    """A migrated SQLite database with an admin and their API key, through the command line."""
    env = {"DATABASE_URL": f"sqlite:///{tmp}/gateway.db", "JWT_SECRET": JWT_SECRET}
    gwproxy_cli(env, "migrate")
    gwproxy_cli(env, "user", "add", "admin", "--role", "admin", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    key = gwproxy_cli(env, "key", "create", "--user", "admin", "--name", "tests").strip()
    return env, key


@pytest.fixture(scope="session")
def gateway(log_dir: Path, sim: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway process in front of ``sim``, with auth on and an admin key."""
    env, key = provision(tmp_path_factory.mktemp("gateway-db"))
    proc, port = start_gateway(log_dir, sim, env=env)
    proc.wait_http(f"http://127.0.0.1:{port}/health/ready")
    yield Gateway(proc, port, key, env)
    proc.stop()


def start_replicas(
    log_dir: Path, upstream_port: int, env: dict[str, str], key: str, count: int, name: str
) -> list[Gateway]:
    """``count`` gateway processes in front of one upstream, sharing ``env`` (a database, Redis)."""
    gateways = []
    for i in range(count):
        proc, port = start_gateway(log_dir, upstream_port, env=env, name=f"{name}-{i}")
        gateways.append(Gateway(proc, port, key, env))
    return gateways


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One throwaway PostgreSQL server for the whole test session."""
    pg = Postgres()
    yield pg
    pg.stop()


@pytest.fixture
def redis_server() -> Iterator[Redis]:
    """A fresh redis-server for one test (tests kill and restart it)."""
    server = Redis()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each kind (unmigrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
        return
    pg: Postgres = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(name)
    yield url
    pg.drop_database(name)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """A database of each kind, migrated to head."""
    eng = create_engine(DatabaseConfig(url=db_url))
    await migrator.upgrade(eng)
    yield eng
    await eng.dispose()


JWT_SECRET = "test-secret-" + "x" * 40


def make_config(upstream_port: int, database_url: str, **env: str) -> Config:
    return load_config(
        env={
            "VLLM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
            "GWPROXY_UPSTREAM_POLL_INTERVAL": "0.5",
            "DATABASE_URL": database_url,
            "JWT_SECRET": JWT_SECRET,
            "GWPROXY_AUTH_ENABLED": "false",
            **env,
        }
    )


_SCRATCH: list[Path] = []


def scratch_dir(prefix: str) -> Path:
    """A temporary directory for a helper with no ``tmp_path`` at hand; removed when the run ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _SCRATCH.append(path)
    return path


def remove_scratch(only: list[Path] | None = None) -> None:
    """Remove the scratch directories (``only`` these, when given)."""
    for path in list(_SCRATCH if only is None else only):
        shutil.rmtree(path, ignore_errors=True)
        _SCRATCH.remove(path)


@pytest.fixture(scope="session", autouse=True)
def _remove_scratch() -> Iterator[None]:
    yield
    remove_scratch()


async def migrated_sqlite() -> str:
    """A fresh SQLite file migrated to head; returns its URL."""
    url = f"sqlite:///{scratch_dir('gwproxy-db-')}/gwproxy.db"
    engine = create_engine(DatabaseConfig(url=url))
    await migrator.upgrade(engine)
    await engine.dispose()
    return url


async def start_app(upstream_port: int, database_url: str | None = None, **env: str) -> TestServer:
    """An in-process gateway in front of ``upstream_port``; auth off unless
    ``GWPROXY_AUTH_ENABLED="true"`` is passed."""
    log.configure("info", json=True)
    url = database_url or await migrated_sqlite()
    server = TestServer(create_app(make_config(upstream_port, url, **env)), port=0)
    await server.start_server()  # TestServer sets handler_cancellation=True itself
    return server


@pytest.fixture
async def app_server(sim: int) -> AsyncIterator[TestServer]:
    """An in-process gateway in front of ``sim``."""
    server = await start_app(sim)
    yield server
    await server.close()


__all__ = ["MODEL", "Gateway", "Proc", "gwproxy_cli", "provision", "start_app"]
