"""Bodies: JSON request bodies in (the proxy's and the gateway's own API's), and JSON out.

``parse_object(raw)`` is the one JSON body reader (orjson; 400 for invalid JSON or a non-object).
``load(request, schema)`` parses a request body once with orjson and validates it with a
marshmallow schema, raising ``InvalidRequest`` that names the first bad field; ``json`` renders
a payload with orjson (datetimes as ISO 8601). A string with a NUL character is refused wherever
it appears (PostgreSQL cannot store one); ``identifier`` reads a numeric id from a path or query.
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


def parse_object(raw: bytes) -> dict[str, Any]:
    """The one JSON body reader: a request body that must be a JSON object."""
    data = parse(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return data


MAX_ID = 2**63 - 1  # the largest id a database column holds


def identifier(raw: str, name: str) -> int | None:
    """``raw`` as a row id: ASCII digits that fit a BIGINT; None for anything else (the caller
    says 400 or 404). ``str.isdigit`` and ``int`` accept '²' and other scripts' digits."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    value = int(raw)
    return value if value <= MAX_ID else None


def nul_at(data: Any, path: str = "") -> str | None:
    """The param path of the first string (or key) holding a NUL character, else None."""
    if isinstance(data, str):
        return path if "\x00" in data else None
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return sub
            found = nul_at(value, sub)
            if found is not None:
                return found
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found = nul_at(value, f"{path}[{i}]")
            if found is not None:
                return found
    return None


async def load(request: web.Request, schema: Schema) -> dict[str, Any]:
    raw = await request.read()
    data = parse_object(raw) if raw else {}
    bad = nul_at(data)
    if bad is not None:
        raise InvalidRequest(f"Invalid request: '{bad}' contains a NUL character", param=bad)
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ValidationError as exc:
        raise invalid(exc.messages) from None
    return loaded


def json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")
