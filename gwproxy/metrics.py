"""Metrics: the gateway's Prometheus collectors, on a registry owned by one application.

Each ``create_app`` gets its own ``CollectorRegistry`` so several gateways can live in one
process (tests) without clashing. Label children are cached, because ``labels()`` takes a lock
and builds a tuple on every call and this runs on the hot path.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("gwproxy_requests", "Requests answered", ["route", "model", "status"], registry=r)
        self.latency = Histogram(
            "gwproxy_request_duration_seconds",
            "Time from request arrival to the end of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gwproxy_time_to_first_token_seconds",
            "Time from request arrival to the first response body bytes from the upstream",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "gwproxy_overhead_seconds",
            "Time the gateway spent on a proxied request before the response headers, outside the upstream",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("gwproxy_requests_in_flight", "Requests being handled", registry=r)
        self.upstream_errors = Counter(
            "gwproxy_upstream_errors", "Failures talking to the upstream", ["kind"], registry=r
        )
        self.prompt_tokens = Counter(
            "gwproxy_prompt_tokens", "Prompt tokens reported by the upstream", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "gwproxy_completion_tokens",
            "Completion tokens reported by the upstream",
            ["model"],
            registry=r,
        )
        self._requests: dict[tuple[str, str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._ttft: dict[str, Histogram] = {}

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, str(status))
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()
        hist = self._latency.get(route)
        if hist is None:
            hist = self._latency[route] = self.latency.labels(route)
        hist.observe(seconds)

    def observe_ttft(self, model: str, seconds: float) -> None:
        hist = self._ttft.get(model)
        if hist is None:
            hist = self._ttft[model] = self.ttft.labels(model)
        hist.observe(seconds)

    def count_tokens(self, model: str, prompt: int | None, completion: int | None) -> None:
        if prompt:
            self.prompt_tokens.labels(model).inc(prompt)
        if completion:
            self.completion_tokens.labels(model).inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
