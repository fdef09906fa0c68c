"""Schema: marshmallow validation of the request fields the gateway reads.

Only what the gateway relies on is checked (``model``, ``messages``, ``stream``, sampling ranges);
every other field passes through untouched (``unknown = INCLUDE``) for vLLM to judge. Never
stricter than vLLM's own (pydantic, lax) models: ``model`` may be left out (vLLM answers with its
served model), ``stream`` takes what a lax bool takes (``"yes"``, ``1``…), integers may come as
whole floats (``5.0``) or digit strings, ``temperature`` has no upper bound, a content part needs
no ``type``. ``check``
turns marshmallow's nested error dict into one ``InvalidRequest`` naming the first bad ``param``
as a path (``messages[0].role``).

The marshmallow schemas are the one definition. Because a full marshmallow load costs tens of
microseconds per request, each schema is also compiled (``gwproxy.proxy.fastcheck``) into a
predicate that answers "certainly valid" for the plain JSON types a well-formed request uses;
anything it is not sure of goes through marshmallow, which has the last word and writes the error.
"""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from gwproxy.bodies import invalid
from gwproxy.lax import lax_bool, lax_int
from gwproxy.proxy.fastcheck import compile_schema


class Content(fields.Field[Any]):
    """Message content: a string, a list of content parts (objects), or null."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) for p in value):
            return value
        raise ValidationError("Must be a string, a list of content parts (objects), or null.")

    @staticmethod
    def fast_check(value: Any) -> bool:
        return type(value) is str or (type(value) is list and all(type(p) is dict for p in value))


class LaxBool(fields.Field[Any]):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if lax_bool(value) is None:
            raise ValidationError("Not a valid boolean.")
        return value

    @staticmethod
    def fast_check(value: Any) -> bool:
        return value is True or value is False


class LaxInt(fields.Field[Any]):
    """An integer of at least ``minimum``, as vLLM's pydantic models read one."""

    def __init__(self, minimum: int) -> None:
        super().__init__(allow_none=True)
        self.minimum = minimum

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        number = lax_int(value) if type(value) is not bool else None
        if number is None:
            raise ValidationError("Not a valid integer.")
        if number < self.minimum:
            raise ValidationError(f"Must be greater than or equal to {self.minimum}.")
        return value

    def fast_check(self, value: Any) -> bool:
        return type(value) is int and value >= self.minimum


def _int(minimum: int) -> LaxInt:
    return LaxInt(minimum)


class _Open(Schema):
    class Meta:
        unknown = INCLUDE


class MessageSchema(_Open):
    role = fields.String(required=True)
    content = Content(allow_none=True)


class _Sampling(_Open):
    model = fields.String(allow_none=True)
    stream = LaxBool(allow_none=True)
    temperature = fields.Float(allow_none=True, validate=validate.Range(min=0))
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
    model = fields.String(allow_none=True)
    input = fields.Raw(required=True)


class BodyCheck:
    """A request schema and its compiled quick check: ``check(body)`` raises ``InvalidRequest``
    naming the first bad field; a body the quick check passes skips marshmallow."""

    __slots__ = ("fast", "schema")

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.fast = compile_schema(schema)

    def __call__(self, body: dict[str, Any]) -> None:
        if self.fast(body):
            return
        errors = self.schema.validate(body)
        if errors:
            raise invalid(errors)
