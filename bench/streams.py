"""Streams: the gateway's CPU per relayed chunk at this tree and at other commits, side by side with
the bare pass-through, in front of one simulator — to tell a change in the relay's cost from the
noise of a shared machine, which moves a single run's figures by more than most changes do.

Each commit named is checked out in ``bench/.work/`` (a git worktree) and run from there; every
gateway and the bare proxy are pinned to one core and measured in turn, round after round (100
concurrent streams of 100 tokens at 20 ms, as ``make bench``'s light paced streams), and the median
CPU per chunk is printed.

    python -m bench.streams --against 55888d5 --against HEAD --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys

from bench.harness import (
    HEADERS,
    JWT_SECRET,
    LOAD_CORE,
    MODEL,
    PROXY_CORE,
    ROOT,
    WORK,
    Procs,
    cpu_seconds,
    free_port,
    paced,
    wait_http,
)


def checkout(rev: str) -> str:
    """A worktree of ``rev`` under bench/.work (made once); its path."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True)
    path = WORK / f"tree-{sha.stdout.strip()}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(path), rev], cwd=ROOT, check=True)
    return str(path)


def gateway(procs: Procs, name: str, tree: str, upstream: str) -> tuple[int, int, str]:
    """A gateway of ``tree``'s code (its own SQLite database, a user and a key): port, pid, key."""
    db = WORK / f"streams-{name}.db"
    db.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": tree, "DATABASE_URL": f"sqlite:///{db}", "JWT_SECRET": JWT_SECRET,
           "RATE_LIMIT_REQUESTS": "1000000000", "GWPROXY_CAPTURE_ENABLED": "false"}  # fmt: skip
    cli = [sys.executable, "-m", "gwproxy"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([*cli, "user", "add", "bench", "--password-stdin"], input=b"bench-password\n", env=env,
                   check=True, capture_output=True)  # fmt: skip
    key = subprocess.run([*cli, "key", "create", "--user", "bench"], env=env, check=True, capture_output=True,
                         text=True).stdout.strip()  # fmt: skip
    port = free_port()
    argv = [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--upstream", upstream]
    return port, procs.spawn(f"streams-{name}", argv, PROXY_CORE, env).pid, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", action="append", default=[], help="a commit to compare (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    os.chdir(WORK)  # ``python -m`` puts the working directory first on sys.path: not the checkout's
    trees = {"this tree": str(ROOT), **{rev: checkout(rev) for rev in args.against}}
    procs = Procs()
    try:
        sim = free_port()
        procs.spawn("streams-sim", [sys.executable, "-m", "gwproxy", "sim", "--port", str(sim), "--model", MODEL,
                                    "--max-model-len", "8192", "--itl-ms", "20"], LOAD_CORE)  # fmt: skip
        wait_http(f"http://127.0.0.1:{sim}/health")
        proxies = {name: gateway(procs, str(i), tree, f"http://127.0.0.1:{sim}/v1")
                   for i, (name, tree) in enumerate(trees.items())}  # fmt: skip
        bare = free_port()
        bare_argv = [sys.executable, str(ROOT / "bench" / "bare_proxy.py"), str(bare), f"http://127.0.0.1:{sim}"]
        proxies["bare"] = (bare, procs.spawn("streams-bare", bare_argv, PROXY_CORE).pid, "")
        for port, _, key in proxies.values():
            wait_http(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        cost: dict[str, list[float]] = {name: [] for name in proxies}
        for _ in range(args.rounds):
            for name, (port, pid, key) in proxies.items():
                HEADERS["Authorization"] = f"Bearer {key}"
                before = cpu_seconds(pid)
                _, chunks, _ = asyncio.run(paced(f"http://127.0.0.1:{port}/v1/chat/completions", 100, 100))
                cost[name].append((cpu_seconds(pid) - before) * 1e6 / chunks)
        bare_us = statistics.median(cost["bare"])
        for name, values in cost.items():
            median = statistics.median(values)
            each = ", ".join(f"{v:.1f}" for v in values)
            print(f"{name}: {median:.1f} µs a chunk ({median / bare_us:.2f}x bare; rounds: {each})")
    finally:
        procs.stop()


if __name__ == "__main__":
    main()
