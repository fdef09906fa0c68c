"""Schema: marshmallow validation of the request fields the gateway reads.

Only what the gateway relies on is checked (``model``, ``messages``, ``stream``, sampling ranges);
every other field passes through untouched (``unknown = INCLUDE``) for vLLM to judge. ``check``
turns marshmallow's nested error dict into one ``InvalidRequest`` naming the first bad ``param``
as a path (``messages[0].role``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from gwproxy.errors import InvalidRequest


class StrictBool(fields.Boolean):
    """A JSON boolean: ``true``/``false`` only, not ``"yes"`` or ``1``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


class Content(fields.Field[Any]):
    """Message content: a string, a list of content parts (objects), or null."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) and "type" in p for p in value):
            return value
        raise ValidationError("Must be a string, a list of content parts with 'type', or null.")


def _int(minimum: int) -> fields.Integer:
    return fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=minimum))


class _Open(Schema):
    class Meta:
        unknown = INCLUDE


class MessageSchema(_Open):
    role = fields.String(required=True)
    content = Content(allow_none=True)


class _Sampling(_Open):
    model = fields.String(required=True)
    stream = StrictBool(allow_none=True)
    temperature = fields.Float(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = fields.Float(allow_none=True, validate=validate.Range(min=0, max=1))
    max_tokens = _int(1)
    max_completion_tokens = _int(1)
    n = _int(1)
    stream_options = fields.Dict(allow_none=True)
    user = fields.String(allow_none=True)


class ChatRequest(_Sampling):
    messages = fields.List(fields.Nested(MessageSchema), required=True, validate=validate.Length(min=1))


class CompletionRequest(_Sampling):
    prompt = fields.Raw(required=True)


class EmbeddingRequest(_Open):
    model = fields.String(required=True)
    input = fields.Raw(required=True)


SCHEMAS: Mapping[str, Schema] = {
    "/v1/chat/completions": ChatRequest(),
    "/v1/completions": CompletionRequest(),
    "/v1/embeddings": EmbeddingRequest(),
}


def _first(errors: Any, path: str = "") -> tuple[str, str]:
    """The first (param path, message) in marshmallow's nested error structure."""
    if isinstance(errors, dict):
        key, value = next(iter(errors.items()))
        sub = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        return _first(value, sub)
    if isinstance(errors, list) and errors:
        if isinstance(errors[0], (dict, list)):
            return _first(errors[0], path)
        return path, str(errors[0])
    return path, str(errors)


def check(path: str, body: dict[str, Any]) -> None:
    """Raise ``InvalidRequest`` if ``body`` breaks the schema registered for ``path``."""
    schema = SCHEMAS.get(path)
    if schema is None:
        return
    errors = schema.validate(body)
    if errors:
        param, message = _first(errors)
        raise InvalidRequest(f"Invalid request: '{param}': {message}", param=param)
