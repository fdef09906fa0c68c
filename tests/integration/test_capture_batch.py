"""The writer's batch store on both engines (SQLite through SQLAlchemy, PostgreSQL through asyncpg
COPY): the same batches thread the same way, replays add nothing, a conversation's time never
goes back, and a common opening shared by many conversations continues the newest one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.auth.users import UserService
from gwproxy.capture import batch
from gwproxy.capture.assembly import assemble
from gwproxy.capture.batch import PgStore, write_batch
from gwproxy.capture.record import Record, Recorder, wire
from gwproxy.capture.writer import CaptureWriter
from gwproxy.config import CaptureConfig, DatabaseConfig
from gwproxy.conversations import repository
from gwproxy.store import migrator
from gwproxy.store.engine import create_engine
from gwproxy.store.tables import conversations, messages, requests
from tests.integration.test_store import CODEC
from tests.support.services import Postgres

SYSTEM = {"role": "system", "content": "Be brief."}


def answer(text: str) -> str:
    return orjson.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
    ).decode()


def record(rid: str, user: int, msgs: list[dict[str, Any]], reply: str, at: float, **kw: Any) -> Record:
    return Record(
        request_id=rid, user_id=user, key_id=None, route="/v1/chat/completions", status=200, created_at=at,
        request={"model": "m", "messages": msgs}, response=answer(reply), sse=False, truncated=False, model="m",
        ttft_ms=1, duration_ms=2, **kw,
    )  # fmt: skip


async def store(engine: AsyncEngine, records: list[Record]) -> int:
    return await write_batch(engine, [(r, assemble(r.response.encode(), sse=False, chat=True)) for r in records])


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture
async def users(engine: AsyncEngine) -> tuple[int, int]:
    service = UserService(engine, CODEC, refresh_days=30)
    alice = await service.create_user("alice", "password-1")
    bob = await service.create_user("bob", "password-2")
    return alice.id, bob.id


async def shapes(engine: AsyncEngine, user_id: int) -> list[tuple[str, list[tuple[str, str, int, bool]]]]:
    """Each conversation (oldest first) as its title and (role, content, seq, has parent) rows."""
    async with engine.connect() as conn:
        page = await repository.list_conversations(
            conn, user_id, limit=100, cursor=None, model=None, since=None, until=None, text=None
        )
        out = []
        for c in reversed(page.items):
            msgs = await repository.conversation_messages(conn, user_id, c["id"])
            seqs = (
                await conn.execute(select(messages.c.id, messages.c.seq).where(messages.c.conversation_id == c["id"]))
            ).all()
            seq = dict(seqs)
            out.append(
                (c["title"], [(m["role"], m["content"], seq[m["id"]], m["parent_id"] is not None) for m in msgs])
            )
    return out


async def test_one_agent_resending_its_history_in_one_batch_and_across_batches(
    engine: AsyncEngine, users: tuple[int, int]
) -> None:
    alice, bob = users
    turn1 = [SYSTEM, user("hi")]
    turn2 = [*turn1, bot("hello"), user("how are you")]
    turn3 = [*turn2, bot("fine"), user("bye")]
    # Turns 1 and 2 in one batch (the second continues a message of the same batch), bob's identical
    # opening in the same batch (his own conversation), turn 3 in the next batch.
    assert await store(engine, [record("a1", alice, turn1, "hello", 100), record("a2", alice, turn2, "fine", 101),
                                record("b1", bob, turn1, "hello", 102)]) == 3  # fmt: skip
    assert await store(engine, [record("a3", alice, turn3, "ciao", 103)]) == 1
    assert await shapes(engine, alice) == [
        ("hi", [("system", "Be brief.", 0, False), ("user", "hi", 1, True), ("assistant", "hello", 2, True),
                ("user", "how are you", 3, True), ("assistant", "fine", 4, True), ("user", "bye", 5, True),
                ("assistant", "ciao", 6, True)]),
    ]  # fmt: skip
    assert [len(m) for _, m in await shapes(engine, bob)] == [3]
    # Replayed (a spool read twice, a batch retried): nothing new, nothing doubled.
    assert await store(engine, [record("a2", alice, turn2, "fine", 101), record("a3", alice, turn3, "ciao", 103)]) == 0
    async with engine.connect() as conn:
        counts = [
            (await conn.execute(select(func.count()).select_from(t))).scalar()
            for t in (conversations, messages, requests)
        ]
        updated = (
            await conn.execute(select(conversations.c.updated_at).where(conversations.c.user_id == alice))
        ).scalar()
    assert counts == [2, 10, 4]
    assert repository._utc(updated).timestamp() == 103


async def test_an_edit_branches_and_a_late_record_does_not_move_the_conversation_back(
    engine: AsyncEngine, users: tuple[int, int]
) -> None:
    alice, _ = users
    turn1 = [user("plan a trip")]
    await store(engine, [record("t1", alice, turn1, "where to?", 100)])
    await store(engine, [record("t2", alice, [*turn1, bot("where to?"), user("Rome")], "ok, Rome", 200)])
    # The client edited its second message (a branch off the first answer), recorded earlier than
    # the last turn (a spooled record replayed late): the conversation's time stays at 200.
    await store(engine, [record("t3", alice, [*turn1, bot("where to?"), user("Oslo")], "ok, Oslo", 150)])
    [(title, rows)] = await shapes(engine, alice)
    assert title == "plan a trip"
    assert sorted(rows, key=lambda r: (r[2], r[1])) == [
        ("user", "plan a trip", 0, False), ("assistant", "where to?", 1, True), ("user", "Oslo", 2, True),
        ("user", "Rome", 2, True), ("assistant", "ok, Oslo", 3, True), ("assistant", "ok, Rome", 3, True),
    ]  # fmt: skip
    async with engine.connect() as conn:
        updated = (await conn.execute(select(conversations.c.updated_at))).scalar()
    assert repository._utc(updated).timestamp() == 200


async def test_a_common_opening_continues_the_newest_conversation_and_named_ones_stay_apart(
    engine: AsyncEngine, users: tuple[int, int]
) -> None:
    alice, bob = users
    opening = [user("hello")]
    await store(engine, [record(f"o{i}", alice, opening, "hi there", 100 + i) for i in range(30)])
    async with engine.connect() as conn:
        newest = (
            await conn.execute(select(conversations.c.id).order_by(conversations.c.created_at.desc()).limit(1))
        ).scalar()
        oldest = (await conn.execute(select(conversations.c.id).order_by(conversations.c.created_at).limit(1))).scalar()
    second = [*opening, bot("hi there"), user("what now?")]
    await store(engine, [
        record("n1", alice, second, "rest", 200),  # unnamed: the newest of the 30
        record("n2", alice, second, "read", 201, conversation_id=oldest),  # named: that one
        record("n3", bob, second, "no", 202, conversation_id=oldest),  # another user's id: ignored
    ])  # fmt: skip
    async with engine.connect() as conn:
        placed = dict((await conn.execute(select(requests.c.request_id, requests.c.conversation_id))).all())
        bobs = (await conn.execute(select(conversations.c.user_id).where(conversations.c.id == placed["n3"]))).scalar()
    assert placed["n1"] == newest
    assert placed["n2"] == oldest
    assert placed["n3"] not in (newest, oldest) and bobs == bob


async def test_the_writer_takes_wire_lines_and_sets_aside_what_it_cannot_read(
    engine: AsyncEngine, users: tuple[int, int], tmp_path: Path
) -> None:
    alice, _ = users
    cfg = CaptureConfig(spool_dir=str(tmp_path), batch_seconds=0)
    writer = CaptureWriter(cfg, engine)
    writer.start()
    recorder = Recorder(1 << 20)
    recorder.feed(answer("hello").encode())
    body = orjson.dumps({"model": "m", "messages": [user("hi")], "stream_options": {"include_usage": True}})
    writer.submit(wire("w1", alice, None, "/v1/chat/completions", 200, 100.0, body, recorder, None, 5, 2, 1.0, 2.0))
    writer.submit(b'{"request_id": "torn')  # not a record: kept aside, never lost silently
    await writer.close()
    counts = writer.counters.snapshot()
    assert (counts["written"], counts["rejected"], counts["spooled"]) == (1, 1, 0)
    assert (tmp_path / "rejected.jsonl").read_bytes() == b'{"request_id": "torn\n'
    assert await shapes(engine, alice) == [("hi", [("user", "hi", 0, False), ("assistant", "hello", 1, True)])]


async def test_postgres_lookups_probe_the_index_on_a_table_not_yet_analysed(postgres: Postgres) -> None:
    """The writer's key lookups stay one index probe per key on a grown table with no statistics
    (with ``= ANY($1)`` the planner scanned the whole ``requests`` table every batch)."""
    url = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    engine = create_engine(DatabaseConfig(url=url))
    await migrator.upgrade(engine)
    await engine.dispose()
    conn = await asyncpg.connect(url)
    try:
        uid = await conn.fetchval(
            "INSERT INTO users (username, password_hash, created_at) VALUES ('u', 'x', now()) RETURNING id"
        )
        now = datetime.now(UTC)
        ids = [f"id-{i:06d}" for i in range(5000)]
        await conn.copy_records_to_table(
            "requests", records=[(i, uid, "/v1/chat/completions", 200, now) for i in ids],
            columns=["request_id", "user_id", "route", "status", "created_at"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "conversations", records=[(i[3:], uid, "t", now, now) for i in ids],
            columns=["id", "user_id", "title", "created_at", "updated_at"],
        )  # fmt: skip
        keys = [f"id-{i:06d}" for i in range(0, 10_000, 50)]  # 200, half of them stored
        assert len(await PgStore(conn).known(keys)) == 100
        plans = {
            "known": await conn.fetch(f"EXPLAIN {batch._KNOWN}", keys),
            "owners": await conn.fetch(f"EXPLAIN {batch._OWNERS}", [k[3:] for k in keys]),
            "touch": await conn.fetch(f"EXPLAIN {batch._TOUCH}", "000001", now, "m"),
        }
        for name, rows in plans.items():
            text = "\n".join(r[0] for r in rows)
            assert "Seq Scan on" not in text and "Index" in text, f"{name}:\n{text}"
    finally:
        await conn.close()
