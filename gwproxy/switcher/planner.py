"""Planner (pure): does a profile fit this hardware, with which tensor-parallel size, and why not.

Memory a model needs on each GPU at tensor parallel ``tp``::

    weights / tp                      parameters × bytes per weight (dtype or quantization),
                                      or the profile's measured ``weights_gib``
  + KV cache for one max_model_len    2 × layers × ceil(kv_heads / tp) × head_dim × bytes × tokens
    sequence, per GPU                 (KV heads are replicated when tp exceeds them)
  + reserve                           CUDA context, activations, CUDA graphs (``reserve_gib``)

and what a GPU offers is ``memory_total × gpu_memory_utilization`` (vLLM claims that share and
fills what is left after weights and reserve with KV cache). ``tp`` is the profile's number, or
for ``auto`` the smallest power of two that divides the attention heads, is no more than the
GPUs present, and fits. A plan that leaves less than ``HEADROOM`` of the budget free is
``tight``: it starts, with little KV cache beyond one full-length sequence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gwproxy.switcher.hardware import GIB, Hardware
from gwproxy.switcher.profiles import WEIGHT_BYTES, Profile

RESERVE_GIB = 1.5
HEADROOM = 0.15
VERDICTS = ("fits", "tight", "no_fit")


@dataclass(frozen=True, slots=True)
class Plan:
    profile_id: str
    verdict: str  # one of VERDICTS
    tensor_parallel: int | None  # the size planned (or the last tried, for no_fit); None: none possible
    weights_bytes: int  # whole model
    kv_bytes_per_gpu: int  # one max_model_len sequence, on each GPU
    reserve_bytes: int  # per GPU
    need_per_gpu: int
    budget_per_gpu: int  # memory_total × gpu_memory_utilization of the smallest GPU used
    max_sequences: int  # full-length sequences the KV cache can hold at once
    reason: str

    @property
    def fits(self) -> bool:
        return self.verdict != "no_fit"

    def public(self) -> dict[str, Any]:
        def gib(v: int) -> float:
            return round(v / GIB, 2)

        return {
            "profile_id": self.profile_id,
            "verdict": self.verdict,
            "fits": self.fits,
            "tensor_parallel": self.tensor_parallel,
            "weights_gib": gib(self.weights_bytes),
            "kv_cache_gib_per_gpu": gib(self.kv_bytes_per_gpu),
            "reserve_gib_per_gpu": gib(self.reserve_bytes),
            "need_gib_per_gpu": gib(self.need_per_gpu),
            "budget_gib_per_gpu": gib(self.budget_per_gpu),
            "headroom_gib_per_gpu": gib(self.budget_per_gpu - self.need_per_gpu),
            "max_sequences": self.max_sequences,
            "reason": self.reason,
        }


def weights_bytes(profile: Profile) -> int:
    if profile.weights_gib is not None:
        return int(profile.weights_gib * GIB)
    return int(profile.architecture.parameters_b * 1e9 * WEIGHT_BYTES[profile.weight_format])


def kv_bytes_per_token(profile: Profile, tp: int) -> int:
    """KV cache bytes one token takes on one GPU at tensor parallel ``tp``."""
    a = profile.architecture
    if profile.kv_cache_dtype == "fp8":
        element = 1
    elif profile.quantization is None and profile.dtype == "float32":
        element = 4
    else:
        element = 2  # bf16/fp16, and quantized models keep activations in fp16
    return 2 * a.layers * math.ceil(a.kv_heads / tp) * a.head_dim * element


def _gib(v: float) -> str:
    return f"{v / GIB:.1f} GiB"


def _try(profile: Profile, hardware: Hardware, tp: int, reserve: int) -> Plan:
    weights = weights_bytes(profile)
    kv = kv_bytes_per_token(profile, tp) * profile.max_model_len
    largest = sorted((g.memory_total for g in hardware.gpus), reverse=True)[:tp]
    budget = int(min(largest) * profile.gpu_memory_utilization)
    need = math.ceil(weights / tp) + kv + reserve
    free_for_kv = budget - math.ceil(weights / tp) - reserve
    sequences = max(0, free_for_kv // kv) if kv else 0
    parts = (
        f"{_gib(need)} per GPU at tensor parallel {tp} (weights {_gib(weights / tp)}, KV cache for "
        f"{profile.max_model_len} tokens {_gib(kv)}, reserve {_gib(reserve)}); each GPU offers "
        f"{_gib(budget)} ({_gib(min(largest))} x {profile.gpu_memory_utilization:g})"
    )
    if need > budget:
        return Plan(profile.id, "no_fit", tp, weights, kv, reserve, need, budget, 0, f"needs {parts}")
    verdict = "fits" if budget - need >= HEADROOM * budget else "tight"
    return Plan(
        profile.id, verdict, tp, weights, kv, reserve, need, budget, int(sequences),
        f"{'fits' if verdict == 'fits' else 'fits tightly'}: {parts}; room for {sequences} full-length sequences",
    )  # fmt: skip


def plan(profile: Profile, hardware: Hardware, reserve_gib: float = RESERVE_GIB) -> Plan:
    """The plan for running ``profile`` on ``hardware``."""
    reserve = int(reserve_gib * GIB)
    weights = weights_bytes(profile)
    heads = profile.architecture.attention_heads
    gpus = len(hardware.gpus)

    def refuse(tp: int | None, reason: str) -> Plan:
        return Plan(profile.id, "no_fit", tp, weights, 0, reserve, 0, 0, 0, reason)

    if gpus == 0:
        return refuse(None, f"no GPU on this host ({hardware.note or hardware.source}); vLLM needs an NVIDIA GPU")
    if profile.tensor_parallel is not None:
        tp = profile.tensor_parallel
        if tp > gpus:
            return refuse(tp, f"the profile sets tensor_parallel {tp}; this host has {gpus} GPU(s)")
        if heads % tp:
            return refuse(tp, f"tensor_parallel {tp} does not divide the {heads} attention heads")
        return _try(profile, hardware, tp, reserve)
    candidates = [tp for tp in (1, 2, 4, 8, 16) if tp <= gpus and heads % tp == 0]
    last: Plan | None = None
    for tp in candidates:
        last = _try(profile, hardware, tp, reserve)
        if last.fits:
            return last
    if last is None:  # pragma: no cover - tp 1 always divides
        return refuse(None, "no tensor-parallel size divides the attention heads")
    return Plan(
        last.profile_id, "no_fit", last.tensor_parallel, last.weights_bytes, last.kv_bytes_per_gpu,
        last.reserve_bytes, last.need_per_gpu, last.budget_per_gpu, 0,
        f"{last.reason}; the {gpus} GPU(s) here ({hardware.describe()}) offer {_gib(last.budget_per_gpu * gpus)} "
        f"in all, the model needs about {_gib(weights + kv_bytes_per_token(profile, 1) * profile.max_model_len)} "
        "plus the reserve",
    )  # fmt: skip


def recommend(profiles: Iterable[Profile], hardware: Hardware, reserve_gib: float = RESERVE_GIB) -> list[Plan]:
    """Every profile's plan, ranked: fits with headroom, then tight, then no fit. The larger
    model first among those that fit (the most capable that runs); among those that do not,
    the closest to fitting first."""
    by_id = {p.id: p for p in profiles}
    plans = [plan(p, hardware, reserve_gib) for p in by_id.values()]

    def rank(pl: Plan) -> tuple[int, float, str]:
        size = by_id[pl.profile_id].architecture.parameters_b
        if pl.fits:
            return VERDICTS.index(pl.verdict), -size, pl.profile_id
        return 2, pl.need_per_gpu / pl.budget_per_gpu if pl.budget_per_gpu else math.inf, pl.profile_id

    return sorted(plans, key=rank)


# ---- packing several models onto the GPUs (on demand) ----------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """A model instance's claim: ``per_gpu`` bytes on each of ``gpus``."""

    profile_id: str
    gpus: tuple[int, ...]
    per_gpu: int
    tensor_parallel: int
    host: str = "local"  # the GPU host (on demand with several Docker hosts)

    def utilization(self, hardware: Hardware) -> float:
        """The ``--gpu-memory-utilization`` that makes vLLM claim no more than its share: the
        claim over the smallest of its GPUs, rounded up to a hundredth."""
        total = min(g.memory_total for g in hardware.gpus if g.index in self.gpus)
        return min(0.99, math.ceil(100 * self.per_gpu / total) / 100)


