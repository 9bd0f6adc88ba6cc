"""`edge demo`: the whole product in one process, with no API key and no config file.

The bundled mock provider (`edge.mock_upstream`) listens on a free loopback port and edge
serves on 127.0.0.1:P in the same Trio run, with the built-in OpenAI and Anthropic
providers pointed at the mock, so every model name the mock knows (gpt-4o*, gpt-4*,
gpt-3.5-turbo*, text-embedding-*, claude-*) routes to it. The admin API is on with a key
made for this run, the store is `memory://`, and the user's own environment and
./edge.toml are deliberately not read: a demo must start the same way everywhere.

SIGINT/SIGTERM make edge drain as `edge serve` does; the mock stops after it.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from typing import Any

import trio

from .config import Config, ConfigError, load_config
from .mock_upstream import MockOptions, serve_mock

__all__ = ["demo_config", "run_demo"]

_HOST = "127.0.0.1"


def demo_config(port: int, mock_port: int, metrics_port: int, admin_key: str) -> Config:
    """edge's config for the demo: both built-in providers at the mock, admin API on."""
    mock = f"http://{_HOST}:{mock_port}"
    env = {
        "OPENAI_API_KEY": "sk-demo",
        "OPENAI_BASE_URL": f"{mock}/v1",
        "ANTHROPIC_API_KEY": "sk-demo",
        "ANTHROPIC_BASE_URL": mock,
        "EDGE_ADMIN_KEY": admin_key,
        "EDGE_STORE_URL": "memory://",
    }
    overrides = {"host": _HOST, "port": port, "metrics_port": metrics_port}
    return load_config(os.devnull, env=env, overrides=overrides)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_taken(port: int) -> OSError | None:
    """Why 127.0.0.1:`port` cannot be bound, or None; checked before anything starts so
    that a busy port is one clear line, not a traceback from deep in the server."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Hypercorn binds
        try:
            sock.bind((_HOST, port))
        except OSError as exc:
            return exc
    return None


def banner(port: int, mock_port: int, metrics_port: int, admin_key: str) -> str:
    """What the user reads first: where everything is and what to paste."""
    base = f"http://{_HOST}:{port}"
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}'
    return "\n".join([
        f"edge demo: edge on {base}, in front of the bundled mock provider on "
        f"http://{_HOST}:{mock_port} (no API key needed)",
        f"admin key: {admin_key}",
        f"dashboard: {base}/ui",
        f"metrics: http://{_HOST}:{metrics_port}/metrics",
        "",
        "try it:",
        f"  curl -s {base}/v1/chat/completions -H 'content-type: application/json' "
        f"-d '{body}'",
        f"  curl -s {base}/admin/keys -H 'authorization: Bearer {admin_key}'",
        "",
        "or from Python (pip install openai):",
        "  from openai import OpenAI",
        f'  client = OpenAI(base_url="{base}/v1", api_key="demo")',
        '  print(client.chat.completions.create(model="gpt-4o-mini", '
        'messages=[{"role": "user", "content": "hello"}]).choices[0].message.content)',
        "",
        "Ctrl-C stops it.",
    ])


def run_demo(port: int) -> int:
    """Serve the demo until SIGINT/SIGTERM; the exit status for the CLI (1: port busy)."""
    from .server import serve

    if not 1 <= port <= 65535:
        print(f"Error: --port must be between 1 and 65535, got {port}", file=sys.stderr)
        return 2
    busy = _port_taken(port)
    if busy is not None:
        print(f"Error: cannot listen on {_HOST}:{port}: {busy.strerror or busy}; "
              "pick another port with --port", file=sys.stderr)
        return 1
    admin_key = secrets.token_urlsafe(24)
    metrics_port = _free_port()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            mock_port: int = await nursery.start(serve_mock, MockOptions(host=_HOST))
            config = demo_config(port, mock_port, metrics_port, admin_key)

            async def edge_then_stop(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                await serve(config, task_status=task_status)
                nursery.cancel_scope.cancel()  # edge has drained: the mock goes too

            await nursery.start(edge_then_stop)
            print(banner(port, mock_port, metrics_port, admin_key), flush=True)

    try:
        trio.run(main)
    except ConfigError as exc:  # a bug in demo_config, never the user's input
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0
