"""edge.config: layering, validation messages and secret hygiene.

Every test passes `env={...}` explicitly and runs in an empty temporary directory, so the
real environment and any ./edge.toml of the developer never leak in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest

from edge.config import (
    AuthKey,
    CacheConfig,
    Config,
    ConfigError,
    ModelConfig,
    ProviderConfig,
    RoutingConfig,
    ServerConfig,
    load_config,
    resolve_secret,
    summary,
)

OPENAI_ENV = {"OPENAI_API_KEY": "sk-test-openai-0000"}
NO_PROVIDERS = (
    "No providers configured. Set OPENAI_API_KEY or ANTHROPIC_API_KEY, "
    "or add a [[providers]] table to the config file."
)
MINIMAL_PROVIDER = """
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:9999/v1"
models = ["*"]
"""


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in an empty directory so ./edge.toml lookup is controlled."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "edge.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(text: str, tmp_path: Path, env: dict[str, str] | None = None, **kw: Any) -> str:
    """Load `text` as ./edge.toml and return the ConfigError message."""
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(env=OPENAI_ENV if env is None else env, **kw)
    return str(info.value)


# --------------------------------------------------------------------------- defaults


def test_defaults_with_env_only() -> None:
    config = load_config(env=OPENAI_ENV)
    assert config.source is None
    assert config.server == ServerConfig()
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.metrics_port == 9090
    assert config.cache == CacheConfig()
    assert config.cache.l2_enabled is False
    assert config.routing == RoutingConfig()
    assert config.routing.retry_on == (408, 429, 500, 502, 503, 504)
    assert config.auth.keys == ()
    assert config.auth.allow_anonymous is False
    assert config.enable_metrics is True
    assert config.enable_tracing is False
    assert dict(config.models) == {}
    assert config.warnings == ()
    (provider,) = config.providers
    assert provider.name == "openai"
    assert provider.kind == "openai"
    assert provider.base_url == "https://api.openai.com/v1"
    assert provider.api_key == "sk-test-openai-0000"
    assert "gpt-4o*" in provider.models
    assert "text-embedding-*" in provider.models


def test_config_is_frozen_and_models_read_only(tmp_path: Path) -> None:
    write(tmp_path, '[models."gpt-4o"]\ninput_per_mtok = 1\n')
    config = load_config(env=OPENAI_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.models["x"] = ModelConfig(name="x")  # type: ignore[index]


def test_config_pickles_for_worker_processes(tmp_path: Path) -> None:
    write(tmp_path, '[models."a"]\nfallbacks = ["b"]\n[models."b"]\ninput_per_mtok = 1\n')
    config = load_config(env=OPENAI_ENV)
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert list(copy.models) == ["a", "b"]
    with pytest.raises(TypeError):
        copy.models["c"] = ModelConfig(name="c")


def test_config_accepts_plain_dict_for_models() -> None:
    config = Config(models={"m": ModelConfig(name="m")})
    assert config.models["m"].name == "m"
    with pytest.raises(TypeError):
        config.models["n"] = ModelConfig(name="n")  # type: ignore[index]


def test_full_example_from_spec(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
[server]
host = "127.0.0.1"
port = 8081
metrics_port = 0
workers = 1
max_request_bytes = 1024
graceful_timeout_s = 5

[auth]
keys = [ { name = "team-a", key = "env:TEAM_A_KEY", rpm = 600, tpm = 200000 },
         { name = "team-b", sha256 = "%s" } ]
allow_anonymous = true

[cache]
enabled = true
ttl_s = 60
l1_max_entries = 10
l1_max_bytes = 2048
max_entry_bytes = 1024
l2_enabled = true
redis_url = "rediss://cache.internal:6380/2"
redis_cluster = true
key_prefix = "t:"
scope = "global"

[routing]
strategy = "latency"
max_attempts = 4
hedge_after_ms = 250
retry_on = [429, 503]
breaker_failures = 2
breaker_cooldown_s = 7

[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1/"
api_key = "env:OPENAI_API_KEY"
models = ["gpt-4o*", "gpt-4*"]
timeout_s = 30
max_connections = 8
first_byte_timeout_s = 5
stream_idle_timeout_s = 20

[[providers]]
name = "anthropic"
kind = "anthropic"
api_key = "env:ANTHROPIC_API_KEY"
models = ["claude-*"]
anthropic_version = "2024-01-01"

[models."gpt-4o"]
input_per_mtok = 2.50
output_per_mtok = 10
fallbacks = ["claude-3-5-sonnet-20241022"]

[models."fast"]
deployments = ["openai/gpt-4o-mini", "anthropic/claude-3-haiku-20240307"]
fallbacks = ["gpt-4o"]
"""
        % ("AB" * 32),
    )
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a", "TEAM_A_KEY": "team-a-secret"}
    config = load_config(env=env)
    assert config.source == "edge.toml"
    assert config.server == ServerConfig(
        host="127.0.0.1",
        port=8081,
        metrics_port=0,
        workers=1,
        max_request_bytes=1024,
        graceful_timeout_s=5.0,
    )
    assert isinstance(config.server.graceful_timeout_s, float)
    team_a, team_b = config.auth.keys
    assert team_a == AuthKey(
        name="team-a",
        secret="team-a-secret",
        sha256=hashlib.sha256(b"team-a-secret").hexdigest(),
        rpm=600,
        tpm=200000,
    )
    assert team_b.secret is None
    assert team_b.sha256 == "ab" * 32  # normalised to lowercase
    assert config.auth.allow_anonymous is True
    assert config.cache == CacheConfig(
        enabled=True,
        ttl_s=60,
        l1_max_entries=10,
        l1_max_bytes=2048,
        max_entry_bytes=1024,
        l2_enabled=True,
        redis_url="rediss://cache.internal:6380/2",
        redis_cluster=True,
        key_prefix="t:",
        scope="global",
    )
    assert config.routing == RoutingConfig(
        strategy="latency",
        max_attempts=4,
        hedge_after_ms=250,
        retry_on=(429, 503),
        breaker_failures=2,
        breaker_cooldown_s=7.0,
    )
    openai, anthropic = config.providers
    assert openai == ProviderConfig(
        name="openai",
        kind="openai",
        base_url="https://api.openai.com/v1",
        api_key="sk-o",
        models=("gpt-4o*", "gpt-4*"),
        timeout_s=30.0,
        max_connections=8,
        first_byte_timeout_s=5.0,
        stream_idle_timeout_s=20.0,
    )
    assert openai.first_byte_s == 5.0
    # SPEC §10 defaults: the head waits as long as timeout_s, a stream's silence 60 s
    assert anthropic.first_byte_timeout_s is None
    assert anthropic.first_byte_s == anthropic.timeout_s == 120.0
    assert anthropic.stream_idle_timeout_s == 60.0
    assert anthropic.base_url == "https://api.anthropic.com"  # default for the kind
    assert anthropic.anthropic_version == "2024-01-01"
    assert list(config.models) == ["gpt-4o", "fast"]
    assert config.models["gpt-4o"] == ModelConfig(
        name="gpt-4o",
        input_per_mtok=2.5,
        output_per_mtok=10.0,
        fallbacks=("claude-3-5-sonnet-20241022",),
    )
    assert config.models["fast"].deployments == (
        "openai/gpt-4o-mini",
        "anthropic/claude-3-haiku-20240307",
    )
    assert config.warnings == ()


