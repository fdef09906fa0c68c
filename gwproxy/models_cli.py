"""Command line for the model manager: ``gwproxy profiles`` and ``gwproxy hardware``.

``profiles`` validates the profile files and lists them with their fit for this host (exit 1 if
any file is invalid, so it can gate a deployment); ``hardware`` prints what the probe (or the
configured snapshot, or ``--plan-for``) sees and every profile ranked for it. Both read only
files and the GPU driver: no database, no running gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gwproxy.config import Config, ConfigError
from gwproxy.switcher import planner
from gwproxy.switcher.context import hardware_source
from gwproxy.switcher.hardware import Hardware, SnapshotError, parse_snapshot
from gwproxy.switcher.profiles import load_profiles


def _hardware(cfg: Config, plan_for: str | None) -> Hardware:
    if plan_for:
        return parse_snapshot(plan_for)
    return hardware_source(cfg)()


def cmd_profiles(cfg: Config, args: argparse.Namespace) -> int:
    loaded = load_profiles(Path(cfg.switch.profiles_dir))
    hw = _hardware(cfg, args.plan_for)
    plans = {p.profile_id: p for p in planner.recommend(loaded.profiles.values(), hw, cfg.switch.reserve_gib)}
    if args.json:
        print(json.dumps({"hardware": hw.describe(), "profiles": [
            {**p.public(), "fit": plans[p.id].public()} for p in loaded.profiles.values()
        ], "problems": [str(x) for x in loaded.problems]}, indent=2))  # fmt: skip
    else:
        print(f"{len(loaded.profiles)} profile(s) in {cfg.switch.profiles_dir}; fit for {hw.describe()}:")
        for p in loaded.profiles.values():
            plan = plans[p.id]
            mark = "*" if p.default else " "
            print(f" {mark} {p.id:34} {plan.verdict:7} tp={plan.tensor_parallel or '-':<2} {p.model}")
    for problem in loaded.problems:
        print(f"invalid profile: {problem}", file=sys.stderr)
    return 1 if loaded.problems else 0


def cmd_hardware(cfg: Config, args: argparse.Namespace) -> int:
    hw = _hardware(cfg, args.plan_for)
    loaded = load_profiles(Path(cfg.switch.profiles_dir))
    ranked = planner.recommend(loaded.profiles.values(), hw, cfg.switch.reserve_gib)
    if args.json:
        out: dict[str, Any] = {"hardware": hw.public(), "recommendations": [p.public() for p in ranked]}
        print(json.dumps(out, indent=2))
        return 0
    print(f"{hw.describe()} (source: {hw.source}; driver {hw.driver_version or '-'}, CUDA {hw.cuda_version or '-'})")
    if hw.note:
        print(f"  {hw.note}")
    for g in hw.gpus:
        used = f", {g.memory_used / 2**30:.1f} GiB used" if g.memory_used is not None else ""
        print(f"  GPU {g.index}: {g.name}, {g.memory_total / 2**30:.1f} GiB{used}")
    print("Profiles, best first:")
    for i, p in enumerate(ranked, 1):
        print(f" {i:2}. {p.profile_id:34} {p.verdict:7} {p.reason}")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser, load: Callable[[argparse.Namespace], Config]) -> None:
    def bind(fn: Callable[[Config, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(load(args), args)
            except (SnapshotError, ConfigError) as exc:
                print(f"gwproxy: {exc}", file=sys.stderr)
                return 2

        return run

    for name, fn, text in (
        ("profiles", cmd_profiles, "validate the model profiles and show their fit for this host"),
        ("hardware", cmd_hardware, "show the GPUs found and every profile ranked for them"),
    ):
        cmd = sub.add_parser(name, parents=[common], help=text)
        cmd.add_argument("--plan-for", metavar="GPUS", help="plan for other hardware, e.g. '2 x RTX 3090 24GiB'")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(func=bind(fn))
