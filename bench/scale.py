"""Scale: the reads the console and the API make, on PostgreSQL 15 holding 20 M requests, 500 k
conversations and 2 M messages over 90 days for 1,000 users (one of them with 20 k conversations).

The data is seeded in SQL at migration 0005 (the schema before the rollups), then ``gwproxy
migrate`` brings it to head — the rollups' backfill and the title search index are built then, and
timed, as an operator upgrading would see. A gateway then serves the reads; each is called in turn
with keep-alive, and p50/p95/max are recorded against the issue's target (≤ 100 ms p95). For
contrast, the aggregate ``/api/usage?user_id=all`` ran before the rollups is timed on the same data.

    make bench-scale                      # the full volume (about 10 minutes of seeding here)
    python -m bench.scale --requests 200000 --conversations 5000   # a quick try
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.harness import JWT_SECRET, RESULTS, ROOT, free_port, gateway_argv, machine, pctl, wait_http

TARGET_MS = 100.0
MODELS = ["llama-3.1-8b", "qwen2.5-coder-7b", "mistral-7b", "phi-3-mini"]
WORDS = [
    "oslo",
    "bergen",
    "paris",
    "tokyo",
    "weather",
    "recipe",
    "python",
    "rust",
    "invoice",
    "report",
    "summary",
    "email",
    "draft",
    "budget",
    "travel",
    "poem",
    "story",
    "bug",
    "review",
    "plan",
    "meeting",
    "notes",
    "translate",
    "contract",
    "lyrics",
    "quiz",
    "chess",
    "garden",
    "kubernetes",
    "docker",
    "postgres",
    "redis",
    "gpu",
    "tensor",
    "vector",
    "search",
    "index",
    "cache",
    "deploy",
    "release",
    "refactor",
    "test",
    "benchmark",
    "latency",
]
PG_SETTINGS = (
    "-c shared_buffers=2GB -c effective_cache_size=8GB -c work_mem=32MB -c maintenance_work_mem=1GB "
    "-c max_wal_size=16GB -c checkpoint_timeout=30min"
)


PSQL = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"  # Debian puts a wrapper on PATH


def psql(url: str, sql: str) -> None:
    subprocess.run([PSQL, url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True)


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "gwproxy", *args], env=env, input=stdin, text=True,
                          capture_output=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"gwproxy {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def timed(what: str, fn: Callable[[], Any], log: list[str]) -> float:
    start = time.monotonic()
    fn()
    took = time.monotonic() - start
    log.append(f"| {what} | {took:.1f} s |")
    print(f"  {what}: {took:.1f} s", flush=True)
    return took


def seed(url: str, env: dict[str, str], args: argparse.Namespace, log: list[str]) -> dict[str, int]:
    """Users, conversations, messages and requests, as the gateway would have stored them."""
    # The CLI works on a database at head: the two named users are made there, then the schema goes
    # back to 0005 (which drops only the rollups and the search index) for the seeding.
    cli(env, "migrate")
    cli(env, "user", "add", "admin", "--role", "admin", "--password-stdin", stdin="admin-password\n")
    cli(env, "user", "add", "heavy", "--password-stdin", stdin="heavy-password\n")
    cli(env, "migrate", "--down", "0005")
    words = "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    models = "ARRAY[" + ",".join(f"'{m}'" for m in MODELS) + "]"
    n_users, heavy_n = args.users, args.heavy_conversations
    timed("users", lambda: psql(url, f"""
        INSERT INTO users (username, password_hash, role, active, created_at, capture)
        SELECT 'user' || g, (SELECT password_hash FROM users WHERE username = 'heavy'), 'user', true, now(), true
        FROM generate_series(1, {n_users - 2}) g"""), log)  # fmt: skip
    ids = "(SELECT id FROM users WHERE username = 'heavy')"
    first = "(SELECT min(id) FROM users WHERE username LIKE 'user%')"
    days = args.days
    timed(f"{args.conversations:,} conversations", lambda: psql(url, f"""
        INSERT INTO conversations (id, user_id, title, model, metadata, created_at, updated_at)
        SELECT md5('c' || g), CASE WHEN g <= {heavy_n} THEN {ids} ELSE {first} + g % {n_users - 2} END,
               w[1 + (g * 7) % {len(WORDS)}] || ' ' || w[1 + (g / 13) % {len(WORDS)}] || ' about n' || g,
               ({models})[1 + g % {len(MODELS)}], '{{}}', t, t
        FROM (SELECT g, now() - random() * interval '{days} days' AS t,
                     {words} AS w FROM generate_series(1, {args.conversations}) g) s"""), log)  # fmt: skip
    timed(f"{args.conversations * 4:,} messages", lambda: psql(url, """
        INSERT INTO messages (id, conversation_id, parent_id, user_id, seq, role, content, content_is_parts,
                              prefix_hash, created_at)
        SELECT md5(c.id || s), c.id, CASE WHEN s > 0 THEN md5(c.id || (s - 1)) END, c.user_id, s,
               CASE WHEN s % 2 = 0 THEN 'user' ELSE 'assistant' END, repeat('some words of a turn ', 8 + s),
               false, md5('h' || c.id || s), c.created_at + s * interval '1 second'
        FROM conversations c, generate_series(0, 3) s"""), log)  # fmt: skip
    # The requests' indexes are built once at the end: a sorted build is far quicker than 20 M inserts.
    psql(url, "ALTER TABLE requests DROP CONSTRAINT pk_requests; DROP INDEX ix_requests_user_created")
    step = 2_000_000

    def requests() -> None:
        for lo in range(1, args.requests + 1, step):
            hi = min(args.requests, lo + step - 1)
            psql(url, f"""
                INSERT INTO requests (request_id, user_id, model, route, status, prompt_tokens, completion_tokens,
                                      ttft_ms, duration_ms, created_at)
                SELECT md5('r' || g), CASE WHEN g % 50 = 0 THEN {ids} ELSE {first} + g % {n_users - 2} END,
                       ({models})[1 + (g / 7) % {len(MODELS)}], '/v1/chat/completions',
                       CASE WHEN g % 53 = 0 THEN 500 ELSE 200 END, 20 + g % 400, 10 + g % 300, 30.0, 400.0,
                       now() - random() * interval '{days} days'
                FROM generate_series({lo}, {hi}) g""")  # fmt: skip
            print(f"    {hi:,} requests", flush=True)

    timed(f"{args.requests:,} requests", requests, log)
    timed("requests' indexes", lambda: psql(url, """
        ALTER TABLE requests ADD CONSTRAINT pk_requests PRIMARY KEY (request_id);
        CREATE INDEX ix_requests_user_created ON requests (user_id, created_at)"""), log)  # fmt: skip
    timed("gwproxy migrate (0006: rollups backfilled, title index built)",
          lambda: subprocess.run([sys.executable, "-m", "gwproxy", "migrate"], env=env, check=True), log)  # fmt: skip
    timed("2 API keys per user", lambda: psql(url, """
        INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at)
        SELECT u.id, 'key ' || k, substr(md5(u.id || '-' || k), 1, 16), decode(md5(u.id || '/' || k), 'hex'), now()
        FROM users u, generate_series(1, 2) k"""), log)  # fmt: skip
    timed("VACUUM ANALYZE", lambda: psql(url, "VACUUM ANALYZE"), log)
    return {}


class Reads:
    """Each read called in turn through the gateway; the times of every call kept by name."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(timeout=120)
        self.times: dict[str, list[float]] = {}

    def call(self, name: str, path: str, key: str) -> Any:
        start = time.perf_counter()
        r = self.client.get(self.base + path, headers={"Authorization": f"Bearer {key}"})
        took = (time.perf_counter() - start) * 1000
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        self.times.setdefault(name, []).append(took)
        return r.json()


