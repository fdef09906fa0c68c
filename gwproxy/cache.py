"""Cache: a bounded mapping whose entries expire, shared by the authenticator and the limiter's
override policy (both keep the hot path free of database round trips)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MAX_ENTRIES = 50_000


class TtlCache(Generic[K, V]):
    """A bounded mapping whose entries expire at a monotonic deadline."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, now: float) -> tuple[bool, V | None]:
        hit = self._data.get(key)
        if hit is None or hit[1] <= now:
            return False, None
        return True, hit[0]

    def put(self, key: K, value: V, until: float) -> None:
        self._data[key] = (value, until)
        if len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()