# --------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("key", "toml_value", "env_var", "env_value", "cli_value", "expected"),
    [
        ("port", "1001", "PORT", "1002", 1003, (8080, 1001, 1002, 1003)),
        ("metrics_port", "2001", "METRICS_PORT", "0", 2003, (9090, 2001, 0, 2003)),
        (
            "host",
            '"127.0.0.2"',
            "HOST",
            "127.0.0.3",
            "localhost",
            ("127.0.0.1",) * 1 + ("127.0.0.2", "127.0.0.3", "localhost"),
        ),
        (
            "log_level",
            '"debug"',
            "LOG_LEVEL",
            "WARNING",
            "error",
            ("info", "debug", "warning", "error"),
        ),
    ],
)
def test_precedence_cli_over_env_over_toml_over_default(
    tmp_path: Path,
    key: str,
    toml_value: str,
    env_var: str,
    env_value: str,
    cli_value: Any,
    expected: tuple[Any, Any, Any, Any],
) -> None:
    default, from_toml, from_env, from_cli = expected
    assert getattr(load_config(env=OPENAI_ENV).server, key) == default
    path = write(tmp_path, f"[server]\n{key} = {toml_value}\n", name="c.toml")
    assert getattr(load_config(path, env=OPENAI_ENV).server, key) == from_toml
    env = {**OPENAI_ENV, env_var: env_value}
    assert getattr(load_config(path, env=env).server, key) == from_env
    config = load_config(path, env=env, overrides={key: cli_value})
    assert getattr(config.server, key) == from_cli


def test_cli_workers_and_none_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 3\nport = 7000\n")
    config = load_config(
        path,
        env={**OPENAI_ENV, "PORT": "7001"},
        overrides={"workers": 2, "port": None, "host": None, "log_level": None},
    )
    assert config.server.workers == 2
    assert config.server.port == 7001  # None means "flag not given"


def test_cli_accepts_string_numbers() -> None:
    config = load_config(env=OPENAI_ENV, overrides={"port": "8181", "metrics_port": "0"})
    assert (config.server.port, config.server.metrics_port) == (8181, 0)


def test_env_overrides_cache_and_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[cache]\nl2_enabled = false\nredis_url = "redis://file-host:6379/0"\n')
    env = {
        **OPENAI_ENV,
        "ENABLE_L2_CACHE": "TRUE",
        "REDIS_URL": "redis://env-host:6379/1",
        "ENABLE_METRICS": "off",
        "ENABLE_TRACING": "Yes",
    }
    config = load_config(path, env=env)
    assert config.cache.l2_enabled is True
    assert config.cache.redis_url == "redis://env-host:6379/1"
    assert config.enable_metrics is False
    assert config.enable_tracing is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("1", True),
        ("ON", True),
        ("yes", True),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_env_booleans(text: str, expected: bool) -> None:
    assert load_config(env={**OPENAI_ENV, "ENABLE_TRACING": text}).enable_tracing is expected


def test_env_boolean_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={**OPENAI_ENV, "ENABLE_METRICS": "maybe"})
    assert str(info.value).startswith("environment: ENABLE_METRICS: expected a boolean")
    assert '"maybe"' in str(info.value)


def test_blank_env_values_are_unset() -> None:
    config = load_config(env={**OPENAI_ENV, "PORT": "", "HOST": "  ", "ANTHROPIC_API_KEY": ""})
    assert config.server.port == 8080
    assert config.server.host == "127.0.0.1"
    assert [p.name for p in config.providers] == ["openai"]


