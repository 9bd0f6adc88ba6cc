"""`edge serve | check-config | mock-upstream` and `edge --version`.

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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "mock-upstream":
        return _mock(args)
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
    log.threshold = {"debug": 10, "info": 20, "warning": 30, "error": 40}[config.server.log_level]
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
                           fail_rate=args.fail_rate, seed=args.seed))
