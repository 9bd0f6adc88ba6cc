"""Configuration: TOML file + environment + command line -> frozen dataclasses, parsed once.

This is the only module in edge that reads the environment. Everything else receives a
`Config`, so a test (or a library user) can build one without touching `os.environ`.

Theory of operation
-------------------
`load_config` works in layers, lowest precedence first, and validates each layer where
it comes in, so every error names the place the bad value was written:

    defaults -> TOML file -> environment -> command line     (later layers win)

An error message always has the shape ``{where}: {key}: {what is wrong}``, where
``where`` is the file path, ``environment`` or ``command line`` and ``key`` is the dotted
TOML key (``providers[1].kind``), the variable (``PORT``) or the flag (``--port``).

Secrets (provider API keys, client keys) are resolved here and carried in fields that
are left out of ``repr``; no message, warning or summary line ever contains a secret
value. URLs are shown with any password or credential-like query value masked.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import tomli

from .logs import LEVELS

__all__ = [
    "AuthConfig",
    "AuthKey",
    "CacheConfig",
    "Config",
    "ConfigError",
    "ModelConfig",
    "ProviderConfig",
    "RoutingConfig",
    "ServerConfig",
    "StoreConfig",
    "load_config",
    "resolve_secret",
    "summary",
]

LOG_LEVELS: Final = tuple(LEVELS)  # the logger's map is the one list
STRATEGIES: Final = ("model", "cost", "latency", "failover", "least_busy")
CACHE_SCOPES: Final = ("key", "global")
PROVIDER_KINDS: Final = ("openai", "anthropic", "gemini", "azure", "bedrock")
#: Budget windows (SPEC §7): UTC hour, UTC day, week from Monday, calendar month, forever.
BUDGET_PERIODS: Final = ("1h", "1d", "7d", "month", "total")

NO_PROVIDERS_MESSAGE: Final = (
    "No providers configured. Set OPENAI_API_KEY or ANTHROPIC_API_KEY, "
    "or add a [[providers]] table to the config file."
)

_DEFAULT_BASE_URLS: Final = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "azure": "",  # required: every Azure resource has its own host
    "bedrock": "https://bedrock-runtime.{region}.amazonaws.com",
}
_BUILTIN_MODELS: Final = {
    "openai": (
        "gpt-4o*",
        "gpt-4*",
        "gpt-3.5-turbo*",
        "o1*",
        "o3*",
        "o4*",
        "chatgpt-*",
        "text-embedding-*",
    ),
    "anthropic": ("claude-*",),
    "gemini": ("gemini-*",),
}

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_HEX64_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_ENV_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_ENV_FALSE: Final = frozenset({"false", "0", "no", "off"})
_ENV_FILE: Final = "environment"
_CLI_FILE: Final = "command line"
# A client key with this name would be indistinguishable from unauthenticated traffic.
_RESERVED_KEY_NAME: Final = "anonymous"
# Query parameters whose values are masked when a URL is shown (e.g. Azure's ?api-key=).
_SECRET_QUERY_RE: Final = re.compile(r"pass|secret|token|key|auth|sig", re.IGNORECASE)
_REGION_RE: Final = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
_API_VERSION_RE: Final = re.compile(r"v1|[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?")
# Azure deployment names: letters, digits, "-", "_" and "."; they go into the URL path.
_DEPLOYMENT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConfigError(Exception):
    """User-facing message naming the file, the key and what is wrong."""


# ---------------------------------------------------------------------------------------
# The configuration model. Field names are shared with the rest of edge: keep them.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Listeners and process shape; `metrics_port = 0` means no separate metrics listener."""

    host: str = "127.0.0.1"
    port: int = 8080
    metrics_port: int = 9090
    workers: int = 1
    max_request_bytes: int = 4194304
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    # Bounds on a client, never on an answer in progress (see SECURITY.md "Limits on input").
    keep_alive_timeout_s: float = 75.0  # idle connection, and the wait for a request's head
    request_body_timeout_s: float = 60.0  # the whole request body, from its first read