def measure(base: str, admin: str, heavy: str, heavy_id: int, args: argparse.Namespace) -> Reads:
    reads = Reads(base)
    since90 = (datetime.date.today() - datetime.timedelta(days=89)).isoformat()
    for _ in range(2):  # warm-up, not kept
        reads.call("warm", "/api/usage?user_id=all", admin)
    reads.times.clear()
    calls = args.calls
    for i in range(calls):
        reads.call("usage, everyone, 30 days", "/api/usage?user_id=all", admin)
        reads.call("usage, everyone, 90 days", f"/api/usage?user_id=all&since={since90}", admin)
        reads.call(
            "usage, the heavy user (admin view), 90 days", f"/api/usage?user_id={heavy_id}&since={since90}", admin
        )
        reads.call("usage, own (heavy user), 30 days", "/api/usage", heavy)
        reads.call("usage by user, first page of 100, 30 days", "/api/usage/users?limit=100", admin)
        reads.call("conversations, first page", "/api/conversations?limit=20", heavy)
        reads.call("conversations, one model", f"/api/conversations?limit=20&model={MODELS[i % len(MODELS)]}", heavy)
        reads.call("search, a common word", f"/api/conversations?limit=20&q={WORDS[i % len(WORDS)]}", heavy)
        reads.call(
            "search, a rare token",
            f"/api/conversations?limit=20&q=about n{1000 + i * 331 % (args.heavy_conversations - 1000)}",
            heavy,
        )
        reads.call("search, no match", f"/api/conversations?limit=20&q=zq{i}x", heavy)
        reads.call("admin: users, first page of 100", "/api/admin/users", admin)
        reads.call("admin: users named user1…", "/api/admin/users?q=user1", admin)
        reads.call("admin: everyone's keys, first page of 100", "/api/auth/keys?user_id=all", admin)
        reads.call("own keys", "/api/auth/keys", heavy)
        reads.call("dashboard: stats", "/api/stats", admin)
        reads.call("in flight", "/api/requests", admin)
    # Every page of the per-user usage (90 days) and of the heavy user's conversations, deepest last.
    cursor: str | None = ""
    while cursor is not None:
        page = reads.call("usage by user, every page of 100, 90 days",
                          f"/api/usage/users?limit=100&since={since90}&cursor={cursor}", admin)  # fmt: skip
        cursor = page["next_cursor"]
    cursor = ""
    while cursor is not None:  # 2,000 keys
        page = reads.call(
            "admin: everyone's keys, every page of 100", f"/api/auth/keys?user_id=all&cursor={cursor}", admin
        )
        cursor = page["next_cursor"]
    cursor, first_id = "", None
    while cursor is not None:
        page = reads.call("conversations, every page of 100 (20 k deep)",
                          f"/api/conversations?limit=100&cursor={cursor}", heavy)  # fmt: skip
        first_id = first_id or page["data"][0]["id"]
        cursor = page["next_cursor"]
    for _ in range(calls):
        reads.call("one conversation with its messages", f"/api/conversations/{first_id}", heavy)
    return reads