def free_memory(hardware: Hardware, residents: Iterable[Placement], share: float) -> dict[int, int]:
    """Bytes still unclaimed on each GPU: ``share`` of its memory, less the residents' claims."""
    free = {g.index: int(g.memory_total * share) for g in hardware.gpus}
    for r in residents:
        for i in r.gpus:
            free[i] = free.get(i, 0) - r.per_gpu
    return free


def place(
    profile: Profile, hardware: Hardware, residents: Iterable[Placement], reserve_gib: float = RESERVE_GIB
) -> tuple[Placement | None, Plan]:
    """Where ``profile`` fits beside ``residents``: its plan (the tensor-parallel size and the memory
    per GPU) and the GPUs with room for that claim, choosing the fullest GPUs that still fit (best
    fit keeps large holes for large models). ``None`` when no set of GPUs has room now."""
    fit = plan(profile, hardware, reserve_gib)
    if not fit.fits or fit.tensor_parallel is None:
        return None, fit
    free = free_memory(hardware, residents, profile.gpu_memory_utilization)
    room = sorted((left, i) for i, left in free.items() if left >= fit.need_per_gpu)
    if len(room) < fit.tensor_parallel:
        return None, fit
    gpus = tuple(sorted(i for _, i in room[: fit.tensor_parallel]))
    return Placement(profile.id, gpus, fit.need_per_gpu, fit.tensor_parallel), fit


def shortfall(fit: Plan, hardware: Hardware, residents: Iterable[Placement], share: float) -> str:
    """Why a fitting plan has no room now, in numbers: its need per GPU against what is free."""
    free = free_memory(hardware, residents, share)
    shown = ", ".join(f"GPU {i}: {_gib(max(0, v))} free" for i, v in sorted(free.items()))
    return f"needs {_gib(fit.need_per_gpu)} on each of {fit.tensor_parallel} GPU(s); {shown}"
