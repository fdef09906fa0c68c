"""Repository: the capture tables' queries — storing a record, and what the API reads.

``store_batch`` runs inside the writer's transaction: it skips request ids already stored
(replays are idempotent), threads each request onto the conversation it continues
(``threads``), and inserts only the messages that are new plus the assistant's reply, and the
request's usage row — a handful of statements per batch, not per record.
Every read takes the caller's user id: a conversation of another user is "not found".
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gwproxy.capture import threads
from gwproxy.capture.assembly import Assembled
from gwproxy.capture.record import Record
from gwproxy.errors import InvalidRequest, NotFound
from gwproxy.store.tables import conversations, messages, requests

_RANDOM = bytearray()


def new_id() -> str:
    """32 random hex digits (a uuid4's worth of randomness), from a pool refilled 4 KiB at a time:
    the writer makes three per captured request, and one ``os.urandom`` call each was measurable."""
    if len(_RANDOM) < 16:
        _RANDOM.extend(os.urandom(4096))
    value = _RANDOM[:16].hex()
    del _RANDOM[:16]
    return value


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


def _turn_messages(record: Record) -> list[dict[str, Any]]:
    req = record.request
    if record.route == "/v1/completions":
        prompt = req.get("prompt")
        text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
        return [{"role": "user", "content": text}]
    msgs = req.get("messages")
    return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []


@dataclass(frozen=True, slots=True)
class _Stored:
    """A stored message a later request can continue from."""

    id: str
    conversation_id: str
    seq: int
    created: float  # for choosing the newest among equal histories


@dataclass(slots=True)
class _Plan:
    """What one record adds: rows for the three tables."""

    conversations: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    touched: dict[str, tuple[datetime, str | None]] = field(default_factory=dict)  # conversation → (updated, model)


async def store_batch(conn: AsyncConnection, batch: list[tuple[Record, Assembled]]) -> int:
    """Store new records (ids already stored are skipped: replays are idempotent) in a few
    statements for the whole batch: one lookup of the histories they continue, one of the
    conversations they name, then one multi-row insert per table. Returns how many were new."""
    seen = await known(conn, [r.request_id for r, _ in batch])
    fresh: dict[str, tuple[Record, Assembled]] = {}
    for record, reply in batch:
        if record.request_id not in seen:
            fresh.setdefault(record.request_id, (record, reply))
    if not fresh:
        return 0
    turns = {rid: _turn_messages(record) for rid, (record, _) in fresh.items()}
    hashes = {rid: threads.prefix_hashes(turn) for rid, turn in turns.items()}
    wanted = {h[-2] for h in hashes.values() if len(h) >= 2}
    index: dict[tuple[int, str, str | None], _Stored] = {}  # (user, history hash, conversation) → message
    for chunk in _chunks(sorted(wanted), 500):
        rows = await conn.execute(
            select(messages.c.id, messages.c.conversation_id, messages.c.user_id, messages.c.prefix_hash,
                   messages.c.seq, messages.c.created_at).where(messages.c.prefix_hash.in_(chunk))
        )  # fmt: skip
        for r in rows:
            _remember(index, r.user_id, r.prefix_hash, _Stored(r.id, r.conversation_id, r.seq, _ts(r.created_at)))
    named = {r.conversation_id for r, _ in fresh.values() if r.conversation_id}
    owners: dict[str, int] = {}
    for chunk in _chunks(sorted(named), 500):
        rows = await conn.execute(
            select(conversations.c.id, conversations.c.user_id).where(conversations.c.id.in_(chunk))
        )
        owners.update({r.id: r.user_id for r in rows})
    plan = _Plan()
    for rid, (record, reply) in fresh.items():
        _plan_record(plan, index, owners, record, reply, turns[rid], hashes[rid])
    if plan.conversations:
        await conn.execute(insert(conversations), plan.conversations)
    if plan.messages:
        await conn.execute(insert(messages), plan.messages)
    await conn.execute(insert(requests), plan.requests)
    if plan.touched:
        await conn.execute(
            update(conversations)
            .where(conversations.c.id == bindparam("cid"))
            .values(updated_at=bindparam("updated"), model=func.coalesce(bindparam("model"), conversations.c.model)),
            [{"cid": cid, "updated": when, "model": model} for cid, (when, model) in plan.touched.items()],
        )
    return len(fresh)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _ts(value: datetime) -> float:
    return _utc(value).timestamp()


def _remember(index: dict[tuple[int, str, str | None], _Stored], user: int, digest: str, stored: _Stored) -> None:
    """Index a message under its hash, per user and per conversation; the newest wins."""
    for conversation in (None, stored.conversation_id):
        key = (user, digest, conversation)
        if key not in index or index[key].created <= stored.created:
            index[key] = stored


def _plan_record(
    plan: _Plan, index: dict[tuple[int, str, str | None], _Stored], owners: dict[str, int], record: Record,
    reply: Assembled, turn: list[dict[str, Any]], hashes: list[str],
) -> None:  # fmt: skip
    when = _when(record.created_at)
    tokens = reply.usage or (record.prompt_tokens, record.completion_tokens)
    prompt_tokens, completion_tokens = tokens if tokens else (None, None)
    if completion_tokens is None and reply.chunks:
        completion_tokens = reply.chunks  # a stream cut short: one event per token, as vLLM sends
    model = reply.model or record.model
    conversation_id: str | None = None
    answered = record.status == 200 and bool(reply.content or reply.tool_calls or reply.reasoning or reply.complete)
    if turn and answered:
        conversation_id = _thread(plan, index, owners, record, reply, turn, hashes, when, model, completion_tokens)
    plan.requests.append(
        dict(
            request_id=record.request_id, user_id=record.user_id, key_id=record.key_id,
            conversation_id=conversation_id, model=model, route=record.route, status=record.status,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, ttft_ms=record.ttft_ms,
            duration_ms=record.duration_ms, created_at=when,
        )
    )  # fmt: skip


def _thread(
    plan: _Plan, index: dict[tuple[int, str, str | None], _Stored], owners: dict[str, int], record: Record,
    reply: Assembled, turn: list[dict[str, Any]], hashes: list[str], when: datetime, model: str | None,
    completion_tokens: int | None,
) -> str:  # fmt: skip
    """Which conversation the request continues, and the rows it adds: the history (all messages
    but the new turn) must equal a stored branch exactly — and hold more than system messages,
    or every chat with the same system prompt would join the first one."""
    user = record.user_id
    wanted = record.conversation_id
    if wanted and owners.get(wanted, user) != user:
        wanted = None  # another user's: thread as if no id had been given
    parent: _Stored | None = None
    if len(turn) >= 2 and any(m.get("role") != "system" for m in turn[:-1]):
        parent = index.get((user, hashes[-2], wanted))
    if parent is not None:
        conversation_id, start, seq, parent_id = parent.conversation_id, len(turn) - 1, parent.seq + 1, parent.id
    else:
        start, seq, parent_id = 0, 0, None
        if wanted and wanted in owners:
            conversation_id = wanted  # a named conversation with no such history: a new branch from its root
        else:
            conversation_id = wanted if wanted and record.create_conversation else new_id()
            owners[conversation_id] = user
            plan.conversations.append(
                dict(id=conversation_id, user_id=user, title=threads.title_from(turn), model=model, metadata="{}",
                     created_at=when, updated_at=when)
            )  # fmt: skip
    for i in range(start, len(turn)):
        m = turn[i]
        content, parts = _content(m.get("content"))
        mid = new_id()
        plan.messages.append(
            dict(
                id=mid, conversation_id=conversation_id, parent_id=parent_id, user_id=user, seq=seq,
                role=str(m.get("role", "user"))[:16], content=content, content_is_parts=parts, reasoning_content=None,
                tool_calls=orjson.dumps(m["tool_calls"]).decode() if m.get("tool_calls") else None,
                tool_call_id=m.get("tool_call_id"), name=m.get("name"), model=None, finish_reason=None, tokens=None,
                request_id=record.request_id, prefix_hash=hashes[i], created_at=when,
            )
        )  # fmt: skip
        _remember(index, user, hashes[i], _Stored(mid, conversation_id, seq, record.created_at))
        parent_id, seq = mid, seq + 1
    answer = reply.message()
    digest = threads.chain(hashes[-1], answer)
    # Every row of a request carries its arrival time (seq orders them): the reply's own end can
    # come after the client's next request has arrived, which would misorder the conversation.
    answered_at = record.created_at
    mid = new_id()
    plan.messages.append(
        dict(
            id=mid, conversation_id=conversation_id, parent_id=parent_id, user_id=user, seq=seq, role="assistant",
            content=reply.content, content_is_parts=False, reasoning_content=reply.reasoning,
            tool_calls=orjson.dumps(reply.tool_calls).decode() if reply.tool_calls else None, tool_call_id=None,
            name=None, model=model, finish_reason=reply.finish_reason, tokens=completion_tokens,
            request_id=record.request_id, prefix_hash=digest, created_at=_when(answered_at),
        )
    )  # fmt: skip
    _remember(index, user, digest, _Stored(mid, conversation_id, seq, answered_at))
    plan.touched[conversation_id] = (_when(answered_at), model)
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
