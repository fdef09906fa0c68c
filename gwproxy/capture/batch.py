"""Batch: storing one writer batch of records — threading each onto its conversation and
inserting the rows of the whole batch in a few statements, whatever its size.

``store_batch`` runs in the writer's transaction. It skips request ids already stored (replays
are idempotent), asks the ``Store`` in one statement each for the conversations the records name
and the stored messages their histories end on, plans every record's rows (pure: ``_plan``), and
hands the plan to the ``Store`` to write, one statement per table — the daily usage rollups
(``store.rollups``) included, so they count exactly the requests stored.

Threading (see ``threads``): a request continues the newest stored message of its user whose
prefix hash is the hash of its history (all messages but the new turn); with a conversation id
of the user's own, the newest such message in that conversation. Records earlier in the same
batch count as stored. The lookups ask for the newest message per (user, hash) — not every
message with that hash, which for a common opening (one system prompt, one first question)
grows with every conversation ever stored.

Two stores do the I/O: ``SqlStore`` (SQLAlchemy Core, any database; SQLite is the embedded
default) and ``PgStore`` (asyncpg on PostgreSQL: ``COPY`` for the inserts, arrays for the
lookups). The second exists for speed: SQLAlchemy's per-row parameter handling was the writer's
largest cost, and the writer shares the gateway's core.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Protocol

import orjson
from sqlalchemy import Table, bindparam, case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gwproxy.capture import responses, threads
from gwproxy.capture.assembly import Assembled
from gwproxy.capture.record import RESPONSES_ROUTE, Record
from gwproxy.store import rollups
from gwproxy.store.tables import conversations, messages, requests

UNKNOWN_MODEL = "other"  # the metrics' label for a model nobody serves (``registry.label``)
# A 404 to a generation is for a model nobody serves (its route exists), but on /v1/responses,
# where it can be a previous_response_id.
_RESPONSES = "/v1/responses"

_RANDOM = bytearray()


def new_id() -> str:
    """32 random hex digits (a uuid4's worth of randomness), from a pool refilled 4 KiB at a time:
    the writer makes three per captured request, and one ``os.urandom`` call each was measurable."""
    if len(_RANDOM) < 16:
        _RANDOM.extend(os.urandom(4096))
    value = _RANDOM[:16].hex()
    del _RANDOM[:16]
    return value


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored message a later request can continue from."""

    id: str
    conversation_id: str
    seq: int
    created: float  # seconds; the newest of equal histories wins


@dataclass(slots=True)
class Rows:
    """What a batch adds: new rows per table, and the stored conversations it appends to."""

    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)  # new ones, by id
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    touched: dict[str, tuple[datetime, str | None]] = field(default_factory=dict)  # stored id → (updated, model)
    usage: rollups.Rollup = field(default_factory=rollups.Rollup)  # added to the daily usage rollups


class Store(Protocol):
    """The I/O ``store_batch`` needs, inside one transaction."""

    async def known(self, request_ids: list[str]) -> set[str]: ...

    async def owners(self, conversation_ids: list[str]) -> dict[str, int]: ...

    async def latest(self, wanted: list[tuple[int, str]]) -> dict[tuple[int, str], Stored]:
        """The newest message per (user id, prefix hash)."""
        ...

    async def latest_in(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], Stored]:
        """The newest message per (conversation id, prefix hash)."""
        ...

    async def write(self, plan: Rows) -> None: ...


