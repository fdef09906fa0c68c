"""Schema: marshmallow validation of the request fields the gateway reads.

Only what the gateway relies on is checked (``model``, ``messages``, ``stream``, sampling ranges);
every other field passes through untouched (``unknown = INCLUDE``) for vLLM to judge. ``check``
turns marshmallow's nested error dict into one ``InvalidRequest`` naming the first bad ``param``
as a path (``messages[0].role``).

The marshmallow schemas are the one definition. Because a full marshmallow load costs tens of
microseconds per request, each schema is also compiled (``gwproxy.proxy.fastcheck``) into a
predicate that answers "certainly valid" for the plain JSON types a well-formed request uses;
anything it is not sure of goes through marshmallow, which has the last word and writes the error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from gwproxy.bodies import StrictBool, invalid
from gwproxy.proxy.fastcheck import compile_schema


class Content(fields.Field[Any]):
    """Message content: a string, a list of content parts (objects), or null."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) and "type" in p for p in value):
            return value
        raise ValidationError("Must be a string, a list of content parts with 'type', or null.")

    @staticmethod
    def fast_check(value: Any) -> bool:
        return type(value) is str or (type(value) is list and all(type(p) is dict and "type" in p for p in value))


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


FAST = {path: compile_schema(schema) for path, schema in SCHEMAS.items()}


def check(path: str, body: dict[str, Any]) -> None:
    """Raise ``InvalidRequest`` if ``body`` breaks the schema registered for ``path``."""
    schema = SCHEMAS.get(path)
    if schema is None:
        return
    if FAST[path](body):
        return
    errors = schema.validate(body)
    if errors:
        raise invalid(errors)
