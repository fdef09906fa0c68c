"""Overhead benchmark: direct vs a bare aiohttp pass-through vs the gateway, in one run.

Each proxy is pinned to core 0; the upstream (simulator or nginx), the load generator (wrk or
this script's own asyncio client) run on core 1. Throughput and CPU figures use nginx answering
fixed vLLM-shaped bytes, because the Python simulator would bound them; latency-to-first-byte and
paced-stream figures use the simulator, because they need real streams. Writes
bench/results/<date>.md and prints it.

Usage: python bench/run.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import statistics
import sys

from bench.capture import capture_instructions, capture_pair, capture_rounds, render_capture
from bench.harness import (
    LOAD_CORE,
    PROXY_CORE,
    RESULTS,
    ROOT,
    WORK,
    auth_cost,
    cpu_seconds,
    free_port,
    gateway_argv,
    instructions_per_request,
    machine,
    paced,
    pctl,
    provision,
    services,
    ttfb,
    wrk,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short runs, for trying the script")
    parser.add_argument("--only", choices=["capture"], help="run one comparison alone (its own results file)")
    args = parser.parse_args()
    seconds = 3 if args.quick else 5
    rounds = 1 if args.quick else 3
    capture_rounds_n = 1 if args.quick else 6  # paired rounds: their ratios' median is the figure
    n_lat = 200 if args.quick else 1000
    streams = 100 if args.quick else 500
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    env = provision()
    rows: dict[str, dict[str, float]] = {}
    if args.only == "capture":
        with services(env) as p, capture_pair(f"http://127.0.0.1:{p['nginx']}/v1") as (cp, headers, pg_env):
            rows = capture_rounds(
                cp, headers, f"http://127.0.0.1:{p['nginx']}/v1/chat/completions", seconds, capture_rounds_n
            )
            rows["gw_capture_on"].update(capture_instructions(pg_env, headers, f"http://127.0.0.1:{p['nginx']}/v1"))
        report = render_capture(rows, seconds, capture_rounds_n, standalone=True)
        out = RESULTS / f"{datetime.date.today().isoformat()}-capture.md"
        out.write_text(report)
        print(report)
        print(f"written to {out.relative_to(ROOT)}")
        return
    with services(env) as p:
        targets = {
            "direct": (f"http://127.0.0.1:{p['nginx']}", f"http://127.0.0.1:{p['sim']}", None),
            "bare": (f"http://127.0.0.1:{p['bare_nginx']}", f"http://127.0.0.1:{p['bare_sim']}", p["pid_bare_nginx"]),
            "gateway": (f"http://127.0.0.1:{p['gw_nginx']}", f"http://127.0.0.1:{p['gw_sim']}", p["pid_gw_nginx"]),
        }
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in targets}
        for _ in range(rounds):  # interleaved rounds, medians reported: this machine is noisy
            for name, (static, _, pid) in targets.items():
                url = static + "/v1/chat/completions"
                wrk(url, 8, 1)  # warm up
                got = samples[name]
                _, p50, p99, _ = wrk(url, 1, seconds)
                got.setdefault("c1_p50", []).append(p50)
                got.setdefault("c1_p99", []).append(p99)
                for conns in (32, 64):
                    cpu0 = cpu_seconds(pid) if pid else 0.0
                    rps, _, p99, total = wrk(url, conns, seconds)
                    got.setdefault(f"c{conns}_rps", []).append(rps)
                    got.setdefault(f"c{conns}_p99", []).append(p99)
                    if pid and conns == 32:
                        got.setdefault("cpu_ms_per_req", []).append((cpu_seconds(pid) - cpu0) * 1000 / total)
            for name in ("gw_nolimit", "gw_redis"):
                url = f"http://127.0.0.1:{p[name]}/v1/chat/completions"
                wrk(url, 8, 1)
                samples.setdefault(name, {}).setdefault("c1_p50", []).append(wrk(url, 1, seconds)[1])
        for name, got in samples.items():
            rows[name] = {k: statistics.median(v) for k, v in got.items()}
            print(name, rows[name], flush=True)
        for name, (_, sim, _) in targets.items():
            url = sim + "/v1/chat/completions"
            asyncio.run(ttfb(url, 20))
            rows[name]["ttfb_p50"] = statistics.median(asyncio.run(ttfb(url, n_lat // 2)))
        for level, count in (("light", 100), ("heavy", streams)):
            for name, (_, sim, _) in targets.items():
                pid = {"bare": p["pid_bare_sim"], "gateway": p["pid_gw_sim"]}.get(name)
                cpu0 = cpu_seconds(pid) if pid else 0.0
                gaps, chunks, wall = asyncio.run(paced(sim + "/v1/chat/completions", count, 100))
                r = rows[name]
                r[f"{level}_itl_p50"], r[f"{level}_itl_p99"] = pctl(gaps, 50), pctl(gaps, 99)
                r[f"{level}_chunks"], r[f"{level}_wall_s"] = chunks, wall
                if pid:
                    r[f"{level}_cpu_us_per_chunk"] = (cpu_seconds(pid) - cpu0) * 1e6 / chunks
                print(name, level, {k: v for k, v in r.items() if k.startswith(level)}, flush=True)
        if shutil.which("valgrind") and not args.quick:
            origin = f"http://127.0.0.1:{p['nginx']}"

            port = free_port()
            bare_ir = instructions_per_request(
                "bare", [sys.executable, str(ROOT / "bench" / "bare_proxy.py"), str(port), origin], port, 300
            )
            port = free_port()
            gw_ir = instructions_per_request("gateway", gateway_argv(port, origin + "/v1"), port, 300, env)
            port = free_port()
            open_ir = instructions_per_request(
                "gateway-noauth",
                gateway_argv(port, origin + "/v1"),
                port,
                300,
                {**env, "GWPROXY_AUTH_ENABLED": "false"},
            )
            rows["bare"]["kinstr_per_req"], rows["gateway"]["kinstr_per_req"] = bare_ir / 1000, gw_ir / 1000
            rows["gateway"]["kinstr_auth"] = (gw_ir - open_ir) / 1000
        rows["gateway"].update(asyncio.run(auth_cost(env)))
        with capture_pair(f"http://127.0.0.1:{p['nginx']}/v1") as (cp, headers, pg_env):
            capture = capture_rounds(
                cp, headers, f"http://127.0.0.1:{p['nginx']}/v1/chat/completions", seconds, capture_rounds_n
            )
            capture["gw_capture_on"].update(capture_instructions(pg_env, headers, f"http://127.0.0.1:{p['nginx']}/v1"))
        with capture_pair(f"http://127.0.0.1:{p['nginx']}/v1", "sqlite") as (cp, headers, _):
            embedded = capture_rounds(
                cp, headers, f"http://127.0.0.1:{p['nginx']}/v1/chat/completions", seconds, capture_rounds_n
            )
    report = (
        render(rows, seconds, rounds, streams, args.quick)
        + "\n"
        + render_capture(embedded, seconds, capture_rounds_n, engine="sqlite")
        + "\n"
        + render_capture(capture, seconds, capture_rounds_n)
    )
    out = RESULTS / f"{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out.relative_to(ROOT)}")
    shutil.rmtree(WORK / "tmp", ignore_errors=True)


def render(rows: dict[str, dict[str, float]], seconds: int, rounds: int, streams: int, quick: bool) -> str:
    d, b, g = rows["direct"], rows["bare"], rows["gateway"]
    add = lambda r, k: r[k] - d[k]  # noqa: E731
    checks = [
        ("throughput c32 ≥ 0.8× bare", g["c32_rps"] / b["c32_rps"], 0.8, True),
        ("throughput c64 ≥ 0.8× bare", g["c64_rps"] / b["c64_rps"], 0.8, True),
        ("added p50 latency ≤ 1.2× bare", add(g, "c1_p50") / max(add(b, "c1_p50"), 1e-9), 1.2, False),
        ("CPU per request ≤ 1.3× bare (CPU time)", g["cpu_ms_per_req"] / b["cpu_ms_per_req"], 1.3, False),
        (
            "stream CPU (per 100-event stream) ≤ 1.3× bare",
            g["light_cpu_us_per_chunk"] / b["light_cpu_us_per_chunk"],
            1.3,
            False,
        ),
        ("paced-stream added ITL p99 ≤ 5 ms (100 streams)", add(g, "light_itl_p99"), 5.0, False),
        (f"paced-stream added ITL p99 ≤ 5 ms ({streams} streams)", add(g, "heavy_itl_p99"), 5.0, False),
        ("cached key check ≤ 0.05 ms CPU", g["auth_key_us"] / 1000, 0.05, False),
        ("limiter in process adds ≤ 0.03 ms p50", g["c1_p50"] - rows["gw_nolimit"]["c1_p50"], 0.03, False),
        ("limiter in Redis adds ≤ 0.3 ms p50", rows["gw_redis"]["c1_p50"] - rows["gw_nolimit"]["c1_p50"], 0.3, False),
        ("cached JWT check ≤ 0.05 ms CPU", g["auth_jwt_us"] / 1000, 0.05, False),
    ]
    lines = [
        f"# Overhead benchmark — {datetime.date.today().isoformat()}{' (quick run)' if quick else ''}",
        "",
        f"Machine: {machine()}. Proxies pinned to core {PROXY_CORE}; upstream and load generator to core {LOAD_CORE}.",
        f"Throughput, latency and CPU: wrk (1 thread, {seconds}s per run, median of {rounds} interleaved rounds) against",
        "nginx answering fixed vLLM-shaped",
        "bytes (the Python simulator would bound these figures). Time to first byte and paced streams: the",
        f"simulator (`gwproxy sim`); paced = {streams} concurrent streams of 100 tokens at 20 ms inter-token latency.",
        "Gateway: `gwproxy serve` with its defaults (access log on, metrics on, validation on, auth on: every",
        "request carries an API key, checked from the cache; SQLite store) except conversation capture, which is",
        "off here and measured on its own below.",
        "",
        "| figure | direct | bare pass-through | gateway |",
        "|---|---|---|---|",
        f"| latency p50 at concurrency 1 (ms) | {d['c1_p50']:.3f} | {b['c1_p50']:.3f} | {g['c1_p50']:.3f} |",
        f"| added p50 at concurrency 1 (ms) | – | {add(b, 'c1_p50'):.3f} | {add(g, 'c1_p50'):.3f} |",
        f"| latency p99 at concurrency 1 (ms) | {d['c1_p99']:.3f} | {b['c1_p99']:.3f} | {g['c1_p99']:.3f} |",
        f"| added p99 at concurrency 1 (ms) | – | {add(b, 'c1_p99'):.3f} | {add(g, 'c1_p99'):.3f} |",
        f"| requests/s at concurrency 32 | {d['c32_rps']:.0f} | {b['c32_rps']:.0f} | {g['c32_rps']:.0f} |",
        f"| p99 at concurrency 32 (ms) | {d['c32_p99']:.2f} | {b['c32_p99']:.2f} | {g['c32_p99']:.2f} |",
        f"| requests/s at concurrency 64 | {d['c64_rps']:.0f} | {b['c64_rps']:.0f} | {g['c64_rps']:.0f} |",
        f"| p99 at concurrency 64 (ms) | {d['c64_p99']:.2f} | {b['c64_p99']:.2f} | {g['c64_p99']:.2f} |",
        f"| proxy CPU per request (ms) | – | {b['cpu_ms_per_req']:.3f} | {g['cpu_ms_per_req']:.3f} |",
        f"| stream time to first byte p50 (ms) | {d['ttfb_p50']:.3f} | {b['ttfb_p50']:.3f} | {g['ttfb_p50']:.3f} |",
        f"| added time to first byte p50 (ms) | – | {add(b, 'ttfb_p50'):.3f} | {add(g, 'ttfb_p50'):.3f} |",
        f"| light paced streams (100): inter-chunk p50 (ms) | {d['light_itl_p50']:.2f} | {b['light_itl_p50']:.2f} | {g['light_itl_p50']:.2f} |",
        f"| light paced streams (100): inter-chunk p99 (ms) | {d['light_itl_p99']:.2f} | {b['light_itl_p99']:.2f} | {g['light_itl_p99']:.2f} |",
        f"| light paced streams: added inter-chunk p99 (ms) | – | {add(b, 'light_itl_p99'):.2f} | {add(g, 'light_itl_p99'):.2f} |",
        f"| light paced streams: proxy CPU per chunk (µs) | – | {b['light_cpu_us_per_chunk']:.1f} | {g['light_cpu_us_per_chunk']:.1f} |",
        f"| paced streams ({streams}): inter-chunk p50 (ms) | {d['heavy_itl_p50']:.2f} | {b['heavy_itl_p50']:.2f} | {g['heavy_itl_p50']:.2f} |",
        f"| paced streams ({streams}): inter-chunk p99 (ms) | {d['heavy_itl_p99']:.2f} | {b['heavy_itl_p99']:.2f} | {g['heavy_itl_p99']:.2f} |",
        f"| paced streams ({streams}): added inter-chunk p99 (ms) | – | {add(b, 'heavy_itl_p99'):.2f} | {add(g, 'heavy_itl_p99'):.2f} |",
        f"| paced streams ({streams}): wall time (s) | {d['heavy_wall_s']:.2f} | {b['heavy_wall_s']:.2f} | {g['heavy_wall_s']:.2f} |",
        f"| paced streams ({streams}): proxy CPU per chunk (µs) | – | {b['heavy_cpu_us_per_chunk']:.1f} | {g['heavy_cpu_us_per_chunk']:.1f} |",
        f"| auth: cached API key check, CPU per request (µs, in process) | – | – | {g['auth_key_us']:.1f} |",
        f"| limiter in process: added p50 at concurrency 1 (ms) | – | – | {g['c1_p50'] - rows['gw_nolimit']['c1_p50']:.3f} |",
        f"| limiter in Redis: added p50 at concurrency 1 (ms) | – | – | {rows['gw_redis']['c1_p50'] - rows['gw_nolimit']['c1_p50']:.3f} |",
        f"| auth: cached JWT check, CPU per request (µs, in process) | – | – | {g['auth_jwt_us']:.1f} |",
        "",
        "| target | measured | limit | met |",
        "|---|---|---|---|",
    ]
    if "kinstr_per_req" in g:
        checks.insert(
            4, ("CPU per request ≤ 1.3× bare (instructions)", g["kinstr_per_req"] / b["kinstr_per_req"], 1.3, False)
        )
        lines.insert(
            lines.index("| target | measured | limit | met |") - 1,
            f"| proxy instructions per request (callgrind, thousands) | – | {b['kinstr_per_req']:.0f} | {g['kinstr_per_req']:.0f} |",
        )
        lines.insert(
            lines.index("| target | measured | limit | met |") - 1,
            f"| of which auth with a cached key (callgrind, thousands) | – | – | {g['kinstr_auth']:.0f} |",
        )
    for name, value, limit, at_least in checks:
        ok = value >= limit if at_least else value <= limit
        lines.append(f"| {name} | {value:.2f} | {limit} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
