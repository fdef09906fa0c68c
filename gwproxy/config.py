"""Configuration: config.toml + environment → frozen dataclasses.

This is the only module that reads the environment. Precedence, highest first: a command-line
flag (passed in as ``overrides``), an environment variable, the TOML file, the built-in default.
Every key has a generic variable ``GWPROXY_<SECTION>_<KEY>``; the names the original gateway used
(``VLLM_BASE_URL``, ``LOG_LEVEL``, ...) are accepted too and listed in ``LEGACY_ENV``. A value that
does not parse or is out of range raises ``ConfigError`` naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range; the message names the key."""


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be 0 or greater"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number (0-65535)"


def _http_url(v: str) -> str | None:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


def _log_level(v: str) -> str | None:
    ok = ("debug", "info", "warning", "error", "critical")
    return None if v.lower() in ok else f"must be one of {', '.join(ok)}"


def items(value: str) -> list[str]:
    """A list-valued setting: comma-separated (``a, b``), or a JSON list (``["a", "b"]``, as the
    original gateway's ``.env`` wrote ``CORS_ORIGINS``); blanks dropped."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return [str(p).strip() for p in parsed if str(p).strip()]
    return [p.strip() for p in text.split(",") if p.strip()]


def _key(default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = _key("0.0.0.0")
    port: int = _key(8080, _port)
    debug: bool = _key(False)
    log_level: str = _key("info", _log_level)
    shutdown_timeout: float = _key(30.0, _non_negative)
    workers: int = _key(1, _positive)
    cors_origins: str = _key("")
    allowed_hosts: str = _key("")
    docs: str = _key("", lambda v: None if v in ("", "true", "false") else "must be '', 'true' or 'false'")
    api_max_body_bytes: int = _key(1024 * 1024, _positive)
    header_timeout: float = _key(10.0, _positive)
    keepalive_timeout: float = _key(75.0, _positive)
    max_connections_per_address: int = _key(0, _non_negative)

    def cors_origin_list(self) -> list[str]:
        return items(self.cors_origins)

    def allowed_host_list(self) -> list[str]:
        return [h.lower() for h in items(self.allowed_hosts)]


class _BaseUrl:
    """The forms of an upstream's base URL: origin, ``/v1`` URL, and both fit to show."""

    __slots__ = ()
    base_url: str

    @property
    def origin(self) -> str:
        """Scheme, host and port with any path (usually ``/v1``) removed."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def v1_url(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def public_v1_url(self) -> str:
        """``v1_url`` fit to show (status pages, errors, logs): credentials in it are masked."""
        return without_credentials(self.v1_url)

    @property
    def public_origin(self) -> str:
        return without_credentials(self.origin)


@dataclass(frozen=True, slots=True)
class UpstreamConfig(_BaseUrl):
    base_url: str = _key("http://localhost:8000/v1", _http_url)
    api_key: str = _key("")
    connect_timeout: float = _key(5.0, _positive)
    first_byte_timeout: float = _key(600.0, _positive)
    idle_timeout: float = _key(120.0, _positive)
    poll_interval: float = _key(5.0, _positive)
    max_connections: int = _key(0, _non_negative)
    # Several upstreams: passive health, load metrics, conversation affinity.
    eject_after: int = _key(3, _positive)  # consecutive failures that eject an upstream
    eject_seconds: float = _key(30.0, _positive)  # the cool-down before /health probes may bring it back
    probe_interval: float = _key(1.0, _positive)  # how often an ejected upstream's /health is asked
    metrics_interval: float = _key(2.0, _non_negative)  # scrape of each replica's /metrics (0: off)
    affinity_entries: int = _key(100_000, _non_negative)  # conversations remembered (0: no affinity)
    balance: str = _key("score", lambda v: None if v in ("score", "round_robin") else "must be score or round_robin")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")


@dataclass(frozen=True, slots=True)
class UpstreamTarget(_BaseUrl):
    """One upstream of several: ``[[upstreams]]`` in config.toml, ``--upstream [NAME=]URL``, or the
    one ``upstream.base_url`` names. ``weight`` scales its share of a model's traffic."""

    name: str
    base_url: str
    api_key: str = ""
    weight: float = 1.0


