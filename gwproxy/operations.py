"""Operations: a route handler declares what it is — summary, tag, request and response schemas,
status, errors, query parameters, who may call it — with ``@operation(...)``. The OpenAPI
document is built by walking the router (``gwproxy.docs``), and the auth middleware enforces the
declared access: one declaration, read by both.

``Access`` is shared with the endpoint table (``gwproxy.proxy.endpoints``), which gives the same
levels to whole path families (``/v1``, ``/api``) before routing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar


class Access(Enum):
    PUBLIC = "public"  # no credential (health, docs, login: it carries its own)
    USER = "user"  # any authenticated principal
    ADMIN = "admin"  # an admin principal
    METRICS = "metrics"  # public unless auth.metrics_public is false, then admins


@dataclass(frozen=True, slots=True)
class Operation:
    summary: str
    tag: str
    body: Any = None  # a marshmallow schema class for the JSON request body
    # A schema class; "sse" (JSON, or with stream=true an event stream); "events" (an event stream);
    # a mapping of content type → schema class (None: a string), or None (no content).
    answer: Any = None
    status: int = 200
    others: Mapping[int, Any] = field(default_factory=dict)  # other statuses' answers (a dry run's 200)
    access: Access = Access.USER
    errors: tuple[int, ...] = ()
    query: Mapping[str, str] = field(default_factory=dict)  # name → description


H = TypeVar("H", bound=Callable[..., Any])


def operation(
    summary: str,
    tag: str,
    *,
    body: Any = None,
    answer: Any = None,
    status: int = 200,
    access: Access = Access.USER,
    errors: tuple[int, ...] = (),
    query: Mapping[str, str] | None = None,
    others: Mapping[int, Any] | None = None,
) -> Callable[[H], H]:
    """Mark a handler with its ``Operation``."""
    op = Operation(summary, tag, body, answer, status, dict(others or {}), access, errors, dict(query or {}))

    def mark(handler: H) -> H:
        handler.operation = op  # type: ignore[attr-defined]
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    found = getattr(handler, "operation", None)
    return found if isinstance(found, Operation) else None
