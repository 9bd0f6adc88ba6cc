"""A real PostgreSQL server for tests, spawned on a free loopback port.

`initdb` makes a cluster in a fresh temporary directory and `postgres` serves it on a
port from `free_port()` (never the machine's own server on 5432), with its Unix socket
in that directory too. Postgres refuses to run as root, so under root (as in CI) both
run as the unprivileged user `nobody`, owning the directory; otherwise as ourselves.
The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin; without
them the tests that need Postgres are skipped (`.ci/run` installs `postgresql`).

`postgres_server` is one server per session; `postgres_url` is a fresh, empty database
on it per test; `postgres_factory` starts private servers for tests that stop and start
them mid-run.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _redis import free_port

__all__ = ["PostgresServer", "postgres_factory", "postgres_server", "postgres_url"]

#: How long initdb, start-up and shutdown may take on a busy machine.
_DEADLINE = 60.0
_POLL = 0.05
_USER = "edge"  # the database superuser initdb creates (not an OS user)
_databases = itertools.count(1)


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not candidates:
        pytest.skip(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return candidates[-1]


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to `nobody` (Postgres will not run as root)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


class PostgresServer:
    """One postgres process over its own data directory, with stop/start in between."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as = _run_as()
        if self._as:
            os.chown(self.root, self._as["user"], self._as["group"])
        self._log = self.root / "postgres.log"
        init = subprocess.run(
            [_binary("initdb"), "-D", str(self.data), "-U", _USER, "--auth=trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, timeout=_DEADLINE, check=False, cwd=self.root,
            stdin=subprocess.DEVNULL, **self._as,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout.decode()}{init.stderr.decode()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (again, after `stop`, on the same port) and wait until it
        accepts connections."""
        log = self._log.open("ab")
        try:
            self.process = subprocess.Popen(
                [_binary("postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "max_connections=60", "-c", "shared_buffers=16MB"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, **self._as,
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + _DEADLINE
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections:\n{self.log_tail()}")
            time.sleep(_POLL)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, the data is kept."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a name we made, not input
        return self.url(name)

    def log_tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _started() -> PostgresServer:
    for _ in range(3):
        server = PostgresServer()
        try:
            server.start()
        except RuntimeError:
            server.close()
            continue  # most likely another process took the port first
        return server
    raise RuntimeError("could not start a PostgreSQL server")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session."""
    pytest.importorskip("psycopg")
    server = _started()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], PostgresServer]]:
    """Start private servers (for tests that stop and restart them); all closed at the end."""
    pytest.importorskip("psycopg")
    servers: list[PostgresServer] = []

    def start() -> PostgresServer:
        server = _started()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
