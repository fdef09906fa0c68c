"""Fastcheck: a marshmallow schema compiled into a quick "certainly valid" predicate.

``compile_schema(schema)`` walks the schema's declared fields once and returns a function of the
request dict that is True only when marshmallow would accept the dict too. It understands the
field kinds the request schemas use (String, Float, Integer, Boolean, Dict, Raw, List of Nested,
and fields that declare their own ``fast_check``) with ``Range`` and ``Length`` validators; for a
value of another JSON type (a number sent as a string, say) it answers False and leaves the verdict
to marshmallow. A field kind it does not understand makes the whole predicate always False, so a
new field can never be let through unchecked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import Schema, fields, validate

Predicate = Callable[[Any], bool]


def _never(value: Any) -> bool:
    return False


def _always(value: Any) -> bool:
    return True


def _range(lo: Any, hi: Any, lo_in: bool, hi_in: bool) -> Predicate:
    def check(x: Any) -> bool:
        return (lo is None or (x >= lo if lo_in else x > lo)) and (hi is None or (x <= hi if hi_in else x < hi))

    return check


def _length(lo: int | None, hi: int | None) -> Predicate:
    def check(x: Any) -> bool:
        return (lo is None or len(x) >= lo) and (hi is None or len(x) <= hi)

    return check


def _validators(field: fields.Field[Any]) -> Predicate | None:
    """One predicate for all of the field's validators (``_always`` if none); None if unknown."""
    checks: list[Predicate] = []
    for v in field.validators:
        if isinstance(v, validate.Range):
            lo, hi, lo_in, hi_in = v.min, v.max, v.min_inclusive, v.max_inclusive
            checks.append(_range(lo, hi, lo_in, hi_in))
        elif isinstance(v, validate.Length) and v.equal is None:
            checks.append(_length(v.min, v.max))
        else:
            return None
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    return lambda x: all(c(x) for c in checks)


def _kind(field: fields.Field[Any]) -> Predicate | None:
    own = getattr(field, "fast_check", None)
    if own is not None:
        return own  # type: ignore[no-any-return]
    if isinstance(field, fields.Boolean):
        return lambda x: x is True or x is False
    if isinstance(field, fields.Integer):
        return lambda x: type(x) is int
    if isinstance(field, fields.Float):
        return lambda x: type(x) is int or type(x) is float
    if isinstance(field, fields.String):
        return lambda x: type(x) is str
    if isinstance(field, fields.Dict) and field.key_field is None and field.value_field is None:
        return lambda x: type(x) is dict
    if isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
        nested = field.inner.schema
        if nested.many:
            return None
        item = compile_schema(nested)

        def items(x: Any) -> bool:
            if type(x) is not list:
                return False
            for i in x:  # noqa: SIM110 - a loop is faster than all() over a generator
                if not item(i):
                    return False
            return True

        return items
    if type(field) is fields.Raw:
        return lambda x: True
    return None


def compile_schema(schema: Schema) -> Predicate:
    """A predicate true only for dicts ``schema.validate`` accepts (see the module docstring)."""
    if schema.many or schema.only or schema.exclude or schema._hooks:
        return _never
    specs: list[tuple[str, bool, bool, Predicate, Predicate]] = []
    for name, field in schema.fields.items():
        kind, extra = _kind(field), _validators(field)
        if kind is None or extra is None or field.data_key is not None:
            return _never
        specs.append((name, field.required, field.allow_none, kind, extra))

    def check(body: Any) -> bool:
        if type(body) is not dict:
            return False
        for name, required, allow_none, kind, extra in specs:
            value = body.get(name, _MISSING)
            if value is _MISSING:
                if required:
                    return False
                continue
            if value is None:
                if not allow_none:
                    return False
                continue
            if not kind(value) or (extra is not _always and not extra(value)):
                return False
        return True

    return check


_MISSING = object()
