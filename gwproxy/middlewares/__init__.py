"""Middlewares, one per file; their order is set once, in ``gwproxy.app``."""
