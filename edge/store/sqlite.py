"""SQLite backends: a file (`sqlite:///PATH`) and the in-process `memory://` store.

One connection per backend, used by one thread at a time (a lock), so writes from this
process are serialised and reads never see a half-written batch. Across processes WAL
lets readers run beside the one writer, `busy_timeout` makes a writer wait for another
process's transaction instead of failing, and every write transaction starts with
`BEGIN IMMEDIATE`, taking the write lock before it reads, so two processes can never
deadlock upgrading a read lock. That makes one file safe for any number of workers on one
host (not over a network filesystem, where SQLite's locks are not reliable).

`memory://` is SQLite's in-memory database behind the same code: the same SQL, the same
semantics in every test, kept in this process until it exits.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from . import schema
from .base import AlreadyExists, StoreUnavailable
from .sql import SQLBackend

__all__ = ["SQLiteBackend"]

MEMORY = ":memory:"


class SQLiteBackend(SQLBackend):
    """The store in one SQLite database file, or in memory when `path` is `":memory:"`.

    Args:
        url: the store URL, for messages.
        path: the database file (created if missing; its directory must exist).
        busy_timeout: seconds a write waits for another process's write to finish.
        upgrade_to: see `SQLBackend`.

    Raises:
        StoreUnavailable: the file cannot be opened (a missing directory, no permission).
    """

    def __init__(
        self, url: str, path: str, *, busy_timeout: float = 5.0, upgrade_to: int | None = None
    ) -> None:
        super().__init__(url, schema.SQLITE, upgrade_to)
        self.path = path
        self._lock = threading.Lock()
        try:
            # autocommit mode (isolation_level None): transactions are ours, begun explicitly
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if path != MEMORY:
                _use_wal(self._conn, busy_timeout)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {path}: {exc}") from exc

    @contextmanager
    def _cursor(self, write: bool) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            if self._conn is None:
                raise StoreUnavailable("the SQLite store is closed")
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(str(exc)) from exc
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise StoreUnavailable(f"SQLite: {exc}") from exc
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _use_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL, waiting out another process doing the same.

    Changing the journal mode needs the file to itself, and SQLite answers "database is
    locked" at once rather than through the busy handler when two workers open a new
    store together; so the switch is retried until `busy_timeout` has passed.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)  # in a worker thread or at start-up, never on the event loop
