"""Usage: the reads behind ``/api/usage`` — tokens and requests by day and model, for one user or
summed over everyone, and per user, a page at a time — all from the daily rollups
(``store.rollups``), never from ``requests``: a range costs its days, not its requests.

A range is whole UTC days, ``first`` to ``end`` (exclusive), at most ``MAX_DAYS`` long.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gwproxy.errors import InvalidRequest
from gwproxy.store.rollups import COUNTS
from gwproxy.store.tables import usage_daily, usage_daily_totals, users

DEFAULT_DAYS = 30
MAX_DAYS = 400  # a year and some: longer asks are refused, not served slowly


@dataclass(frozen=True, slots=True)
class Window:
    first: date
    end: date  # exclusive

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None) -> Window:
        """The days from ``since`` up to ``until`` (a time past midnight counts its day); by
        default the last ``DEFAULT_DAYS`` days, today included."""
        try:
            end = until.date() + timedelta(days=until.time() != time()) if until else _tomorrow()
            first = since.date() if since else end - timedelta(days=DEFAULT_DAYS)
        except OverflowError:
            raise InvalidRequest("a usage range must lie within years 1-9999", param="until") from None
        if first >= end:
            raise InvalidRequest("'since' must be before 'until'", param="since")
        if (end - first).days > MAX_DAYS:
            raise InvalidRequest(f"a usage range is at most {MAX_DAYS} days; ask for a shorter one", param="since")
        return cls(first, end)

    def public(self) -> dict[str, str]:
        return {"since": self.first.isoformat(), "until": self.end.isoformat()}


def _tomorrow() -> date:
    return datetime.now(UTC).date() + timedelta(days=1)


def _counts(row: Any) -> dict[str, int]:
    return {name: int(row._mapping[name] or 0) for name in COUNTS}


async def by_day(conn: AsyncConnection, user_id: int | None, window: Window) -> list[dict[str, Any]]:
    """Rows of (day, model) for one user, or summed over every user when ``user_id`` is None."""
    table = usage_daily_totals if user_id is None else usage_daily
    t = table.c
    query = select(t.day, t.model, *(t[name] for name in COUNTS)).where(t.day >= window.first, t.day < window.end)
    if user_id is not None:
        query = query.where(t.user_id == user_id)
    rows = await conn.execute(query.order_by(t.day, t.model))
    out = []
    for row in rows:
        item: dict[str, Any] = {"day": str(row.day), "model": row.model or None}
        if user_id is not None:
            item["user_id"] = user_id
        out.append({**item, **_counts(row)})
    return out


@dataclass(frozen=True, slots=True)
class UserPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


async def by_user(conn: AsyncConnection, window: Window, *, limit: int, cursor: str | None) -> UserPage:
    """Each user's totals over the window, in user id order, ``limit`` users a page: the
    (user_id, day) index is read in order and the scan stops after the page's last user."""
    after = 0
    if cursor:
        if not cursor.isdigit() or len(cursor) > 19:
            raise InvalidRequest("'cursor' is not a cursor this API gave out", param="cursor")
        after = int(cursor)
    u = usage_daily.c
    query = (
        select(u.user_id, *(func.sum(u[name]).label(name) for name in COUNTS))
        .where(u.user_id > after, u.day >= window.first, u.day < window.end)
        .group_by(u.user_id)
        .order_by(u.user_id)
        .limit(limit + 1)
    )
    rows = (await conn.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    names: dict[int, str] = {}
    if rows:
        ids = [r.user_id for r in rows]
        found = await conn.execute(select(users.c.id, users.c.username).where(users.c.id.in_(ids)))
        names = {r.id: r.username for r in found}
    items = [{"user_id": r.user_id, "username": names.get(r.user_id), **_counts(r)} for r in rows]
    return UserPage(items, str(items[-1]["user_id"]) if more else None)


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {name: sum(r[name] for r in rows) for name in COUNTS}
