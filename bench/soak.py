"""Soak: 50,000 requests through a gateway with capture on, streams cut short among them, watching
the memory and descriptors of the gateway and of its capture writer process.

The gateway runs as an operator starts it (``gwproxy serve``, embedded SQLite, the writer in its
own process, rate limits off so nothing is refused), in front of the simulator. The client sends,
32 at a time, plain chats (60 %), streamed chats read to the end (30 %) and streams it abandons
after their first chunk (10 %). Every 5,000 requests it samples RSS and open descriptors of both
processes. At the end it waits for the writer to store every turn and checks the count.
"Flat" means: from the 10,000th request on (after warm-up: pools, caches, allocator arenas),
RSS grows by less than 8 MiB and descriptors by less than 8 in each process.

Writes bench/results/<date>-soak[-postgres].md and prints it.
Usage: python bench/soak.py [--requests N] [--postgres] (a throwaway PostgreSQL instead of SQLite; root)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL = "soak-model"
SECRET = "soak-secret-" + "s" * 40
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about soak tests."}], "max_tokens": 16}
CONCURRENCY = 32
SAMPLE_EVERY = 5_000
WARM = 10_000
RSS_LIMIT = 8 * 1024 * 1024
FD_LIMIT = 8
AFTER = -1  # the sample taken once the load is over and every turn is stored


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def gwproxy(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gwproxy", *args], input=stdin, capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def usage(proc: psutil.Process) -> tuple[int, int]:
    return proc.memory_info().rss, proc.num_fds()


def writer_of(gateway: psutil.Process) -> psutil.Process | None:
    for child in gateway.children(recursive=True):
        try:
            if "gwproxy.capture.process.worker" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


async def load(base: str, key: str, total: int, sample: callable) -> dict[str, int]:  # type: ignore[valid-type]
    counts = {"plain": 0, "streamed": 0, "cut": 0, "failed": 0}
    sent = 0
    lock = asyncio.Lock()
    headers = {"Authorization": f"Bearer {key}"}

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        kind = "cut" if n % 10 == 0 else "streamed" if n % 10 < 4 else "plain"
        body = {**CHAT, "stream": kind != "plain"}
        try:
            async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as r:
                if r.status != 200:
                    counts["failed"] += 1
                    return
                if kind == "cut":
                    await r.content.readany()
                    r.close()  # the client goes away mid-stream
                else:
                    await r.read()
            counts[kind] += 1
        except aiohttp.ClientError:
            counts["failed"] += 1

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while True:
            async with lock:
                if sent >= total:
                    return
                sent += 1
                n = sent
                if n % SAMPLE_EVERY == 0:
                    sample(n)
            await one(session, n)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return counts


def stored_requests(base: str, key: str) -> int:
    req = urllib.request.Request(f"{base}/api/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        import json

        return int(json.loads(r.read())["total"]["requests"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--postgres", action="store_true", help="capture into a throwaway PostgreSQL")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gwproxy-soak-"))
    database, pg = f"sqlite:///{work}/soak.db", None
    if args.postgres:
        sys.path.insert(0, str(ROOT))
        from tests.support.services import Postgres  # the tests' throwaway server

        pg = Postgres()
        database = pg.create_database("soak")
    try:
        return soak(args.requests, work, database, "PostgreSQL" if pg else "")
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def soak(requests: int, work: Path, database: str, engine: str) -> int:
    env = {**os.environ, "DATABASE_URL": database, "JWT_SECRET": SECRET}
    gwproxy(env, "migrate")
    gwproxy(env, "user", "add", "soak", "--password-stdin", stdin="soak-password\n")
    key = gwproxy(env, "key", "create", "--user", "soak")
    sim_port, gw_port = free_port(), free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "gwproxy", "sim", "--host", "127.0.0.1", "--port", str(sim_port), "--model", MODEL],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    gw_env = {**env, "GWPROXY_RATELIMIT_ENABLED": "false", "GWPROXY_CAPTURE_SPOOL_DIR": str(work / "spool"),
              "LOG_LEVEL": "warning"}  # fmt: skip
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gwproxy", "serve", "--host", "127.0.0.1", "--port", str(gw_port),
         "--upstream", f"http://127.0.0.1:{sim_port}/v1"],
        env=gw_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{gw_port}"
    samples: list[tuple[int, float, tuple[int, int], tuple[int, int] | None]] = []
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/health")
        wait_http(f"{base}/health")
        gw_proc = psutil.Process(gateway.pid)
        started = time.monotonic()

        def sample(n: int) -> None:
            writer = writer_of(gw_proc)
            samples.append((n, time.monotonic() - started, usage(gw_proc), usage(writer) if writer else None))

        counts = asyncio.run(load(base, key, requests, sample))
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and (stored := stored_requests(base, key)) < requests:
            time.sleep(0.5)
        sample(AFTER)
    finally:
        gateway.terminate()
        gateway.wait(60)
        sim.terminate()
        sim.wait(10)
    report = render(requests, counts, elapsed, stored, samples, engine or "SQLite")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.date.today().isoformat()}-soak{'-postgres' if engine else ''}.md"
    out.write_text(report)
    print(report)
    return 0


def growth(samples: list[tuple[int, float, tuple[int, int], tuple[int, int] | None]], which: int) -> tuple[int, int]:
    """(RSS bytes, descriptors) added from the first sample at or past WARM to the last."""
    points = [s[which] for s in samples if s[0] >= WARM and s[which] is not None]  # under load only
    if len(points) < 2:
        return 0, 0
    first, last = points[0], points[-1]
    assert first is not None and last is not None
    return last[0] - first[0], last[1] - first[1]


def render(total: int, counts: dict[str, int], elapsed: float, stored: int, samples: list, engine: str) -> str:  # type: ignore[type-arg]
    mib = 1024 * 1024
    rows = []
    for n, at, gw, wr in samples:
        writer = f"{wr[0] / mib:.1f} MiB | {wr[1]}" if wr else "- | -"
        label = "after (idle, all stored)" if n == AFTER else f"{n:,}"
        rows.append(f"| {label} | {at:.0f} s | {gw[0] / mib:.1f} MiB | {gw[1]} | {writer} |")
    gw_rss, gw_fds = growth(samples, 2)
    wr_rss, wr_fds = growth(samples, 3)
    flat_gw = gw_rss < RSS_LIMIT and gw_fds < FD_LIMIT
    flat_wr = wr_rss < RSS_LIMIT and wr_fds < FD_LIMIT
    verdict = lambda ok: "flat (met)" if ok else "GROWING (not met)"  # noqa: E731
    return "\n".join(
        [
            f"# Soak, {datetime.date.today().isoformat()}",
            "",
            f"`python bench/soak.py --requests {total}{' --postgres' if engine != 'SQLite' else ''}`: {total:,} requests through `gwproxy serve` ({engine}, capture "
            f"on, the writer in its own process) in front of the simulator, {CONCURRENCY} at a time, in "
            f"{elapsed:.0f} s ({total / elapsed:.0f} req/s) on {os.cpu_count()} cores.",
            f"Plain {counts['plain']:,}, streamed {counts['streamed']:,}, streams cut after the first chunk "
            f"{counts['cut']:,}, failed {counts['failed']:,}. Turns stored: {stored:,} of {total:,}.",
            "",
            "| requests | at | gateway RSS | gateway fds | writer RSS | writer fds |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Growth under load from request {WARM:,} to the last (limit {RSS_LIMIT // mib} MiB and {FD_LIMIT} "
            "descriptors; descriptors under load include the client's and the upstream's connections):",
            f"- gateway: {gw_rss / mib:+.1f} MiB, {gw_fds:+d} descriptors — {verdict(flat_gw)}",
            f"- capture writer: {wr_rss / mib:+.1f} MiB, {wr_fds:+d} descriptors — {verdict(flat_wr)}",
            f"- every turn stored once: {'yes' if stored == total else f'NO ({stored:,})'}",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
