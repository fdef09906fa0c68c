"""What the hardware probe sees on this machine, and what the planner recommends for it.

Run on a host with an NVIDIA GPU: ``python bench/gpu_probe.py [--out FILE.md]``. Prints the NVML
reading, the nvidia-smi fallback's reading of the same GPUs (they should agree), and every
bundled profile's plan for this hardware, ranked. Needs only the gateway's switcher modules
(pyyaml, marshmallow, nvidia-ml-py), not the gateway's server dependencies.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gwproxy.switcher import hardware, planner  # noqa: E402
from gwproxy.switcher.profiles import load_profiles  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default=str(ROOT / "profiles"))
    parser.add_argument("--out", help="also write the report as Markdown to this file")
    args = parser.parse_args()

    started = time.perf_counter()
    hw = hardware.probe()
    probe_ms = (time.perf_counter() - started) * 1000
    lines = [f"# GPU probe on {platform.node()} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    lines += [
        f"Probe source: **{hw.source}** ({probe_ms:.0f} ms); {hw.describe()}; driver {hw.driver_version}, "
        f"CUDA {hw.cuda_version}" + (f"; note: {hw.note}" if hw.note else ""),
        "",
    ]
    lines += ["## NVML reading", "", "```json", json.dumps(hw.public(), indent=2), "```", ""]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            fallback = hardware._smi(smi)
            lines += [
                "## nvidia-smi fallback (same GPUs, read through the CSV path)",
                "",
                "```json",
                json.dumps(fallback.public(), indent=2),
                "```",
                "",
            ]
            agree = [
                (a.name, a.memory_total) == (b.name, b.memory_total)
                for a, b in zip(hw.gpus, fallback.gpus, strict=False)
            ]
            lines += [
                f"Names and total memory agree between NVML and nvidia-smi: {all(agree) and len(agree) == len(fallback.gpus)}",
                "",
            ]
        except Exception as exc:  # report, do not stop: the NVML part is the main reading
            lines += [f"nvidia-smi fallback failed: {type(exc).__name__}: {exc}", ""]
    profiles = load_profiles(Path(args.profiles))
    for problem in profiles.problems:
        lines.append(f"- profile problem: {problem}")
    lines += [
        "## Planner recommendations for this hardware",
        "",
        "| rank | profile | verdict | tp | need/GPU GiB | budget/GPU GiB | full-length seqs | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(planner.recommend(profiles.profiles.values(), hw), 1):
        d = p.public()
        lines.append(
            f"| {i} | {p.profile_id} | {p.verdict} | {p.tensor_parallel} | {d['need_gib_per_gpu']} | "
            f"{d['budget_gib_per_gpu']} | {p.max_sequences} | {p.reason} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
