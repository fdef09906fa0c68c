"""Capture: two gateways identical but for ``capture.enabled``, on PostgreSQL (a throwaway server)
or on the embedded SQLite file, measured in paired rounds; and the gateway's instructions per
request with capture off and on."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import (
    HEADERS,
    JWT_SECRET,
    LOAD_CORE,
    PROXY_CORE,
    ROOT,
    TICK,
    WORK,
    Procs,
    cpu_seconds,
    free_port,
    gateway_argv,
    instructions_per_request,
    machine,
    sequential,
    wait_http,
    wrk,
)


def provision_database(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """The bench user and a key in the database at ``url``, migrated here: (gateway environment,
    request headers)."""
    env = {**os.environ, "DATABASE_URL": url, "JWT_SECRET": JWT_SECRET, "RATE_LIMIT_REQUESTS": "1000000000"}
    cli = [sys.executable, "-m", "gwproxy"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([*cli, "user", "add", "bench", "--password-stdin"], input=b"bench-password\n", env=env,
                   check=True, capture_output=True)  # fmt: skip
    key = subprocess.run(
        [*cli, "key", "create", "--user", "bench"], env=env, check=True, capture_output=True, text=True
    )
    return env, {**HEADERS, "Authorization": f"Bearer {key.stdout.strip()}"}


@contextmanager
def capture_pair(
    nginx_v1: str, engine: str = "postgresql"
) -> Iterator[tuple[dict[str, int], dict[str, str], dict[str, str]]]:
    """Two gateways, capture off and on, with their key: on one PostgreSQL server on loopback, or
    (``engine="sqlite"``) on the embedded SQLite file, as ``make run`` and a default install have it."""
    sys.path.insert(0, str(ROOT))
    from tests.support.services import Postgres  # the test suite's throwaway server (runs as postgres under root)

    pg = Postgres() if engine == "postgresql" else None
    procs = Procs()
    try:
        if pg is not None:
            # PostgreSQL's work is capture's too: it stays off the gateways' core (backends inherit this).
            postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
            subprocess.run(["taskset", "-a", "-p", "-c", LOAD_CORE, str(postmaster)], check=True, capture_output=True)
            env, headers = provision_database(pg.create_database("bench"))
        else:
            postmaster = 0
            (WORK / "capture.db").unlink(missing_ok=True)  # a fresh SQLite file of its own
            env, headers = provision_database(f"sqlite:///{WORK}/capture.db")
        ports = {"gw_capture_off": free_port(), "gw_capture_on": free_port(), "pid_pg": postmaster}
        spool = WORK / "spool"
        shutil.rmtree(spool, ignore_errors=True)
        for name, enabled in (("gw_capture_off", "false"), ("gw_capture_on", "true")):
            extra = {"GWPROXY_CAPTURE_ENABLED": enabled, "GWPROXY_CAPTURE_SPOOL_DIR": str(spool / name)}
            ports[f"pid_{name}"] = procs.spawn(
                name, gateway_argv(ports[name], nginx_v1), PROXY_CORE, {**env, **extra}
            ).pid
        for name in ("gw_capture_off", "gw_capture_on"):
            wait_http(f"http://127.0.0.1:{ports[name]}/v1/models", headers=headers)
        # The writer process inherits the gateway's core; on a multi-core host it runs on any other,
        # so here it goes to the second core, with the load generator and PostgreSQL.
        sequential(ports["gw_capture_on"], 1, headers)  # the writer process starts with the first record
        writer = writer_process(ports["pid_gw_capture_on"])
        subprocess.run(["taskset", "-p", "-c", LOAD_CORE, str(writer)], check=True, capture_output=True)
        ports["pid_writer"] = writer
        yield ports, headers, env
    finally:
        procs.stop()
        if pg is not None:
            pg.stop()


def writer_process(gateway: int, timeout: float = 20) -> int:
    """The pid of a gateway's capture writer process (``capture.process``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == gateway and b"gwproxy.capture.process.worker" in cmdline:
                return int(stat.parent.name)
        time.sleep(0.1)
    raise RuntimeError(f"gateway {gateway} has no capture writer process")


