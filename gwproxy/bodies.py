"""Bodies: the JSON bodies of the gateway's own API (/api/*), in and out.

``load(request, schema)`` parses a request body once with orjson and validates it with a
marshmallow schema, raising ``InvalidRequest`` that names the first bad field; ``json`` renders
a payload with orjson (datetimes as ISO 8601).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from marshmallow import Schema, ValidationError, fields

from gwproxy.errors import InvalidJSON, InvalidRequest


class StrictBool(fields.Boolean):
    """A JSON boolean: ``true``/``false`` only, not ``"yes"`` or ``1``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value

    @staticmethod
    def fast_check(value: Any) -> bool:
        return value is True or value is False


def _first(errors: Any, path: str = "") -> tuple[str, str]:
    """The first (param path, message) in marshmallow's nested error structure."""
    if isinstance(errors, dict):
        key, value = next(iter(errors.items()))
        sub = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        return _first(value, sub)
    if isinstance(errors, list) and errors:
        if isinstance(errors[0], dict | list):
            return _first(errors[0], path)
        return path, str(errors[0])
    return path, str(errors)


def invalid(errors: Any) -> InvalidRequest:
    param, message = _first(errors)
    return InvalidRequest(f"Invalid request: '{param}': {message}", param=param)


def parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from None


async def load(request: web.Request, schema: Schema) -> dict[str, Any]:
    raw = await request.read()
    data = parse(raw) if raw else {}
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ValidationError as exc:
        raise invalid(exc.messages) from None
    return loaded


def json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")