async def write_batch(engine: AsyncEngine, batch: Sequence[tuple[Record, Assembled]]) -> int:
    """Store the records not stored yet, in one transaction; returns how many that was."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "asyncpg":
        async with engine.begin() as conn:
            return await store_batch(SqlStore(conn), batch)
    # On the driver's own connection and transaction (SQLAlchemy's stays idle). A write cut
    # half-way (an error, or the writer's timeout cancelling it) closes the connection rather
    # than return it to the pool in an unknown state.
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None  # checked out just now
        try:
            async with raw.transaction():
                return await store_batch(PgStore(raw), batch)
        except BaseException:
            raw.terminate()
            with contextlib.suppress(Exception):
                await conn.invalidate()
            raise


async def store_batch(store: Store, batch: Sequence[tuple[Record, Assembled]]) -> int:
    """Store the records not stored yet; returns how many that was."""
    seen = await store.known([r.request_id for r, _ in batch])
    fresh: dict[str, tuple[Record, Assembled]] = {}
    for record, reply in batch:
        if record.request_id not in seen:
            fresh.setdefault(record.request_id, (record, reply))
    if not fresh:
        return 0
    turns = {rid: _turn_messages(record) for rid, (record, _) in fresh.items()}
    hashes = {rid: threads.prefix_hashes(turn) for rid, turn in turns.items()}
    owners = await store.owners(sorted({r.conversation_id for r, _ in fresh.values() if r.conversation_id}))
    by_user: set[tuple[int, str]] = set()
    by_conversation: set[tuple[str, str]] = set()
    for rid, (record, _) in fresh.items():
        if not _has_history(turns[rid]):
            continue
        named = record.conversation_id
        if named and owners.get(named) == record.user_id:
            by_conversation.add((named, hashes[rid][-2]))
        elif not named or named in owners:  # none, or another user's: threaded as if none was given
            by_user.add((record.user_id, hashes[rid][-2]))
        # else a conversation that does not exist yet: only this batch can hold its history
    index: dict[tuple[int, str, str | None], Stored] = {}  # (user, history hash, conversation or None)
    for (user, digest), stored in (await store.latest(sorted(by_user))).items():
        index[(user, digest, None)] = stored
    for (cid, digest), stored in (await store.latest_in(sorted(by_conversation))).items():
        index[(owners[cid], digest, cid)] = stored
    plan = Rows()
    for rid, (record, reply) in fresh.items():
        _plan(plan, index, owners, record, reply, turns[rid], hashes[rid])
    await store.write(plan)
    return len(fresh)


# ---- planning (pure) -----------------------------------------------------------------------


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _content(content: Any) -> tuple[str | None, bool]:
    if content is None or isinstance(content, str):
        return content, False
    return orjson.dumps(content).decode(), True


def _turn_messages(record: Record) -> list[dict[str, Any]]:
    req = record.request
    if record.route == RESPONSES_ROUTE:
        return responses.turn_messages(req)
    if record.route == "/v1/completions":
        prompt = req.get("prompt")
        text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
        return [{"role": "user", "content": text}]
    msgs = req.get("messages")
    return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []


def _has_history(turn: list[dict[str, Any]]) -> bool:
    """A history worth continuing: more than the new turn, and more than system messages (or
    every chat with the same system prompt would join the first one)."""
    return len(turn) >= 2 and any(m.get("role") != "system" for m in turn[:-1])


def _remember(index: dict[tuple[int, str, str | None], Stored], user: int, digest: str, stored: Stored) -> None:
    """Index a message of this batch under its hash, per user and per conversation; the newest wins."""
    for conversation in (None, stored.conversation_id):
        key = (user, digest, conversation)
        known = index.get(key)
        if known is None or known.created <= stored.created:
            index[key] = stored


def _plan(
    plan: Rows, index: dict[tuple[int, str, str | None], Stored], owners: dict[str, int], record: Record,
    reply: Assembled, turn: list[dict[str, Any]], hashes: list[str],
) -> None:  # fmt: skip
    when = _when(record.created_at)
    tokens = reply.usage or (record.prompt_tokens, record.completion_tokens)
    prompt_tokens, completion_tokens = tokens if tokens else (None, None)
    if completion_tokens is None and reply.chunks:
        completion_tokens = reply.chunks  # a stream cut short: one event per token, as vLLM sends
    model = reply.model or record.model
    if reply.model is None and record.status == 404 and record.route != _RESPONSES:
        model = UNKNOWN_MODEL  # a name nobody serves: one row for all of them, as the metrics count it
    conversation_id: str | None = None
    answered = record.status == 200 and bool(reply.content or reply.tool_calls or reply.reasoning or reply.complete)
    if turn and answered:
        conversation_id = _thread(plan, index, owners, record, reply, turn, hashes, when, model, completion_tokens)
    plan.requests.append(
        dict(
            request_id=record.request_id, user_id=record.user_id, key_id=record.key_id,
            conversation_id=conversation_id, model=model, route=record.route, status=record.status,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, ttft_ms=_float(record.ttft_ms),
            duration_ms=_float(record.duration_ms), created_at=when,
        )
    )  # fmt: skip
    plan.usage.add(when, record.user_id, model, record.status, prompt_tokens, completion_tokens)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _thread(
    plan: Rows, index: dict[tuple[int, str, str | None], Stored], owners: dict[str, int], record: Record,
    reply: Assembled, turn: list[dict[str, Any]], hashes: list[str], when: datetime, model: str | None,
    completion_tokens: int | None,
) -> str:  # fmt: skip
    """The conversation the request continues (or starts), and the rows it adds there."""
    user = record.user_id
    wanted = record.conversation_id
    if wanted and owners.get(wanted, user) != user:
        wanted = None  # another user's: thread as if no id had been given
    parent = index.get((user, hashes[-2], wanted)) if _has_history(turn) else None
    if parent is not None:
        conversation_id, start, seq, parent_id = parent.conversation_id, len(turn) - 1, parent.seq + 1, parent.id
    else:
        start, seq, parent_id = 0, 0, None
        if wanted and wanted in owners:
            conversation_id = wanted  # a named conversation with no such history: a new branch from its root
        else:
            conversation_id = wanted if wanted and record.create_conversation else new_id()
            owners[conversation_id] = user
            plan.conversations[conversation_id] = dict(
                id=conversation_id, user_id=user, title=threads.title_from(turn), model=model, metadata="{}",
                created_at=when, updated_at=when,
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
        _remember(index, user, hashes[i], Stored(mid, conversation_id, seq, record.created_at))
        parent_id, seq = mid, seq + 1
    digest = threads.chain(hashes[-1], reply.message())
    # Every row of a request carries its arrival time (seq orders them): the reply's own end can
    # come after the client's next request has arrived, which would misorder the conversation.
    mid = new_id()
    plan.messages.append(
        dict(
            id=mid, conversation_id=conversation_id, parent_id=parent_id, user_id=user, seq=seq, role="assistant",
            content=reply.content, content_is_parts=False, reasoning_content=reply.reasoning,
            tool_calls=orjson.dumps(reply.tool_calls).decode() if reply.tool_calls else None, tool_call_id=None,
            name=None, model=model, finish_reason=reply.finish_reason, tokens=completion_tokens,
            request_id=record.request_id, prefix_hash=digest, created_at=when,
        )
    )  # fmt: skip
    _remember(index, user, digest, Stored(mid, conversation_id, seq, record.created_at))
    new = plan.conversations.get(conversation_id)
    if new is not None:  # started in this batch: its row is not written yet
        new["updated_at"] = max(new["updated_at"], when)
        new["model"] = model or new["model"]
    else:
        touched = plan.touched.get(conversation_id)
        if touched is None or touched[0] <= when:
            plan.touched[conversation_id] = (when, model or (touched[1] if touched else None))
    return conversation_id


# ---- the stores ------------------------------------------------------------------------------


def _ts(value: datetime) -> float:
    """SQLite gives stored times back without their zone: they were written in UTC."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class SqlStore:
    """Through SQLAlchemy Core: any database (SQLite in the embedded setup)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def known(self, request_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(request_ids, 500):
            rows = await self.conn.execute(select(requests.c.request_id).where(requests.c.request_id.in_(chunk)))
            found.update(r[0] for r in rows)
        return found

    async def owners(self, conversation_ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(conversation_ids, 500):
            rows = await self.conn.execute(
                select(conversations.c.id, conversations.c.user_id).where(conversations.c.id.in_(chunk))
            )
            found.update({r.id: r.user_id for r in rows})
        return found

    async def latest(self, wanted: list[tuple[int, str]]) -> dict[tuple[int, str], Stored]:
        return await self._newest(messages.c.user_id, wanted)

    async def latest_in(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], Stored]:
        return await self._newest(messages.c.conversation_id, wanted)

    async def _newest(self, scope: Any, wanted: list[Any]) -> dict[Any, Stored]:
        """The newest message per (``scope`` value, prefix hash), one indexed lookup each: a
        local database answers each in microseconds."""
        m = messages.c
        query = (
            select(m.id, m.conversation_id, m.seq, m.created_at)
            .where(m.prefix_hash == bindparam("digest"), scope == bindparam("scope"))
            .order_by(m.created_at.desc())
            .limit(1)
        )
        found: dict[Any, Stored] = {}
        for key, digest in wanted:
            row = (await self.conn.execute(query, {"scope": key, "digest": digest})).first()
            if row is not None:
                found[(key, digest)] = Stored(row.id, row.conversation_id, row.seq, _ts(row.created_at))
        return found

    async def write(self, plan: Rows) -> None:
        if plan.conversations:
            await self.conn.execute(insert(conversations), list(plan.conversations.values()))
        if plan.messages:
            await self.conn.execute(insert(messages), plan.messages)
        await self.conn.execute(insert(requests), plan.requests)
        if plan.touched:
            c = conversations.c
            later = bindparam("updated", type_=conversations.c.updated_at.type)
            await self.conn.execute(
                update(conversations)
                .where(c.id == bindparam("cid"))
                .values(
                    updated_at=case((c.updated_at < later, later), else_=c.updated_at),
                    model=func.coalesce(bindparam("model"), c.model),
                ),
                [{"cid": cid, "updated": when, "model": model} for cid, (when, model) in plan.touched.items()],
            )
        await rollups.add_sql(self.conn, plan.usage)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Driver(Protocol):
    """The part of an asyncpg connection ``PgStore`` uses."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def execute(self, query: str, *args: Any) -> str: ...

    async def executemany(self, query: str, args: Any) -> None: ...

    async def copy_records_to_table(self, table_name: str, *, records: Any, columns: Any) -> str: ...


