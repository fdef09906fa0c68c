"""The gateway's added latency against real vLLM (its CPU build on the tiny local model of the
real-vLLM test tier): direct, through a bare aiohttp pass-through, and through the gateway with
its defaults (auth, limits, capture on, SQLite) — in interleaved rounds of sequential requests,
one run. Time to first byte of a stream and the whole of a short answer, p50 and p90; the
gateway's figure minus direct is what a client pays for it.

``python -m bench.vllm [--rounds N] [--requests N]`` writes ``bench/results/<date>-vllm.md``. On
this 2-core VM vLLM's engine, the proxies and the client share the cores: the absolute times
measure the machine; the differences between the three paths, taken from the same rounds, are
the figure (a GPU host gives cleaner ones).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import subprocess
import sys
import time

import aiohttp

from bench import harness
from bench.harness import RESULTS, WORK, Procs, free_port, pctl, provision, wait_http
from tests.support import vllm

BODY = b'{"model":"tiny","messages":[{"role":"user","content":"Say something."}],"max_tokens":%d,"temperature":0%s}'


async def timed(url: str, n: int, stream: bool) -> list[float]:
    """Milliseconds to the first body byte (stream) or to the whole answer (not), ``n`` in a row."""
    body = BODY % ((4, b',"stream":true') if stream else (4, b""))
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url, data=body, headers=harness.HEADERS) as r:
                if stream:
                    await r.content.readany()
                    out.append((time.perf_counter() - t0) * 1000)
                    await r.read()
                else:
                    await r.read()
                    out.append((time.perf_counter() - t0) * 1000)
                assert r.status == 200, await r.text()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=40)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    why = vllm.ensure()
    if why:
        sys.exit(why)
    procs = Procs()
    server = vllm.start(WORK, "vllm-bench", "--no-enable-prefix-caching")
    try:
        server.wait_ready()
        env = provision()
        env["GWPROXY_CAPTURE_ENABLED"] = "true"  # the embedded defaults: capture on
        bare, gw = free_port(), free_port()
        py = sys.executable
        procs.spawn("bare-vllm", [py, str(harness.ROOT / "bench" / "bare_proxy.py"), str(bare), server.url], "0-1")
        procs.spawn("gw-vllm", [*harness.gateway_argv(gw, server.url + "/v1")], "0-1", env)
        wait_http(f"http://127.0.0.1:{bare}/v1/models")
        wait_http(f"http://127.0.0.1:{gw}/health/ready")
        urls = {
            "direct": server.url,
            "bare": f"http://127.0.0.1:{bare}",
            "gateway": f"http://127.0.0.1:{gw}",
        }
        results: dict[tuple[str, bool], list[float]] = {(k, s): [] for k in urls for s in (True, False)}
        for base in urls.values():  # warm up each path
            asyncio.run(timed(base + "/v1/chat/completions", 5, True))
        for _ in range(args.rounds):
            for stream in (True, False):
                for name, base in urls.items():
                    results[(name, stream)] += asyncio.run(timed(base + "/v1/chat/completions", args.requests, stream))
        write(results, args)
    finally:
        procs.stop()
        server.stop()


def write(results: dict[tuple[str, bool], list[float]], args: argparse.Namespace) -> None:
    version = subprocess.run(
        [str(vllm.VENV / "bin" / "python"), "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    lines = [
        f"# Added latency against real vLLM — {dt.date.today().isoformat()}",
        "",
        f"vLLM {version} (CPU build), the tiny local Llama of the real-vLLM tier, greedy, 4 tokens; "
        f"{args.rounds} interleaved rounds × {args.requests} sequential requests per path and kind. "
        f"Machine: {harness.machine()}. Gateway: `gwproxy serve` with its defaults (auth by API key, "
        "in-process limiter, capture on into SQLite); bare: `bench/bare_proxy.py` (aiohttp pass-through).",
        "",
        "| path | stream TTFB p50 ms | p90 | answer p50 ms | p90 | added p50 vs direct (stream / answer) |",
        "|---|---|---|---|---|---|",
    ]
    base = {s: statistics.median(results[("direct", s)]) for s in (True, False)}
    for name in ("direct", "bare", "gateway"):
        st, an = results[(name, True)], results[(name, False)]
        added = f"+{statistics.median(st) - base[True]:.2f} / +{statistics.median(an) - base[False]:.2f}"
        lines.append(
            f"| {name} | {pctl(st, 50):.2f} | {pctl(st, 90):.2f} | {pctl(an, 50):.2f} | {pctl(an, 90):.2f} | "
            f"{'—' if name == 'direct' else added} |"
        )
    lines += [
        "",
        "vLLM's own time for these requests dominates; the gateway's share is the difference to direct. "
        "The overhead targets of the gateway (CPU per request, req/s against a bare pass-through) are "
        "measured by `make bench` against a fixed-answer upstream, where the upstream costs nothing.",
    ]
    out = RESULTS / f"{dt.date.today().isoformat()}-vllm.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