# --------------------------------------------------------------------------- error messages


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[servr]\nport = 1\n", 'edge.toml: servr: unknown key (did you mean "server"?)'),
        ("[cache]\nttl = 5\n", 'edge.toml: cache.ttl: unknown key (did you mean "ttl_s"?)'),
        ('[routing]\nstrategy = "model"\nretries = 2\n', "edge.toml: routing.retries: unknown key"),
        (
            MINIMAL_PROVIDER + "kindd = 1\n",
            'edge.toml: providers[0].kindd: unknown key (did you mean "kind"?)',
        ),
        (
            '[auth]\nkeys = [{ name = "a", key = "x", rmp = 5 }]\n',
            'edge.toml: auth.keys[0].rmp: unknown key (did you mean "rpm"?)',
        ),
        (
            '[models."gpt-4o"]\ninput_per_token = 1\n',
            'edge.toml: models."gpt-4o".input_per_token: unknown key '
            '(did you mean "input_per_mtok"?)',
        ),
    ],
)
def test_unknown_keys_name_file_key_and_suggestion(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(text, tmp_path).startswith(message)


def test_unknown_key_without_close_match_lists_allowed(tmp_path: Path) -> None:
    message = error_of("zzz = 1\n", tmp_path)
    assert message.startswith("edge.toml: zzz: unknown key (expected one of: server, auth")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[cache]\nttl_s = "abc"\n', 'edge.toml: cache.ttl_s: expected an integer, got "abc"'),
        ("[cache]\nttl_s = true\n", "edge.toml: cache.ttl_s: expected an integer, got true"),
        ("[cache]\nttl_s = 1.5\n", "edge.toml: cache.ttl_s: expected an integer, got 1.5"),
        ("[cache]\nenabled = 1\n", "edge.toml: cache.enabled: expected a boolean"),
        ('[cache]\nenabled = "true"\n', "edge.toml: cache.enabled: expected a boolean"),
        (
            "[routing]\nbreaker_cooldown_s = false\n",
            "edge.toml: routing.breaker_cooldown_s: expected a number, got false",
        ),
        ("[server]\nhost = 1\n", "edge.toml: server.host: expected a string, got 1"),
        ("server = 5\n", "edge.toml: server: expected a table, got 5"),
        ("[[server]]\nport = 1\n", "edge.toml: server: expected a table, got an array"),
        (
            '[providers]\nname = "x"\n',
            "edge.toml: providers: expected an array of tables ([[providers]]), got a table",
        ),
        (
            MINIMAL_PROVIDER.replace('["*"]', '["a", 5]'),
            "edge.toml: providers[0].models[1]: expected a string, got 5",
        ),
        (
            '[models."m"]\nfallbacks = "x"\n',
            'edge.toml: models."m".fallbacks: expected an array, got "x"',
        ),
        (
            '[routing]\nretry_on = [500, "502"]\n',
            'edge.toml: routing.retry_on[1]: expected an integer, got "502"',
        ),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(text, tmp_path).startswith(message)


def test_float_fields_accept_ints(tmp_path: Path) -> None:
    write(tmp_path, "[routing]\nbreaker_cooldown_s = 10\n[server]\ngraceful_timeout_s = 0\n")
    config = load_config(env=OPENAI_ENV)
    assert config.routing.breaker_cooldown_s == 10.0
    assert isinstance(config.routing.breaker_cooldown_s, float)
    assert config.server.graceful_timeout_s == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL_PROVIDER
            + MINIMAL_PROVIDER.replace('"up"', '"two"').replace('"openai"', '"cohere"'),
            'edge.toml: providers[1].kind: expected one of openai, anthropic, gemini, azure, '
            'bedrock, got "cohere"',
        ),
        (
            '[routing]\nstrategy = "latancy"\n',
            "edge.toml: routing.strategy: expected one of model, cost, latency, failover, "
            'least_busy, got "latancy" (did you mean "latency"?)',
        ),
        ('[cache]\nscope = "user"\n', "edge.toml: cache.scope: expected one of key, global"),
        ('[server]\nlog_level = "trace"\n', "edge.toml: server.log_level: expected one of debug"),
    ],
)
def test_bad_enums(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(text, tmp_path).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[server]\nport = 70000\n",
            "edge.toml: server.port: expected a port number from 0 to 65535, got 70000",
        ),
        ("[server]\nmetrics_port = -1\n", "edge.toml: server.metrics_port: expected a port number"),
        ("[server]\nworkers = 0\n", "edge.toml: server.workers: expected an integer >= 1, got 0"),
        (
            "[server]\nmax_request_bytes = 0\n",
            "edge.toml: server.max_request_bytes: expected an integer >= 1",
        ),
        ("[cache]\nttl_s = 0\n", "edge.toml: cache.ttl_s: expected an integer >= 1, got 0"),
        ("[cache]\nl1_max_bytes = -5\n", "edge.toml: cache.l1_max_bytes: expected an integer >= 1"),
        (
            "[cache]\nmax_entry_bytes = 0\n",
            "edge.toml: cache.max_entry_bytes: expected an integer >= 1, got 0",
        ),
        (
            '[cache]\nmax_entry_bytes = "8M"\n',
            "edge.toml: cache.max_entry_bytes: expected an integer",
        ),
        (
            "[routing]\nmax_attempts = 0\n",
            "edge.toml: routing.max_attempts: expected an integer >= 1",
        ),
        (
            "[routing]\nhedge_after_ms = -1\n",
            "edge.toml: routing.hedge_after_ms: expected an integer >= 0",
        ),
        (
            "[routing]\nretry_on = [600]\n",
            "edge.toml: routing.retry_on[0]: expected an integer from 100 to 599, got 600",
        ),
        (
            "[routing]\nbreaker_cooldown_s = 0\n",
            "edge.toml: routing.breaker_cooldown_s: expected a number > 0",
        ),
        (
            "[routing]\nbreaker_cooldown_s = inf\n",
            "edge.toml: routing.breaker_cooldown_s: expected a finite number",
        ),
        (
            '[cache]\nredis_url = "http://x:1/0"\n',
            "edge.toml: cache.redis_url: expected a redis://, rediss:// or unix:// URL",
        ),
        (
            "[server]\nport = 9090\n",
            "edge.toml: server.port: the metrics listener cannot share port 9090",
        ),
        ('[server]\nhost = ""\n', "edge.toml: server.host: expected a non-empty string"),
    ],
)
def test_value_checks(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(text, tmp_path).startswith(message)


@pytest.mark.parametrize(
    ("provider_lines", "message"),
    [
        ('name = "a b"\nkind = "openai"\nmodels = ["*"]', "providers[0].name: expected letters"),
        ('kind = "openai"\nmodels = ["*"]', "providers[0].name: missing"),
        ('name = "x"\nkind = "openai"', "providers[0].models: missing"),
        (
            'name = "x"\nkind = "openai"\nmodels = []',
            "providers[0].models: expected a non-empty array",
        ),
        (
            'name = "x"\nkind = "openai"\nmodels = ["*"]\nbase_url = "ftp://h"',
            'providers[0].base_url: expected an http:// or https:// URL, got "ftp://h"',
        ),
        (
            'name = "x"\nkind = "openai"\nmodels = ["*"]\nbase_url = "https://"',
            "providers[0].base_url: expected an http:// or https:// URL",
        ),
        (
            'name = "x"\nkind = "openai"\nmodels = ["*"]\ntimeout_s = 0',
            "providers[0].timeout_s: expected a number > 0",
        ),
        (
            'name = "x"\nkind = "openai"\nmodels = ["*"]\nfirst_byte_timeout_s = 0',
            "providers[0].first_byte_timeout_s: expected a number > 0",
        ),
        (
            'name = "x"\nkind = "openai"\nmodels = ["*"]\nstream_idle_timeout_s = "5"',
            "providers[0].stream_idle_timeout_s: expected a number, got \"5\"",
        ),
        (
            'name = "x"\nkind = "openai"\nmodels = ["*"]\nmax_connections = 0',
            "providers[0].max_connections: expected an integer >= 1",
        ),
        (
            'name = "x"\nkind = "openai"\nmodels = ["*"]\nanthropic_version = "v"',
            'providers[0].anthropic_version: only valid with kind = "anthropic"',
        ),
        (
            'name = "x"\nkind = "openai"\nmodels = ["*"]\napi_key = ""',
            "providers[0].api_key: empty",
        ),
    ],
)
def test_provider_checks(tmp_path: Path, provider_lines: str, message: str) -> None:
    assert error_of(f"[[providers]]\n{provider_lines}\n", tmp_path).startswith(
        f"edge.toml: {message}"
    )


def test_duplicate_provider_names(tmp_path: Path) -> None:
    message = error_of(MINIMAL_PROVIDER * 2, tmp_path)
    assert (
        message == 'edge.toml: providers[1].name: duplicate provider name "up" (also providers[0])'
    )


def test_toml_syntax_error_names_file_and_position(tmp_path: Path) -> None:
    message = error_of("[server]\nport = = 1\n", tmp_path)
    assert message.startswith("edge.toml: invalid TOML: ")
    assert "line 2" in message


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "edge.toml").write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match=r"^edge\.toml: invalid TOML"):
        load_config(env=OPENAI_ENV)


