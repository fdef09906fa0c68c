"""Reads that stay fast at scale, on both engines: the daily usage rollups the writer keeps (equal to
the requests they count, replays adding nothing), the migration's backfill of what was stored
before them, the usage reads (one user, everyone summed, each user paged, bounded ranges) and the
conversation title search through its text index (pg_trgm; SQLite FTS5)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.capture.assembly import assemble
from gwproxy.capture.batch import write_batch
from gwproxy.capture.record import Record
from gwproxy.config import DatabaseConfig
from gwproxy.conversations import repository
from gwproxy.conversations import usage as reads
from gwproxy.errors import InvalidRequest
from gwproxy.store import migrator
from gwproxy.store.engine import create_engine
from gwproxy.store.tables import requests, usage_daily, usage_daily_totals
from tests.integration.test_capture_batch import answer, users  # noqa: F401  (a fixture)

DAY1 = datetime(2026, 11, 3, 23, 59, 59, tzinfo=UTC).timestamp()  # the last second of a UTC day
DAY2 = DAY1 + 1  # midnight: the next day


def rec(rid: str, user: int, at: float, *, model: str | None = "m-a", status: int = 200) -> Record:
    body = {"model": model, "messages": [{"role": "user", "content": f"q {rid}"}]}
    return Record(
        request_id=rid, user_id=user, key_id=None, route="/v1/chat/completions", status=status, created_at=at,
        request=body, response=answer("ok").replace('"model":"m"', f'"model":"{model}"') if model and status == 200
        else '{"error":{}}', sse=False, truncated=False,
        model=model,
    )  # fmt: skip


async def write(engine: AsyncEngine, records: list[Record]) -> int:
    items = [(r, assemble(r.response.encode(), sse=False, chat=True)) for r in records]
    return await write_batch(engine, items)


async def from_requests(engine: AsyncEngine) -> dict[tuple[str, int, str], tuple[int, ...]]:
    """What the rollups must say, counted from ``requests`` row by row."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(requests))).all()
    out: dict[tuple[str, int, str], list[int]] = {}
    for r in rows:
        when = r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC)
        counts = out.setdefault((when.date().isoformat(), r.user_id, r.model or ""), [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += r.status >= 400
        counts[2] += r.prompt_tokens or 0
        counts[3] += r.completion_tokens or 0
    return {k: tuple(v) for k, v in out.items()}


async def rollups(engine: AsyncEngine) -> dict[tuple[str, int, str], tuple[int, ...]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(usage_daily))).all()
    return {
        (str(r.day), r.user_id, r.model): (r.requests, r.failed, r.prompt_tokens, r.completion_tokens) for r in rows
    }


async def test_the_writer_keeps_rollups_equal_to_the_requests_it_stores(
    engine: AsyncEngine,
    users: tuple[int, int],  # noqa: F811
) -> None:
    alice, bob = users
    first = [
        rec("r1", alice, DAY1), rec("r2", alice, DAY1, model="m-b"), rec("r3", alice, DAY2),
        rec("r4", bob, DAY1, status=429), rec("r5", bob, DAY2, model=None),
    ]  # fmt: skip
    assert await write(engine, first) == 5
    assert await write(engine, [*first[:2], rec("r6", alice, DAY1)]) == 1  # a replay counts nothing twice
    expected = await from_requests(engine)
    assert await rollups(engine) == expected
    assert expected[("2026-11-03", alice, "m-a")] == (2, 0, 10, 4)  # answer(): 5 prompt, 2 completion tokens
    assert expected[("2026-11-03", bob, "m-a")][:2] == (1, 1)  # refused: failed, no tokens
    assert ("2026-11-04", bob, "") in expected  # no model: counted under ""
    async with engine.connect() as conn:
        totals = {(str(r.day), r.model): r.requests for r in await conn.execute(select(usage_daily_totals))}
    assert totals == {("2026-11-03", "m-a"): 3, ("2026-11-03", "m-b"): 1, ("2026-11-04", "m-a"): 1,
                      ("2026-11-04", ""): 1}  # fmt: skip


async def test_the_reads_one_user_everyone_and_each_user_a_page_at_a_time(
    engine: AsyncEngine,
    users: tuple[int, int],  # noqa: F811
) -> None:
    alice, bob = users
    await write(engine, [rec(f"a{i}", alice, DAY1 - i * 3600) for i in range(30)] + [rec("b1", bob, DAY2)])
    window = reads.Window(date(2026, 11, 1), date(2026, 11, 5))
    async with engine.connect() as conn:
        mine = await reads.by_day(conn, alice, window)
        everyone = await reads.by_day(conn, None, window)
        first = await reads.by_user(conn, window, limit=1, cursor=None)
        second = await reads.by_user(conn, window, limit=1, cursor=first.next_cursor)
        only_day2 = await reads.by_day(conn, None, reads.Window(date(2026, 11, 4), date(2026, 11, 5)))
    # 30 requests an hour apart, ending at 23:59:59 on the 3rd: 24 on the 3rd and 6 on the 2nd.
    assert [(r["day"], r["requests"], r["user_id"]) for r in mine] == [("2026-11-02", 6, alice),
                                                                      ("2026-11-03", 24, alice)]  # fmt: skip
    assert [(r["day"], r["model"], r["requests"]) for r in everyone] == [
        ("2026-11-02", "m-a", 6), ("2026-11-03", "m-a", 24), ("2026-11-04", "m-a", 1)
    ]  # fmt: skip
    assert all("user_id" not in r for r in everyone)  # summed: no per-user rows
    assert reads.totals(everyone)["requests"] == 31
    assert [(u["user_id"], u["username"], u["requests"]) for u in first.items] == [(alice, "alice", 30)]
    assert [(u["username"], u["requests"]) for u in second.items] == [("bob", 1)] and second.next_cursor is None
    assert [r["day"] for r in only_day2] == ["2026-11-04"]
    with pytest.raises(InvalidRequest):
        async with engine.connect() as conn:
            await reads.by_user(conn, window, limit=1, cursor="-1")


def test_a_range_is_whole_days_bounded_and_thirty_by_default() -> None:
    today = datetime.now(UTC).date()
    default = reads.Window.of(None, None)
    assert (default.first, default.end) == (today - timedelta(days=29), today + timedelta(days=1))
    at = datetime(2026, 11, 3, tzinfo=UTC)
    assert reads.Window.of(at, at + timedelta(days=1)) == reads.Window(date(2026, 11, 3), date(2026, 11, 4))
    assert reads.Window.of(at, at + timedelta(hours=1)).end == date(2026, 11, 4)  # its day counts
    for since, until in ((at, at), (at - timedelta(days=401), at), (None, datetime(9999, 12, 31, 1, tzinfo=UTC))):
        with pytest.raises(InvalidRequest):
            reads.Window.of(since, until)


async def test_migration_backfills_the_rollups_from_what_was_stored(db_url: str) -> None:
    engine = create_engine(DatabaseConfig(url=db_url))
    try:
        await migrator.upgrade(engine, "0005")
        rows: list[dict[str, Any]] = [
            dict(request_id=f"old{i}", user_id=1 + i % 3, key_id=None, conversation_id=None,
                 model=None if i % 7 == 0 else f"m{i % 2}", route="/v1/chat/completions",
                 status=500 if i % 5 == 0 else 200, prompt_tokens=i, completion_tokens=None if i % 4 == 0 else 2 * i,
                 ttft_ms=None, duration_ms=None,
                 created_at=datetime(2026, 10, 1, tzinfo=UTC) + timedelta(hours=5 * i))
            for i in range(60)
        ]  # fmt: skip
        rows.append({**rows[0], "request_id": "anonymous", "user_id": None})  # no user: in no rollup
        async with engine.begin() as conn:
            await conn.execute(insert(requests), rows)
        await migrator.upgrade(engine)
        expected = {k: v for k, v in (await from_requests(engine)).items() if k[1] is not None}
        assert await rollups(engine) == expected
        async with engine.connect() as conn:
            r = usage_daily_totals.c
            total = (await conn.execute(select(func.sum(r.requests), func.sum(r.failed)))).one()
        assert tuple(total) == (60, 12)  # every fifth failed; the anonymous one is not counted
    finally:
        await engine.dispose()


async def test_title_search_goes_through_its_text_index(engine: AsyncEngine, users: tuple[int, int]) -> None:  # noqa: F811
    alice, bob = users
    titles = ["Weather in Oslo", "100% sure_thing", 'say "hi"', "Ünïcode straße", "ab", "oslo again"]
    async with engine.begin() as conn:
        made = {t: (await repository.create_conversation(conn, alice, t, None, {}))["id"] for t in titles}
        await repository.create_conversation(conn, bob, "Oslo for bob", None, {})

    async def search(q: str, who: int = alice) -> set[str]:
        async with engine.connect() as conn:
            page = await repository.list_conversations(
                conn, who, limit=100, cursor=None, model=None, since=None, until=None, text=q
            )
        return {c["title"] for c in page.items}

    assert await search("OSLO") == {"Weather in Oslo", "oslo again"}  # any case, own only
    assert await search("Oslo", bob) == {"Oslo for bob"}
    assert await search("0%") == {"100% sure_thing"}  # LIKE's wildcards are plain text
    assert await search("e_t") == {"100% sure_thing"}
    assert await search("_") == {"100% sure_thing"}
    assert await search('"hi"') == {'say "hi"'}  # FTS5's quotes too
    assert await search("straße") == {"Ünïcode straße"}
    assert await search("b") == {"ab"}  # under three characters: no trigram, still found
    assert await search("nowhere") == set()
    async with engine.begin() as conn:  # a rename and a delete reach the index
        await repository.update_conversation(conn, alice, made["ab"], "renamed to Bergen", None)
        await repository.delete_conversation(conn, alice, made["oslo again"])
    assert await search("bergen") == {"renamed to Bergen"}
    assert await search("oslo") == {"Weather in Oslo"}
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # (user_id, title) with btree_gin; whatever the planner prefers on a small table, the index
            # answers a substring search.
            made_as = (await conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                                          {"n": "ix_conversations_title_trgm"})).scalar()  # fmt: skip
            assert "gin (user_id, title gin_trgm_ops)" in made_as
            await conn.execute(text("SET enable_seqscan = off"))
            plan = await conn.execute(text("EXPLAIN SELECT id FROM conversations WHERE title ILIKE '%oslo%'"))
            assert "ix_conversations_title_trgm" in "\n".join(r[0] for r in plan)
        else:
            found = await conn.execute(text("SELECT cid FROM conversations_title_fts WHERE title MATCH '\"oslo\"'"))
            assert {r[0] for r in found} >= {made["Weather in Oslo"]}
