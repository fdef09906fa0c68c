"""Passwords: argon2id hashing and verification, off the event loop.

argon2 is deliberately slow (tens of milliseconds), so both calls run in the default executor;
the event loop keeps serving streams while a login is checked.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

MIN_LENGTH = 8


class WeakPassword(ValueError):
    pass


def check_strength(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"passwords must be at least {MIN_LENGTH} characters long")


async def hash_password(password: str) -> str:
    check_strength(password)
    return await asyncio.get_running_loop().run_in_executor(None, _hasher.hash, password)


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(hashed: str, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(None, _verify, hashed, password)


_dummy: str | None = None


async def dummy_hash() -> str:
    """A hash to verify against when the username does not exist, so that answering "no such
    user" takes as long as "wrong password". Made once, off the event loop, when the server starts
    (``open_auth``) rather than at import: every command-line call paid for it (~0.17 s)."""
    global _dummy
    if _dummy is None:
        _dummy = await asyncio.get_running_loop().run_in_executor(None, _hasher.hash, "gwproxy-dummy-password")
    return _dummy