def capture_metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    out = {}
    for name in ("written", "spooled", "dropped", "queue_depth"):
        m = re.search(rf"^gwproxy_capture_{name}(?:_total)? ([0-9.e+]+)$", text, re.M)
        out[f"capture_{name}"] = float(m.group(1)) if m else float("nan")
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children, exited ones included (PostgreSQL's backends)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid:
            total += sum(int(f) for f in fields[11:15]) / TICK  # its own and its waited-for children's
        elif int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def capture_rounds(
    p: dict[str, int], headers: dict[str, str], direct: str, seconds: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Capture off vs on: c1 latency, c32 throughput and CPU per request. Each round measures both
    gateways back to back, in alternating order, and the targets are the medians of each round's
    on/off ratios: this machine's speed drifts by more than the difference between minutes."""
    samples: dict[str, dict[str, list[float]]] = {"direct_pg": {}, "gw_capture_off": {}, "gw_capture_on": {}}
    ratios: dict[str, list[float]] = {"added_p50_ratio": [], "rps_ratio": [], "p99_ratio": []}
    for i in range(rounds):
        floor = wrk(direct, 1, seconds)[1]
        samples["direct_pg"].setdefault("c1_p50", []).append(floor)
        order = ("gw_capture_off", "gw_capture_on") if i % 2 == 0 else ("gw_capture_on", "gw_capture_off")
        for name in order:
            url = f"http://127.0.0.1:{p[name]}/v1/chat/completions"
            wrk(url, 8, 1, headers)
            got = samples[name]
            _, c1_p50, c1_p99, _ = wrk(url, 1, seconds, headers)
            got.setdefault("c1_p50", []).append(c1_p50)
            got.setdefault("c1_p99", []).append(c1_p99)
            settle(p[name])
            cpu0, writer0, pg0 = (
                cpu_seconds(p[f"pid_{name}"]),
                cpu_seconds(p["pid_writer"]),
                tree_cpu_seconds(p["pid_pg"]) if p["pid_pg"] else 0.0,
            )
            rps, _, p99, total = wrk(url, 32, seconds, headers)
            backlog = capture_metrics(p[name])["capture_queue_depth"]  # what the writer has not caught up on
            settle(p[name])  # the writer's backlog is part of the run: its CPU counts
            if name == "gw_capture_on":
                writer_ms = (cpu_seconds(p["pid_writer"]) - writer0) * 1000 / total
                got.setdefault("writer_cpu_ms_per_req", []).append(writer_ms)
            if p["pid_pg"]:
                pg_ms = (tree_cpu_seconds(p["pid_pg"]) - pg0) * 1000 / total
                got.setdefault("pg_cpu_ms_per_req", []).append(pg_ms)
            got.setdefault("c32_rps", []).append(rps)
            got.setdefault("c32_backlog", []).append(backlog)
            got.setdefault("c32_p99", []).append(p99)
            got.setdefault("cpu_ms_per_req", []).append((cpu_seconds(p[f"pid_{name}"]) - cpu0) * 1000 / total)
        off, on = samples["gw_capture_off"], samples["gw_capture_on"]
        ratios["added_p50_ratio"].append((on["c1_p50"][-1] - floor) / max(off["c1_p50"][-1] - floor, 1e-9))
        ratios["rps_ratio"].append(on["c32_rps"][-1] / off["c32_rps"][-1])
        ratios["p99_ratio"].append(on["c1_p99"][-1] / off["c1_p99"][-1])
    rows = {name: {k: statistics.median(v) for k, v in got.items()} for name, got in samples.items()}
    rows["gw_capture_on"].update(capture_metrics(p["gw_capture_on"]))
    rows["gw_capture_on"].update({k: statistics.median(v) for k, v in ratios.items()})
    rows["rounds"] = {f"{k}_{j}": v for k, vs in ratios.items() for j, v in enumerate(vs)}
    return rows


def capture_instructions(env: dict[str, str], headers: dict[str, str], nginx_v1: str) -> dict[str, float]:
    """The gateway process's instructions per request (callgrind), capture off and on: what the
    request path itself pays, whatever the neighbours on a shared machine do."""
    out = {}
    for name, enabled in (("off", "false"), ("on", "true")):
        port = free_port()
        extra = {"GWPROXY_CAPTURE_ENABLED": enabled, "GWPROXY_CAPTURE_SPOOL_DIR": str(WORK / "spool" / f"ir-{name}")}
        out[f"ir_{name}"] = instructions_per_request(
            f"capture-{name}", gateway_argv(port, nginx_v1), port, 400, {**env, **extra}, headers
        )
    return out


def settle(port: int, quiet: float = 0.8) -> None:
    """Wait until the writer has nothing queued and has written nothing for ``quiet`` seconds (a
    partial batch waits ``batch_seconds``, 0.5 s)."""
    last_change = time.monotonic()
    seen = capture_metrics(port)
    while True:
        time.sleep(0.05)
        now = capture_metrics(port)
        if now["capture_written"] != seen["capture_written"] or now["capture_queue_depth"] > 0:
            last_change = time.monotonic()
        seen = now
        if time.monotonic() - last_change >= quiet:
            return


def render_capture(
    rows: dict[str, dict[str, float]], seconds: int, rounds: int, standalone: bool = False, engine: str = "postgresql"
) -> str:
    d, off, on = rows["direct_pg"], rows["gw_capture_off"], rows["gw_capture_on"]
    added_off, added_on = off["c1_p50"] - d["c1_p50"], on["c1_p50"] - d["c1_p50"]
    pg = engine == "postgresql"
    where = "one PostgreSQL 15 server on loopback" if pg else "the embedded SQLite file (the defaults `make run` uses)"
    title = "Capture on vs off" + ("" if pg else ", embedded defaults (SQLite)")
    lines = [f"# {title} — {datetime.date.today().isoformat()}", ""] if standalone else [f"## {title}", ""]
    lines += [
        (f"Machine: {machine()}. " if standalone else "")
        + f"Two gateways on {where}, identical but for `capture.enabled`, in front of",
        f"the same nginx; wrk, 1 thread, {seconds}s per run, {rounds} rounds. Every request is a chat, so with",
        "capture on each one is parsed, threaded and written by the batch writer. The gateways are pinned",
        "to core 0; the capture writer's own process (`capture.process`, the default) is moved to core 1,",
        "with wrk and nginx"
        + (" and PostgreSQL" if pg else "")
        + ", as it would run on the other core of a 2-core host. Its CPU"
        + (" and PostgreSQL's are" if pg else " is")
        + " counted apart; every run waits for the writer to finish before the",
        "next starts. Each round measures both gateways back to back, in alternating order; the first table",
        "gives medians of the figures, the targets are the medians of each round's on/off ratios.",
        "",
        "| figure | capture off | capture on |",
        "|---|---|---|",
        f"| latency p50 at concurrency 1 (ms) | {off['c1_p50']:.3f} | {on['c1_p50']:.3f} |",
        f"| latency p99 at concurrency 1 (ms) | {off['c1_p99']:.3f} | {on['c1_p99']:.3f} |",
        f"| added p50 over direct (ms) | {added_off:.3f} | {added_on:.3f} |",
        f"| requests/s at concurrency 32 (answered) | {off['c32_rps']:.0f} | {on['c32_rps']:.0f} |",
        f"| records the writer had not caught up on when the run ended | – | {on['c32_backlog']:.0f} |",
        f"| p99 at concurrency 32 (ms) | {off['c32_p99']:.2f} | {on['c32_p99']:.2f} |",
        f"| gateway process CPU per request (ms) | {off['cpu_ms_per_req']:.3f} | {on['cpu_ms_per_req']:.3f} |",
        f"| writer process CPU per request (ms, backlog included) | – | {on['writer_cpu_ms_per_req']:.3f} |",
    ]
    if pg:
        lines.append(
            f"| PostgreSQL CPU per request (ms, all its processes) | {off['pg_cpu_ms_per_req']:.3f} | "
            f"{on['pg_cpu_ms_per_req']:.3f} |"
        )
    if "ir_on" in on:
        lines.append(
            f"| gateway process instructions per request (callgrind, sequential) | {on['ir_off'] / 1000:.0f} k | "
            f"{on['ir_on'] / 1000:.0f} k |"
        )
    lines += [
        "",
        f"Writer after the run: {on['capture_written']:.0f} written, {on['capture_spooled']:.0f} spooled, "
        f"{on['capture_dropped']:.0f} dropped, queue depth {on['capture_queue_depth']:.0f}.",
        "",
        "| target | measured | limit | met |",
        "|---|---|---|---|",
    ]
    if pg:
        checks = [
            ("added p50 with capture ≤ 1.1× without", on["added_p50_ratio"], 1.1, False),
            ("requests/s with capture on PostgreSQL ≥ 0.9× without (c32)", on["rps_ratio"], 0.9, True),
        ]
        if "ir_on" in on:
            checks.append(("gateway instructions per request with capture ≤ 1.1× without", on["ir_on"] / on["ir_off"],
                           1.1, False))  # fmt: skip
    else:
        checks = [
            ("embedded defaults: requests/s with capture ≥ 0.7× without (c32)", on["rps_ratio"], 0.7, True),
            ("embedded defaults: c1 p99 with capture ≤ 2× without", on["p99_ratio"], 2.0, False),
        ]
    for name, value, limit, at_least in checks:
        ok = value >= limit if at_least else value <= limit
        lines.append(f"| {name} | {value:.2f} | {limit} | {'yes' if ok else 'NO'} |")
    per_round = rows["rounds"]
    lines += [
        "",
        "Per round (on/off): added p50 "
        + ", ".join(f"{v:.2f}" for k, v in per_round.items() if k.startswith("added"))
        + "; requests/s "
        + ", ".join(f"{v:.2f}" for k, v in per_round.items() if k.startswith("rps"))
        + "; c1 p99 "
        + ", ".join(f"{v:.2f}" for k, v in per_round.items() if k.startswith("p99"))
        + ".",
    ]
    return "\n".join(lines) + "\n"
