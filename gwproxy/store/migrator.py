"""Migrator: Alembic, driven from the gateway's own engine (``gwproxy migrate``, tests, demo).

The revisions live in ``migrations/`` beside the package. Alembic is synchronous; each command
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

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def _alembic(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    rev = ScriptDirectory.from_config(_alembic()).get_current_head()
    assert rev is not None, f"no migrations in {MIGRATIONS}"
    return rev


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic(sync), revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(_alembic(sync), revision))


async def is_current(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == head()
