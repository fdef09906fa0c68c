"""Metrics: the gateway's Prometheus metrics, kept in plain Python numbers.

The gateway updates its metrics on every request, on the event loop, which is their only writer;
``prometheus_client``'s metric objects take a lock and walk label tuples on every update, which
costs more than the rest of a request's bookkeeping together. So the values live here in dicts
and lists, and ``GatewayCollector`` turns them into metric families only when ``/metrics`` is
scraped. Each ``create_app`` gets its own registry, so several gateways can share a process
(tests). Labels are bounded by the caller (routes are known paths, models are served names or
``other``).
"""

from __future__ import annotations

import collections
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
RECENT = 50  # requests the console's live tail shows
SWITCH_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800)  # model loads take seconds to minutes


class Histogram:
    """Bucket counts and sums per label value (one label)."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, label: str, value: float) -> None:
        s = self.series.get(label)
        if s is None:
            s = self.series[label] = ([0] * (len(self.bounds) + 1), [0.0])
        s[0][bisect_left(self.bounds, value)] += 1
        s[1][0] += value

    def family(self, name: str, doc: str, label: str | None) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=[label] if label else None)
        for value, (counts, total) in self.series.items():
            running, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                running += count
                buckets.append((_le(bound), running))
            fam.add_metric([value] if label else [], buckets, total[0])
        return fam


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


@dataclass(frozen=True, slots=True)
class UpstreamCounts:
    name: str
    requests: int
    errors: Mapping[str, int]
    in_flight: int
    ejections: int
    up: bool
    ejected: bool


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests: dict[tuple[str, str, str], int] = {}
        self.upstream_errors: dict[str, int] = {}
        self.ratelimit_backend_errors = 0
        self.ratelimited: dict[str, int] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.completion_tokens: dict[str, int] = {}
        # Capture's counts and queue depth, read at scrape time from what capture owns.
        self.capture: Callable[[], Mapping[str, int]] = dict
        self.latency = Histogram(LATENCY_BUCKETS)
        # For the console's dashboard (/api/stats): time by model, and the latest requests to a
        # model (end time, method, route, model, status, seconds, username).
        self.model_latency: dict[str, list[float]] = {}  # model → [count, seconds]
        self.recent: collections.deque[tuple[float, str, str, str, int, float, str | None]] = collections.deque(
            maxlen=RECENT
        )
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.overhead = Histogram(OVERHEAD_BUCKETS)
        # Models: what is served (read at scrape time from the switcher and the upstream's
        # /v1/models), switch jobs by outcome and how long they took, model loads by profile.
        self.model_info: Callable[[], list[tuple[str, str]]] = lambda: []  # (profile or "", served name)
        # Per upstream, read at scrape time from the registry: its counters and state.
        self.upstreams: Callable[[], list[UpstreamCounts]] = lambda: []
        self.switches: dict[str, int] = {}
        self.switch_seconds = Histogram(SWITCH_BUCKETS)
        self.load_seconds = Histogram(SWITCH_BUCKETS)
        self.wake_seconds = Histogram(SWITCH_BUCKETS)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(GatewayCollector(self))

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency.observe(route, seconds)
        spent = self.model_latency.get(model)
        if spent is None:
            spent = self.model_latency[model] = [0.0, 0.0]
        spent[0] += 1
        spent[1] += seconds

    def observe_ttft(self, model: str, seconds: float) -> None:
        self.ttft.observe(model, seconds)

    def observe_overhead(self, seconds: float) -> None:
        self.overhead.observe("", seconds)

    def count_upstream_error(self, kind: str) -> None:
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1

    def count_ratelimit_backend_error(self) -> None:
        self.ratelimit_backend_errors += 1

    def count_ratelimited(self, reason: str) -> None:
        self.ratelimited[reason] = self.ratelimited.get(reason, 0) + 1

    def count_tokens(self, model: str, prompt: int | None, completion: int | None) -> None:
        if prompt:
            self.prompt_tokens[model] = self.prompt_tokens.get(model, 0) + prompt
        if completion:
            self.completion_tokens[model] = self.completion_tokens.get(model, 0) + completion

    def count_switch(self, outcome: str, seconds: float) -> None:
        self.switches[outcome] = self.switches.get(outcome, 0) + 1
        self.switch_seconds.observe(outcome, seconds)

    def observe_load(self, profile: str, seconds: float) -> None:
        self.load_seconds.observe(profile, seconds)

    def observe_wake(self, profile: str, seconds: float) -> None:
        self.wake_seconds.observe(profile, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _counter(name: str, doc: str, labels: Sequence[str], values: Mapping[Any, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in values.items():
        fam.add_metric(list(key), value)
    return fam


class GatewayCollector(Collector):
    """Exposes a ``Metrics`` at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _counter("gwproxy_requests", "Requests answered", ("route", "model", "status"), m.requests)
        yield m.latency.family(
            "gwproxy_request_duration_seconds", "Time from request arrival to the end of the response", "route"
        )
        yield m.ttft.family(
            "gwproxy_time_to_first_token_seconds",
            "Time from request arrival to the first response body bytes from the upstream",
            "model",
        )
        yield m.overhead.family(
            "gwproxy_overhead_seconds",
            "Time the gateway spent on a proxied request before sending it upstream",
            None,
        )
        gauge = GaugeMetricFamily("gwproxy_requests_in_flight", "Requests being handled")
        gauge.add_metric([], m.in_flight)
        yield gauge
        yield _counter(
            "gwproxy_upstream_errors",
            "Failures talking to the upstream",
            ("kind",),
            {(k,): v for k, v in m.upstream_errors.items()},
        )
        errors = CounterMetricFamily(
            "gwproxy_ratelimit_backend_errors", "Rate-limit decisions the shared store could not make"
        )
        errors.add_metric([], m.ratelimit_backend_errors)
        yield errors
        yield _counter(
            "gwproxy_ratelimited",
            "Requests refused by a rate limit, by the limit that refused them",
            ("limit",),
            {(k,): v for k, v in m.ratelimited.items()},
        )
        yield _counter(
            "gwproxy_prompt_tokens",
            "Prompt tokens reported by the upstream",
            ("model",),
            {(k,): v for k, v in m.prompt_tokens.items()},
        )
        yield _counter(
            "gwproxy_completion_tokens",
            "Completion tokens reported by the upstream",
            ("model",),
            {(k,): v for k, v in m.completion_tokens.items()},
        )
        info = GaugeMetricFamily(
            "gwproxy_model_info",
            "The model being served (1 per served name), with its profile",
            labels=["profile", "model"],
        )
        for profile, model in m.model_info():
            info.add_metric([profile, model], 1)
        yield info
        yield _counter("gwproxy_model_switches", "Model switch jobs, by outcome", ("outcome",),
                       {(k,): v for k, v in m.switches.items()})  # fmt: skip
        yield m.switch_seconds.family(
            "gwproxy_model_switch_duration_seconds", "Time from a switch request to its outcome", "outcome"
        )
        yield m.load_seconds.family(
            "gwproxy_model_load_duration_seconds", "Time a model took from start to serving, by profile", "profile"
        )
        yield m.wake_seconds.family(
            "gwproxy_model_wake_duration_seconds",
            "Time a model put to sleep took to wake and answer its warm-up token, by profile",
            "profile",
        )
        yield from _upstream_families(m.upstreams())
        capture = m.capture()
        depth = GaugeMetricFamily("gwproxy_capture_queue_depth", "Captured requests waiting for the writer")
        depth.add_metric([], capture.get("queue", 0))
        yield depth
        for name, doc in (
            ("written", "Captured requests written to the database"),
            ("spooled", "Captured requests written to the disk spool (database down or slow)"),
            ("replayed", "Spooled records replayed into the database"),
            ("dropped", "Captured requests lost because the spool was full (should stay 0)"),
            ("rejected", "Captured requests the database refused, set aside in rejected.jsonl"),
        ):
            counter = CounterMetricFamily(f"gwproxy_capture_{name}", doc)
            counter.add_metric([], capture.get(name, 0))
            yield counter