@dataclass(frozen=True, slots=True)
class AuthKey:
    """One client key. `secret` is None when only its digest was configured."""

    name: str
    secret: str | None = field(repr=False)
    sha256: str
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "total"
    models: tuple[str, ...] | None = None  # globs over the names clients send; None: any


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Client keys accepted on /v1/*, and the admin key that enables /admin/* (SPEC §4, §7)."""

    keys: tuple[AuthKey, ...] = ()
    allow_anonymous: bool = False
    admin_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where admin-made keys, the usage ledger and stored responses live (SPEC §7)."""

    url: str = "memory://"
    usage_retention_days: float = 90.0

    def __repr__(self) -> str:
        return f"StoreConfig(url={_mask_store_url(self.url)!r}, " \
               f"usage_retention_days={self.usage_retention_days!r})"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The L1 (in-process) and L2 (Redis) cache tiers."""

    enabled: bool = True
    ttl_s: int = 3600
    l1_max_entries: int = 100000
    l1_max_bytes: int = 268435456
    # The largest answer stored (JSON bytes); a stream past it is relayed but no longer
    # assembled, which also bounds the memory one stream holds for the cache.
    max_entry_bytes: int = 8388608
    l2_enabled: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    key_prefix: str = "edge:v1:"
    scope: str = "key"

    def __repr__(self) -> str:
        return _masked_repr(self, "redis_url")


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Candidate ordering, retries, hedging and circuit breakers."""

    strategy: str = "model"
    max_attempts: int = 3
    hedge_after_ms: int = 0
    retry_on: tuple[int, ...] = (408, 429, 500, 502, 503, 504)
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ProviderKey:
    """One key of a provider's pool (SPEC §9 "Key pools"): its resolved secret, its share
    of the requests, and its own per-minute limits (None: none)."""

    secret: str = field(repr=False)
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream. `api_key` is the resolved secret and is kept out of repr; `api_keys`
    is a pool of them instead (at most one of the two is set)."""

    name: str
    kind: str
    base_url: str
    api_key: str | None = field(repr=False)
    models: tuple[str, ...]
    api_keys: tuple[ProviderKey, ...] = field(default=(), repr=False)
    timeout_s: float = 120.0  # a whole JSON answer, headers and body
    max_connections: int = 256
    anthropic_version: str = "2023-06-01"
    region: str | None = None  # bedrock: the AWS region, for the host and SigV4
    api_version: str = "2024-10-21"  # azure: a dated api-version, or "v1"
    deployments: tuple[tuple[str, str], ...] = ()  # azure: (model, deployment) pairs
    first_byte_timeout_s: float | None = None  # an answer's headers; None: timeout_s
    stream_idle_timeout_s: float = 60.0  # silence between two events of a stream
    # kind openai only: the upstream serves /responses, so the Responses door passes
    # requests through (SPEC §8); otherwise it translates them to Chat Completions
    responses_api: bool = False

    def __repr__(self) -> str:
        return _masked_repr(self, "base_url")

    @property
    def keys(self) -> tuple[ProviderKey, ...]:
        """The keys requests spread over: the pool, or the single `api_key`, or none."""
        if self.api_keys:
            return self.api_keys
        return (ProviderKey(self.api_key),) if self.api_key else ()

    @property
    def first_byte_s(self) -> float:
        """The wait allowed for an answer's headers (SPEC §10: default `timeout_s`)."""
        return self.timeout_s if self.first_byte_timeout_s is None else self.first_byte_timeout_s


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A `[models."NAME"]` entry: price override, fallbacks, or a group of deployments."""

    name: str
    input_per_mtok: float | None = None
    output_per_mtok: float | None = None
    fallbacks: tuple[str, ...] = ()
    deployments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration. `models` keeps the file's order and is read-only."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    providers: tuple[ProviderConfig, ...] = ()
    models: Mapping[str, ModelConfig] = field(default_factory=lambda: MappingProxyType({}))
    enable_metrics: bool = True
    enable_tracing: bool = False
    source: str | None = None
    warnings: tuple[str, ...] = ()
    store: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        # Callers may pass a plain dict; freeze it so the config stays immutable.
        if not isinstance(self.models, MappingProxyType):
            object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType cannot be pickled; worker processes may need a copy of the config.
        return (
            Config,
            (
                self.server,
                self.auth,
                self.cache,
                self.routing,
                self.providers,
                dict(self.models),
                self.enable_metrics,
                self.enable_tracing,
                self.source,
                self.warnings,
                self.store,
            ),
        )


# ---------------------------------------------------------------------------------------
# Small value checkers. Each takes the value and `where` ("file: key") and returns the
# checked value or raises ConfigError. They never echo a value that could be a secret.
# ---------------------------------------------------------------------------------------


def _fail(where: str, what: str) -> ConfigError:
    return ConfigError(f"{where}: {what}")


def _describe(value: Any) -> str:
    """Render an offending value for a message: short strings quoted, long ones only sized.

    A long string in the wrong place may well be a secret (a key pasted as `rpm`, say), and
    error messages go to terminals and CI logs, so it is described, never echoed.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > 24:
            return f"a string of {len(value)} characters"
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _check_int(value: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    # bool is an int subclass in Python; TOML `true` is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {_describe(value)}")
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise _fail(where, f"expected an integer from {lo} to {hi}, got {value}")
    if lo is not None and value < lo:
        raise _fail(where, f"expected an integer >= {lo}, got {value}")
    return value


def _check_port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {_describe(value)}")
    if not 0 <= value <= 65535:
        raise _fail(where, f"expected a port number from 0 to 65535, got {value}")
    return value


def _check_float(value: Any, where: str, *, positive: bool) -> float:
    """Numbers: ints are accepted, booleans and non-finite values are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"expected a number, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _fail(where, f"expected a finite number, got {_describe(value)}")
    if positive and number <= 0:
        raise _fail(where, f"expected a number > 0, got {_describe(value)}")
    if not positive and number < 0:
        raise _fail(where, f"expected a number >= 0, got {_describe(value)}")
    return number


def _check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected a boolean (true or false), got {_describe(value)}")
    return value


def _check_str(value: Any, where: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, got {_describe(value)}")
    if not empty_ok and not value:
        raise _fail(where, "expected a non-empty string")
    return value


def _check_choice(value: Any, where: str, choices: Sequence[str]) -> str:
    text = _check_str(value, where, empty_ok=True)
    if text not in choices:
        hint = _suggest(text, choices)
        tail = f' (did you mean "{hint}"?)' if hint else ""
        raise _fail(where, f"expected one of {', '.join(choices)}, got {_describe(text)}{tail}")
    return text


def _check_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected an array, got {_describe(value)}")
    return value


def _check_str_list(value: Any, where: str, *, non_empty: bool = False) -> tuple[str, ...]:
    items = _check_list(value, where)
    if non_empty and not items:
        raise _fail(where, "expected a non-empty array of strings")
    return tuple(_check_str(item, f"{where}[{i}]") for i, item in enumerate(items))


def _check_name(value: Any, where: str) -> str:
    name = _check_str(value, where)
    if not _NAME_RE.fullmatch(name):
        raise _fail(where, f"expected letters, digits, '_', '.' or '-' only, got {_describe(name)}")
    return name


def _check_host(value: Any, where: str) -> str:
    host = _check_str(value, where).strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]" -> "::1": the server adds brackets where a URL needs them
    if not host or any(ch.isspace() for ch in host) or "/" in host:
        raise _fail(where, f"expected a host name or IP address, got {_describe(value)}")
    return host


def _mask_url(url: str) -> str:
    """The URL with its password (and credential-like query values) replaced by ***."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        shown_host = host or ""
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"
        if port is not None:
            shown_host = f"{shown_host}:{port}"
        # "user:pass@" keeps the user; a lone "x@" may be a password too, so mask it all.
        user = "***" if parts.password is None else f"{parts.username or ''}:***"
        netloc = f"{user}@{shown_host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{quote(k)}={'***' if _SECRET_QUERY_RE.search(k) else quote(v)}" for k, v in pairs
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _mask_store_url(url: str) -> str:
    """A store URL for display: `sqlite:///x` keeps its slashes; a password is masked."""
    return _mask_url(url) if "@" in url or "?" in url else url


def _masked_repr(obj: Any, url_field: str) -> str:
    """A dataclass repr with one URL field masked: a Redis password is a secret too."""
    shown = []
    for f in fields(obj):
        if f.repr:
            value = getattr(obj, f.name)
            shown.append(f"{f.name}={_mask_url(value) if f.name == url_field else value!r}")
    return f"{type(obj).__name__}({', '.join(shown)})"


def _check_url(value: Any, where: str, schemes: Sequence[str], what: str) -> str:
    url = _check_str(value, where)
    bad = _fail(where, f"expected {what}, got {_describe(_mask_url(url))}")
    if any(ch.isspace() for ch in url):
        raise bad
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 -- accessing .port validates it
    except ValueError:
        raise bad from None
    if parts.scheme not in schemes:
        raise bad
    if parts.scheme == "unix":
        if not parts.path:
            raise bad
    elif not host:
        raise bad
    return url


def _check_base_url(value: Any, where: str) -> str:
    url = _check_url(value, where, ("http", "https"), "an http:// or https:// URL")
    return url.rstrip("/")


def _check_redis_url(value: Any, where: str) -> str:
    return _check_url(
        value, where, ("redis", "rediss", "unix"), "a redis://, rediss:// or unix:// URL"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def resolve_secret(ref: str, env: Mapping[str, str], where: str) -> str:
    """Resolve a secret reference: ``"env:NAME"`` reads NAME from `env`, anything else is literal.

    Args:
        ref: the configured value.
        env: the environment to read (surrounding whitespace of the value is dropped, as a
            stray newline from a mounted file is a common mistake).
        where: message prefix naming the file and key, e.g. ``"edge.toml: providers[0].api_key"``.

    Returns:
        The secret.

    Raises:
        ConfigError: the variable is missing or empty, or the reference is empty. The message
            names the key and the variable, never a value.
    """
    if ref.startswith("env:"):
        name = ref[4:].strip()
        if not name:
            raise _fail(where, 'expected "env:NAME" with a variable name after "env:"')
        value = env.get(name)
        if value is None:
            raise _fail(where, f"environment variable {name} is not set")
        value = value.strip()
        if not value:
            raise _fail(where, f"environment variable {name} is empty")
        return value
    if not ref:
        raise _fail(where, 'expected a non-empty secret or "env:NAME"')
    return ref


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _table(value: Any, file: str, path: str, allowed: Sequence[str]) -> dict[str, Any]:
    """Check that `value` is a table whose keys are all in `allowed`."""
    if not isinstance(value, dict):
        raise _fail(f"{file}: {path}", f"expected a table, got {_describe(value)}")
    for key in value:
        if key not in allowed:
            hint = _suggest(key, allowed)
            tail = f'did you mean "{hint}"?' if hint else f"expected one of: {', '.join(allowed)}"
            raise _fail(f"{file}: {_key(path, key)}", f"unknown key ({tail})")
    return value


def _field(
    table: dict[str, Any],
    key: str,
    check: Callable[[Any, str], Any],
    file: str,
    path: str,
    out: dict[str, Any],
    labels: dict[str, str] | None = None,
) -> None:
    """Copy `table[key]` into `out` after `check`, when present (every key is optional)."""
    if key in table:
        where = f"{file}: {_key(path, key)}"
        out[key] = check(table[key], where)
        if labels is not None:
            labels[key] = where


def _read_toml(file: str) -> dict[str, Any]:
    try:
        with open(file, "rb") as fh:
            return tomli.load(fh)
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: invalid TOML: the file is not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"{file}: cannot read config file: {reason}") from None


def _find_config_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> str | None:
    """`--config`, else $EDGE_CONFIG, else ./edge.toml if present (SPEC §1)."""
    if path is not None:
        return os.fspath(path)
    from_env = env.get("EDGE_CONFIG", "").strip()
    if from_env:
        return from_env
    if os.path.isfile("edge.toml"):
        return "edge.toml"
    return None


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------

def _field_names(cls: type, skip: str = "") -> tuple[str, ...]:
    """A section's accepted keys are its dataclass's fields, so a new field is a new key."""
    return tuple(f.name for f in fields(cls) if f.name != skip)


_TOP_KEYS: Final = ("server", "auth", "cache", "routing", "providers", "models", "store")
_SERVER_KEYS: Final = _field_names(ServerConfig)
_AUTH_KEYS: Final = ("keys", "allow_anonymous", "admin_key")
_AUTH_KEY_KEYS: Final = (
    "name", "key", "sha256", "rpm", "tpm", "budget_usd", "budget_period", "models",
)
_STORE_KEYS: Final = ("url", "usage_retention_days")
_CACHE_KEYS: Final = _field_names(CacheConfig)
_ROUTING_KEYS: Final = _field_names(RoutingConfig)
_PROVIDER_KEYS: Final = _field_names(ProviderConfig)
_MODEL_KEYS: Final = _field_names(ModelConfig, skip="name")  # the table's own key


def _check_log_level(value: Any, where: str) -> str:
    # LOG_LEVEL=INFO is common in deployments; the level itself is case-insensitive.
    if isinstance(value, str):
        value = value.lower()
    return _check_choice(value, where, LOG_LEVELS)


_SERVER_CHECKS: Final[dict[str, Callable[[Any, str], Any]]] = {
    "host": _check_host,
    "port": _check_port,
    "metrics_port": _check_port,
    "workers": lambda v, w: _check_int(v, w, lo=1),
    "max_request_bytes": lambda v, w: _check_int(v, w, lo=1),
    "graceful_timeout_s": lambda v, w: _check_float(v, w, positive=False),
    "log_level": _check_log_level,
    "keep_alive_timeout_s": lambda v, w: _check_float(v, w, positive=True),
    "request_body_timeout_s": lambda v, w: _check_float(v, w, positive=True),
}


def _parse_server(raw: Any, file: str, values: dict[str, Any], labels: dict[str, str]) -> None:
    table = _table(raw, file, "server", _SERVER_KEYS)
    for key, check in _SERVER_CHECKS.items():
        _field(table, key, check, file, "server", values, labels)


def _parse_cache(raw: Any, file: str, values: dict[str, Any]) -> None:
    table = _table(raw, file, "cache", _CACHE_KEYS)
    checks: dict[str, Callable[[Any, str], Any]] = {
        "enabled": _check_bool,
        "ttl_s": lambda v, w: _check_int(v, w, lo=1),
        "l1_max_entries": lambda v, w: _check_int(v, w, lo=1),
        "l1_max_bytes": lambda v, w: _check_int(v, w, lo=1),
        "max_entry_bytes": lambda v, w: _check_int(v, w, lo=1),
        "l2_enabled": _check_bool,
        "redis_url": _check_redis_url,
        "redis_cluster": _check_bool,
        "key_prefix": lambda v, w: _check_str(v, w, empty_ok=True),
        "scope": lambda v, w: _check_choice(v, w, CACHE_SCOPES),
    }
    for key, check in checks.items():
        _field(table, key, check, file, "cache", values)


def _check_retry_on(value: Any, where: str) -> tuple[int, ...]:
    items = _check_list(value, where)
    return tuple(_check_int(item, f"{where}[{i}]", lo=100, hi=599) for i, item in enumerate(items))


def _parse_routing(raw: Any, file: str, values: dict[str, Any]) -> None:
    table = _table(raw, file, "routing", _ROUTING_KEYS)
    checks: dict[str, Callable[[Any, str], Any]] = {
        "strategy": lambda v, w: _check_choice(v, w, STRATEGIES),
        "max_attempts": lambda v, w: _check_int(v, w, lo=1),
        "hedge_after_ms": lambda v, w: _check_int(v, w, lo=0),
        "retry_on": _check_retry_on,
        "breaker_failures": lambda v, w: _check_int(v, w, lo=1),
        "breaker_cooldown_s": lambda v, w: _check_float(v, w, positive=True),
    }
    for key, check in checks.items():
        _field(table, key, check, file, "routing", values)


def _check_array_of_tables(value: Any, where: str, how: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected an array of tables ({how}), got {_describe(value)}")
    return value


def _parse_auth_keys(
    raw: Any, file: str, env: Mapping[str, str], warnings: list[str]
) -> list[AuthKey]:
    entries = _check_array_of_tables(
        raw, f"{file}: auth.keys", "keys = [{ name = ..., key = ... }]"
    )
    keys: list[AuthKey] = []
    seen_names: dict[str, str] = {}
    seen_digests: dict[str, str] = {}
    for i, entry in enumerate(entries):
        path = f"auth.keys[{i}]"
        table = _table(entry, file, path, _AUTH_KEY_KEYS)
        at = f"{file}: {path}"
        if ("key" in table) == ("sha256" in table):
            raise _fail(at, "expected exactly one of key, sha256")
        secret: str | None = None
        if "key" in table:
            where = f"{at}.key"
            ref = _check_str(table["key"], where, empty_ok=True)
            secret = resolve_secret(ref, env, where)
            if not ref.startswith("env:"):
                warnings.append(f"{path}.key: literal secret in config file; prefer env:NAME")
            digest = _sha256_hex(secret)
        else:
            where = f"{at}.sha256"
            text = _check_str(table["sha256"], where)
            if not _HEX64_RE.fullmatch(text):
                # Not echoed: a key pasted into the wrong field would otherwise leak.
                raise _fail(where, "expected a SHA-256 digest (64 hexadecimal characters)")
            digest = text.lower()
        if "name" in table:
            name = _check_name(table["name"], f"{at}.name")
        else:
            name = f"key-{digest[:8]}"
        if name == _RESERVED_KEY_NAME:
            raise _fail(f"{at}.name", f'"{name}" is reserved for requests without a key')
        if name in seen_names:
            raise _fail(f"{at}.name", f'duplicate key name "{name}" (also {seen_names[name]})')
        if digest in seen_digests:
            raise _fail(at, f"the same client key is already configured as {seen_digests[digest]}")
        limits: dict[str, Any] = {}
        for limit in ("rpm", "tpm"):
            _field(table, limit, lambda v, w: _check_int(v, w, lo=1), file, path, limits)
        _field(table, "budget_usd", lambda v, w: _check_float(v, w, positive=False), file,
               path, limits)
        _field(table, "budget_period", lambda v, w: _check_choice(v, w, BUDGET_PERIODS), file,
               path, limits)
        _field(table, "models", _check_str_list, file, path, limits)
        seen_names[name] = path
        seen_digests[digest] = path
        keys.append(AuthKey(name=name, secret=secret, sha256=digest, **limits))
    return keys


def _env_api_keys(text: str, keys: list[AuthKey], warnings: list[str]) -> None:
    """EDGE_API_KEYS: comma-separated literal keys, appended after [auth].keys."""
    names = {k.name for k in keys}
    digests = {k.sha256 for k in keys}
    for position, item in enumerate(text.split(","), start=1):
        secret = item.strip()
        if not secret:
            continue
        digest = _sha256_hex(secret)
        if digest in digests:
            warnings.append(
                f"EDGE_API_KEYS: item {position} repeats a key configured earlier; ignored"
            )
            continue
        name = f"key-{digest[:8]}"
        if name in names:
            raise _fail(
                f"{_ENV_FILE}: EDGE_API_KEYS",
                f'item {position} would be named "{name}", which is already taken',
            )
        names.add(name)
        digests.add(digest)
        keys.append(AuthKey(name=name, secret=secret, sha256=digest))


def _parse_provider(
    raw: Any, index: int, file: str, env: Mapping[str, str], warnings: list[str]
) -> ProviderConfig:
    path = f"providers[{index}]"
    at = f"{file}: {path}"
    table = _table(raw, file, path, _PROVIDER_KEYS)
    for required in ("name", "kind", "models"):
        if required not in table:
            raise _fail(f"{at}.{required}", "missing (required in every [[providers]] table)")
    name = _check_name(table["name"], f"{at}.name")
    kind = _check_choice(table["kind"], f"{at}.kind", PROVIDER_KINDS)
    models = _check_str_list(table["models"], f"{at}.models", non_empty=True)
    base_url = _DEFAULT_BASE_URLS[kind]
    if "base_url" in table:
        base_url = _check_base_url(table["base_url"], f"{at}.base_url")
    api_key: str | None = None
    api_keys: tuple[ProviderKey, ...] = ()
    if "api_key" in table and "api_keys" in table:
        raise _fail(at, "api_key and api_keys are both set; give one key or a pool, not both")
    if "api_keys" in table:
        if kind == "bedrock":
            raise _fail(f"{at}.api_keys", 'not valid with kind = "bedrock", whose credentials '
                        "come from the AWS credential chain")
        api_keys = _parse_api_keys(table["api_keys"], file, path, env, warnings)
    if "api_key" in table:
        where = f"{at}.api_key"
        ref = _check_str(table["api_key"], where, empty_ok=True)
        if not ref:
            raise _fail(where, "empty; leave api_key out for a provider that needs none")
        api_key = resolve_secret(ref, env, where)
        if not ref.startswith("env:"):
            warnings.append(f"{path}.api_key: literal secret in config file; prefer env:NAME")
    extra: dict[str, Any] = {}
    for key in ("timeout_s", "first_byte_timeout_s", "stream_idle_timeout_s"):
        _field(table, key, lambda v, w: _check_float(v, w, positive=True), file, path, extra)
    _field(table, "max_connections", lambda v, w: _check_int(v, w, lo=1), file, path, extra)
    for key, (owner, check) in _KIND_KEYS.items():
        if key in table:
            where = f"{at}.{key}"
            if kind != owner:
                raise _fail(where, f'only valid with kind = "{owner}"')
            extra[key] = check(table[key], where)
    _check_kind_needs(kind, table, at, extra, api_key)
    if kind == "bedrock" and "base_url" not in table:
        base_url = base_url.format(region=extra["region"])
    return ProviderConfig(
        name=name, kind=kind, base_url=base_url, api_key=api_key, models=models,
        api_keys=api_keys, **extra
    )


def _check_region(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _REGION_RE.fullmatch(value):
        raise _fail(where, f"expected an AWS region such as \"us-east-1\", got {_describe(value)}")
    return value


def _check_api_version(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _API_VERSION_RE.fullmatch(value):
        raise _fail(where, 'expected "v1" or a dated api-version such as "2024-10-21", '
                    f"got {_describe(value)}")
    return value


def _check_deployments(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _fail(where, f'expected a table such as {{ "gpt-4o" = "prod-gpt4o" }}, '
                    f"got {_describe(value)}")
    pairs = []
    for model, deployment in value.items():
        if not isinstance(deployment, str) or not _DEPLOYMENT_RE.fullmatch(deployment):
            raise _fail(f"{where}.{_quoted(model)}", "expected a deployment name (letters, "
                        f"digits, '-', '_', '.'), got {_describe(deployment)}")
        pairs.append((model, deployment))
    return tuple(pairs)


# Keys only one kind takes: the kind, and the check of the value.
_KIND_KEYS: Final[dict[str, tuple[str, Callable[[Any, str], Any]]]] = {
    "anthropic_version": ("anthropic", _check_str),
    "region": ("bedrock", _check_region),
    "api_version": ("azure", _check_api_version),
    "deployments": ("azure", _check_deployments),
    "responses_api": ("openai", _check_bool),
}


def _check_kind_needs(kind: str, table: dict[str, Any], at: str, extra: dict[str, Any],
                      api_key: str | None) -> None:
    """What a kind cannot work without: Azure's own host; Bedrock's region and botocore."""
    if kind == "azure" and "base_url" not in table:
        raise _fail(f"{at}.base_url", 'missing (required with kind = "azure": '
                    '"https://RESOURCE.openai.azure.com")')
    if kind != "bedrock":
        return
    if "region" not in extra:
        raise _fail(f"{at}.region", 'missing (required with kind = "bedrock", e.g. "us-east-1")')
    if api_key is not None:
        raise _fail(f"{at}.api_key", "not used with kind = \"bedrock\": requests are signed "
                    "with credentials from the AWS chain (environment, AWS_PROFILE, roles)")
    if importlib.util.find_spec("botocore") is None:
        raise _fail(f"{at}.kind", 'kind = "bedrock" needs botocore, which is not installed: '
                    "pip install 'edge[bedrock]'")


_API_KEY_KEYS: Final = ("key", "weight", "rpm", "tpm")


def _parse_api_keys(raw: Any, file: str, path: str, env: Mapping[str, str],
                    warnings: list[str]) -> tuple[ProviderKey, ...]:
    """`api_keys = ["env:K1", { key = "env:K2", weight = 2, rpm = 500, tpm = 100000 }]`."""
    at = f"{file}: {path}.api_keys"
    if not isinstance(raw, list):
        raise _fail(at, f"expected an array of keys, got {_describe(raw)}")
    if not raw:
        raise _fail(at, "empty; leave api_keys out for a provider that needs no key")
    keys: list[ProviderKey] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(raw):
        item = f"{path}.api_keys[{i}]"
        options: dict[str, Any] = {}
        if isinstance(entry, dict):
            table = _table(entry, file, item, _API_KEY_KEYS)
            if "key" not in table:
                raise _fail(f"{file}: {item}.key", "missing (every entry of api_keys has a key)")
            ref_where, ref_value = f"{file}: {item}.key", table["key"]
            _field(table, "weight", lambda v, w: _check_float(v, w, positive=True), file, item,
                   options)
            for limit in ("rpm", "tpm"):
                _field(table, limit, lambda v, w: _check_int(v, w, lo=1), file, item, options)
        else:
            ref_where, ref_value = f"{file}: {item}", entry
        ref = _check_str(ref_value, ref_where)
        secret = resolve_secret(ref, env, ref_where)
        if not ref.startswith("env:"):
            warnings.append(f"{item}: literal secret in config file; prefer env:NAME")
        if secret in seen:
            raise _fail(ref_where, f"the same key as {seen[secret]}")
        seen[secret] = item
        keys.append(ProviderKey(secret, **options))
    return tuple(keys)


def _builtin_providers(
    providers: list[ProviderConfig], env: Mapping[str, str], warnings: list[str]
) -> None:
    """OPENAI_API_KEY / ANTHROPIC_API_KEY enable providers the file does not define itself.

    A file's own provider of that name and kind is the built-in one configured in the file:
    *_BASE_URL overrides its base_url, since the environment outranks the file.
    """
    for name, key_var, url_var in (
        ("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
        ("anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
        ("gemini", "GEMINI_API_KEY", "GEMINI_BASE_URL"),
    ):
        url_text = env.get(url_var, "").strip()
        index = next((i for i, p in enumerate(providers) if p.name == name), None)
        if index is not None:
            if url_text:
                defined = providers[index]
                if defined.kind == name:
                    providers[index] = replace(
                        defined, base_url=_check_base_url(url_text, f"{_ENV_FILE}: {url_var}"))
                else:
                    warnings.append(f'{url_var} is ignored: the config file\'s provider '
                                    f'"{name}" is of kind "{defined.kind}"')
            continue
        api_key = env.get(key_var, "").strip()
        if not api_key:
            continue
        base_url = _DEFAULT_BASE_URLS[name]
        if url_text:
            base_url = _check_base_url(url_text, f"{_ENV_FILE}: {url_var}")
        providers.append(
            ProviderConfig(
                name=name,
                kind=name,
                base_url=base_url,
                api_key=api_key,
                models=_BUILTIN_MODELS[name],
                responses_api=name == "openai",  # OpenAI itself serves /v1/responses
            )
        )


def _quoted(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def _parse_models(raw: Any, file: str, provider_names: Sequence[str]) -> dict[str, ModelConfig]:
    top = _check_models_table(raw, file)
    models: dict[str, ModelConfig] = {}
    for name, entry in top.items():
        path = f"models.{_quoted(name)}"
        at = f"{file}: {path}"
        if not name:
            raise _fail(at, "expected a non-empty model name")
        table = _table(entry, file, path, _MODEL_KEYS)
        values: dict[str, Any] = {}
        for price in ("input_per_mtok", "output_per_mtok"):
            _field(
                table, price, lambda v, w: _check_float(v, w, positive=False), file, path, values
            )
        if "fallbacks" in table:
            fallbacks = _check_str_list(table["fallbacks"], f"{at}.fallbacks")
            for i, target in enumerate(fallbacks):
                if target == name:
                    raise _fail(f"{at}.fallbacks[{i}]", "a model cannot fall back to itself")
            values["fallbacks"] = fallbacks
        if "deployments" in table:
            deployments = _check_str_list(table["deployments"], f"{at}.deployments")
            for i, target in enumerate(deployments):
                _check_deployment(target, f"{at}.deployments[{i}]", provider_names)
            values["deployments"] = deployments
        models[name] = ModelConfig(name=name, **values)
    return models


def _check_models_table(raw: Any, file: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(f"{file}: models", f'expected a table ([models."NAME"]), got {_describe(raw)}')
    return raw


def _check_deployment(target: str, where: str, provider_names: Sequence[str]) -> None:
    provider, slash, model = target.partition("/")
    if not slash or not provider or not model:
        raise _fail(where, f'expected "provider/model", got {_describe(target)}')
    if provider not in provider_names:
        known = ", ".join(provider_names) if provider_names else "none"
        hint = _suggest(provider, provider_names)
        tail = f'; did you mean "{hint}"?' if hint else ""
        raise _fail(
            where,
            f"unknown provider {_quoted(provider)} in {_describe(target)} "
            f"(configured: {known}){tail}",
        )


# ---------------------------------------------------------------------------------------
# Environment and command line layers
# ---------------------------------------------------------------------------------------


def _env_text(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value, or None when unset or blank (compose files often leave `PORT=`)."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _parse_int_text(text: str, where: str) -> int:
    if not _INT_RE.fullmatch(text.strip()):
        raise _fail(where, f"expected an integer, got {_describe(text)}")
    return int(text)


def _parse_bool_text(text: str, where: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _ENV_TRUE:
        return True
    if lowered in _ENV_FALSE:
        return False
    raise _fail(
        where,
        f"expected a boolean (true/false, 1/0, yes/no, on/off), got {_describe(text)}",
    )


_ENV_SERVER: Final = (
    ("HOST", "host"),
    ("PORT", "port"),
    ("METRICS_PORT", "metrics_port"),
    ("LOG_LEVEL", "log_level"),
)
_INT_FIELDS: Final = frozenset({"port", "metrics_port", "workers"})
_CLI_FLAGS: Final = {
    "host": "--host",
    "port": "--port",
    "metrics_port": "--metrics-port",
    "workers": "--workers",
    "log_level": "--log-level",
}


def _apply_env_server(
    env: Mapping[str, str], values: dict[str, Any], labels: dict[str, str]
) -> None:
    for var, key in _ENV_SERVER:
        text = _env_text(env, var)
        if text is None:
            continue
        where = f"{_ENV_FILE}: {var}"
        value: Any = _parse_int_text(text, where) if key in _INT_FIELDS else text
        values[key] = _SERVER_CHECKS[key](value, where)
        labels[key] = where


def _apply_cli(
    overrides: Mapping[str, Any], values: dict[str, Any], labels: dict[str, str]
) -> None:
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in _CLI_FLAGS:
            raise _fail(
                f"{_CLI_FILE}: {key}",
                f"unknown option (expected one of: {', '.join(_CLI_FLAGS)})",
            )
        where = f"{_CLI_FILE}: {_CLI_FLAGS[key]}"
        if key in _INT_FIELDS and isinstance(value, str):
            value = _parse_int_text(value, where)
        values[key] = _SERVER_CHECKS[key](value, where)
        labels[key] = where


# ---------------------------------------------------------------------------------------
# load_config
# ---------------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    require_providers: bool = True,
) -> Config:
    """Build the validated configuration (precedence: CLI > environment > TOML > default).

    Args:
        path: an explicit ``--config`` file; else ``$EDGE_CONFIG``; else ``./edge.toml`` if it
            exists; else no file.
        env: the environment to read; defaults to ``os.environ``.
        overrides: command-line values for ``host``, ``port``, ``metrics_port``, ``workers``
            and ``log_level``; None values are ignored.
        require_providers: False lets ``check-config`` and tests inspect a config that has
            no provider.

    Returns:
        The frozen `Config`.

    Raises:
        ConfigError: with a message naming the file (or ``environment`` / ``command line``),
            the key and what is wrong.
    """
    if env is None:
        env = os.environ
    file = _find_config_file(path, env)
    doc: dict[str, Any] = _read_toml(file) if file is not None else {}
    label = file if file is not None else "<defaults>"
    _table(doc, label, "", _TOP_KEYS)
    warnings: list[str] = []

    server: dict[str, Any] = {}
    server_labels: dict[str, str] = {}
    cache: dict[str, Any] = {}
    routing: dict[str, Any] = {}
    if "server" in doc:
        _parse_server(doc["server"], label, server, server_labels)
    auth_table = _table(doc.get("auth", {}), label, "auth", _AUTH_KEYS)
    keys = (
        _parse_auth_keys(auth_table["keys"], label, env, warnings) if "keys" in auth_table else []
    )
    allow_anonymous = False
    if "allow_anonymous" in auth_table:
        allow_anonymous = _check_bool(
            auth_table["allow_anonymous"], f"{label}: auth.allow_anonymous"
        )
    if "cache" in doc:
        _parse_cache(doc["cache"], label, cache)
    if "routing" in doc:
        _parse_routing(doc["routing"], label, routing)
    providers: list[ProviderConfig] = []
    if "providers" in doc:
        entries = _check_array_of_tables(doc["providers"], f"{label}: providers", "[[providers]]")
        first_seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            provider = _parse_provider(entry, i, label, env, warnings)
            if provider.name in first_seen:
                raise _fail(
                    f"{label}: providers[{i}].name",
                    f"duplicate provider name {_quoted(provider.name)} "
                    f"(also providers[{first_seen[provider.name]}])",
                )
            first_seen[provider.name] = i
            providers.append(provider)

    # Environment layer.
    _apply_env_server(env, server, server_labels)
    l2_text = _env_text(env, "ENABLE_L2_CACHE")
    if l2_text is not None:
        cache["l2_enabled"] = _parse_bool_text(l2_text, f"{_ENV_FILE}: ENABLE_L2_CACHE")
    redis_text = _env_text(env, "REDIS_URL")
    if redis_text is not None:
        cache["redis_url"] = _check_redis_url(redis_text, f"{_ENV_FILE}: REDIS_URL")
    flags: dict[str, bool] = {}
    for var, key in (("ENABLE_METRICS", "enable_metrics"), ("ENABLE_TRACING", "enable_tracing")):
        text = _env_text(env, var)
        if text is not None:
            flags[key] = _parse_bool_text(text, f"{_ENV_FILE}: {var}")
    api_keys_text = env.get("EDGE_API_KEYS")
    if api_keys_text:
        _env_api_keys(api_keys_text, keys, warnings)
    _builtin_providers(providers, env, warnings)
    admin_key = _admin_key(auth_table, label, env, warnings, keys)
    store_config = _parse_store(doc.get("store", {}), label, env)

    # Command-line layer.
    if overrides:
        _apply_cli(overrides, server, server_labels)

    # [models] comes last: its deployments may name the built-in providers too.
    models: dict[str, ModelConfig] = {}
    if "models" in doc:
        models = _parse_models(doc["models"], label, [p.name for p in providers])

    server_config = ServerConfig(**server)
    cache_config = CacheConfig(**cache)
    _cross_checks(server_config, server_labels, cache_config, warnings)
    if require_providers and not providers:
        raise ConfigError(NO_PROVIDERS_MESSAGE)
    if not keys and not allow_anonymous and not _is_loopback(server_config.host):
        where = server_labels.get("host", f"{label}: server.host")
        raise _fail(
            where,
            f"binding {server_config.host} with no client keys would expose the proxy; "
            "add [auth].keys or EDGE_API_KEYS, or set [auth].allow_anonymous = true",
        )
    return Config(
        server=server_config,
        auth=AuthConfig(keys=tuple(keys), allow_anonymous=allow_anonymous, admin_key=admin_key),
        cache=cache_config,
        routing=RoutingConfig(**routing),
        providers=tuple(providers),
        models=MappingProxyType(models),
        source=file,
        warnings=tuple(warnings),
        store=store_config,
        **flags,
    )


def _admin_key(
    auth_table: Mapping[str, Any],
    file: str,
    env: Mapping[str, str],
    warnings: list[str],
    keys: Sequence[AuthKey],
) -> str | None:
    """The admin key: EDGE_ADMIN_KEY, else `[auth].admin_key`; never one of the client keys."""
    env_value = _env_text(env, "EDGE_ADMIN_KEY")
    if env_value is not None:
        secret, where = env_value, f"{_ENV_FILE}: EDGE_ADMIN_KEY"
    elif "admin_key" in auth_table:
        where = f"{file}: auth.admin_key"
        ref = _check_str(auth_table["admin_key"], where, empty_ok=True)
        secret = resolve_secret(ref, env, where)
        if not ref.startswith("env:"):
            warnings.append("auth.admin_key: literal secret in config file; prefer env:NAME")
    else:
        return None
    digest = _sha256_hex(secret)
    for i, key in enumerate(keys):
        if key.sha256 == digest:
            raise _fail(where, f'the admin key must differ from every client key (it equals "'
                               f'{key.name}", auth.keys[{i}] or EDGE_API_KEYS)')
    return secret


def _parse_store(raw: Any, file: str, env: Mapping[str, str]) -> StoreConfig:
    """`[store]`, with EDGE_STORE_URL outranking `url`; the URL is checked, not connected to."""
    from .store import StoreConfigError, parse_store_url

    table = _table(raw, file, "store", _STORE_KEYS)
    values: dict[str, Any] = {}
    _field(table, "usage_retention_days", lambda v, w: _check_float(v, w, positive=True),
           file, "store", values)
    env_url = _env_text(env, "EDGE_STORE_URL")
    if env_url is not None:
        url, where = env_url, f"{_ENV_FILE}: EDGE_STORE_URL"
    elif "url" in table:
        where = f"{file}: store.url"
        url = _check_str(table["url"], where)
    else:
        return StoreConfig(**values)
    try:
        parse_store_url(url)
    except StoreConfigError as exc:
        raise _fail(where, str(exc)) from None
    return StoreConfig(url=url, **values)


def _cross_checks(
    server: ServerConfig, labels: Mapping[str, str], cache: CacheConfig, warnings: list[str]
) -> None:
    """Checks that involve more than one key, made once every layer has been applied."""
    if server.metrics_port and server.metrics_port == server.port:
        where = labels.get("metrics_port") or labels.get("port") or "server.metrics_port"
        raise _fail(
            where,
            f"the metrics listener cannot share port {server.port} with the proxy "
            "(use 0 to serve /metrics on the proxy port only)",
        )
    if server.workers > 1 and cache.enabled and not cache.l2_enabled:
        warnings.append(
            f"server.workers: {server.workers} workers without L2: each keeps its own "
            "cache and rate-limit counters"
        )


# ---------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------

_MAX_LIST_LINES: Final = 8
_MAX_GLOBS: Final = 6
_PROVIDER_DEFAULTS: Final = ProviderConfig(name="", kind="", base_url="", api_key=None, models=())
_SERVER_DEFAULTS: Final = ServerConfig()


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size} {unit}" if n % size == 0 else f"{n / size:.1f} {unit}"
    return f"{n} B"


def _fmt_seconds(s: float) -> str:
    return f"{s:g}s"


def _fmt_price(p: float | None) -> str:
    if p is None:
        return "?"
    # Sub-cent prices (embeddings) would all round to $0.00.
    return f"${p:.2f}" if p >= 0.01 or p == 0 else f"${p:g}"


def _http_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _clip(items: Sequence[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _provider_extras(p: ProviderConfig) -> str:
    """Settings that differ from the defaults, so the usual line stays short."""
    extras = []
    if p.timeout_s != _PROVIDER_DEFAULTS.timeout_s:
        extras.append(f"timeout {_fmt_seconds(p.timeout_s)}")
    if p.first_byte_timeout_s is not None:
        extras.append(f"first byte {_fmt_seconds(p.first_byte_timeout_s)}")
    if p.stream_idle_timeout_s != _PROVIDER_DEFAULTS.stream_idle_timeout_s:
        extras.append(f"stream idle {_fmt_seconds(p.stream_idle_timeout_s)}")
    if p.max_connections != _PROVIDER_DEFAULTS.max_connections:
        extras.append(f"{p.max_connections} connections")
    if p.kind == "anthropic" and p.anthropic_version != _PROVIDER_DEFAULTS.anthropic_version:
        extras.append(f"anthropic-version {p.anthropic_version}")
    if p.kind == "bedrock":
        extras.append(f"region {p.region}")
    if p.kind == "azure":
        extras.append(f"api-version {p.api_version}")
        if p.deployments:
            extras.append("deployments: " + _clip([f"{m} -> {d}" for m, d in p.deployments],
                                                  _MAX_GLOBS))
    if p.responses_api:
        extras.append("responses API")
    return "  " + ", ".join(extras) if extras else ""


def _describe_keys(p: ProviderConfig) -> str:
    """A provider's key for the summary: set or none, the size of its pool, or (bedrock)
    the AWS credential chain."""
    if p.kind == "bedrock":
        return "AWS credential chain"
    if p.api_keys:
        return f"pool of {len(p.api_keys)}"
    return "set" if p.api_key else "none"


def _describe_key(k: AuthKey) -> str:
    """A client key's limits, budget and allowlist for the summary."""
    parts = [f"{label} {v}" for label, v in (("rpm", k.rpm), ("tpm", k.tpm)) if v is not None]
    if k.budget_usd is not None:
        parts.append(f"budget ${k.budget_usd:g} per {k.budget_period}")
    parts.append("models: " + (_clip(k.models, _MAX_GLOBS) if k.models is not None else "any"))
    return ", ".join(parts)


def summary(config: Config) -> str:
    """The one-screen text `edge check-config` prints. Contains no secret values."""
    s = config.server
    lines = [f"config: {config.source or 'none (environment and defaults only)'}"]
    if not config.enable_metrics:
        metrics = "off"
    elif s.metrics_port == 0:
        metrics = "/metrics on the proxy port only"
    else:
        metrics = _http_url(s.host, s.metrics_port) + "/metrics"
    lines.append(
        f"listeners: {_http_url(s.host, s.port)}  metrics: {metrics}  workers: {s.workers}  "
        f"log: {s.log_level}  tracing: {'on' if config.enable_tracing else 'off'}"
        + (
            f"  max body: {_fmt_bytes(s.max_request_bytes)}"
            if s.max_request_bytes != _SERVER_DEFAULTS.max_request_bytes
            else ""
        )
    )

    if config.providers:
        lines.append("providers:")
        for p in config.providers[:_MAX_LIST_LINES]:
            lines.append(
                f"  {p.name} ({p.kind}) {_mask_url(p.base_url)}  models: "
                f"{_clip(p.models, _MAX_GLOBS)}  key: {_describe_keys(p)}"
                + _provider_extras(p)
            )
        if len(config.providers) > _MAX_LIST_LINES:
            lines.append(f"  ... and {len(config.providers) - _MAX_LIST_LINES} more")
    else:
        lines.append("providers: none")

    if config.models:
        lines.append("models:")
        entries = list(config.models.values())
        for m in entries[:_MAX_LIST_LINES]:
            parts = []
            if m.deployments:
                parts.append("-> " + _clip(m.deployments, _MAX_GLOBS))
            if m.input_per_mtok is not None or m.output_per_mtok is not None:
                parts.append(
                    f"{_fmt_price(m.input_per_mtok)} in / {_fmt_price(m.output_per_mtok)} out "
                    "per Mtok"
                )
            if m.fallbacks:
                parts.append("fallbacks: " + _clip(m.fallbacks, _MAX_GLOBS))
            lines.append(f"  {m.name}  " + ("  ".join(parts) if parts else "(no settings)"))
        if len(entries) > _MAX_LIST_LINES:
            lines.append(f"  ... and {len(entries) - _MAX_LIST_LINES} more")

    c = config.cache
    if not c.enabled:
        lines.append("cache: off")
    else:
        l2 = "L2 off"
        if c.l2_enabled:
            cluster = " cluster" if c.redis_cluster else ""
            l2 = f"L2 redis{cluster} {_mask_url(c.redis_url)} prefix {_quoted(c.key_prefix)}"
        lines.append(
            f"cache: L1 ({c.l1_max_entries} entries, {_fmt_bytes(c.l1_max_bytes)}, "
            f"ttl {c.ttl_s}s), entries up to {_fmt_bytes(c.max_entry_bytes)}, {l2}, "
            f"scope {c.scope}"
        )

    r = config.routing
    hedge = f"hedge after {r.hedge_after_ms} ms" if r.hedge_after_ms else "hedge off"
    lines.append(
        f"routing: {r.strategy}, max_attempts {r.max_attempts}, {hedge}, "
        f"retry_on {','.join(map(str, r.retry_on)) or 'none'}, "
        f"breaker {r.breaker_failures} failures / {_fmt_seconds(r.breaker_cooldown_s)}"
    )

    a = config.auth
    described = []
    for k in a.keys:
        limits = "".join(
            f" {label} {v}" for label, v in (("rpm", k.rpm), ("tpm", k.tpm)) if v is not None
        )
        described.append(k.name + limits)
    keys_text = (
        f"{len(a.keys)} key{'s' if len(a.keys) != 1 else ''} ({_clip(described, _MAX_LIST_LINES)})"
        if a.keys
        else "no keys"
    )
    lines.append(f"auth: {keys_text}, anonymous: {'on' if a.allow_anonymous else 'off'}")
    for k in a.keys[:_MAX_LIST_LINES]:
        if k.budget_usd is not None or k.models is not None:
            lines.append(f"  {k.name}: {_describe_key(k)}")
    lines.append(f"admin API: {'on (/admin/*)' if a.admin_key else 'off (no admin key)'}")
    st = config.store
    durable = "in process only" if st.url.startswith("memory:") else "durable"
    lines.append(
        f"store: {_mask_store_url(st.url)} ({durable}), usage kept {st.usage_retention_days:g} days"
    )

    if config.warnings:
        lines.append("warnings:")
        lines.extend(f"  - {w}" for w in config.warnings[:_MAX_LIST_LINES])
        if len(config.warnings) > _MAX_LIST_LINES:
            lines.append(f"  ... and {len(config.warnings) - _MAX_LIST_LINES} more")
    return "\n".join(lines)
