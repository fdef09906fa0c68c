"""Hardware: what GPUs this host has, from NVML, else ``nvidia-smi``, else a configured snapshot.

``probe()`` asks NVML (``pynvml``, from nvidia-ml-py) for each GPU's name, memory, utilisation,
temperature and power, and the driver and CUDA versions; if NVML cannot be loaded it runs
``nvidia-smi`` and parses its CSV; if neither is there the answer is a snapshot with no GPU,
which is a valid answer. ``parse_snapshot("2 x RTX 3090 24GiB")`` builds a snapshot from a
configured description instead, so an operator can plan for another machine (and tests can run
here). Snapshots are plain frozen data; the planner only reads ``gpus[i].memory_total``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gwproxy.switcher.cards import find, known

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    memory_total: int  # bytes
    memory_used: int | None = None
    memory_free: int | None = None
    utilization: int | None = None  # percent
    temperature: int | None = None  # Celsius
    power_watts: float | None = None


@dataclass(frozen=True, slots=True)
class Hardware:
    gpus: tuple[Gpu, ...]
    source: str  # "nvml" | "nvidia-smi" | "snapshot" | "none"
    driver_version: str | None = None
    cuda_version: str | None = None
    taken_at: float = 0.0  # wall-clock seconds
    note: str | None = None  # why there is no GPU, when there is none

    def describe(self) -> str:
        if not self.gpus:
            return "no GPU"
        groups: dict[tuple[str, int], int] = {}
        for g in self.gpus:
            key = (g.name, g.memory_total)
            groups[key] = groups.get(key, 0) + 1
        return ", ".join(f"{n} x {name} ({mem / GIB:.0f} GiB)" for (name, mem), n in groups.items())

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["gpus"] = [asdict(g) for g in self.gpus]
        out["description"] = self.describe()
        return out


HardwareSource = Callable[[], Hardware]

_MEMORY = re.compile(r"(?P<mem>\d+(?:\.\d+)?)\s*(?P<unit>GiB|GB|MiB|MB|G)?\s*$", re.IGNORECASE)
_COUNT = re.compile(r"^\s*(?P<count>\d+)\s*[x×*]\s*(?=\S)", re.IGNORECASE)
_UNITS = {"gib": GIB, "gb": 10**9, "mib": MIB, "mb": 10**6}
EXAMPLES = "e.g. '2 x RTX 3090', '2x4090', '1 x A100 80GB', '1 x H100, 2 x L4', '4 x MyGPU 24GiB' or 'none'"


class SnapshotError(ValueError):
    """A configured hardware description could not be read; the message says what was expected."""


def _group(part: str) -> tuple[int, str, int]:
    """``(count, name, bytes)`` of one GPU group such as ``"2 x RTX 3090"`` or ``"1 x A100 80GB"``."""
    text = part.strip()
    count = 1
    if m := _COUNT.match(text):
        count, text = int(m["count"]), text[m.end() :]
    card = find(text)
    mem = None if card is not None else _MEMORY.search(text)
    if mem is not None:
        text = text[: mem.start()].strip()
        card = find(text)
    if count < 1:
        raise SnapshotError(f"{part.strip()!r}: a GPU group needs a count of 1 or more ({EXAMPLES})")
    if mem is None:
        if card is None:
            raise SnapshotError(
                f"{part.strip()!r}: unknown GPU; name a card ({known()}) or give its memory with a unit ({EXAMPLES})"
            )
        if len(card.variants) > 1:
            sizes = " or ".join(f"'{count} x {card.name} {gb}GB'" for gb, _ in card.variants)
            raise SnapshotError(f"{part.strip()!r}: the {card.name} comes in several sizes; say which: {sizes}")
        return count, card.name, card.variants[0][1] * MIB
    if not mem["unit"] or mem["unit"].lower() == "g":
        what = f"'{mem['mem']}'" + (" G" if mem["unit"] else "")
        raise SnapshotError(
            f"{part.strip()!r}: is {what} a memory size? Give its unit — GiB (2^30 bytes) or GB (10^9, as "
            f"cards are sold) — or a card name ({EXAMPLES})"
        )
    stated = float(mem["mem"]) * _UNITS[mem["unit"].lower()]
    if stated <= 0:
        raise SnapshotError(f"{part.strip()!r}: the memory must be above 0")
    if card is not None and mem["unit"].lower() in ("gb", "gib"):  # a sold size picks the variant: NVML's figure
        for gb, mib in card.variants:
            if abs(stated - gb * 10**9) <= 0.05 * gb * 10**9 or abs(stated - gb * GIB) <= 0.05 * gb * GIB:
                return count, card.name, mib * MIB
        return count, card.name, int(stated)  # a variant not in the table: as stated
    return count, text or "GPU", int(stated)


def parse_snapshot(text: str) -> Hardware:
    """A described machine: ``"2 x RTX 3090"``, ``"2x4090"``, ``"1 x A100 80GB, 2 x L4"``,
    ``"4 x MyGPU 24GiB"`` or ``"none"``. A known card (``gwproxy.switcher.cards``) needs no memory
    (or its size, where it comes in several); any other needs its memory with a unit: GiB is 2^30
    bytes, GB 10^9 (for a known card, its sold size picks the variant). Anything ambiguous is
    refused with examples."""
    text = text.strip()
    if text.lower() in ("none", "no gpu", "0"):
        return Hardware((), "snapshot", taken_at=time.time(), note="configured: no GPU")
    if not text:
        raise SnapshotError(f"no GPU described; {EXAMPLES}")
    gpus: list[Gpu] = []
    for part in re.split(r"[,+]", text):
        if not part.strip():
            raise SnapshotError(f"{text!r}: an empty GPU group; {EXAMPLES}")
        count, name, size = _group(part)
        gpus += [Gpu(len(gpus) + i, name, size) for i in range(count)]
    return Hardware(tuple(gpus), "snapshot", taken_at=time.time())


def _nvml() -> Hardware:
    import pynvml

    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(
                Gpu(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(h)),
                    memory_total=int(mem.total),
                    memory_used=int(mem.used),
                    memory_free=int(mem.free),
                    utilization=_optional(lambda h=h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                    temperature=_optional(lambda h=h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                    power_watts=_optional(lambda h=h: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                )
            )
        return Hardware(tuple(gpus), "nvml", _text(driver), f"{cuda // 1000}.{cuda % 1000 // 10}", time.time())
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional(read: Any) -> Any:
    """A reading some GPUs do not support (NVMLError_NotSupported) is None, not a failure."""
    import pynvml

    try:
        return read()
    except pynvml.NVMLError:
        return None


SMI_QUERY = "index,name,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu,power.draw,driver_version"


def parse_smi_csv(text: str) -> tuple[list[Gpu], str | None]:
    """``nvidia-smi --query-gpu=<SMI_QUERY> --format=csv,noheader,nounits`` → GPUs, driver."""
    gpus: list[Gpu] = []
    driver = None
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 9:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")

        def num(cell: str) -> float | None:
            return None if cell.startswith("[") or cell in ("", "N/A") else float(cell)

        total, used, free = (num(c) for c in cells[2:5])
        util, temp, power = num(cells[5]), num(cells[6]), num(cells[7])
        gpus.append(
            Gpu(
                index=int(cells[0]),
                name=cells[1],
                memory_total=int((total or 0) * MIB),
                memory_used=None if used is None else int(used * MIB),
                memory_free=None if free is None else int(free * MIB),
                utilization=None if util is None else int(util),
                temperature=None if temp is None else int(temp),
                power_watts=power,
            )
        )
        driver = cells[8]
    return gpus, driver


def _smi(binary: str) -> Hardware:
    out = subprocess.run(
        [binary, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=15, check=True,
    ).stdout  # fmt: skip
    gpus, driver = parse_smi_csv(out)
    header = subprocess.run([binary], capture_output=True, text=True, timeout=15).stdout
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return Hardware(tuple(gpus), "nvidia-smi", driver, cuda[1] if cuda else None, time.time())


def probe(nvidia_smi: str = "nvidia-smi") -> Hardware:
    """What this host has. Never raises: no driver, no library and no GPU all read as no GPU,
    with the reason in ``note``."""
    reasons = []
    try:
        return _nvml()
    except Exception as exc:  # pynvml raises its own tree, ImportError, OSError …
        reasons.append(f"NVML: {type(exc).__name__}: {exc}")
    binary = shutil.which(nvidia_smi)
    if binary is None:
        reasons.append(f"{nvidia_smi}: not found")
    else:
        try:
            return _smi(binary)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            reasons.append(f"{nvidia_smi}: {type(exc).__name__}: {exc}")
    return Hardware((), "none", taken_at=time.time(), note="; ".join(reasons))
