"""The Postgres backend (`postgresql://`), shared by every replica: psycopg 3 and a pool.

psycopg's synchronous API runs in the worker threads `StoreService` starts, so a bounded
`psycopg_pool.ConnectionPool` (as many connections as the service has threads) is the
right shape: a thread takes a connection for one operation and gives it back. Every
value is a query parameter, ledger batches go through `executemany` (pipelined by
psycopg), and each write is one transaction.

Outages: a connection is checked when it leaves the pool, so those broken by a server
restart are replaced rather than failing one operation each; connecting is bounded by
`connect_timeout`, waiting for a free connection by `pool_timeout`; and the pool gives up
a background reconnection after about a second, so once the server is back the next
operation (the service's health probe) connects at once instead of waiting out a long
backoff.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from . import schema
from .base import AlreadyExists, StoreUnavailable
from .sql import SQLBackend

__all__ = ["PostgresBackend"]


class PostgresBackend(SQLBackend):
    """The store in a Postgres database.

    Args:
        url: a libpq URI, `postgresql://user:password@host:port/database?options`.
        pool_size: most connections open at once.
        connect_timeout: seconds to establish one connection.
        pool_timeout: seconds an operation waits for a connection before failing.
        upgrade_to: see `SQLBackend`.

    Nothing connects until the first operation, so a server that is down at start-up
    does not stop edge from starting.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        connect_timeout: float = 3.0,
        pool_timeout: float = 5.0,
        upgrade_to: int | None = None,
    ) -> None:
        super().__init__(url, schema.POSTGRES, upgrade_to)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=0,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout))},
            timeout=pool_timeout,
            reconnect_timeout=1.0,
            check=ConnectionPool.check_connection,
            name="edge-store",
            open=False,
        )
        self._pool.open(wait=False)

    @contextmanager
    def _cursor(self, write: bool) -> Iterator[psycopg.Cursor[Any]]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.IntegrityError as exc:
            raise AlreadyExists(str(exc).strip()) from exc
        except psycopg.Error as exc:  # includes the pool's PoolTimeout and PoolClosed
            raise StoreUnavailable(f"Postgres: {str(exc).strip() or type(exc).__name__}") from exc

    def close(self) -> None:
        self._pool.close()
