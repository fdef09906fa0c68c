from pathlib import Path

import pytest

from gwproxy.config import Config, ConfigError, UpstreamTarget, load_config


def test_defaults_without_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.server.port == 8080
    assert cfg.upstream.origin == "http://localhost:8000"
    assert cfg.upstream.v1_url == "http://localhost:8000/v1"


def test_repository_config_toml_documents_the_defaults() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_config(root / "config.toml", env={}) == Config()


def test_every_key_is_documented_in_config_toml() -> None:
    import dataclasses
    import tomllib

    root = Path(__file__).resolve().parents[2]
    documented = tomllib.loads((root / "config.toml").read_text())
    for section in dataclasses.fields(Config):
        if section.name == "upstreams":  # an array of tables: documented commented out
            text = (root / "config.toml").read_text()
            assert "# [[upstreams]]" in text
            for f in dataclasses.fields(UpstreamTarget):
                assert f"# {f.name} = " in text, f.name
            continue
        keys = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(documented[section.name]) == keys, section.name


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\nhost = "127.0.0.2"\n[upstream]\nidle_timeout = 7\n')
    env = {"GWPROXY_SERVER_PORT": "9100", "VLLM_BASE_URL": "http://vllm:8000/v1"}
    cfg = load_config(path, env=env, overrides={"server.port": 9200, "server.host": None})
    assert cfg.server.port == 9200  # flag
    assert cfg.upstream.base_url == "http://vllm:8000/v1"  # legacy environment name
    assert cfg.server.host == "127.0.0.2"  # file, the flag being absent
    assert cfg.upstream.idle_timeout == 7.0  # file, coerced
    assert cfg.upstream.connect_timeout == 5.0  # default
    assert load_config(path, env=env).server.port == 9100  # environment over file


def test_generic_name_wins_over_legacy_name() -> None:
    env = {"GWPROXY_SERVER_LOG_LEVEL": "debug", "LOG_LEVEL": "error", "DEBUG": "true"}
    cfg = load_config(Path("/dev/null"), env=env)
    assert cfg.server.log_level == "debug"
    assert cfg.server.debug is True


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"GWPROXY_SERVER_PORT": "http"}, "server.port"),
        ({"GWPROXY_SERVER_PORT": "70000"}, "server.port"),
        ({"VLLM_BASE_URL": "localhost:8000"}, "upstream.base_url"),
        ({"GWPROXY_UPSTREAM_IDLE_TIMEOUT": "0"}, "upstream.idle_timeout"),
        ({"DEBUG": "maybe"}, "server.debug"),
        ({"LOG_LEVEL": "loud"}, "server.log_level"),
    ],
)
def test_bad_value_names_the_key_and_its_source(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Path("/dev/null"), env=env)
    assert f"'{key}'" in str(err.value)
    assert "environment" in str(err.value)


def test_bad_file_entries_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'server.prot'"):
        load_config(path, env={})
    path.write_text("[sever]\n")
    with pytest.raises(ConfigError, match=r"unknown section \[sever\]"):
        load_config(path, env={})
    path.write_text('[server]\nport = "x"\n')
    with pytest.raises(ConfigError, match="'server.port'.*config file"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
