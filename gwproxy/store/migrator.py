"""Migrator: Alembic, driven from the gateway's own engine (``gwproxy migrate``, tests, demo).

The revisions live in ``migrations/`` beside the package (or in the working directory of an
installed image). Alembic is synchronous; each command
runs inside ``AsyncConnection.run_sync`` on a connection of the async engine, in one
transaction.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.store.engine import current_revision

# A source checkout (or editable install) has them beside the package; an installed image keeps
# them in its working directory (the Dockerfile copies them to /app/migrations).
CANDIDATES = (Path(__file__).resolve().parents[2] / "migrations", Path.cwd() / "migrations")


def migrations_dir() -> Path:
    for path in CANDIDATES:
        if (path / "env.py").is_file():
            return path
    raise FileNotFoundError(f"no Alembic migrations found in {' or '.join(map(str, CANDIDATES))}")


def _alembic(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    rev = ScriptDirectory.from_config(_alembic()).get_current_head()
    assert rev is not None, f"no revisions in {migrations_dir()}"
    return rev


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic(sync), revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(_alembic(sync), revision))


async def is_current(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == head()
