"""Fleet benchmark: what several upstreams and on-demand models cost and bring, in one run.

1. Routing among 3 upstreams vs 1: the same gateway in front of one nginx port, then of three
   (one nginx listening on three ports, fixed vLLM-shaped bytes): sequential latency and wrk
   throughput, the gateway pinned to core 0, nginx and the load on core 1.
2. What the balancing score brings: three simulators with a prefix cache (time to first token
   grows with the prompt tokens not already cached on that replica; a bounded cache per replica),
   multi-turn conversations with long distinct system prompts, time to first token p50/p99 with
   ``upstream.balance = "score"`` (conversation affinity) and with ``"round_robin"``.
3. Time from a request naming an unloaded model to its first token: a cold start against a wake
   from vLLM's sleep (level 1), through the on-demand fleet (process backend, simulators).

Writes bench/results/<date>-fleet.md and prints it. Usage: python -m bench.fleet [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    HEADERS,
    LOAD_CORE,
    MODEL,
    PROXY_CORE,
    RESULTS,
    WORK,
    Procs,
    free_port,
    gateway_argv,
    machine,
    nginx_conf,
    pctl,
    provision,
    ttfb,
    wait_http,
    wrk,
)

PY = sys.executable


def _sim(port: int, *extra: str) -> list[str]:
    return [PY, "-m", "gwproxy", "sim", "--port", str(port), "--model", MODEL, "--max-model-len", "32768", *extra]


def _serve(port: int, upstreams: list[str]) -> list[str]:
    argv = gateway_argv(port, upstreams[0])
    for extra in upstreams[1:]:
        argv += ["--upstream", extra]
    return argv


# ---- 1. routing overhead ------------------------------------------------------------------------


def routing_overhead(env: dict[str, str], seconds: int, rounds: int, n_lat: int) -> dict[str, dict[str, float]]:
    procs = Procs()
    sim_port, nginx = free_port(), [free_port() for _ in range(3)]
    one, three = free_port(), free_port()
    try:
        procs.spawn("fleet-sim", _sim(sim_port), LOAD_CORE)
        wait_http(f"http://127.0.0.1:{sim_port}/health")
        import urllib.request

        chat = urllib.request.urlopen(
            urllib.request.Request(
                f"http://127.0.0.1:{sim_port}/v1/chat/completions",
                data=json.dumps(
                    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
                ).encode(),
                headers={"Content-Type": "application/json"},
            )
        ).read()
        models = urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/v1/models").read()
        conf = nginx_conf(nginx[0], chat, models)
        text = conf.read_text()
        listen = f"listen 127.0.0.1:{nginx[0]} backlog=4096;"
        conf.write_text(text.replace(listen, " ".join(f"listen 127.0.0.1:{p} backlog=4096;" for p in nginx)))
        procs.spawn("fleet-nginx", ["/usr/sbin/nginx", "-c", str(conf), "-p", str(WORK)], LOAD_CORE)
        urls = [f"http://127.0.0.1:{p}/v1" for p in nginx]
        for u in urls:
            wait_http(u + "/models")
        procs.spawn("gw-one", _serve(one, urls[:1]), PROXY_CORE, env)
        procs.spawn("gw-three", _serve(three, urls), PROXY_CORE, env)
        for port in (one, three):
            wait_http(f"http://127.0.0.1:{port}/health/ready")
        out: dict[str, dict[str, float]] = {}
        for name, port in (("1 upstream", one), ("3 upstreams", three)):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            lat = asyncio.run(ttfb(url, n_lat))
            runs = [wrk(url, 32, seconds) for _ in range(rounds)]
            out[name] = {
                "p50_ms": pctl(lat, 50),
                "p99_ms": pctl(lat, 99),
                "rps_c32": statistics.median(r[0] for r in runs),
            }
        return out
    finally:
        procs.stop()


# ---- 2. the score against round robin -----------------------------------------------------------

WORDS = ["gateway", "replica", "prefix", "cache", "token", "stream", "model", "request", "answer", "history", "balance"]


def _system_prompt(rng: random.Random, tokens: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < tokens * 4:  # the simulator's tokens are 4 bytes
        words.append(rng.choice(WORDS))
    return " ".join(words)


async def _conversations(url: str, conversations: int, turns: int, workers: int, seed: int) -> list[float]:
    """Time to first token (ms) of every turn of ``conversations`` multi-turn chats, ``workers`` at
    a time, each with its own long system prompt."""
    rng = random.Random(seed)
    prompts = [_system_prompt(rng, 1500) for _ in range(conversations)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for c in range(conversations):
        queue.put_nowait(c)
    ttfts: list[float] = []

    async def worker(s: aiohttp.ClientSession) -> None:
        while not queue.empty():
            c = queue.get_nowait()
            messages = [{"role": "system", "content": prompts[c]}, {"role": "user", "content": f"conversation {c}"}]
            for turn in range(turns):
                body = {"model": MODEL, "messages": messages, "max_tokens": 12, "stream": True}
                started = time.perf_counter()
                reply = []
                async with s.post(url, json=body, headers=HEADERS) as r:
                    first = None
                    async for line in r.content:
                        if first is None and line.startswith(b"data: {"):
                            first = time.perf_counter()
                        if line.startswith(b"data: {"):
                            choices = json.loads(line[6:]).get("choices") or []
                            if choices:
                                reply.append(choices[0]["delta"].get("content") or "")
                ttfts.append(((first or time.perf_counter()) - started) * 1000)
                messages += [{"role": "assistant", "content": "".join(reply)}, {"role": "user", "content": f"t{turn}"}]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*(worker(s) for _ in range(workers)))
    return ttfts


def score_vs_round_robin(env: dict[str, str], conversations: int, turns: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for balance in ("score", "round_robin"):
        procs = Procs()
        ports = [free_port() for _ in range(3)]
        gw = free_port()
        try:
            for i, p in enumerate(ports):
                procs.spawn(f"prefix-sim-{i}", _sim(p, "--ttft-ms", "10", "--itl-ms", "2", "--prefill-ms-per-token",
                                                    "0.2", "--prefix-cache-tokens", "24000"), LOAD_CORE)  # fmt: skip
            for p in ports:
                wait_http(f"http://127.0.0.1:{p}/health")
            genv = {**env, "GWPROXY_UPSTREAM_BALANCE": balance, "GWPROXY_RATELIMIT_ENABLED": "false"}
            procs.spawn(f"gw-{balance}", _serve(gw, [f"http://127.0.0.1:{p}/v1" for p in ports]), PROXY_CORE, genv)
            wait_http(f"http://127.0.0.1:{gw}/health/ready")
            url = f"http://127.0.0.1:{gw}/v1/chat/completions"
            ttfts = asyncio.run(_conversations(url, conversations, turns, workers=8, seed=7))
            out[balance] = {
                "requests": len(ttfts),
                "p50_ms": pctl(ttfts, 50),
                "p99_ms": pctl(ttfts, 99),
                "mean_ms": statistics.fmean(ttfts),
            }
        finally:
            procs.stop()
    return out


# ---- 3. cold start against wake -----------------------------------------------------------------


def _profile(directory: Path, pid: str, weights: float, command: list[str], **extra: Any) -> None:
    arch = {"parameters_b": 0.5, "layers": 4, "attention_heads": 8, "kv_heads": 2, "head_dim": 64, "context": 4096}
    body = {"name": pid, "model": f"bench/{pid}", "served_names": [pid], "architecture": arch,
            "max_model_len": 2048, "weights_gib": weights, "command": command, **extra}  # fmt: skip
    (directory / f"{pid}.yml").write_text(json.dumps(body))


async def _first_token(url: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=HEADERS) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: {"):
                return (time.perf_counter() - started) * 1000
    raise RuntimeError("no token")


def cold_vs_wake(env: dict[str, str], cold_s: float, wake_ms: float) -> dict[str, float]:
    """The simulator's cold start and wake are set within vLLM's published ranges (scaled down: a
    fresh start 15-60 s, a level-1 wake 0.1-6 s); what the gateway adds on top is the measure."""
    work = WORK / "fleet-demand"
    shutil.rmtree(work, ignore_errors=True)
    (work / "profiles").mkdir(parents=True)
    sim = [PY, "-m", "gwproxy", "sim", "--ttft-ms", "20", "--itl-ms", "5"]
    _profile(work / "profiles", "base", 6.0, sim, default=True)
    _profile(
        work / "profiles",
        "sleepy",
        9.0,
        [*sim, "--startup-delay", str(cold_s), "--sleep-ms", "200", "--wake-ms", str(wake_ms)],
        sleep_level=1,
    )
    _profile(work / "profiles", "other", 8.0, sim)  # fmt: skip
    base = free_port()
    genv = {
        **env,
        "GWPROXY_RATELIMIT_ENABLED": "false",
        "GWPROXY_SWITCH_BACKEND": "process",
        "GWPROXY_SWITCH_ON_DEMAND": "true",
        "GWPROXY_SWITCH_PROFILES_DIR": str(work / "profiles"),
        "GWPROXY_SWITCH_STATE_DIR": str(work / "state"),
        "GWPROXY_SWITCH_HARDWARE": "1 x Bench GPU 24GiB",
        "GWPROXY_SWITCH_VLLM_HOST": "127.0.0.1",
        "GWPROXY_SWITCH_READY_POLL": "0.1",
        "GWPROXY_SWITCH_HOLD_SECONDS": "60",
        "GWPROXY_SWITCH_MIN_RESIDENCY": "0",
        "GWPROXY_SWITCH_STOP_ON_EXIT": "true",
        "GWPROXY_SWITCH_PORT_RANGE": f"{base + 1}-{base + 20}",
    }
    procs = Procs()
    gw, up = free_port(), free_port()
    try:
        procs.spawn("gw-demand", _serve(gw, [f"http://127.0.0.1:{up}/v1"]), PROXY_CORE, genv)
        wait_http(f"http://127.0.0.1:{gw}/health/ready", timeout=60)
        url = f"http://127.0.0.1:{gw}/v1/chat/completions"
        cold = asyncio.run(_first_token(url, "sleepy"))
        asyncio.run(_first_token(url, "other"))  # needs the room: sleepy is put to sleep
        wake = asyncio.run(_first_token(url, "sleepy"))  # other (idle) is stopped, sleepy woken
        return {"cold_ms": cold, "cold_sim_ms": cold_s * 1000, "wake_ms": wake, "wake_sim_ms": wake_ms}
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---- the record ---------------------------------------------------------------------------------


def render(routing: dict[str, dict[str, float]], score: dict[str, dict[str, float]], demand: dict[str, float],
           quick: bool) -> str:  # fmt: skip
    one, three = routing["1 upstream"], routing["3 upstreams"]
    lines = [
        f"# Fleet benchmark, {datetime.date.today().isoformat()}{' (quick)' if quick else ''}",
        "",
        machine(),
        "",
        "## 1. Routing among 3 upstreams vs 1 (nginx answering fixed bytes; gateway on core 0)",
        "",
        "| gateway in front of | p50 ms | p99 ms | req/s c32 |",
        "|---|---|---|---|",
        *(f"| {k} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['rps_c32']:.0f} |" for k, v in routing.items()),
        "",
        f"Added by routing among three: p50 {three['p50_ms'] - one['p50_ms']:+.3f} ms, throughput "
        f"{three['rps_c32'] / one['rps_c32']:.2f}x of one upstream. Target: within the hot-path targets "
        f"(no more than noise over one upstream): {'met' if three['rps_c32'] >= 0.9 * one['rps_c32'] else 'not met'}.",
        "",
        "## 2. Balancing score vs round robin (3 simulators with prefix caches; multi-turn conversations)",
        "",
        "Each simulator: 24,000-token prefix cache (16-token blocks, LRU), 0.2 ms prefill per uncached prompt token,",
        "10 ms first token; conversations with distinct 1,500-token system prompts, 8 at a time.",
        "",
        "| balance | requests | TTFT p50 ms | TTFT p99 ms | mean ms |",
        "|---|---|---|---|---|",
        *(
            f"| {k} | {v['requests']:.0f} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['mean_ms']:.1f} |"
            for k, v in score.items()
        ),
        "",
        "## 3. A request naming an unloaded model: time to its first token",
        "",
        "| start | measured ms | the simulator's own delay ms | added by the gateway ms |",
        "|---|---|---|---|",
        f"| cold start (process, loads) | {demand['cold_ms']:.0f} | {demand['cold_sim_ms']:.0f} | "
        f"{demand['cold_ms'] - demand['cold_sim_ms']:.0f} |",
        f"| wake from sleep (level 1) + warm-up token | {demand['wake_ms']:.0f} | {demand['wake_sim_ms']:.0f} | "
        f"{demand['wake_ms'] - demand['wake_sim_ms']:.0f} |",
        "",
        "The cold start's gateway share includes the simulator process's own start (Python importing the",
        "package, about half a second) and the readiness polls; the wake's includes stopping the idle model",
        "that had taken the room (its SIGTERM and exit) and the one-token warm-up.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short runs, for trying the script")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    env = provision()
    routing = routing_overhead(env, 3 if args.quick else 5, 1 if args.quick else 3, 200 if args.quick else 1000)
    score = score_vs_round_robin(env, 12 if args.quick else 24, 4 if args.quick else 6)
    demand = cold_vs_wake(env, cold_s=3.0 if args.quick else 8.0, wake_ms=600)
    text = render(routing, score, demand, args.quick)
    suffix = "-fleet-quick" if args.quick else "-fleet"
    (RESULTS / f"{datetime.date.today().isoformat()}{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
