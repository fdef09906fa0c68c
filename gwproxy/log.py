"""Logging: structlog configured once, JSON lines in production and console output in DEBUG.

Contract: nothing logs a request or response body, a password or a token at INFO or above. The
request_id middleware sets ``REQUEST_ID`` (a context variable, so each request's task sees its
own), and every line written while a request is handled carries it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


REQUEST_ID: ContextVar[str | None] = ContextVar("gwproxy_request_id", default=None)


def add_request_id(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    rid = REQUEST_ID.get()
    if rid is not None:
        event["request_id"] = rid
    return event


class IsoStamper:
    """Adds ``timestamp`` as ISO 8601 UTC with microseconds, formatting the date and time only
    once a second (structlog's ``TimeStamper`` formats a datetime on every line)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


def configure(level: str = "info", json: bool = True, stream: TextIO | None = None) -> None:
    """Set up structlog (and route the stdlib's ``logging`` through the same format). Servers log
    to stdout; commands whose stdout is their answer log to stderr."""
    out = stream or sys.stdout
    lvl = LOG_LEVELS[level.lower()]
    shared: list[structlog.typing.Processor] = [
        add_request_id,
        structlog.processors.add_log_level,
        IsoStamper(),
    ]
    if json:
        structlog.configure(
            processors=[
                *shared,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(lvl),
            logger_factory=structlog.BytesLoggerFactory(out.buffer),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer(colors=out.isatty())],
            wrapper_class=structlog.make_filtering_bound_logger(lvl),
            logger_factory=structlog.PrintLoggerFactory(out),
            cache_logger_on_first_use=True,
        )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr, force=True)


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
