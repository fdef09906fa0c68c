"""The original gateway's ``.env``, as written, configures this one: list values may be JSON lists."""

from __future__ import annotations

from gwproxy.config import items, load_config

# The shape of the original gateway's .env (values as docker compose or a shell passes them).
ORIGINAL_ENV = """
VLLM_BASE_URL=http://vllm:8000/v1
VLLM_API_KEY=
JWT_SECRET=change-me-to-a-long-random-string-of-48-characters
JWT_ALGORITHM=HS256
JWT_EXPIRE_HOURS=24
DATABASE_URL=postgresql://gateway:gateway@postgres:5432/gateway
REDIS_URL=redis://redis:6379/0
CORS_ORIGINS=["http://localhost:3000"]
RATE_LIMIT_REQUESTS=100
RATE_LIMIT_WINDOW=60
LOG_LEVEL=INFO
DEBUG=false
"""


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.strip().splitlines() if "=" in line)


def test_the_original_env_loads_as_written() -> None:
    cfg = load_config(env=parse_env(ORIGINAL_ENV))
    assert cfg.server.cors_origin_list() == ["http://localhost:3000"]
    assert cfg.ratelimit.requests == 100 and cfg.server.log_level == "INFO"


def test_every_list_setting_takes_json_or_commas() -> None:
    assert items('["a", "b "]') == ["a", "b"] == items("a, b") == items(" a,,b ")
    assert items("[not json") == ["[not json"]
    cfg = load_config(
        env={
            "ALLOWED_HOSTS": '["Gw.Example.com", "*.example.org"]',
            "GWPROXY_RATELIMIT_TRUSTED_PROXIES": '["10.0.0.0/8", "127.0.0.1"]',
            "GWPROXY_SWITCH_DOCKER_BINDS": '["/data:/data:ro"]',
        }
    )
    assert cfg.server.allowed_host_list() == ["gw.example.com", "*.example.org"]
    assert [str(n) for n in cfg.ratelimit.trusted_networks()] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert cfg.switch.docker_bind_list() == ["/data:/data:ro"]
