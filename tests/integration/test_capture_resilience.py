"""Nothing lost: the database stopped under a load of streamed chats, the gateway stopped with
records still queued, the same spool replayed twice. Real PostgreSQL, real gateway processes."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import pytest

from tests.conftest import gwproxy_cli, provision
from tests.support.procs import Proc, start_gateway
from tests.support.services import Postgres

CONVERSATIONS = 100  # x 2 turns = 200 streamed chats


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    pg = Postgres()  # its own server: these tests stop it
    yield pg
    pg.stop()


def _provision(pg: Postgres) -> tuple[dict[str, str], dict[str, str]]:
    env = {"DATABASE_URL": pg.create_database("capture"), "JWT_SECRET": "resilience-" + "k" * 40}
    gwproxy_cli(env, "migrate")
    gwproxy_cli(env, "user", "add", "loader", "--password-stdin", stdin="loader-password\n")
    key = gwproxy_cli(env, "key", "create", "--user", "loader").strip()
    return env, {"Authorization": f"Bearer {key}"}


def _gateway(log_dir: Path, sim: int, env: dict[str, str], spool: Path, name: str, **extra: str) -> tuple[Proc, str]:
    proc, port = start_gateway(
        log_dir, sim, name=name,
        env={**env, "GWPROXY_CAPTURE_SPOOL_DIR": str(spool), "GWPROXY_CAPTURE_RETRY_SECONDS": "0.3",
             "GWPROXY_CAPTURE_WRITE_TIMEOUT": "2", "GWPROXY_CAPTURE_BATCH_SECONDS": "0.05",
             "GWPROXY_RATELIMIT_ENABLED": "false",
             "GWPROXY_AUTH_KEY_CACHE_SECONDS": "600",  # keys stay known while the database is away
             **extra},
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def _turn(n: int, second: bool, first_reply: str = "") -> list[dict[str, Any]]:
    messages = [{"role": "user", "content": f"conversation {n}: hello"}]
    if second:
        messages += [{"role": "assistant", "content": first_reply}, {"role": "user", "content": "and then?"}]
    return messages


async def _chat(session: aiohttp.ClientSession, base: str, auth: dict[str, str], messages: list[dict[str, Any]]) -> str:
    body = {"model": "current", "messages": messages, "stream": True, "max_tokens": 12}
    async with session.post(f"{base}/v1/chat/completions", json=body, headers=auth) as r:
        text = await r.text()
        assert r.status == 200 and text.rstrip().endswith("data: [DONE]"), text[:300]
    return "".join(re.findall(r'"content":"((?:[^"\\]|\\.)*)"', text)).encode().decode("unicode_escape")


async def _run_turns(base: str, auth: dict[str, str], numbers: range, second: bool, replies: dict[int, str]) -> None:
    sem = asyncio.Semaphore(10)
    async with aiohttp.ClientSession() as s:

        async def one(n: int) -> None:
            async with sem:
                replies[n] = await _chat(s, base, auth, _turn(n, second, replies.get(n, "")))

        await asyncio.gather(*(one(n) for n in numbers))


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    m = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def _wait_metric(base: str, name: str, ok: Callable[[float], bool], timeout: float = 20) -> float:
    """The writer reports asynchronously (from its own process): poll until ``ok``."""
    deadline = time.monotonic() + timeout
    while not ok(value := _metric(base, name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def _wait_stored(base: str, auth: dict[str, str], count: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    usage: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/api/usage", headers=auth, timeout=10)
        if r.status_code == 200:
            usage = r.json()
            if usage["total"]["requests"] >= count:
                break
        time.sleep(0.2)
    assert usage.get("total", {}).get("requests") == count, usage
    return usage


def _check_every_turn_once(base: str, auth: dict[str, str], count: int = CONVERSATIONS) -> None:
    convs: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{base}/api/conversations", params=params, headers=auth, timeout=10).json()
        convs += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(convs) == count
    assert sorted(c["title"] for c in convs) == sorted(f"conversation {n}: hello" for n in range(count))
    for c in convs:
        stored = httpx.get(f"{base}/api/conversations/{c['id']}", headers=auth, timeout=10).json()
        assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"], stored
        assert stored["branch"] == [m["id"] for m in stored["messages"]]


@pytest.mark.parametrize("process", ["true", "false"], ids=["writer-process", "writer-in-loop"])
def test_database_stopped_during_200_streamed_chats(
    log_dir: Path, sim: int, own_postgres: Postgres, tmp_path: Path, process: str
) -> None:
    env, auth = _provision(own_postgres)
    proc, base = _gateway(
        log_dir, sim, env, tmp_path / "spool", f"gw-db-down-{process}", GWPROXY_CAPTURE_PROCESS=process
    )
    try:
        replies: dict[int, str] = {}
        asyncio.run(_run_turns(base, auth, range(0, 30), False, replies))  # database up
        own_postgres.halt()
        asyncio.run(_run_turns(base, auth, range(30, CONVERSATIONS), False, replies))  # down: all still answered
        asyncio.run(_run_turns(base, auth, range(0, 50), True, replies))
        assert _wait_metric(base, "gwproxy_capture_spooled", lambda v: v > 0) > 0
        own_postgres.start()
        asyncio.run(_run_turns(base, auth, range(50, CONVERSATIONS), True, replies))  # back
        usage = _wait_stored(base, auth, 2 * CONVERSATIONS)
        assert usage["total"]["failed"] == 0
        _check_every_turn_once(base, auth)
        assert _wait_metric(base, "gwproxy_capture_replayed", lambda v: v > 0) > 0
        assert _metric(base, "gwproxy_capture_dropped") == 0
        assert _wait_metric(base, "gwproxy_capture_queue_depth", lambda v: v == 0) == 0
    finally:
        proc.stop()


def test_sigterm_with_records_pending_then_restart_replays_once(
    log_dir: Path, sim: int, own_postgres: Postgres, tmp_path: Path
) -> None:
    env, auth = _provision(own_postgres)
    spool = tmp_path / "spool"
    spare = gwproxy_cli(env, "key", "create", "--user", "loader").strip()
    proc, base = _gateway(log_dir, sim, env, spool, "gw-sigterm-1")
    replies: dict[int, str] = {}
    try:
        with httpx.Client() as client:  # an uncached key cannot be checked without the database: 503
            assert client.get(f"{base}/v1/models", headers=auth).status_code == 200  # now it is cached
        own_postgres.halt()
        other = {"Authorization": f"Bearer {spare}"}  # a real key, never used: not cached
        refused = httpx.get(f"{base}/v1/models", headers=other, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "auth_unavailable"
        assert refused.headers["Retry-After"]
        asyncio.run(_run_turns(base, auth, range(CONVERSATIONS), False, replies))
        asyncio.run(_run_turns(base, auth, range(CONVERSATIONS), True, replies))
    finally:
        proc.stop()  # SIGTERM: the queue drains into the spool (the database is away)
    assert "capture" in proc.output()
    spooled = (spool / "spool.jsonl").read_bytes()
    assert spooled.count(b"\n") == 2 * CONVERSATIONS
    # The same records once more, as if an earlier replay had crashed before recording its progress.
    shutil.copy(spool / "spool.jsonl", tmp_path / "copy.jsonl")
    with (spool / "spool.jsonl").open("ab") as f:
        f.write((tmp_path / "copy.jsonl").read_bytes())

    own_postgres.start()
    again, base = _gateway(log_dir, sim, env, spool, "gw-sigterm-2")
    try:
        _wait_stored(base, auth, 2 * CONVERSATIONS)
        deadline = time.monotonic() + 20
        while (spool / "spool.jsonl").stat().st_size and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (spool / "spool.jsonl").stat().st_size == 0  # replayed and truncated
        time.sleep(0.5)
        _wait_stored(base, auth, 2 * CONVERSATIONS)  # the duplicates added nothing
        _check_every_turn_once(base, auth)
    finally:
        again.stop()


def _writer_process(proc: Proc) -> psutil.Process:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.popen.pid).children():
            with contextlib.suppress(psutil.Error):
                if "gwproxy.capture.process.worker" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                    return child
        time.sleep(0.1)
    raise AssertionError("no capture writer process")


def test_the_writer_process_killed_is_replaced_and_what_came_meanwhile_is_spooled_then_written(
    log_dir: Path, sim: int, own_postgres: Postgres, tmp_path: Path
) -> None:
    env, auth = _provision(own_postgres)
    proc, base = _gateway(log_dir, sim, env, tmp_path / "spool", "gw-writer-killed")
    try:
        replies: dict[int, str] = {}
        asyncio.run(_run_turns(base, auth, range(0, 20), False, replies))
        _wait_stored(base, auth, 20)
        assert _wait_metric(base, "gwproxy_capture_written", lambda v: v == 20) == 20
        first = _writer_process(proc)
        first.kill()  # a crash: what it had written stays, its counters carry over
        proc.wait_output("capture writer process exited")
        asyncio.run(_run_turns(base, auth, range(20, 40), False, replies))  # spooled by the gateway
        asyncio.run(_run_turns(base, auth, range(40), True, replies))
        _wait_stored(base, auth, 80)
        _check_every_turn_once(base, auth, 40)
        assert _writer_process(proc).pid != first.pid
        assert _wait_metric(base, "gwproxy_capture_written", lambda v: v == 80) == 80
        assert _metric(base, "gwproxy_capture_dropped") == 0
    finally:
        proc.stop()


def test_a_gateway_killed_outright_leaves_its_writer_to_finish(
    log_dir: Path, sim: int, own_postgres: Postgres, tmp_path: Path
) -> None:
    env, auth = _provision(own_postgres)
    # A long batch window: the writer still holds the turns when the gateway dies.
    proc, base = _gateway(log_dir, sim, env, tmp_path / "spool", "gw-killed", GWPROXY_CAPTURE_BATCH_SECONDS="30")
    replies: dict[int, str] = {}
    try:
        asyncio.run(_run_turns(base, auth, range(0, 40), False, replies))
        writer = _writer_process(proc)  # started by the first record
        time.sleep(0.3)  # handed to the writer's pipe (every few milliseconds)
        proc.popen.kill()  # no drain, no goodbye: the writer sees its input end
        writer.wait(30)
    finally:
        proc.stop()
    assert "capture queue drained" in proc.output() and "Traceback" not in proc.output()
    again, base = _gateway(log_dir, sim, env, tmp_path / "spool", "gw-killed-2")
    try:
        _wait_stored(base, auth, 40)
    finally:
        again.stop()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_writer_killed_twice_under_load_loses_duplicates_and_splits_nothing(
    log_dir: Path, sim: int, tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """SIGKILL of the writer process in the middle of each round of 100 streamed chats (200 turns
    in all): every turn stored once, every second turn in its first turn's conversation."""
    if database == "postgresql":
        env, auth = _provision(request.getfixturevalue("own_postgres"))
    else:
        env, key = provision(tmp_path)
        auth = {"Authorization": f"Bearer {key}"}
    proc, base = _gateway(log_dir, sim, env, tmp_path / "spool", f"gw-writer-killed-under-load-{database}")

    async def round_with_a_kill(second: bool, replies: dict[int, str]) -> None:
        turns = asyncio.create_task(_run_turns(base, auth, range(CONVERSATIONS), second, replies))
        await asyncio.sleep(0.4)  # some turns handed to the writer, some written, more to come
        writer = await asyncio.to_thread(_writer_process, proc)
        writer.kill()
        await turns

    try:
        replies: dict[int, str] = {}
        asyncio.run(round_with_a_kill(False, replies))
        proc.wait_output("capture writer process exited")
        _wait_stored(base, auth, CONVERSATIONS)  # the first turns, before the second ones need them
        asyncio.run(round_with_a_kill(True, replies))
        _wait_stored(base, auth, 2 * CONVERSATIONS)
        _check_every_turn_once(base, auth)
        assert _metric(base, "gwproxy_capture_dropped") == 0
        assert proc.output().count("capture writer process exited") == 2
    finally:
        proc.stop()