def test_missing_env_secret_names_key_and_variable(tmp_path: Path) -> None:
    text = MINIMAL_PROVIDER + 'api_key = "env:UP_KEY"\n'
    message = error_of(text, tmp_path)
    assert message == "edge.toml: providers[0].api_key: environment variable UP_KEY is not set"
    message = error_of(text, tmp_path, env={"UP_KEY": " "})
    assert message == "edge.toml: providers[0].api_key: environment variable UP_KEY is empty"
    write(tmp_path, text)
    assert load_config(env={"UP_KEY": "sk-up\n"}).providers[0].api_key == "sk-up"


def test_env_errors_name_the_variable() -> None:
    cases = {
        "PORT": ("x", 'environment: PORT: expected an integer, got "x"'),
        "METRICS_PORT": ("99999", "environment: METRICS_PORT: expected a port number"),
        "LOG_LEVEL": ("loud", "environment: LOG_LEVEL: expected one of debug, info"),
        "REDIS_URL": ("localhost:6379", "environment: REDIS_URL: expected a redis://"),
        "OPENAI_BASE_URL": ("api.example.com", "environment: OPENAI_BASE_URL: expected an http"),
    }
    for var, (value, message) in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(env={**OPENAI_ENV, var: value})
        assert str(info.value).startswith(message), var


def test_cli_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=OPENAI_ENV, overrides={"port": 70000})
    assert str(info.value).startswith("command line: --port: expected a port number")
    with pytest.raises(ConfigError) as info:
        load_config(env=OPENAI_ENV, overrides={"metrics_port": "abc"})
    assert str(info.value) == 'command line: --metrics-port: expected an integer, got "abc"'
    with pytest.raises(ConfigError) as info:
        load_config(env=OPENAI_ENV, overrides={"workers": True})
    assert str(info.value) == "command line: --workers: expected an integer, got true"
    with pytest.raises(ConfigError, match="^command line: bogus: unknown option"):
        load_config(env=OPENAI_ENV, overrides={"bogus": 1})


def test_port_conflict_names_the_winning_layer() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={**OPENAI_ENV, "PORT": "9000", "METRICS_PORT": "9000"})
    assert str(info.value).startswith("environment: METRICS_PORT: the metrics listener")
    config = load_config(env={**OPENAI_ENV, "PORT": "0", "METRICS_PORT": "0"})
    assert (config.server.port, config.server.metrics_port) == (0, 0)


# --------------------------------------------------------------------------- providers


def test_builtin_providers_order_and_base_urls() -> None:
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-1",
        "OPENAI_API_KEY": "sk-oai-1",
        "OPENAI_BASE_URL": "http://127.0.0.1:4000/v1/",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:4001",
    }
    openai, anthropic = load_config(env=env).providers
    assert (openai.name, openai.kind, openai.base_url) == (
        "openai",
        "openai",
        "http://127.0.0.1:4000/v1",
    )
    assert openai.models == (
        "gpt-4o*",
        "gpt-4*",
        "gpt-3.5-turbo*",
        "o1*",
        "o3*",
        "o4*",
        "chatgpt-*",
        "text-embedding-*",
    )
    assert (anthropic.name, anthropic.kind, anthropic.base_url, anthropic.models) == (
        "anthropic",
        "anthropic",
        "http://127.0.0.1:4001",
        ("claude-*",),
    )
    assert anthropic.api_key == "sk-ant-1"
    (only,) = load_config(env={"ANTHROPIC_API_KEY": "k"}).providers
    assert only.base_url == "https://api.anthropic.com"


def test_toml_providers_come_first_and_shadow_builtins(tmp_path: Path) -> None:
    write(
        tmp_path,
        MINIMAL_PROVIDER
        + '[[providers]]\nname = "openai"\nkind = "openai"\nbase_url = "http://127.0.0.1:1/v1"\n'
        'models = ["gpt-*"]\napi_key = "env:MY_OPENAI"\n',
    )
    env = {
        "OPENAI_API_KEY": "sk-ignored",
        "OPENAI_BASE_URL": "http://127.0.0.1:2/v1",
        "ANTHROPIC_API_KEY": "sk-ant",
        "MY_OPENAI": "sk-mine",
    }
    config = load_config(env=env)
    assert [p.name for p in config.providers] == ["up", "openai", "anthropic"]
    assert config.providers[1].api_key == "sk-mine"
    # the environment outranks the file: OPENAI_BASE_URL moves the file's "openai" provider
    assert config.providers[1].base_url == "http://127.0.0.1:2/v1"
    assert config.providers[1].models == ("gpt-*",)
    del env["OPENAI_BASE_URL"]
    assert load_config(env=env).providers[1].base_url == "http://127.0.0.1:1/v1"