def _target_name(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def upstream_target(raw: Any, source: str, index: int) -> UpstreamTarget:
    """An upstream from ``[NAME=]URL`` (a flag, ``GWPROXY_UPSTREAMS``) or a ``[[upstreams]]`` table."""

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"config key 'upstreams[{index}]{key}' ({source}): {why}")

    if isinstance(raw, str):
        text = raw.strip()
        name, url = "", text
        if "=" in text and not text.lower().startswith(("http://", "https://")):
            name, _, url = text.partition("=")
        raw = {"name": name.strip(), "base_url": url.strip()}
    if not isinstance(raw, dict):
        raise fail("", f"expected a table or NAME=URL, got {raw!r}")
    unknown = set(raw) - {"name", "base_url", "api_key", "weight"}
    if unknown:
        raise fail("", f"unknown key(s) {', '.join(sorted(unknown))}")
    base_url = raw.get("base_url")
    if not isinstance(base_url, str) or _http_url(base_url):
        raise fail(".base_url", f"must be an http:// or https:// URL with a host, got {base_url!r}")
    name = raw.get("name") or _target_name(base_url)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail(".name", f"letters, digits and . _ : - (at most 63, starting with a letter or digit), got {name!r}")
    api_key = raw.get("api_key", "")
    if not isinstance(api_key, str):
        raise fail(".api_key", "expected a string")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
        raise fail(".weight", f"must be a number greater than 0, got {weight!r}")
    return UpstreamTarget(name, base_url, api_key, float(weight))


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (the password is never shown)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    max_body_bytes: int = _key(32 * 1024 * 1024, _positive)
    overhead_header: bool = _key(True)


def _database_url(v: str) -> str | None:
    if v == "":
        return None
    scheme = urlsplit(v).scheme
    if scheme.split("+")[0] not in ("postgresql", "postgres", "sqlite"):
        return "must be a postgresql:// or sqlite:/// URL (or empty for the embedded SQLite file)"
    return None


def _algorithm(v: str) -> str | None:
    ok = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
    return None if v in ok else f"must be one of {', '.join(ok)}"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = _key("", _database_url)
    sqlite_path: str = _key("gwproxy.db")
    pool_size: int = _key(10, _positive)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool = _key(True)
    jwt_secret: str = _key("")
    jwt_algorithm: str = _key("HS256", _algorithm)
    jwt_private_key_file: str = _key("")
    jwt_public_key_file: str = _key("")
    jwt_issuer: str = _key("gwproxy")
    jwt_audience: str = _key("gwproxy")
    jwt_expire_hours: float = _key(24.0, _positive)
    refresh_expire_days: float = _key(30.0, _positive)
    key_cache_seconds: float = _key(5.0, _non_negative)
    metrics_public: bool = _key(True)
    login_max_failures: int = _key(5, _positive)
    login_lockout_seconds: float = _key(300.0, _positive)
    login_username_interval: float = _key(2.0, _positive)
    invalid_credentials_per_minute: int = _key(30, _positive)
    admin_username: str = _key("admin")
    admin_password: str = _key("")


def _redis_url(v: str) -> str | None:
    if v == "" or urlsplit(v).scheme in ("redis", "rediss", "unix"):
        return None
    return "must be a redis://, rediss:// or unix:// URL (or empty for in-process buckets)"


def _networks(v: str) -> str | None:
    for part in items(v):
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            return f"{part!r} is not an IP address or network"
    return None


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    enabled: bool = _key(True)
    redis_url: str = _key("", _redis_url)
    requests: int = _key(120, _positive)
    window: float = _key(60.0, _positive)
    ip_requests: int = _key(0, _non_negative)
    tokens_per_minute: int = _key(0, _non_negative)
    concurrency: int = _key(0, _non_negative)
    default_max_tokens: int = _key(512, _positive)
    trusted_proxies: str = _key("", _networks)
    fail_open: bool = _key(True)
    lease_seconds: float = _key(30.0, _positive)

    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in items(self.trusted_proxies))


