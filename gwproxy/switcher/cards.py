"""Cards: common NVIDIA GPUs by name, with the memory NVML reports for each variant, so a
hardware description can say ``"2x3090"`` or ``"1 x A100 80GB"`` and be planned exactly.

Memory figures are the totals ``nvidia-smi`` prints (MiB). A card sold in several sizes (A100 40
or 80 GB, V100 16 or 32 GB) needs its size named; the marketing size ("80GB") picks the variant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 1024**2


@dataclass(frozen=True, slots=True)
class Card:
    name: str  # as shown
    variants: tuple[tuple[int, int], ...]  # (marketing size in GB, memory_total in MiB)


CARDS: tuple[Card, ...] = (
    Card("RTX 3060", ((12, 12288),)),
    Card("RTX 3080", ((10, 10240), (12, 12288))),
    Card("RTX 3090", ((24, 24576),)),
    Card("RTX 3090 Ti", ((24, 24564),)),
    Card("RTX 4060 Ti", ((8, 8188), (16, 16380))),
    Card("RTX 4070 Ti", ((12, 12282),)),
    Card("RTX 4080", ((16, 16376),)),
    Card("RTX 4090", ((24, 24564),)),
    Card("RTX 5090", ((32, 32607),)),
    Card("RTX 2080 Ti", ((11, 11264),)),
    Card("RTX A4000", ((16, 16376),)),
    Card("RTX A5000", ((24, 24564),)),
    Card("RTX A6000", ((48, 49140),)),
    Card("RTX 6000 Ada", ((48, 49140),)),
    Card("T4", ((16, 15360),)),
    Card("V100", ((16, 16384), (32, 32768))),
    Card("A10", ((24, 23028),)),
    Card("A10G", ((24, 23028),)),
    Card("A30", ((24, 24576),)),
    Card("A40", ((48, 46068),)),
    Card("A100", ((40, 40960), (80, 81920))),
    Card("L4", ((24, 23034),)),
    Card("L40", ((48, 46068),)),
    Card("L40S", ((48, 46068),)),
    Card("H100", ((80, 81559),)),
    Card("H100 NVL", ((94, 95830),)),
    Card("H200", ((141, 143771),)),
    Card("B200", ((180, 183359),)),
)

_NOISE = re.compile(r"\b(nvidia|geforce|tesla|pcie|sxm\d?|gpu)\b", re.IGNORECASE)


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", "", _NOISE.sub(" ", name)).lower()


_BY_KEY = {_key(c.name): c for c in CARDS}
# "3090" alone names the RTX 3090 (no other card is called that)
_BY_KEY.update({_key(c.name).removeprefix("rtx"): c for c in CARDS if c.name.startswith("RTX ")})


def find(name: str) -> Card | None:
    """The card ``name`` stands for ("RTX 4090", "nvidia geforce rtx 4090", "4090", "a100-sxm4"),
    or None."""
    return _BY_KEY.get(_key(name)) if name.strip() else None


def known() -> str:
    return ", ".join(c.name for c in CARDS)