def test_base_url_env_ignored_for_a_file_provider_of_another_kind(tmp_path: Path) -> None:
    write(tmp_path, '[[providers]]\nname = "openai"\nkind = "anthropic"\n'
                    'base_url = "http://127.0.0.1:1"\nmodels = ["claude-*"]\n')
    config = load_config(env={"OPENAI_BASE_URL": "http://127.0.0.1:2/v1"})
    assert config.providers[0].base_url == "http://127.0.0.1:1"
    assert any("OPENAI_BASE_URL is ignored" in w for w in config.warnings)


def test_no_providers() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={})
    assert str(info.value) == NO_PROVIDERS
    config = load_config(env={}, require_providers=False)
    assert config.providers == ()


def test_provider_without_api_key_is_allowed(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL_PROVIDER)
    (provider,) = load_config(env={}).providers
    assert provider.api_key is None
    assert provider.base_url == "http://127.0.0.1:9999/v1"


def test_literal_api_key_is_warned(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL_PROVIDER + 'api_key = "sk-literal-value-123"\n')
    config = load_config(env={})
    assert config.providers[0].api_key == "sk-literal-value-123"
    assert config.warnings == (
        "providers[0].api_key: literal secret in config file; prefer env:NAME",
    )


# --------------------------------------------------------------------------- models


def test_deployments_must_name_configured_providers(tmp_path: Path) -> None:
    message = error_of(
        '[models."fast"]\ndeployments = ["openai/gpt-4o-mini", "opneai/gpt-4o"]\n', tmp_path
    )
    assert message.startswith('edge.toml: models."fast".deployments[1]: unknown provider "opneai"')
    assert "(configured: openai)" in message
    assert 'did you mean "openai"?' in message


def test_deployment_shape_and_fallback_self_reference(tmp_path: Path) -> None:
    message = error_of('[models."fast"]\ndeployments = ["gpt-4o"]\n', tmp_path)
    assert (
        message
        == 'edge.toml: models."fast".deployments[0]: expected "provider/model", got "gpt-4o"'
    )
    message = error_of('[models."a"]\nfallbacks = ["b", "a"]\n', tmp_path)
    assert message == 'edge.toml: models."a".fallbacks[1]: a model cannot fall back to itself'
    message = error_of('[models."a"]\ninput_per_mtok = -1\n', tmp_path)
    assert message.startswith('edge.toml: models."a".input_per_mtok: expected a number >= 0')
    message = error_of("models = 3\n", tmp_path)
    assert message.startswith("edge.toml: models: expected a table")


def test_deployments_may_use_builtin_providers(tmp_path: Path) -> None:
    write(tmp_path, '[models."fast"]\ndeployments = ["anthropic/claude-3-haiku-20240307"]\n')
    config = load_config(env={"ANTHROPIC_API_KEY": "k"})
    assert config.models["fast"].deployments == ("anthropic/claude-3-haiku-20240307",)


# --------------------------------------------------------------------------- auth


def test_edge_api_keys_appended_after_toml_keys(tmp_path: Path) -> None:
    write(tmp_path, '[auth]\nkeys = [{ name = "team-a", key = "env:TEAM_A", rpm = 5 }]\n')
    env = {**OPENAI_ENV, "TEAM_A": "a-key", "EDGE_API_KEYS": "k-one, ,k-two,,a-key"}
    config = load_config(env=env)
    names = [k.name for k in config.auth.keys]
    one = hashlib.sha256(b"k-one").hexdigest()
    two = hashlib.sha256(b"k-two").hexdigest()
    assert names == ["team-a", f"key-{one[:8]}", f"key-{two[:8]}"]
    assert config.auth.keys[1] == AuthKey(name=f"key-{one[:8]}", secret="k-one", sha256=one)
    assert config.auth.keys[0].rpm == 5
    assert any("EDGE_API_KEYS: item 5 repeats a key" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('[{ name = "a" }]', "edge.toml: auth.keys[0]: expected exactly one of key, sha256"),
        (
            '[{ name = "a", key = "x", sha256 = "%s" }]' % ("0" * 64),
            "edge.toml: auth.keys[0]: expected exactly one of key, sha256",
        ),
        ('[{ name = "a", sha256 = "abc" }]', "edge.toml: auth.keys[0].sha256: expected a SHA-256"),
        (
            '[{ name = "a", key = "x", rpm = 0 }]',
            "edge.toml: auth.keys[0].rpm: expected an integer >= 1",
        ),
        (
            '[{ name = "a", key = "x", tpm = 1.5 }]',
            "edge.toml: auth.keys[0].tpm: expected an integer",
        ),
        (
            '[{ name = "a", key = "x" }, { name = "a", key = "y" }]',
            'edge.toml: auth.keys[1].name: duplicate key name "a" (also auth.keys[0])',
        ),
        (
            '[{ name = "a", key = "x" }, { name = "b", key = "x" }]',
            "edge.toml: auth.keys[1]: the same client key is already configured as auth.keys[0]",
        ),
        (
            '[{ name = "anonymous", key = "x" }]',
            'edge.toml: auth.keys[0].name: "anonymous" is reserved',
        ),
        (
            '[{ name = "a", key = "env:NOPE" }]',
            "edge.toml: auth.keys[0].key: environment variable NOPE",
        ),
        ('{ name = "a", key = "x" }', "edge.toml: auth.keys: expected an array of tables"),
        ('["x"]', 'edge.toml: auth.keys[0]: expected a table, got "x"'),
    ],
)
def test_auth_key_checks(tmp_path: Path, keys: str, message: str) -> None:
    assert error_of(f"[auth]\nkeys = {keys}\n", tmp_path).startswith(message)


def test_auth_key_name_defaults_to_digest_prefix(tmp_path: Path) -> None:
    write(tmp_path, '[auth]\nkeys = [{ key = "env:K" }]\n')
    (key,) = load_config(env={**OPENAI_ENV, "K": "client-1"}).auth.keys
    assert key.name == "key-" + hashlib.sha256(b"client-1").hexdigest()[:8]