def _backend(v: str) -> str | None:
    return None if v in ("", "docker", "process") else "must be '' (none), 'docker' or 'process'"


def _docker_url(v: str) -> str | None:
    if v == "" or urlsplit(v).scheme in ("unix", "tcp", "http", "https", "npipe"):
        return None
    return "must be a unix://, tcp:// or http(s):// URL (or empty for DOCKER_HOST / the default socket)"


def named_urls(value: str) -> list[tuple[str, str]]:
    """``[NAME=]URL`` items (comma-separated): (name, url); an unnamed one is named by its host."""
    out = []
    for item in items(value):
        name, sep, url = item.partition("=")
        if not sep or "://" in name:
            name, url = "", item
        out.append((name.strip() or (urlsplit(url).hostname or "local"), url.strip()))
    return out


def _docker_hosts(v: str) -> str | None:
    named = named_urls(v)
    bad = [url for _, url in named if _docker_url(url) or not url]
    if bad:
        return f"each host is [NAME=]URL with a unix:// or tcp:// URL, got {', '.join(bad)}"
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        return "host names must differ (name them: gpu1=tcp://…, gpu2=tcp://…)"
    return None


def named_snapshots(value: str) -> dict[str, str]:
    """``NAME=SNAPSHOT; NAME=SNAPSHOT`` (semicolons: a snapshot has commas of its own)."""
    out = {}
    for part in value.split(";"):
        name, sep, snapshot = part.partition("=")
        if sep and name.strip():
            out[name.strip()] = snapshot.strip()
    return out


def _roles(v: str) -> str | None:
    bad = [r for r in items(v) if r not in ("admin", "user")]
    return f"roles are admin and user, got {', '.join(bad)}" if bad else None


def _port_range(v: str) -> str | None:
    low, sep, high = v.partition("-")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()):
        return "must be LOW-HIGH, e.g. 8100-8199"
    if not 1 <= int(low) <= int(high) <= 65535:
        return "must be LOW-HIGH with 1 <= LOW <= HIGH <= 65535"
    return None


@dataclass(frozen=True, slots=True)
class SwitchConfig:
    backend: str = _key("", _backend)
    profiles_dir: str = _key("profiles")
    hardware: str = _key("")
    reserve_gib: float = _key(1.5, _non_negative)
    start_on_boot: bool = _key(True)
    boot_fallback: bool = _key(True)
    stop_on_exit: bool = _key(False)
    hold_seconds: float = _key(30.0, _non_negative)
    drain_seconds: float = _key(60.0, _non_negative)
    stop_timeout: float = _key(30.0, _positive)
    retry_after: int = _key(10, _positive)
    ready_poll: float = _key(1.0, _positive)
    vllm_host: str = _key("0.0.0.0")
    process_command: str = _key("python3 -m vllm.entrypoints.openai.api_server")
    state_dir: str = _key(".gwproxy")
    docker_url: str = _key("", _docker_url)
    # On demand with Docker: GPU hosts, each an Engine API ([NAME=]URL, comma-separated; empty: the
    # docker_url host, named "local"), each with a hardware snapshot ("NAME=SNAPSHOT; …"; a host
    # without one plans with switch.hardware or this machine's probe), TLS for tcp:// hosts.
    docker_hosts: str = _key("", _docker_hosts)
    docker_hardware: str = _key("")
    docker_tls_ca: str = _key("")
    docker_tls_cert: str = _key("")
    docker_tls_key: str = _key("")
    docker_image: str = _key("vllm/vllm-openai:latest")
    docker_network: str = _key("host")
    docker_gpus: bool = _key(True)
    docker_binds: str = _key("")
    hf_cache: str = _key("~/.cache/huggingface")
    hf_token: str = _key("")
    # On demand: a request naming a profile (id or served name) that is not running starts it
    # beside the switched model, packed onto the GPUs, evicting idle ones when memory is short.
    on_demand: bool = _key(False)
    on_demand_roles: str = _key("admin,user", lambda v: _roles(v))
    port_range: str = _key("8100-8199", lambda v: _port_range(v))
    min_residency: float = _key(30.0, _non_negative)  # seconds a loaded model is safe from eviction
    sleep_host_gib: float = _key(32.0, _non_negative)  # host RAM for the weights of models asleep at level 1
    loading_feedback: bool = _key(False)  # a stream waiting for a load gets SSE comments (commits a 200 early)

    def docker_bind_list(self) -> list[str]:
        return items(self.docker_binds)

    def on_demand_role_set(self) -> frozenset[str]:
        return frozenset(items(self.on_demand_roles))

    def ports(self) -> range:
        low, _, high = self.port_range.partition("-")
        return range(int(low), int(high) + 1)


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    enabled: bool = _key(True)
    process: bool = _key(True)  # the writer in its own process (another core), fed through a pipe
    max_bytes: int = _key(1024 * 1024, _positive)
    queue_size: int = _key(10000, _positive)
    batch_size: int = _key(200, _positive)
    batch_seconds: float = _key(0.5, _non_negative)
    write_timeout: float = _key(5.0, _positive)
    retry_seconds: float = _key(2.0, _positive)
    spool_dir: str = _key(".gwproxy/spool")
    spool_max_bytes: int = _key(1024**3, _positive)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    upstreams: tuple[UpstreamTarget, ...] = ()  # several upstreams; empty: the one upstream.base_url names

    def upstream_targets(self) -> tuple[UpstreamTarget, ...]:
        """Every upstream the gateway forwards to; the first is where managed models serve."""
        if self.upstreams:
            return self.upstreams
        u = self.upstream
        return (UpstreamTarget(_target_name(u.base_url), u.base_url, u.api_key),)


