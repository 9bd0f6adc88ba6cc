"""SQLite backends: a file (`sqlite:///PATH`) and the in-process `memory://` store.

One connection per backend, used by one thread at a time (a lock), so writes from this
process are serialised and reads never see a half-written batch. The in-memory database
never waits for a disk or another process, so `now` runs a call on the caller's thread
(the event loop) whenever no worker thread holds the lock: a stored response then costs
no thread hop, which is most of what it would cost (a wake-up of the writer task, the
hop and the hop back). Across processes WAL
lets readers run beside the one writer, `busy_timeout` makes a writer wait for another
process's transaction instead of failing, and every write transaction starts with
`BEGIN IMMEDIATE`, taking the write lock before it reads, so two processes can never
deadlock upgrading a read lock. That makes one file safe for any number of workers on one
host (not over a network filesystem, where SQLite's locks are not reliable).

`memory://` is SQLite's in-memory database behind the same code: the same SQL, the same
semantics in every test, kept in this process until it exits; only its stored responses
are a bounded dict (`MemoryBackend`), since their write is on the request's path.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from . import schema
from .base import BUSY, AlreadyExists, Busy, StoredResponse, StoreUnavailable, UsageRow
from .sql import SQLBackend

__all__ = ["MemoryBackend", "SQLiteBackend"]

MEMORY = ":memory:"

T = TypeVar("T")


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
        # reentrant: `now` holds it around a call that takes it again
        self._lock = threading.RLock()
        self._in_process = path == MEMORY
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

    def now(self, fn: Callable[..., T], *args: Any) -> T | Busy:
        """`fn(*args)` here and now for the in-memory database when no thread holds it."""
        if not self._in_process or not self._lock.acquire(blocking=False):
            return BUSY
        try:
            return fn(*args)
        finally:
            self._lock.release()

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


# The newest ledger rows a memory store keeps: each costs about 180 bytes of SQLite
# memory, and 90 days of a busy gateway's rows would exhaust the process long before
# the retention pass reached them. A durable store (SQLite file, Postgres) keeps them all.
MAX_USAGE_ROWS = 10_000


class MemoryBackend(SQLiteBackend):
    """`memory://`: SQLite in memory for keys and the ledger, a dict for stored responses.

    Both are bounded, since a memory store lives in the process: the ledger keeps its
    newest `max_usage_rows` rows, stored responses their newest `max_responses`.

    A stored response is written before its answer leaves (SPEC §8), so its write is on
    the request's path; SQLite spends about 25 us inserting one (three blobs and two
    B-trees), a dict about 0.2 us. Nothing about responses needs SQL: they are read and
    deleted by id and owner, and expired by time. The dict is bounded (`max_responses`,
    the oldest dropped first): a memory store lives in the process, and keeping every
    answer of a busy gateway for 30 days there would exhaust its memory long before.
    """

    def __init__(self, url: str, *, max_responses: int = 100_000,
                 max_usage_rows: int = MAX_USAGE_ROWS) -> None:
        super().__init__(url, MEMORY)
        self.max_responses = max_responses
        self.max_usage_rows = max_usage_rows
        self._responses: dict[str, StoredResponse] = {}
        self._rows_since_trim = 0

    def insert_usage(self, rows: Sequence[UsageRow]) -> None:
        """Append to the ledger, keeping only its newest `max_usage_rows` rows (about
        10 % more between two trims, which run every tenth of the bound)."""
        super().insert_usage(rows)
        self._rows_since_trim += len(rows)
        if self._rows_since_trim * 10 >= self.max_usage_rows:
            self._rows_since_trim = 0
            self._delete("DELETE FROM edge_usage WHERE rowid <= "
                         "(SELECT MAX(rowid) FROM edge_usage) - ?", (self.max_usage_rows,))

    def put_responses(self, responses: Sequence[StoredResponse]) -> None:
        with self._lock:
            kept = self._responses
            ids = [response.id for response in responses]
            if len(set(ids)) < len(ids) or any(id in kept for id in ids):
                raise AlreadyExists("a stored response with that id exists")  # as SQL's key
            for response in responses:
                kept[response.id] = response
            while len(kept) > self.max_responses:
                del kept[next(iter(kept))]

    def get_response(self, id: str, key_name: str, now: float) -> StoredResponse | None:
        with self._lock:
            found = self._responses.get(id)
        if found is None or found.key_name != key_name or found.expires_at <= now:
            return None
        return found

    def delete_response(self, id: str, key_name: str) -> bool:
        with self._lock:
            found = self._responses.get(id)
            if found is None or found.key_name != key_name:
                return False
            del self._responses[id]
            return True

    def delete_expired_responses(self, now: float) -> int:
        with self._lock:
            expired = [id for id, r in self._responses.items() if r.expires_at <= now]
            for id in expired:
                del self._responses[id]
            return len(expired)
