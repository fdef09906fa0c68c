"""Rollups: the daily usage tables (``usage_daily`` per user, ``usage_daily_totals`` over all
users) and how a batch of stored requests is added to them.

The capture writer adds each batch's requests in the transaction that stores them, so a rollup
counts exactly the requests stored (a replayed request is skipped before it gets here). Rows are
upserted in key order, so two writers (two gateways on one database) take row locks in the same
order and cannot deadlock each other. Migration 0006 built the rollups of what was stored before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gwproxy.store.tables import usage_daily, usage_daily_totals

COUNTS = ("requests", "failed", "prompt_tokens", "completion_tokens")


@dataclass(slots=True)
class Rollup:
    """What one batch adds: counts per (day, user, model)."""

    rows: dict[tuple[date, int, str], list[int]] = field(default_factory=dict)

    def add(self, when: datetime, user_id: int, model: str | None, status: int, prompt: int | None,
            completion: int | None) -> None:  # fmt: skip
        counts = self.rows.setdefault((when.date(), user_id, model or ""), [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += status >= 400
        counts[2] += prompt or 0
        counts[3] += completion or 0

    def per_user(self) -> list[tuple[Any, ...]]:
        """(day, user, model, requests, failed, prompt, completion), in key order."""
        return [(*key, *counts) for key, counts in sorted(self.rows.items())]

    def totals(self) -> list[tuple[Any, ...]]:
        """(day, model, requests, failed, prompt, completion), in key order."""
        summed: dict[tuple[date, str], list[int]] = {}
        for (day, _, model), counts in self.rows.items():
            into = summed.setdefault((day, model), [0, 0, 0, 0])
            for i, n in enumerate(counts):
                into[i] += n
        return [(*key, *counts) for key, counts in sorted(summed.items())]


def _upsert(conn: AsyncConnection, table: Table) -> Any:
    """``INSERT … ON CONFLICT (key) DO UPDATE SET n = n + excluded.n`` for SQLite or PostgreSQL."""
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"usage rollups need SQLite or PostgreSQL, not {dialect}")
    insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
    keys = [c.name for c in table.primary_key.columns]
    return insert.on_conflict_do_update(
        index_elements=keys, set_={name: table.c[name] + insert.excluded[name] for name in COUNTS}
    )


async def add_sql(conn: AsyncConnection, rollup: Rollup) -> None:
    """Add a batch through SQLAlchemy (any supported database)."""
    if not rollup.rows:
        return
    names = [c.name for c in usage_daily.columns]
    await conn.execute(_upsert(conn, usage_daily), [dict(zip(names, row, strict=True)) for row in rollup.per_user()])
    names = [c.name for c in usage_daily_totals.columns]
    await conn.execute(
        _upsert(conn, usage_daily_totals), [dict(zip(names, row, strict=True)) for row in rollup.totals()]
    )


# asyncpg: one statement per table for the whole batch (arrays, unnest); the conflict check is an
# index probe per row, not a scan.
_ADD = """
INSERT INTO usage_daily AS u (day, user_id, model, requests, failed, prompt_tokens, completion_tokens)
SELECT * FROM unnest($1::date[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
ON CONFLICT (day, user_id, model) DO UPDATE SET requests = u.requests + excluded.requests,
    failed = u.failed + excluded.failed, prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens
"""
_ADD_TOTALS = """
INSERT INTO usage_daily_totals AS u (day, model, requests, failed, prompt_tokens, completion_tokens)
SELECT * FROM unnest($1::date[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
ON CONFLICT (day, model) DO UPDATE SET requests = u.requests + excluded.requests,
    failed = u.failed + excluded.failed, prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens
"""


def pg_statements(rollup: Rollup) -> list[tuple[str, list[list[Any]]]]:
    """(SQL, array arguments) for asyncpg: the batch's rows column by column."""
    if not rollup.rows:
        return []
    return [(_ADD, [list(col) for col in zip(*rollup.per_user(), strict=True)]),
            (_ADD_TOTALS, [list(col) for col in zip(*rollup.totals(), strict=True)])]  # fmt: skip
