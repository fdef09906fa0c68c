"""Repository: the capture tables' queries — storing a record, and what the API reads.

``store`` runs inside the writer's transaction: it skips a request id already stored (replays
are idempotent), threads the request onto the conversation it continues (``threads``), inserts
only the messages that are new plus the assistant's reply, and the request's usage row.
Every read takes the caller's user id: a conversation of another user is "not found".
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gwproxy.capture import threads
from gwproxy.capture.assembly import Assembled
from gwproxy.capture.record import Record
from gwproxy.errors import InvalidRequest, NotFound
from gwproxy.store.tables import conversations, messages, requests


def new_id() -> str:
    return uuid.uuid4().hex


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _content(content: Any) -> tuple[str | None, bool]:
    if content is None or isinstance(content, str):
        return content, False
    return orjson.dumps(content).decode(), True


async def known(conn: AsyncConnection, request_ids: list[str]) -> set[str]:
    if not request_ids:
        return set()
    rows = await conn.execute(select(requests.c.request_id).where(requests.c.request_id.in_(request_ids)))
    return {r[0] for r in rows}


async def _owned(conn: AsyncConnection, user_id: int, conversation_id: str) -> bool:
    row = await conn.execute(
        select(conversations.c.id).where(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
    )
    return row.first() is not None


def _turn_messages(record: Record) -> list[dict[str, Any]]:
    req = record.request
    if record.route == "/v1/completions":
        prompt = req.get("prompt")
        text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
        return [{"role": "user", "content": text}]
    msgs = req.get("messages")
    return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []


async def store(conn: AsyncConnection, record: Record, reply: Assembled) -> None:
    """Store one captured request (the caller checked its id is new, in this transaction)."""
    when = _when(record.created_at)
    tokens = reply.usage or (record.prompt_tokens, record.completion_tokens)
    prompt_tokens, completion_tokens = tokens if tokens else (None, None)
    if completion_tokens is None and reply.chunks:
        completion_tokens = reply.chunks  # a stream cut short: one event per token, as vLLM sends
    conversation_id: str | None = None
    turn = _turn_messages(record)
    answered = record.status == 200 and bool(reply.content or reply.tool_calls or reply.reasoning or reply.complete)
    if turn and answered:
        conversation_id = await _thread(conn, record, reply, turn, when, completion_tokens)
    await conn.execute(
        insert(requests).values(
            request_id=record.request_id, user_id=record.user_id, key_id=record.key_id,
            conversation_id=conversation_id, model=reply.model or record.model, route=record.route,
            status=record.status, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            ttft_ms=record.ttft_ms, duration_ms=record.duration_ms, created_at=when,
        )
    )  # fmt: skip


async def _thread(
    conn: AsyncConnection, record: Record, reply: Assembled, turn: list[dict[str, Any]], when: datetime,
    completion_tokens: int | None,
) -> str:  # fmt: skip
    hashes = threads.prefix_hashes(turn)
    wanted = record.conversation_id
    if wanted and not record.create_conversation and not await _owned(conn, record.user_id, wanted):
        wanted = None  # not this user's (or gone): thread as if no id had been given
    query = select(messages.c.id, messages.c.conversation_id, messages.c.prefix_hash, messages.c.seq).where(
        messages.c.user_id == record.user_id, messages.c.prefix_hash.in_(hashes)
    )
    if wanted:
        query = query.where(messages.c.conversation_id == wanted)
    matches = {r.prefix_hash: r for r in await conn.execute(query)}
    parent = None
    start = 0
    for i in range(len(hashes) - 1, -1, -1):
        if hashes[i] in matches:
            parent, start = matches[hashes[i]], i + 1
            break
    model = reply.model or record.model
    if parent is not None:
        conversation_id = str(parent.conversation_id)
    elif wanted and await _owned(conn, record.user_id, wanted):
        conversation_id = wanted
    else:
        conversation_id = wanted if wanted and record.create_conversation else new_id()
        await conn.execute(
            insert(conversations).values(
                id=conversation_id, user_id=record.user_id, title=threads.title_from(turn), model=model,
                metadata="{}", created_at=when, updated_at=when,
            )
        )  # fmt: skip
    parent_id = parent.id if parent is not None else None
    seq = parent.seq + 1 if parent is not None else 0
    rows = []
    for i in range(start, len(turn)):
        m = turn[i]
        content, parts = _content(m.get("content"))
        calls = orjson.dumps(m["tool_calls"]).decode() if m.get("tool_calls") else None
        mid = new_id()
        rows.append(
            dict(
                id=mid, conversation_id=conversation_id, parent_id=parent_id, user_id=record.user_id, seq=seq,
                role=str(m.get("role", "user"))[:16], content=content, content_is_parts=parts,
                reasoning_content=None, tool_calls=calls,
                tool_call_id=m.get("tool_call_id"), name=m.get("name"), model=None, finish_reason=None, tokens=None,
                request_id=record.request_id, prefix_hash=hashes[i], created_at=when,
            )
        )  # fmt: skip
        parent_id, seq = mid, seq + 1
    answer = reply.message()
    rows.append(
        dict(
            id=new_id(), conversation_id=conversation_id, parent_id=parent_id, user_id=record.user_id, seq=seq,
            role="assistant", content=reply.content, content_is_parts=False, reasoning_content=reply.reasoning,
            tool_calls=orjson.dumps(reply.tool_calls).decode() if reply.tool_calls else None, tool_call_id=None,
            name=None, model=model, finish_reason=reply.finish_reason, tokens=completion_tokens,
            request_id=record.request_id, prefix_hash=threads.chain(hashes[-1], answer),
            created_at=_when(record.created_at + (record.duration_ms or 0) / 1000),
        )
    )  # fmt: skip
    await conn.execute(insert(messages), rows)
    await conn.execute(
        update(conversations)
        .where(conversations.c.id == conversation_id)
        .values(updated_at=rows[-1]["created_at"], model=model)
    )
    return conversation_id


# ---- reads for the API ---------------------------------------------------------------------


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
        return datetime.fromisoformat(stamp), str(cid)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidRequest("'cursor' is not a cursor this API gave out", param="cursor") from None


def conversation_view(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "title": m["title"],
        "model": m["model"],
        "metadata": orjson.loads(m["metadata"] or "{}"),
        "created_at": m["created_at"],
        "updated_at": m["updated_at"],
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
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(c.title.ilike(f"%{escaped}%", escape="\\"))
    if cursor:
        updated, cid = _decode_cursor(cursor)
        query = query.where(or_(c.updated_at < updated, and_(c.updated_at == updated, c.id < cid)))
    rows = (await conn.execute(query.order_by(c.updated_at.desc(), c.id.desc()).limit(limit + 1))).all()
    items = [conversation_view(r) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(items, _encode_cursor(items[-1]["updated_at"], items[-1]["id"]) if more and items else None)


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
        "created_at": m["created_at"],
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
    conn: AsyncConnection, user_id: int, title: str, model: str | None, metadata: dict[str, Any]
) -> dict[str, Any]:
    now = datetime.now(UTC)
    cid = new_id()
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


async def usage(
    conn: AsyncConnection, user_id: int | None, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    r = requests.c
    day = func.date(r.created_at)
    query = select(
        day.label("day"), r.model, r.user_id, func.count().label("requests"),
        func.sum(case((r.status >= 400, 1), else_=0)).label("failed"),
        func.coalesce(func.sum(r.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(r.completion_tokens), 0).label("completion_tokens"),
    ).group_by(day, r.model, r.user_id)  # fmt: skip
    if user_id is not None:
        query = query.where(r.user_id == user_id)
    if since:
        query = query.where(r.created_at >= since)
    if until:
        query = query.where(r.created_at < until)
    rows = await conn.execute(query.order_by(day, r.model))
    return [
        {
            "day": str(m["day"]),
            "model": m["model"],
            "user_id": m["user_id"],
            "requests": int(m["requests"]),
            "failed": int(m["failed"] or 0),
            "prompt_tokens": int(m["prompt_tokens"]),
            "completion_tokens": int(m["completion_tokens"]),
        }
        for m in (row._mapping for row in rows)
    ]