# Lookups by key go one index probe per key (``LATERAL … LIMIT 1``), whatever the planner's
# statistics say: with ``= ANY($1)`` or a plain join it takes a 200-key batch against a table that
# grew since autovacuum last analysed it (or that it believes small) for a scan of the whole table,
# every batch, which grows with the table.
_KNOWN = """
SELECT w.id FROM unnest($1::text[]) AS w(id)
CROSS JOIN LATERAL (SELECT 1 FROM requests WHERE request_id = w.id LIMIT 1) AS r
"""
_OWNERS = """
SELECT w.id, c.user_id FROM unnest($1::text[]) AS w(id)
CROSS JOIN LATERAL (SELECT user_id FROM conversations WHERE id = w.id LIMIT 1) AS c
"""
_LATEST = """
SELECT w.user_id, w.digest, m.id, m.conversation_id, m.seq, m.created_at
FROM unnest($1::bigint[], $2::text[]) AS w(user_id, digest)
CROSS JOIN LATERAL (
    SELECT id, conversation_id, seq, created_at FROM messages
    WHERE prefix_hash = w.digest AND user_id = w.user_id ORDER BY created_at DESC LIMIT 1
) AS m
"""
_LATEST_IN = """
SELECT w.cid, w.digest, m.id, m.conversation_id, m.seq, m.created_at
FROM unnest($1::text[], $2::text[]) AS w(cid, digest)
CROSS JOIN LATERAL (
    SELECT id, conversation_id, seq, created_at FROM messages
    WHERE prefix_hash = w.digest AND conversation_id = w.cid ORDER BY created_at DESC LIMIT 1
) AS m
"""
# One row per statement (``executemany`` pipelines them): an UPDATE joined to unnest() is planned
# like the lookups above, as a scan of the whole table.
_TOUCH = "UPDATE conversations SET updated_at = GREATEST(updated_at, $2), model = COALESCE($3, model) WHERE id = $1"


