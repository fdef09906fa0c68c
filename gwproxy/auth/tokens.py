"""Tokens: signing and verifying access tokens (JWT) — pure, the clock passed in.

An access token carries ``sub`` (the user id, as a string), ``role``, ``sid`` (the session: the
refresh-token family it was issued with, so revoking the session refuses the token too), ``jti``,
``iat``, ``nbf``, ``exp``, ``iss`` and ``aud``; all are required and checked on verification, and the algorithm
is pinned to the configured one (so ``alg: none`` and algorithm swaps are refused). HS*
algorithms use a shared secret of at least 32 bytes; RS*/ES* a PEM key pair.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from gwproxy.config import AuthConfig, ConfigError

MIN_SECRET_BYTES = 32
REQUIRED = ["exp", "iat", "nbf", "sub", "iss", "aud", "jti", "sid"]


class InvalidToken(Exception):
    """The token is malformed, forged, expired, not yet valid, or for someone else."""


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: int
    role: str
    jti: str
    expires_at: float
    session: str


class TokenCodec:
    def __init__(self, cfg: AuthConfig, *, demo: bool = False) -> None:
        self.algorithm = cfg.jwt_algorithm
        self.issuer = cfg.jwt_issuer
        self.audience = cfg.jwt_audience
        self.lifetime = cfg.jwt_expire_hours * 3600
        if self.algorithm.startswith("HS"):
            secret = cfg.jwt_secret
            if not secret and demo:
                secret = secrets.token_urlsafe(48)  # demo only: tokens die with the process
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"config key 'auth.jwt_secret' (JWT_SECRET) must be set to at least {MIN_SECRET_BYTES} "
                    "bytes, e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
            self._sign_key: Any = secret
            self._verify_key: Any = secret
        else:
            self._sign_key = _read_key("auth.jwt_private_key_file", cfg.jwt_private_key_file)
            self._verify_key = _read_key("auth.jwt_public_key_file", cfg.jwt_public_key_file)

    def issue(self, user_id: int, role: str, now: float, session: str) -> tuple[str, Claims]:
        claims = Claims(user_id, role, secrets.token_hex(16), now + self.lifetime, session)
        payload = {
            "sub": str(user_id),
            "role": role,
            "sid": session,
            "jti": claims.jti,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(claims.expires_at),
            "iss": self.issuer,
            "aud": self.audience,
        }
        return jwt.encode(payload, self._sign_key, algorithm=self.algorithm), claims

    def verify(self, token: str, now: float) -> Claims:
        try:
            payload = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": REQUIRED, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        # Time checks here, against the injected clock (pyjwt would read the wall clock).
        exp, nbf = payload["exp"], payload["nbf"]
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            raise InvalidToken("exp and nbf must be numbers")
        if now >= exp:
            raise InvalidToken("token expired")
        if now < nbf:
            raise InvalidToken("token not yet valid")
        try:
            user_id = int(payload["sub"])
        except (TypeError, ValueError):
            raise InvalidToken("sub must be a user id") from None
        role = payload.get("role")
        if role not in ("user", "admin"):
            raise InvalidToken("unknown role")
        session = payload["sid"]
        if not isinstance(session, str) or not session:
            raise InvalidToken("sid must name a session")
        return Claims(user_id, role, str(payload["jti"]), float(exp), session)


def _read_key(key: str, path: str) -> bytes:
    if not path:
        raise ConfigError(f"config key '{key}' must name a PEM file for asymmetric JWT algorithms")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config key '{key}': cannot read {path}: {exc.strerror}") from None
