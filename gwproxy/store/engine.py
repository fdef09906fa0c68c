"""Engine: one async SQLAlchemy engine per gateway process, PostgreSQL or the embedded SQLite.

``database_url(cfg)`` turns the configured URL into a driver URL: ``postgresql://`` (or
``postgres://``) gets asyncpg, ``sqlite:///file`` gets aiosqlite, and an empty URL means the
SQLite file ``database.sqlite_path``. SQLite connections enable foreign keys and WAL.
``schema_state`` tells whether the database is at Alembic's head revision, which ``gwproxy
serve`` requires before it starts. ``database_away`` tells a failure to reach the database from
a statement's own error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as db
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gwproxy.config import ConfigError, DatabaseConfig


def database_url(cfg: DatabaseConfig) -> str:
    raw = cfg.url or f"sqlite:///{Path(cfg.sqlite_path).resolve()}"
    url = make_url(raw)
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    return url.render_as_string(hide_password=False)


def create_engine(cfg: DatabaseConfig) -> AsyncEngine:
    url = database_url(cfg)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=cfg.pool_size, pool_pre_ping=True)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at; None when it was never migrated."""
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
    except SQLAlchemyError:
        return None
    return None if row is None else str(row[0])


class SchemaOutOfDate(ConfigError):
    """The database is not at the migrations' head revision."""


@asynccontextmanager
async def open_database(cfg: DatabaseConfig) -> AsyncIterator[AsyncEngine]:
    """The engine, for as long as the gateway runs; refuses a database not migrated to head."""
    from gwproxy.store import migrator  # alembic is imported only where it is needed

    engine = create_engine(cfg)
    try:
        at, head = await current_revision(engine), migrator.head()
        if at != head:
            raise SchemaOutOfDate(
                f"the database {describe(cfg)} is at schema revision {at or 'none (empty)'}, the gateway "
                f"needs {head}: run `gwproxy migrate` with the same configuration first"
            )
        yield engine
    finally:
        await engine.dispose()


def describe(cfg: DatabaseConfig) -> str:
    """The database's URL without its password, for messages."""
    return make_url(database_url(cfg)).render_as_string(hide_password=True)


def database_away(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (not that a statement was wrong)."""
    if isinstance(exc, db.OperationalError | db.InterfaceError | db.DisconnectionError | db.TimeoutError):
        return True
    if isinstance(exc, db.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | TimeoutError)
