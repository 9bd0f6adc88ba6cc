"""The store: admin-made keys, the usage ledger and stored responses (SPEC §7, §8).

One synchronous interface (`Backend`) with three implementations chosen by URL:

* `memory://` keeps everything in this process until it exits (SQLite in memory);
* `sqlite:///PATH` is a file, durable on one host and safe for any number of workers;
* `postgresql://...` (or `postgres://`) is shared by every replica (extra `edge[postgres]`).

`StoreService` drives a backend from Trio: calls in worker threads under a limiter, a
health flag that recovers by itself, the ledger written in batches off the request path,
retention cleanup, and a snapshot of the keys table for the request path to read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from .base import (
    GROUP_FIELDS,
    KEY_FIELDS,
    AlreadyExists,
    Backend,
    KeyRecord,
    StoreConfigError,
    StoredResponse,
    StoreError,
    StoreUnavailable,
    UsageRow,
)
from .service import StoreService

__all__ = [
    "GROUP_FIELDS",
    "KEY_FIELDS",
    "AlreadyExists",
    "Backend",
    "KeyRecord",
    "StoreConfigError",
    "StoreError",
    "StoreService",
    "StoreURL",
    "StoreUnavailable",
    "StoredResponse",
    "UsageRow",
    "open_store",
    "parse_store_url",
]

_SCHEMES = "memory://, sqlite:///PATH, sqlite:////ABSOLUTE/PATH or postgresql://user:pw@host/db"
_POSTGRES_EXTRA = (
    "a postgresql:// store needs psycopg 3; install the extra: pip install 'edge[postgres]'"
)


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A checked store URL. `path` is the SQLite file as written (relative paths are
    resolved when the store is opened); `durable` is False only for `memory://`."""

    kind: str  # "memory" | "sqlite" | "postgres"
    url: str
    path: str | None = None

    @property
    def durable(self) -> bool:
        return self.kind != "memory"


def parse_store_url(url: str) -> StoreURL:
    """Check a store URL without touching any database.

    Raises:
        StoreConfigError: an unknown scheme, a malformed URL, or `postgresql://` without
            psycopg installed (the message names the extra). Messages never repeat the
            URL, which may hold a password.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise StoreConfigError(f"the store URL needs a scheme; use {_SCHEMES}")
    if scheme == "memory":
        if rest:
            raise StoreConfigError("a memory store takes nothing after memory://")
        return StoreURL("memory", url)
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StoreConfigError(
                "a SQLite store URL is sqlite:///relative/path or sqlite:////absolute/path "
                "(three slashes before a relative path, four before an absolute one)"
            )
        path = rest[1:]
        if "?" in path or "#" in path:
            raise StoreConfigError("a SQLite store URL takes no query or fragment")
        return StoreURL("sqlite", url, path)
    if scheme in ("postgresql", "postgres"):
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise StoreConfigError(_POSTGRES_EXTRA) from None
        try:
            urlsplit(url).port  # noqa: B018 - raises ValueError for a bad port
            conninfo_to_dict(url)
        except Exception as exc:  # psycopg.ProgrammingError, ValueError
            raise StoreConfigError(
                f"the postgresql:// store URL is malformed ({type(exc).__name__})"
            ) from None
        return StoreURL("postgres", url)
    raise StoreConfigError(f"unknown store URL scheme {scheme + '://'!r}; use {_SCHEMES}")


def open_store(url: str | StoreURL, *, threads: int = 8) -> Backend:
    """The backend a store URL names, ready to use (tables are made on first contact).

    A relative SQLite path is resolved against the current working directory.
    `threads` sizes the Postgres connection pool (match `StoreService(threads=...)`).

    Raises:
        StoreConfigError: see `parse_store_url`.
        StoreUnavailable: a SQLite file that cannot be opened.
    """
    parsed = url if isinstance(url, StoreURL) else parse_store_url(url)
    if parsed.kind == "postgres":
        from .postgres import PostgresBackend

        return PostgresBackend(parsed.url, pool_size=threads)
    from .sqlite import MemoryBackend, SQLiteBackend

    if parsed.kind == "memory":
        return MemoryBackend(parsed.url)
    assert parsed.path is not None
    return SQLiteBackend(parsed.url, os.path.abspath(parsed.path))
