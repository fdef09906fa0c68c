"""Credentials: the long random secrets the gateway hands out — API keys and refresh tokens.

A secret is ``<kind>-`` + 32 random bytes, url-safe (43 characters). It is stored as its
SHA-256 digest plus a visible prefix (the kind and 8 characters) that finds the row and tells
people which key is which; the digest is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

API_KEY = "gwp"
REFRESH = "gwr"
PREFIX_LEN = 12
_SHAPE = re.compile(r"(gwp|gwr)-[A-Za-z0-9_\-]{43}")


@dataclass(frozen=True, slots=True)
class Secret:
    value: str
    prefix: str
    digest: bytes


def mint(kind: str) -> Secret:
    value = f"{kind}-{secrets.token_urlsafe(32)}"
    return Secret(value, value[:PREFIX_LEN], digest(value))


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def split(value: str, kind: str) -> tuple[str, bytes] | None:
    """(prefix, digest) of a well-formed secret of ``kind``; None for anything else."""
    if not value.startswith(kind + "-") or _SHAPE.fullmatch(value) is None:
        return None
    return value[:PREFIX_LEN], digest(value)


def matches(stored: bytes, presented: bytes) -> bool:
    return hmac.compare_digest(stored, presented)
