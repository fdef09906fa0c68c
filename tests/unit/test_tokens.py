import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gwproxy.auth.tokens import InvalidToken, TokenCodec
from gwproxy.config import AuthConfig, ConfigError

SECRET = "s" * 40
CFG = AuthConfig(jwt_secret=SECRET)
NOW = 1_800_000_000.0


def codec(**kw: object) -> TokenCodec:
    return TokenCodec(AuthConfig(**{"jwt_secret": SECRET, **kw}))  # type: ignore[arg-type]


def forge(payload: dict[str, object], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg)


def claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": "7",
        "role": "user",
        "jti": "j",
        "sid": "s1",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 60,
        "iss": "gwproxy",
        "aud": "gwproxy",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_round_trip_carries_user_role_and_expiry() -> None:
    token, issued = codec().issue(7, "admin", NOW, "s1")
    got = codec().verify(token, NOW + 1)
    assert (got.user_id, got.role, got.jti, got.session) == (7, "admin", issued.jti, "s1")
    assert got.expires_at == NOW + 24 * 3600
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "HS256"


def test_alg_none_is_refused() -> None:
    token = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(InvalidToken):
        codec().verify(token, NOW)


def test_signed_with_another_key_is_refused() -> None:
    with pytest.raises(InvalidToken, match="Signature"):
        codec().verify(forge(claims(), key="o" * 40), NOW)


def test_algorithm_swap_is_refused() -> None:
    with pytest.raises(InvalidToken):
        codec().verify(forge(claims(), key="k" * 64, alg="HS512"), NOW)


@pytest.mark.parametrize(
    ("payload", "now", "why"),
    [
        (claims(), NOW + 60, "expired"),
        (claims(nbf=int(NOW) + 30), NOW, "not yet valid"),
        (claims(aud="someone-else"), NOW, "(?i)audience"),
        (claims(iss="evil"), NOW, "(?i)issuer"),
        (claims(role="root"), NOW, "role"),
        (claims(sub="abc"), NOW, "sub"),
        (claims(jti=None), NOW, "jti"),
        (claims(exp=None), NOW, "exp"),
        (claims(sid=None), NOW, "sid"),  # a token tied to no session cannot be revoked with one
        (claims(sid=""), NOW, "sid"),
    ],
)
def test_claims_are_checked(payload: dict[str, object], now: float, why: str) -> None:
    with pytest.raises(InvalidToken, match=why):
        codec().verify(forge(payload), now)


def test_tampered_payload_is_refused() -> None:
    token, _ = codec().issue(7, "user", NOW, "s1")
    head, body, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=="))
    data["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        codec().verify(f"{head}.{forged}.{sig}", NOW)
    with pytest.raises(InvalidToken):
        codec().verify("not.a.token", NOW)


def test_short_or_missing_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="auth.jwt_secret"):
        TokenCodec(AuthConfig(jwt_secret="short"))
    with pytest.raises(ConfigError, match="auth.jwt_secret"):
        TokenCodec(AuthConfig())
    assert TokenCodec(AuthConfig(), demo=True).issue(1, "user", time.time(), "s1")[0]


def test_es256_with_key_files(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    priv.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    c = TokenCodec(AuthConfig(jwt_algorithm="ES256", jwt_private_key_file=str(priv), jwt_public_key_file=str(pub)))
    token, _ = c.issue(3, "user", NOW, "s1")
    assert c.verify(token, NOW).user_id == 3
    with pytest.raises(InvalidToken):  # an HS256 token "signed" with the public key: the classic confusion
        c.verify(jwt.encode(claims(), "x" * 40, algorithm="HS256"), NOW)
    with pytest.raises(ConfigError, match="jwt_public_key_file"):
        TokenCodec(AuthConfig(jwt_algorithm="RS256", jwt_private_key_file=str(priv)))