def _upstream_families(upstreams: list[UpstreamCounts]) -> Iterator[Metric]:
    yield _counter("gwproxy_upstream_requests", "Requests sent to each upstream (retries included)",
                   ("upstream",), {(u.name,): u.requests for u in upstreams})  # fmt: skip
    yield _counter(
        "gwproxy_upstream_failures",
        "Failures of each upstream, by kind (refused, timeout, disconnected, status_502, status_503, idle_timeout)",
        ("upstream", "kind"),
        {(u.name, kind): n for u in upstreams for kind, n in u.errors.items()},
    )
    yield _counter("gwproxy_upstream_ejections", "Times each upstream was ejected after repeated failures",
                   ("upstream",), {(u.name,): u.ejections for u in upstreams})  # fmt: skip
    for name, doc, value in (
        ("gwproxy_upstream_in_flight", "Requests in flight at each upstream through the gateway", "in_flight"),
        ("gwproxy_upstream_up", "1 while the upstream answered its last /v1/models poll", "up"),
        ("gwproxy_upstream_ejected", "1 while the upstream is ejected (out of rotation)", "ejected"),
    ):
        gauge = GaugeMetricFamily(name, doc, labels=["upstream"])
        for u in upstreams:
            gauge.add_metric([u.name], int(getattr(u, value)))
        yield gauge
