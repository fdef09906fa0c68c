"""Logging: structlog configured once, JSON lines in production and console output in DEBUG.

Contract: nothing logs a request or response body, a password or a token at INFO or above. The
request_id middleware sets ``REQUEST_ID`` (a context variable, so each request's task sees its
own), and every line written while a request is handled carries it.

What the gateway does not write itself is redacted (``redact``): lines of the standard library's
loggers (aiohttp's, whose parser errors quote the raw request head with its ``Authorization``
header; asyncio's; SQLAlchemy's) and every formatted traceback. Credentials (``Authorization``,
``api-key``, ``x-api-key``, ``cookie`` values, bearer tokens, gateway API keys and refresh tokens,
JWTs) and the password in a URL become ``[REDACTED]``. The gateway's own lines name no secret by
contract, so they skip the scan (it would cost every access-log line).
"""

from __future__ import annotations

import logging
import os
import re
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


_SECRETS = (
    # a header (raw head, repr'd bytes or a dict's repr): keep the name, hide the value
    (
        re.compile(
            r"""(?i)((?:proxy-)?authorization|x-api-key|api-key|cookie|set-cookie)(['"]?\s*[:=,]\s*['"]?)"""
            r"""[^\r\n'"\\]+"""
        ),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"(?i)\bbearer\s+[^\s'\"\\,;]+"), "Bearer [REDACTED]"),
    (re.compile(r"\bgw[pr]-[A-Za-z0-9_\-]{6,}"), "[REDACTED]"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"), "[REDACTED]"),
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s:@'\"]*:[^/\s@'\"]*@"), r"\1***@"),
)


def redact(text: str) -> str:
    """``text`` with credentials masked (see the module's docstring)."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def redact_event(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Redacts a foreign line's message and arguments, and any formatted traceback."""
    for key in ("event", "exception", "positional_args"):
        value = event.get(key)
        if isinstance(value, str):
            event[key] = redact(value)
        elif isinstance(value, tuple):
            event[key] = tuple(redact(str(v)) for v in value)
    return event


def redact_traceback(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    value = event.get("exception")
    if isinstance(value, str):
        event["exception"] = redact(value)
    return event


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
                redact_traceback,
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(lvl),
            logger_factory=structlog.BytesLoggerFactory(out.buffer),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[
                *shared,
                structlog.processors.format_exc_info,
                redact_traceback,
                structlog.dev.ConsoleRenderer(colors=use_color(out)),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(lvl),
            logger_factory=structlog.PrintLoggerFactory(out),
            cache_logger_on_first_use=True,
        )
    _route_stdlib(lvl, json)


def use_color(stream: Any) -> bool:
    """Colour only for a terminal, and never when ``NO_COLOR`` is set (https://no-color.org) or
    the terminal is ``dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _route_stdlib(level: int, json: bool) -> None:
    """The standard library's loggers (aiohttp, asyncio, SQLAlchemy...) as structured lines on
    stderr, in the same format, redacted, at WARNING or above (or ``level`` if higher)."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=use_color(sys.stderr))
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.format_exc_info,
            redact_event,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            add_request_id,
            structlog.processors.add_log_level,
            IsoStamper(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
