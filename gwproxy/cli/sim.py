"""``gwproxy sim``: the vLLM-compatible simulator (see ``gwproxy.sim``), on vLLM's command line."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from typing import Any

from gwproxy import log as logconf
from gwproxy.cli.common import run


def _sim_config(args: argparse.Namespace, models: Sequence[str]) -> Any:
    from gwproxy.sim.server import SimConfig

    return SimConfig(
        models=tuple(models),
        max_model_len=args.max_model_len,
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        seed=args.seed,
        reasoning=bool(args.reasoning_parser),
        split_writes=args.split_writes,
        sleep_mode=args.enable_sleep_mode,
        prefill_ms_per_token=args.prefill_ms_per_token,
        prefix_cache_tokens=args.prefix_cache_tokens,
        sleep_ms=args.sleep_ms,
        wake_ms=args.wake_ms,
        responses_store=args.responses_store or os.environ.get("VLLM_ENABLE_RESPONSES_API_STORE", "") in ("1", "true"),
    )


def cmd_sim(args: argparse.Namespace) -> int:
    from gwproxy.sim import server

    cfg = _sim_config(args, args.served_model_name or args.model or ["sim-model"])
    logconf.configure("info", json=False)
    log = logconf.get("gwproxy.sim")

    async def main(stop: asyncio.Event) -> None:
        if args.startup_delay > 0 or args.fail_on_start:
            await server.load(cfg, args.startup_delay, args.fail_on_start)
        starting = asyncio.create_task(server.serve(cfg, args.host, args.port))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return
        runner = starting.result()
        log.info("simulator serving", host=args.host, port=args.port, models=list(cfg.models))
        print("INFO Application startup complete.", flush=True)
        await stopped
        await runner.cleanup()

    run(main)
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    sim = sub.add_parser("sim", help="run the vLLM-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000, as vLLM)")
    sim.add_argument("--model", action="append", help="served model name (repeatable), as vLLM's --model")
    sim.add_argument("--served-model-name", nargs="+", help="served names, as vLLM's (overrides --model)")
    sim.add_argument("--max-model-len", type=int, default=4096, help="context length in tokens (default 4096)")
    sim.add_argument("--ttft-ms", type=float, default=0.0, help="milliseconds to the first token")
    sim.add_argument("--itl-ms", type=float, default=0.0, help="milliseconds between tokens")
    sim.add_argument("--seed", type=int, help="make output, ids and timestamps a function of the request")
    sim.add_argument(
        "--startup-delay", type=float, default=0.0, help="seconds the port stays closed, printing vLLM's load lines"
    )
    sim.add_argument("--fail-on-start", metavar="MESSAGE", help="fail half-way through start-up, exit 1")
    sim.add_argument(
        "--reasoning-parser",
        metavar="NAME",
        help="as vLLM's: a reasoning model, whose answers start with reasoning_content (any name)",
    )
    sim.add_argument(
        "--split-writes",
        action="store_true",
        help="write each stream event in three parts, cutting UTF-8 characters, to test a relay's partial reads",
    )
    sim.add_argument(
        "--prefill-ms-per-token", type=float, default=0.0,
        help="milliseconds of prefill per prompt token not in the prefix cache (added to the first token's time)",
    )  # fmt: skip
    sim.add_argument(
        "--prefix-cache-tokens", type=int, default=0,
        help="prefix cache size in tokens (16-token blocks, least recently used dropped; default 0: none)",
    )  # fmt: skip
    sim.add_argument(
        "--enable-sleep-mode",
        action="store_true",
        help="as vLLM's: with VLLM_SERVER_DEV_MODE=1, serve POST /sleep?level=1|2, POST /wake_up, GET /is_sleeping",
    )
    sim.add_argument("--sleep-ms", type=float, default=500.0, help="milliseconds falling asleep takes (default 500)")
    sim.add_argument(
        "--wake-ms", type=float, default=1000.0,
        help="milliseconds waking from level 1 takes (default 1000; level 2: three times that)",
    )  # fmt: skip
    sim.add_argument(
        "--responses-store", action="store_true",
        help="as vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1 (also read here): keep /v1/responses answers in memory",
    )  # fmt: skip
    sim.set_defaults(func=cmd_sim)
