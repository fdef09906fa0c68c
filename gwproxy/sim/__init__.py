"""A vLLM-compatible simulator: the upstream for the demo, the tests and the benchmark.

``engine`` decides what a request produces (pure, deterministic from a seed); ``wire`` turns
that into vLLM's exact bytes; ``server`` serves it over HTTP with vLLM's timing and metrics.
"""