def before(url: str) -> list[float]:
    """The pre-rollup ``/api/usage?user_id=all`` query (30 days) on the same data, three times."""
    sql = """EXPLAIN ANALYZE SELECT date(created_at), model, user_id, count(*),
        sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END), coalesce(sum(prompt_tokens), 0),
        coalesce(sum(completion_tokens), 0) FROM requests WHERE created_at >= now() - interval '30 days'
        GROUP BY 1, 2, 3 ORDER BY 1, 2"""
    out = []
    for _ in range(3):
        start = time.monotonic()
        psql(url, sql.replace("EXPLAIN ANALYZE ", ""))
        out.append((time.monotonic() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000_000)
    parser.add_argument("--conversations", type=int, default=500_000)
    parser.add_argument("--heavy-conversations", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.support.services import Postgres  # the test suite's throwaway server

    pg = Postgres(settings=PG_SETTINGS)
    gateway = None
    log: list[str] = []
    try:
        url = pg.create_database("scale")
        env = {**os.environ, "DATABASE_URL": url, "JWT_SECRET": JWT_SECRET, "RATE_LIMIT_REQUESTS": "1000000000"}
        print(f"seeding {args.requests:,} requests ...", flush=True)
        seed(url, env, args, log)
        admin = cli(env, "key", "create", "--user", "admin")
        heavy = cli(env, "key", "create", "--user", "heavy")
        heavy_id = int(subprocess.run([PSQL, url, "-tAc", "SELECT id FROM users WHERE username = 'heavy'"],
                                      check=True, capture_output=True, text=True).stdout)  # fmt: skip
        port = free_port()
        gateway = subprocess.Popen(
            gateway_argv(port, f"http://127.0.0.1:{free_port()}/v1"), env={**env, "GWPROXY_CAPTURE_ENABLED": "false"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/stats", headers={"Authorization": f"Bearer {admin}"})
        reads = measure(base, admin, heavy, heavy_id, args)
        old = before(url)
        sizes = subprocess.run([PSQL, url, "-tAc", """SELECT string_agg(relname || ' ' || n_live_tup, ', ')
            FROM pg_stat_user_tables WHERE relname IN ('requests', 'messages', 'conversations', 'usage_daily',
            'usage_daily_totals', 'users')"""], check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        write(args, reads, old, log, sizes)
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(10)
        pg.stop()


def write(args: argparse.Namespace, reads: Reads, old: list[float], log: list[str], sizes: str) -> None:
    rows = []
    worst = 0.0
    for name, times in reads.times.items():
        p95 = pctl(times, 95)
        worst = max(worst, p95)
        met = "met" if p95 <= TARGET_MS else "**missed**"
        rows.append(
            f"| {name} | {len(times)} | {statistics.median(times):.1f} | {p95:.1f} | {max(times):.1f} | {met} |"
        )
    today = datetime.date.today().isoformat()
    path = RESULTS / f"{today}-scale.md"
    text = "\n".join([
        f"# Reads at scale — {today}", "",
        f"PostgreSQL 15 seeded with {args.requests:,} requests, {args.conversations:,} conversations and "
        f"{args.conversations * 4:,} messages over {args.days} days for {args.users:,} users (one with "
        f"{args.heavy_conversations:,} conversations and 2 % of the requests), two API keys each; `make bench-scale`.",
        f"Machine: {machine()}. Server settings: `{PG_SETTINGS}`.", f"Rows (pg_stat_user_tables): {sizes}.", "",
        "## Seeding and the upgrade to head", "", "| step | time |", "|---|---|", *log, "",
        f"## Reads through the gateway (target: p95 ≤ {TARGET_MS:.0f} ms)", "",
        "| read | calls | p50 ms | p95 ms | max ms | target |", "|---|---|---|---|---|---|", *rows, "",
        f"Worst p95: {worst:.1f} ms — target {'met' if worst <= TARGET_MS else 'missed'}.", "",
        "## Before the rollups", "",
        "The query `/api/usage?user_id=all` ran before (30 days, grouped from `requests` by day, model and user), "
        f"on the same data through psql: {', '.join(f'{t:.0f}' for t in old)} ms.", "",
    ])  # fmt: skip
    path.write_text(text)
    print(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
