"""Bucket: token-bucket arithmetic — pure, the clock passed in.

A bucket holds up to ``capacity`` tokens and refills at ``rate`` tokens per second. A request
takes ``cost`` tokens from every bucket it touches, or from none: ``take`` admits only when all
of them hold enough. A cost above a bucket's capacity is clamped to it (a request bigger than the
whole allowance waits for a full bucket rather than forever). A clock that goes backwards refills
nothing; a huge gap refills to capacity, never beyond. The Redis store runs the same arithmetic in
Lua (``redis_store.ADMIT``); a test holds the two to the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    capacity: float
    rate: float  # tokens per second

    @classmethod
    def per_window(cls, amount: float, window: float) -> Limit:
        return cls(amount, amount / window)


@dataclass(frozen=True, slots=True)
class State:
    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class Reading:
    """What one bucket looks like after a decision (for the x-ratelimit-* headers)."""

    limit: float
    remaining: float
    reset_after: float  # seconds until the bucket is full again


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until the request would be admitted (0 when allowed)
    readings: tuple[Reading, ...]


def level(state: State | None, limit: Limit, now: float) -> float:
    if state is None:
        return limit.capacity
    elapsed = max(0.0, now - state.updated)
    return min(limit.capacity, state.tokens + elapsed * limit.rate)


def take(
    states: Sequence[State | None], limits: Sequence[Limit], costs: Sequence[float], now: float
) -> tuple[Decision, list[State]]:
    levels = [level(s, lim, now) for s, lim in zip(states, limits, strict=True)]
    costs = [min(c, lim.capacity) for c, lim in zip(costs, limits, strict=True)]
    allowed = all(lv >= c for lv, c in zip(levels, costs, strict=True))
    retry = 0.0
    if allowed:
        levels = [lv - c for lv, c in zip(levels, costs, strict=True)]
    else:
        retry = max(
            (c - lv) / lim.rate if lim.rate > 0 else math.inf
            for lv, c, lim in zip(levels, costs, limits, strict=True)
            if lv < c
        )
    readings = tuple(
        Reading(lim.capacity, max(0.0, lv), (lim.capacity - lv) / lim.rate if lim.rate > 0 else 0.0)
        for lv, lim in zip(levels, limits, strict=True)
    )
    return Decision(allowed, retry, readings), [State(lv, now) for lv in levels]


def settle(state: State | None, limit: Limit, delta: float, now: float) -> State:
    """Charge ``delta`` more tokens (or refund, if negative) after the fact; the bucket may go into
    debt down to ``-capacity``, which later requests then wait out."""
    lv = level(state, limit, now) - delta
    return State(max(-limit.capacity, min(limit.capacity, lv)), now)
