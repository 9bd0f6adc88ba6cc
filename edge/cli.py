"""`edge serve | check-config | mock-upstream | demo | keys | usage` and `edge --version`.

`edge keys` and `edge usage` work on the store the config names (`[store].url`, or
`EDGE_STORE_URL`) with no server running, through the admin API's own handlers
(`edge.admin.AdminAPI.dispatch`), so they validate and answer exactly as /admin/* does.

Exit codes: 0 success (and a clean drain after SIGTERM/SIGINT), 2 a bad configuration or
bad arguments, 1 anything else that stops the server (a port already in use, say).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from ._version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="edge: a fast intercepting proxy for LLM APIs."
    )
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="TOML config file (else $EDGE_CONFIG, else ./edge.toml)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="proxy port (default 8080)")
    serve.add_argument("--metrics-port", type=int,
                       help="Prometheus port, 0 disables (default 9090)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="log level (default info)")

    check = commands.add_parser("check-config", help="validate a config file and summarise it")
    check.add_argument("file", help="the TOML file to check")

    mock = commands.add_parser("mock-upstream", help="run the bundled fake LLM provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8000)
    mock.add_argument("--delay-ms", type=float, default=0.0,
                      help="delay before the first byte of every answer")
    mock.add_argument("--fail-rate", type=float, default=0.0,
                      help="fraction of requests answered 500 (0..1)")
    mock.add_argument("--seed", type=int, default=0, help="seed for --fail-rate's choices")
    mock.add_argument("--tokens", type=_positive_int, default=None, metavar="N",
                      help="content events per streamed answer (default: the echo's words)")
    mock.add_argument("--token-ms", type=_non_negative_ms, default=0.0, metavar="T",
                      help="ms between two content events; a non-streamed answer waits "
                           "the whole stream's time (default 0)")

    demo = commands.add_parser(
        "demo", help="the bundled mock provider and edge in one process, no key or config")
    demo.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")

    keys = commands.add_parser("keys", help="create, list and revoke client keys in the store")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = keys_commands.add_parser("create", help="make a key and print its secret once")
    create.add_argument("name")
    create.add_argument("--rpm", help="requests per minute")
    create.add_argument("--tpm", help="tokens per minute")
    create.add_argument("--budget-usd", help="spend cap per budget period, USD")
    create.add_argument("--budget-period", help="1h, 1d, 7d, month or total (default)")
    create.add_argument("--models", help="comma-separated model names or globs it may use")
    create.add_argument("--expires-at", help="RFC 3339 time after which it is refused")
    keys_commands.add_parser("list", help="list file keys and admin-made keys")
    revoke = keys_commands.add_parser("revoke", help="delete an admin-made key")
    revoke.add_argument("name")

    usage = commands.add_parser("usage", help="aggregates of the usage ledger")
    usage.add_argument("--since", default="", help="RFC 3339 or 7d / 24h / 30m (default 24h)")
    usage.add_argument("--until", default="", help="RFC 3339 or 7d / 24h / 30m (default now)")
    usage.add_argument("--group-by", default="key",
                       help="comma-separated: key, model, provider, day (default key)")
    usage.add_argument("--key", default="", help="only this key's requests")
    usage.add_argument("--json", action="store_true", help="print the /admin/usage JSON")
    for sub in (create, keys_commands.choices["list"], revoke, usage):
        sub.add_argument("--config", help="TOML config file (else $EDGE_CONFIG, else ./edge.toml)")
    return parser


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse turns the error into exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _non_negative_ms(text: str) -> float:
    """argparse type: a finite number of milliseconds >= 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of ms >= 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "mock-upstream":
        return _mock(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.port)
    if args.command in ("keys", "usage"):
        return _store_command(args)
    _parser().print_help(sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from . import fastpath
    from .config import ConfigError, load_config
    from .logs import log
    from .server import run

    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "workers": args.workers,
        "log_level": args.log_level,
    }
    load_args = {"path": args.config, "overrides": overrides}
    try:
        config = load_config(**load_args)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if config.enable_tracing and importlib.util.find_spec("opentelemetry.sdk") is None:
        print("Error: environment: ENABLE_TRACING: tracing needs the OpenTelemetry packages; "
              "install them with: pip install 'edge[tracing]'", file=sys.stderr)
        return 2
    log.set_level(config.server.log_level)
    for warning in config.warnings:
        log.warning(warning)
    fallback = fastpath.fallback_warning()
    if fallback is not None:
        log.warning(fallback)
    return run(config, load_args)


def _check_config(path: str) -> int:
    from .config import ConfigError, load_config, summary

    try:
        config = load_config(path, require_providers=False)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(summary(config))
    if not config.providers:
        print(f"Error: {path}: no providers configured (serve would refuse to start); set "
              "OPENAI_API_KEY or ANTHROPIC_API_KEY, or add a [[providers]] table.",
              file=sys.stderr)
        return 2
    return 0


def _mock(args: argparse.Namespace) -> int:
    from .mock_upstream import MockOptions, run

    if not 0.0 <= args.fail_rate <= 1.0:
        print("Error: --fail-rate must be between 0 and 1", file=sys.stderr)
        return 2
    if args.delay_ms < 0:
        print("Error: --delay-ms must not be negative", file=sys.stderr)
        return 2
    return run(MockOptions(host=args.host, port=args.port, delay_ms=args.delay_ms,
                           fail_rate=args.fail_rate, seed=args.seed, tokens=args.tokens,
                           token_ms=args.token_ms))