class PgStore:
    """asyncpg on PostgreSQL, in the caller's transaction: array parameters for the lookups (one
    statement for the whole batch), binary ``COPY`` for the inserts."""

    def __init__(self, conn: Driver) -> None:
        self.conn = conn

    async def known(self, request_ids: list[str]) -> set[str]:
        return {r[0] for r in await self.conn.fetch(_KNOWN, request_ids)}

    async def owners(self, conversation_ids: list[str]) -> dict[str, int]:
        if not conversation_ids:
            return {}
        return {r[0]: r[1] for r in await self.conn.fetch(_OWNERS, conversation_ids)}

    async def latest(self, wanted: list[tuple[int, str]]) -> dict[tuple[int, str], Stored]:
        return await self._lookup(_LATEST, wanted)

    async def latest_in(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], Stored]:
        return await self._lookup(_LATEST_IN, wanted)

    async def _lookup(self, query: str, wanted: list[Any]) -> dict[Any, Stored]:
        if not wanted:
            return {}
        rows = await self.conn.fetch(query, [k for k, _ in wanted], [d for _, d in wanted])
        return {(r[0], r[1]): Stored(r[2], r[3], r[4], r[5].timestamp()) for r in rows}

    async def write(self, plan: Rows) -> None:
        if plan.conversations:
            await self._copy(conversations, plan.conversations.values())
        if plan.messages:
            await self._copy(messages, plan.messages)
        await self._copy(requests, plan.requests)
        if plan.touched:
            await self.conn.executemany(_TOUCH, [(cid, *change) for cid, change in plan.touched.items()])
        for query, columns in rollups.pg_statements(plan.usage):
            await self.conn.execute(query, *columns)

    async def _copy(self, table: Table, rows: Any) -> None:
        columns = [c.name for c in table.columns]
        await self.conn.copy_records_to_table(table.name, records=map(itemgetter(*columns), rows), columns=columns)