# Environment names kept from the original gateway → dotted key.
LEGACY_ENV: Mapping[str, str] = {
    "VLLM_BASE_URL": "upstream.base_url",
    "VLLM_API_KEY": "upstream.api_key",
    "LOG_LEVEL": "server.log_level",
    "DEBUG": "server.debug",
    "CORS_ORIGINS": "server.cors_origins",
    "ALLOWED_HOSTS": "server.allowed_hosts",
    "DATABASE_URL": "database.url",
    "JWT_SECRET": "auth.jwt_secret",
    "JWT_ALGORITHM": "auth.jwt_algorithm",
    "JWT_EXPIRE_HOURS": "auth.jwt_expire_hours",
    "GWPROXY_ADMIN_PASSWORD": "auth.admin_password",
    "REDIS_URL": "ratelimit.redis_url",
    "RATE_LIMIT_REQUESTS": "ratelimit.requests",
    "RATE_LIMIT_WINDOW": "ratelimit.window",
    "HF_TOKEN": "switch.hf_token",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(key: str, kind: type, raw: Any, source: str) -> Any:
    def fail(why: str) -> ConfigError:
        return ConfigError(f"config key '{key}' ({source}): {why}, got {raw!r}")

    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise fail("expected true or false")
    if kind is int:
        if isinstance(raw, bool):
            raise fail("expected an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise fail("expected an integer") from None
    if kind is float:
        if isinstance(raw, bool):
            raise fail("expected a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise fail("expected a number") from None
    if kind is str:
        if not isinstance(raw, str):
            raise fail("expected a string")
        return raw
    raise AssertionError(f"unsupported config type {kind}")  # pragma: no cover


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "upstreams"}


def known_env_names() -> set[str]:
    """Every environment variable the configuration reads."""
    names = set(LEGACY_ENV) | {"GWPROXY_CONFIG", "GWPROXY_UPSTREAMS"}
    for sname, stype in _sections().items():
        names |= {f"GWPROXY_{sname}_{f.name}".upper() for f in dataclasses.fields(stype)}
    return names


def default_config_path(env: Mapping[str, str]) -> Path | None:
    """``GWPROXY_CONFIG`` if set, else ``./config.toml`` when it exists."""
    if env.get("GWPROXY_CONFIG"):
        return Path(env["GWPROXY_CONFIG"])
    local = Path("config.toml")
    return local if local.is_file() else None


# Keys whose values are secrets: never shown (``gwproxy config show`` prints whether they are set).
SECRET_KEYS = frozenset({"upstream.api_key", "auth.jwt_secret", "auth.admin_password", "switch.hf_token"})
# Keys holding URLs that may carry a password: shown with it masked.
URL_KEYS = frozenset({"upstream.base_url", "database.url", "ratelimit.redis_url", "switch.docker_url"})


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration. ``overrides`` maps dotted keys to values from command-line flags."""
    return load_config_sources(path, env, overrides)[0]


def shown(dotted: str, value: Any) -> Any:
    """``value`` as it may be shown to a person: secrets hidden, URL passwords masked."""
    if dotted in SECRET_KEYS:
        return "(set, hidden)" if value else ""
    if dotted in URL_KEYS and isinstance(value, str):
        return without_credentials(value)
    return value


def load_config_sources(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Config, dict[str, str]]:
    """The configuration and, for every dotted key, where its value came from: ``default``,
    ``config file PATH``, ``environment NAME`` or ``command-line flag``."""
    sources: dict[str, str] = {}
    env = os.environ if env is None else env
    path = path if path is not None else default_config_path(env)
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    legacy = {dotted: name for name, dotted in LEGACY_ENV.items()}
    overrides = overrides or {}
    sections = _sections()
    for name in file_values:
        if name not in sections and name != "upstreams":
            raise ConfigError(f"config file {path}: unknown section [{name}]")
    built: dict[str, Any] = {}
    for sname, stype in sections.items():
        table = file_values.get(sname, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [{sname}] must be a table")
        hints = typing.get_type_hints(stype)
        fields = {f.name: f for f in dataclasses.fields(stype)}
        for key in table:
            if key not in fields:
                raise ConfigError(f"config file {path}: unknown key '{sname}.{key}'")
        values: dict[str, Any] = {}
        for fname, f in fields.items():
            dotted = f"{sname}.{fname}"
            generic = f"GWPROXY_{sname}_{fname}".upper()
            if overrides.get(dotted) is not None:
                raw, source = overrides[dotted], "command-line flag"
            elif generic in env:
                raw, source = env[generic], f"environment {generic}"
            elif dotted in legacy and legacy[dotted] in env:
                raw, source = env[legacy[dotted]], f"environment {legacy[dotted]}"
            elif fname in table:
                raw, source = table[fname], f"config file {path}"
            else:
                sources[dotted] = "default"
                continue
            sources[dotted] = source
            value = _coerce(dotted, hints[fname], raw, source)
            check = f.metadata.get("check")
            why = check(value) if check else None
            if why:
                raise ConfigError(f"config key '{dotted}' ({source}): {why}, got {raw!r}")
            values[fname] = value
        built[sname] = stype(**values)
    built["upstreams"] = _upstreams(file_values.get("upstreams"), path, env, overrides.get("upstreams"), sources)
    return Config(**built), sources


def _upstreams(
    table: Any, path: Path | None, env: Mapping[str, str], flags: Any, sources: dict[str, str]
) -> tuple[UpstreamTarget, ...]:
    """``upstreams``: flags (``--upstream``, repeatable), else ``GWPROXY_UPSTREAMS`` (comma-separated
    ``[NAME=]URL``), else the file's ``[[upstreams]]`` tables; names must differ."""
    if flags:
        raw, source = list(flags), "command-line flag"
    elif env.get("GWPROXY_UPSTREAMS", "").strip():
        raw, source = items(env["GWPROXY_UPSTREAMS"]), "environment GWPROXY_UPSTREAMS"
    elif table is not None:
        if not isinstance(table, list):
            raise ConfigError(f"config file {path}: upstreams must be an array of tables ([[upstreams]])")
        raw, source = table, f"config file {path}"
    else:
        sources["upstreams"] = "default"
        return ()
    sources["upstreams"] = source
    targets = tuple(upstream_target(r, source, i) for i, r in enumerate(raw))
    names = [t.name for t in targets]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"config key 'upstreams' ({source}): the name {name!r} is used twice; names must differ")
    return targets