# -- edge keys / edge usage ------------------------------------------------------------------

_MEMORY_STORE = (
    "the store is memory://, which lives only inside a running server, so there is nothing "
    "here to {what}; set [store].url in the config file (--config) or EDGE_STORE_URL to a "
    "durable store, e.g. sqlite:///edge.db or postgresql://user:pw@host/db"
)


def _store_command(args: argparse.Namespace) -> int:
    """`edge keys ...` / `edge usage ...` on the configured store; 2 for bad input."""
    import trio

    from .config import ConfigError, load_config

    try:
        config = load_config(args.config, require_providers=False)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if config.store.url.startswith("memory:"):
        what = "manage" if args.command == "keys" else "report"
        print(f"Error: edge {args.command}: " + _MEMORY_STORE.format(what=what), file=sys.stderr)
        return 2
    status, payload = trio.run(_store_request, config, _admin_request(args))
    if status >= 400:
        message = payload.get("error", {}).get("message", "failed") if payload else "failed"
        print(f"Error: {message}", file=sys.stderr)
        return 2 if 400 <= status < 500 else 1
    _print_result(args, payload)
    return 0


def _admin_request(args: argparse.Namespace) -> tuple[str, str, bytes, bytes]:
    """The /admin/* request (method, path, query, body) a command stands for."""
    from urllib.parse import quote, urlencode

    import orjson

    if args.command == "usage":
        query = {"since": args.since, "until": args.until, "group_by": args.group_by,
                 "key": args.key}
        return "GET", "/admin/usage", urlencode(query).encode(), b""
    if args.keys_command == "list":
        return "GET", "/admin/keys", b"", b""
    if args.keys_command == "revoke":
        return "DELETE", f"/admin/keys/{quote(args.name, safe='')}", b"", b""
    body: dict[str, Any] = {"name": args.name}
    for flag in ("rpm", "tpm", "budget_usd", "budget_period", "models", "expires_at"):
        text = getattr(args, flag)
        if text is not None:
            body[flag] = _flag_value(flag, text)
    return "POST", "/admin/keys", b"", orjson.dumps(body)


def _flag_value(flag: str, text: str) -> Any:
    """A flag's text in its JSON type where it reads as one; otherwise the text itself, so
    that the admin API's validation names the bad field exactly as over HTTP."""
    if flag == "models":
        return [m.strip() for m in text.split(",") if m.strip()]
    try:
        if flag in ("rpm", "tpm"):
            return int(text)
        if flag == "budget_usd":
            return float(text)
    except ValueError:
        return text
    return text


async def _store_request(config: Any, request: tuple[str, str, bytes, bytes]
                         ) -> tuple[int, Any]:
    import orjson
    import trio

    from .admin import AdminAPI
    from .auth import Authenticator, KeyPolicy
    from .budgets import SpendCounters
    from .store import StoreService, StoreUnavailable, open_store

    try:
        backend = await trio.to_thread.run_sync(open_store, config.store.url)
    except StoreUnavailable as exc:
        return 503, {"error": {"message": f"cannot open the store: {exc}"}}
    store = StoreService(backend, threads=2, retention_days=config.store.usage_retention_days)
    try:
        if not await store.probe():
            return 503, {"error": {"message": "the store did not answer"}}
        await store.refresh_keys()
        auth = Authenticator(config.auth, store)
        budgets = SpendCounters()
        policies = [*auth.config_policies.values(),
                    *(KeyPolicy.from_record(k) for k in store.cached_keys())]
        await budgets.seed(store, policies)
        status, body, _ = await AdminAPI(store, auth, budgets).dispatch(*request)
    finally:
        await store.aclose()
    return status, orjson.loads(body) if body else None


def _print_result(args: argparse.Namespace, payload: Any) -> None:
    import json

    if args.command == "usage":
        if args.json:
            print(json.dumps(payload, indent=2))
        else:
            print(_usage_table(payload))
        return
    if args.keys_command == "create":
        print(f"created key {payload['name']}")
        print(f"secret (shown only now): {payload['key']}")
    elif args.keys_command == "revoke":
        print(f"revoked key {args.name}")
    else:
        print(_table(["name", "source", "prefix", "rpm", "tpm", "budget", "period", "spent",
                      "models", "expires"],
                     [[k["name"], k["source"], k["key_prefix"], k["rpm"], k["tpm"],
                       k["budget_usd"], k["budget_period"], f"{k['spend_usd']:.6f}",
                       ",".join(k["models"]) if k["models"] is not None else "any",
                       k["expires_at"]] for k in payload["data"]]))


def _usage_table(payload: Any) -> str:
    rows = payload["data"]
    groups = [f for f in ("key", "model", "provider", "day") if rows and f in rows[0]]
    table = _table([*groups, "requests", "cache_hits", "prompt_tokens", "completion_tokens",
                    "cost_usd", "saved_usd"],
                   [[*(r[g] for g in groups), r["requests"], r["cache_hits"],
                     r["prompt_tokens"], r["completion_tokens"], f"{r['cost_usd']:.6f}",
                     f"{r['saved_usd']:.6f}"] for r in rows])
    return f"usage from {payload['since']} to {payload['until']}\n{table}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """Plain columns, left-aligned; `-` for null."""
    cells = [header, *([("-" if v is None else str(v)) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)