def test_loopback_rule(tmp_path: Path) -> None:
    write(tmp_path, '[server]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError) as info:
        load_config(env=OPENAI_ENV)
    assert str(info.value) == (
        "edge.toml: server.host: binding 0.0.0.0 with no client keys would expose the proxy; "
        "add [auth].keys or EDGE_API_KEYS, or set [auth].allow_anonymous = true"
    )
    write(tmp_path, '[server]\nhost = "0.0.0.0"\n[auth]\nallow_anonymous = true\n')
    assert load_config(env=OPENAI_ENV).server.host == "0.0.0.0"
    write(tmp_path, '[server]\nhost = "0.0.0.0"\n')
    config = load_config(env={**OPENAI_ENV, "EDGE_API_KEYS": "k1"})
    assert len(config.auth.keys) == 1


def test_loopback_rule_names_the_layer_that_set_the_host() -> None:
    with pytest.raises(ConfigError, match=r"^environment: HOST: binding 0\.0\.0\.0 with no"):
        load_config(env={**OPENAI_ENV, "HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match=r"^command line: --host: binding :: with no"):
        load_config(env=OPENAI_ENV, overrides={"host": "::"})


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1"]
)
def test_loopback_hosts_need_no_keys(host: str) -> None:
    config = load_config(env={**OPENAI_ENV, "HOST": host})
    assert config.server.host == host.strip("[]")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.internal"])
def test_non_loopback_hosts_need_keys(host: str) -> None:
    with pytest.raises(ConfigError, match="would expose the proxy"):
        load_config(env={**OPENAI_ENV, "HOST": host})


# --------------------------------------------------------------------------- secrets


def test_secrets_never_in_repr_summary_warnings_or_errors(tmp_path: Path) -> None:
    secrets = {
        "PROVIDER_SECRET": "sk-provider-SECRET-1",
        "CLIENT_SECRET": "client-SECRET-2",
        "LITERAL": "sk-literal-SECRET-3",
        "ENVKEY": "edge-SECRET-4",
        "REDIS_PW": "redis-SECRET-5",
        "URL_KEY": "url-SECRET-6",
    }
    write(
        tmp_path,
        f"""
[server]
host = "0.0.0.0"
[auth]
keys = [{{ name = "a", key = "env:CLIENT_SECRET" }}, {{ name = "b", key = "{secrets["LITERAL"]}" }}]
[cache]
l2_enabled = true
redis_url = "redis://default:{secrets["REDIS_PW"]}@redis.local:6379/0"
[[providers]]
name = "p"
kind = "openai"
base_url = "https://h.example/v1?api-key={secrets["URL_KEY"]}"
api_key = "env:PROVIDER_SECRET"
models = ["*"]
[[providers]]
name = "q"
kind = "anthropic"
api_key = "{secrets["LITERAL"]}"
models = ["claude-*"]
""",
    )
    env = {
        "PROVIDER_SECRET": secrets["PROVIDER_SECRET"],
        "CLIENT_SECRET": secrets["CLIENT_SECRET"],
        "EDGE_API_KEYS": secrets["ENVKEY"],
        "OPENAI_API_KEY": "sk-builtin-SECRET-7",
    }
    config = load_config(env=env)
    assert config.providers[0].api_key == secrets["PROVIDER_SECRET"]
    texts = [repr(config), str(config), summary(config), *config.warnings]
    texts += [repr(k) for k in config.auth.keys] + [repr(p) for p in config.providers]
    for text in texts:
        assert "SECRET" not in text, text
    assert "redis://default:***@redis.local:6379/0" in summary(config)
    assert "key: set" in summary(config)
    assert len(config.warnings) == 2  # the two literals


def test_secrets_not_echoed_in_errors(tmp_path: Path) -> None:
    # A key pasted into the sha256 field, and a URL with a password that fails validation.
    message = error_of(
        '[auth]\nkeys = [{ name = "a", sha256 = "sk-SECRET-in-wrong-field" }]\n', tmp_path
    )
    assert "SECRET" not in message
    assert "auth.keys[0].sha256" in message
    message = error_of('[cache]\nredis_url = "http://u:pw-SECRET@h:1/0"\n', tmp_path)
    assert "SECRET" not in message
    assert "cache.redis_url" in message
    with pytest.raises(ConfigError) as info:
        load_config(env={**OPENAI_ENV, "REDIS_URL": "tcp://:pw-SECRET@h"})
    assert "SECRET" not in str(info.value)


def test_resolve_secret() -> None:
    env = {"A": "value-a"}
    assert resolve_secret("env:A", env, "f: k") == "value-a"
    assert resolve_secret("literal", env, "f: k") == "literal"
    with pytest.raises(ConfigError, match=r"^f: k: environment variable B is not set$"):
        resolve_secret("env:B", env, "f: k")
    with pytest.raises(ConfigError, match=r"^f: k: expected \"env:NAME\""):
        resolve_secret("env:", env, "f: k")
    with pytest.raises(ConfigError, match=r"^f: k: expected a non-empty secret"):
        resolve_secret("", env, "f: k")


# --------------------------------------------------------------------------- file lookup


def test_lookup_order(tmp_path: Path) -> None:
    explicit = write(tmp_path, "[server]\nport = 1111\n", name="explicit.toml")
    from_env = write(tmp_path, "[server]\nport = 2222\n", name="env.toml")
    write(tmp_path, "[server]\nport = 3333\n")  # ./edge.toml
    env = {**OPENAI_ENV, "EDGE_CONFIG": from_env}
    config = load_config(explicit, env=env)
    assert (config.server.port, config.source) == (1111, explicit)
    config = load_config(env=env)
    assert (config.server.port, config.source) == (2222, from_env)
    config = load_config(env=OPENAI_ENV)
    assert (config.server.port, config.source) == (3333, "edge.toml")
    (tmp_path / "edge.toml").unlink()
    config = load_config(env=OPENAI_ENV)
    assert (config.server.port, config.source) == (8080, None)


def test_path_object_accepted(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[server]\nport = 4444\n")
    assert load_config(path, env=OPENAI_ENV).server.port == 4444


@pytest.mark.parametrize("source", ["explicit", "env"])
def test_missing_config_file(tmp_path: Path, source: str) -> None:
    missing = str(tmp_path / "nope.toml")
    path, env = (missing, OPENAI_ENV) if source == "explicit" else (None, {"EDGE_CONFIG": missing})
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert str(info.value) == f"{missing}: cannot read config file: No such file or directory"


def test_errors_use_the_given_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[cache]\nttl_s = -1\n", name="prod.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=OPENAI_ENV)
    assert str(info.value).startswith(f"{path}: cache.ttl_s: ")


# --------------------------------------------------------------------------- summary


def test_summary_shape(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
[auth]
keys = [{ name = "team-a", key = "env:T", rpm = 600 }]
[cache]
l2_enabled = true
redis_cluster = true
[routing]
strategy = "cost"
hedge_after_ms = 300
[models."gpt-4o"]
input_per_mtok = 2.5
output_per_mtok = 10
fallbacks = ["claude-3-5-sonnet-20241022"]
[models."fast"]
deployments = ["openai/gpt-4o-mini"]
""",
    )
    text = summary(load_config(env={**OPENAI_ENV, "T": "t", "ENABLE_METRICS": "false"}))
    lines = text.splitlines()
    assert lines[0] == "config: edge.toml"
    assert lines[1].startswith("listeners: http://127.0.0.1:8080  metrics: off  workers: 1")
    assert "  openai (openai) https://api.openai.com/v1  models: gpt-4o*" in text
    assert "gpt-4o  $2.50 in / $10.00 out per Mtok  fallbacks: claude-3-5-sonnet-20241022" in text
    assert "fast  -> openai/gpt-4o-mini" in text
    assert "L2 redis cluster redis://127.0.0.1:6379/0" in text
    assert "routing: cost, max_attempts 3, hedge after 300 ms" in text
    assert "auth: 1 key (team-a rpm 600), anonymous: off" in text
    assert len(lines) <= 24


def test_summary_stays_on_one_screen(tmp_path: Path) -> None:
    providers = "".join(
        f'[[providers]]\nname = "p{i}"\nkind = "openai"\nmodels = ["m{i}-*"]\n' for i in range(30)
    )
    models = "".join(f'[models."m{i}"]\ninput_per_mtok = 1\n' for i in range(30))
    write(tmp_path, providers + models)
    text = summary(load_config(env={}))
    assert len(text.splitlines()) <= 30
    assert "... and 22 more" in text


def test_summary_without_file_or_providers() -> None:
    text = summary(load_config(env={"METRICS_PORT": "0"}, require_providers=False))
    assert text.splitlines()[0] == "config: none (environment and defaults only)"
    assert "providers: none" in text
    assert "metrics: /metrics on the proxy port only" in text
    assert ("cache: L1 (100000 entries, 256 MiB, ttl 3600s), entries up to 8 MiB, L2 off, "
            "scope key") in text
    assert "auth: no keys, anonymous: off" in text


def test_workers_without_l2_warns() -> None:
    config = load_config(env=OPENAI_ENV, overrides={"workers": 4})
    assert config.warnings == (
        "server.workers: 4 workers without L2: each keeps its own cache and rate-limit counters",
    )
    assert "warnings:" in summary(config)


# -- governance: budgets, allowlists, the admin key, [store] (SPEC §7) ---------------------


def test_key_budgets_periods_and_model_allowlists(tmp_path: Path) -> None:
    write(tmp_path, """
[[auth.keys]]
name = "team-a"
key = "env:TEAM_A"
budget_usd = 50.0
budget_period = "month"
models = ["gpt-4o*", "fast"]

[[auth.keys]]
name = "team-b"
key = "env:TEAM_B"
budget_usd = 0
""")
    config = load_config(env={**OPENAI_ENV, "TEAM_A": "a", "TEAM_B": "b"})
    a, b = config.auth.keys
    assert (a.budget_usd, a.budget_period, a.models) == (50.0, "month", ("gpt-4o*", "fast"))
    assert (b.budget_usd, b.budget_period, b.models) == (0.0, "total", None)
    text = summary(config)
    assert "team-a: budget $50 per month, models: gpt-4o*, fast" in text
    assert "team-b: budget $0 per total, models: any" in text


def test_spec_governance_example_parses_as_toml_1_1(tmp_path: Path) -> None:
    """SPEC §7's example breaks an inline table over two lines, which TOML 1.1 allows and
    Python's tomllib (TOML 1.0) rejects; edge reads config with tomli, so the example loads."""
    write(tmp_path, """
[auth]
keys = [ { name = "team-a", key = "env:TEAM_A_KEY", rpm = 600, tpm = 200000,
           budget_usd = 50.0, budget_period = "month", models = ["gpt-4o*", "fast"] } ]
admin_key = "env:EDGE_ADMIN_KEY"  # enables /admin/*; without it /admin/* answers 404

[store]
url = "memory://"                 # memory:// (default) | sqlite:///edge.db
usage_retention_days = 90
""")
    config = load_config(env={**OPENAI_ENV, "TEAM_A_KEY": "sk-a", "EDGE_ADMIN_KEY": "sk-adm"})
    (key,) = config.auth.keys
    assert (key.name, key.rpm, key.tpm) == ("team-a", 600, 200000)
    assert (key.budget_usd, key.budget_period, key.models) == (50.0, "month", ("gpt-4o*", "fast"))
    assert config.auth.admin_key == "sk-adm"
    assert (config.store.url, config.store.usage_retention_days) == ("memory://", 90)


@pytest.mark.parametrize(("entry", "key", "what"), [
    ('budget_usd = -1', "budget_usd", "expected a number >= 0"),
    ('budget_usd = "ten"', "budget_usd", "expected a number"),
    ('budget_period = "week"', "budget_period", "expected one of 1h, 1d, 7d, month, total"),
    ('models = "gpt-4o"', "models", "expected an array"),
    ('models = [""]', "models[0]", "expected a non-empty string"),
])
def test_bad_budget_fields_name_file_and_key(tmp_path: Path, entry: str, key: str,
                                             what: str) -> None:
    message = error_of(f'[auth]\nkeys = [{{ name = "a", key = "k", {entry} }}]\n', tmp_path,
                       env=OPENAI_ENV)
    assert message.startswith(f"edge.toml: auth.keys[0].{key}: {what}")


def test_admin_key_from_file_or_environment(tmp_path: Path) -> None:
    write(tmp_path, '[auth]\nadmin_key = "env:MY_ADMIN"\n')
    config = load_config(env={**OPENAI_ENV, "MY_ADMIN": "sk-admin"})
    assert config.auth.admin_key == "sk-admin"
    assert "sk-admin" not in repr(config)
    assert "admin API: on" in summary(config)
    assert config.warnings == ()
    # EDGE_ADMIN_KEY outranks the file, even where the file's variable is unset
    config = load_config(env={**OPENAI_ENV, "EDGE_ADMIN_KEY": "sk-from-env"})
    assert config.auth.admin_key == "sk-from-env"
    write(tmp_path, '[auth]\nadmin_key = "sk-literal"\n')
    config = load_config(env=OPENAI_ENV)
    assert config.warnings == ("auth.admin_key: literal secret in config file; prefer env:NAME",)
    assert "admin API: off" in summary(load_config(env=OPENAI_ENV, path=write(
        tmp_path, "", name="empty.toml")))


def test_the_admin_key_must_differ_from_every_client_key(tmp_path: Path) -> None:
    text = '[auth]\nkeys = [{ name = "a", key = "env:A" }]\nadmin_key = "env:ADMIN"\n'
    message = error_of(text, tmp_path, env={**OPENAI_ENV, "A": "same", "ADMIN": "same"})
    assert message.startswith("edge.toml: auth.admin_key: the admin key must "
                              "differ from every client key")
    assert "same" not in message.replace("must differ", "")
    message = error_of(text, tmp_path, env={**OPENAI_ENV, "A": "x", "ADMIN": "y",
                                            "EDGE_ADMIN_KEY": "x"})
    assert message.startswith("environment: EDGE_ADMIN_KEY: the admin key must differ")
    message = error_of("", tmp_path, env={**OPENAI_ENV, "EDGE_API_KEYS": "k1,k2",
                                          "EDGE_ADMIN_KEY": "k2"})
    assert "EDGE_ADMIN_KEY: the admin key must differ" in message


def test_store_url_retention_and_environment(tmp_path: Path) -> None:
    assert load_config(env=OPENAI_ENV).store.url == "memory://"
    assert load_config(env=OPENAI_ENV).store.usage_retention_days == 90
    write(tmp_path, '[store]\nurl = "sqlite:///data/edge.db"\nusage_retention_days = 7\n')
    config = load_config(env=OPENAI_ENV)
    assert (config.store.url, config.store.usage_retention_days) == ("sqlite:///data/edge.db", 7)
    assert "store: sqlite:///data/edge.db (durable), usage kept 7 days" in summary(config)
    env = {**OPENAI_ENV, "EDGE_STORE_URL": "postgresql://edge:hunter2@127.0.0.1/edge"}
    config = load_config(env=env)
    assert config.store.url == env["EDGE_STORE_URL"]
    assert "hunter2" not in summary(config)
    assert "hunter2" not in repr(config)
    assert "store: postgresql://edge:***@127.0.0.1/edge (durable)" in summary(config)
    assert pickle.loads(pickle.dumps(config)).store == config.store


@pytest.mark.parametrize(("text", "env", "where", "what"), [
    ('[store]\nurl = "mysql://x"\n', {}, "store.url", "unknown store URL scheme"),
    ('[store]\nurl = "sqlite://edge.db"\n', {}, "store.url", "three slashes"),
    ('[store]\nusage_retention_days = 0\n', {}, "store.usage_retention_days",
     "expected a number > 0"),
    ('[store]\npath = "x"\n', {}, "store.path", "unknown key"),
    ("", {"EDGE_STORE_URL": "redis://x"}, "EDGE_STORE_URL", "unknown store URL scheme"),
])
def test_bad_store_settings_name_the_key(tmp_path: Path, text: str, env: dict[str, str],
                                         where: str, what: str) -> None:
    message = error_of(text, tmp_path, env={**OPENAI_ENV, **env})
    assert where in message
    assert what in message


def test_postgres_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    """Run in a child interpreter where psycopg cannot be imported."""
    import subprocess
    import sys

    write(tmp_path, '[store]\nurl = "postgresql://u:pw@127.0.0.1/db"\n')
    code = ("import sys; sys.modules['psycopg'] = None; sys.modules['psycopg.conninfo'] = None\n"
            "from edge.cli import main; sys.exit(main(['check-config', 'edge.toml']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={"OPENAI_API_KEY": "x",
                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "edge.toml: store.url" in result.stderr
    assert "edge[postgres]" in result.stderr
    assert "pw" not in result.stderr


def test_client_bounds_default_and_parse(tmp_path: Path) -> None:
    """The keep-alive idle timeout and the whole-body read deadline (SECURITY.md limits)."""
    assert ServerConfig().keep_alive_timeout_s == 75.0
    assert ServerConfig().request_body_timeout_s == 60.0
    write(tmp_path, "[server]\nkeep_alive_timeout_s = 5\nrequest_body_timeout_s = 2.5\n")
    server = load_config(env=OPENAI_ENV).server
    assert server.keep_alive_timeout_s == 5.0
    assert isinstance(server.keep_alive_timeout_s, float)
    assert server.request_body_timeout_s == 2.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[server]\nkeep_alive_timeout_s = 0\n",
            "edge.toml: server.keep_alive_timeout_s: expected a number > 0, got 0",
        ),
        (
            "[server]\nrequest_body_timeout_s = -1\n",
            "edge.toml: server.request_body_timeout_s: expected a number > 0, got -1",
        ),
        (
            '[server]\nrequest_body_timeout_s = "60s"\n',
            'edge.toml: server.request_body_timeout_s: expected a number, got "60s"',
        ),
        (
            "[server]\nkeep_alive_timeout_s = inf\n",
            "edge.toml: server.keep_alive_timeout_s: expected a finite number",
        ),
        (
            "[server]\nkeep_alive_timeout = 5\n",
            'edge.toml: server.keep_alive_timeout: unknown key '
            '(did you mean "keep_alive_timeout_s"?)',
        ),
        (
            "[server]\nread_timeout_s = 5\n",
            "edge.toml: server.read_timeout_s: unknown key",
        ),
    ],
)
def test_client_bounds_bad_values(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(text, tmp_path).startswith(message)
