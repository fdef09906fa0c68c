"""Lax: values read as vLLM's request models (pydantic, lax mode) read them — ``5.0`` and ``"5"`` are
the int 5, ``"yes"`` and ``1`` are true. Shared by the gateway's checks of a body (the proxy, the
limiter's estimate) and the simulator that plays vLLM, so both read a field alike.
"""

from __future__ import annotations

from typing import Any

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def lax_bool(value: Any) -> bool | None:
    """``value`` as pydantic's lax mode reads a bool (vLLM's ``stream``); None if it is not one."""
    if value is True or value is False:
        return bool(value)
    if type(value) is int and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else None
    return None


def lax_int(value: Any) -> int | None:
    """``value`` as pydantic's lax mode reads an int: ints, whole floats, digit strings."""
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and value.strip().isascii():
        return int(value)
    return None
