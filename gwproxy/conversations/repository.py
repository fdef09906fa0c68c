"""Repository: the capture tables' queries for the conversation API (the writer's inserts are
``batch``'s). Every query takes the caller's user id: a conversation of another user is
"not found".
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, column, delete, insert, select, table, tuple_, update
from sqlalchemy import text as text_sql
from sqlalchemy.ext.asyncio import AsyncConnection

from gwproxy.capture.batch import new_id
from gwproxy.errors import InvalidRequest, NotFound
from gwproxy.store.tables import TITLE_SEARCH_TABLE, conversations, messages


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def _encode_cursor(updated: datetime, cid: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([updated.isoformat(), cid])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, cid = orjson.loads(raw)
        when = datetime.fromisoformat(stamp)
        cid = str(cid)
        if "\x00" in cid:
            raise ValueError("NUL in a cursor")
        return (when.astimezone(UTC) if when.tzinfo else when), cid
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise InvalidRequest("'cursor' is not a cursor this API gave out", param="cursor") from None


def _utc(value: datetime) -> datetime:
    """SQLite gives stored times back without their zone: they were written in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def conversation_view(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "title": m["title"],
        "model": m["model"],
        "metadata": orjson.loads(m["metadata"] or "{}"),
        "created_at": _utc(m["created_at"]),
        "updated_at": _utc(m["updated_at"]),
    }


async def list_conversations(
    conn: AsyncConnection, user_id: int, *, limit: int, cursor: str | None, model: str | None,
    since: datetime | None, until: datetime | None, text: str | None,
) -> Page:  # fmt: skip
    c = conversations.c
    query = select(conversations).where(c.user_id == user_id)
    if model:
        query = query.where(c.model == model)
    if since:
        query = query.where(c.updated_at >= since)
    if until:
        query = query.where(c.updated_at < until)
    if text:
        query = query.where(await _title_contains(conn, text))
    if cursor:
        updated, cid = _decode_cursor(cursor)
        # A row-value comparison: PostgreSQL bounds the (user_id, updated_at, id) index scan with it,
        # where "a < x OR (a = x AND b < y)" is a filter over every row before the cursor.
        query = query.where(tuple_(c.updated_at, c.id) < tuple_(updated, cid))
    rows = (await conn.execute(query.order_by(c.updated_at.desc(), c.id.desc()).limit(limit + 1))).all()
    items = [conversation_view(r) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(items, _encode_cursor(items[-1]["updated_at"], items[-1]["id"]) if more and items else None)


async def _title_contains(conn: AsyncConnection, text: str) -> ColumnElement[bool]:
    """Titles containing ``text`` (case-insensitive), through the text index where there is one:
    PostgreSQL's trigram index answers the ILIKE itself; on SQLite the FTS5 trigram table narrows
    the rows (a phrase of three characters or more matches where it occurs) and the ILIKE decides."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    contains = conversations.c.title.ilike(f"%{escaped}%", escape="\\")
    if conn.dialect.name != "sqlite" or len(text) < 3 or not await _has_fts(conn):
        return contains
    phrase = '"' + text.replace('"', '""') + '"'
    fts = table(TITLE_SEARCH_TABLE, column("cid"), column("title"))
    found = select(fts.c.cid).where(fts.c.title.op("MATCH")(phrase))
    return and_(conversations.c.id.in_(found), contains)


async def _has_fts(conn: AsyncConnection) -> bool:
    """Migration 0006 made the FTS5 table (a SQLite without the trigram tokenizer has none)."""
    query = text_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name")
    return (await conn.execute(query, {"name": TITLE_SEARCH_TABLE})).first() is not None


async def get_conversation(conn: AsyncConnection, user_id: int, cid: str) -> dict[str, Any]:
    row = (
        await conn.execute(select(conversations).where(conversations.c.id == cid, conversations.c.user_id == user_id))
    ).first()
    if row is None:
        raise NotFound(f"no conversation '{cid}'")
    return conversation_view(row)


def message_view(row: Any) -> dict[str, Any]:
    m = row._mapping
    content: Any = m["content"]
    if m["content_is_parts"] and content is not None:
        content = orjson.loads(content)
    out = {
        "id": m["id"],
        "parent_id": m["parent_id"],
        "role": m["role"],
        "content": content,
        "created_at": _utc(m["created_at"]),
        "request_id": m["request_id"],
    }
    for key in ("reasoning_content", "tool_call_id", "name", "model", "finish_reason", "tokens"):
        if m[key] is not None:
            out[key] = m[key]
    if m["tool_calls"]:
        out["tool_calls"] = orjson.loads(m["tool_calls"])
    return out


async def conversation_messages(conn: AsyncConnection, user_id: int, cid: str) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(messages)
        .where(messages.c.conversation_id == cid, messages.c.user_id == user_id)
        .order_by(messages.c.created_at, messages.c.seq, messages.c.id)
    )
    return [message_view(r) for r in rows]


def current_branch(all_messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The path from the root to the most recent message: what a chat UI shows."""
    if not all_messages:
        return []
    by_id = {m["id"]: m for m in all_messages}
    path = []
    node: dict[str, Any] | None = all_messages[-1]
    while node is not None:
        path.append(node)
        node = by_id.get(node["parent_id"]) if node["parent_id"] else None
    return path[::-1]


async def create_conversation(
    conn: AsyncConnection,
    user_id: int,
    title: str,
    model: str | None,
    metadata: dict[str, Any],
    cid: str | None = None,
) -> dict[str, Any]:
    """A new conversation (with the id given, or a new one)."""
    now = datetime.now(UTC)
    cid = cid or new_id()
    await conn.execute(
        insert(conversations).values(
            id=cid, user_id=user_id, title=title, model=model, metadata=orjson.dumps(metadata).decode(),
            created_at=now, updated_at=now,
        )
    )  # fmt: skip
    return await get_conversation(conn, user_id, cid)


async def update_conversation(
    conn: AsyncConnection, user_id: int, cid: str, title: str | None, metadata: dict[str, Any] | None
) -> dict[str, Any]:
    await get_conversation(conn, user_id, cid)
    values: dict[str, Any] = {"updated_at": datetime.now(UTC)}
    if title is not None:
        values["title"] = title
    if metadata is not None:
        values["metadata"] = orjson.dumps(metadata).decode()
    await conn.execute(update(conversations).where(conversations.c.id == cid).values(**values))
    return await get_conversation(conn, user_id, cid)


async def delete_conversation(conn: AsyncConnection, user_id: int, cid: str) -> None:
    await get_conversation(conn, user_id, cid)
    await conn.execute(delete(messages).where(messages.c.conversation_id == cid))  # SQLite: no FK cascade
    await conn.execute(delete(conversations).where(conversations.c.id == cid))
