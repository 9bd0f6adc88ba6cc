"""`edge serve` runs the store (SPEC §7): a Postgres that is down never stops it from
serving, and a SQLite store is opened (its tables made) before the server is ready.

These drive spawned `edge serve` processes with the official openai SDK against the mock
upstream.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import openai
from _postgres import PostgresServer
from _servers import EdgeProcess, MockUpstream

CONFIG = """
[[providers]]
name = "up"
kind = "openai"
base_url = "{mock_url}/v1"
api_key = "env:PROVIDER_KEY"
models = ["*"]
"""


def ask(edge: EdgeProcess) -> str:
    with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="sk-unused", max_retries=0) as client:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


def test_a_stopped_postgres_store_does_not_stop_edge_serving(
    tmp_path: Path, mock_upstream: MockUpstream,
    postgres_factory: Callable[[], PostgresServer],
) -> None:
    server = postgres_factory()
    url = server.create_database()
    server.stop()
    edge = EdgeProcess(tmp_path, config=CONFIG.format(mock_url=mock_upstream.url),
                       env={"PROVIDER_KEY": "sk-test-store", "EDGE_STORE_URL": url})
    try:
        assert ask(edge)
        assert edge.alive()
    finally:
        edge.stop()


def test_edge_serve_opens_the_configured_store_before_it_is_ready(
    tmp_path: Path, mock_upstream: MockUpstream,
) -> None:
    path = tmp_path / "edge.db"
    edge = EdgeProcess(tmp_path, config=CONFIG.format(mock_url=mock_upstream.url),
                       env={"PROVIDER_KEY": "sk-test-store", "EDGE_STORE_URL": f"sqlite:///{path}"})
    try:
        # ready means the store's first probe ran: the file exists with its tables made
        with closing(sqlite3.connect(path)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"edge_meta", "edge_keys", "edge_usage"} <= tables, tables
        assert ask(edge)
    finally:
        edge.stop()
