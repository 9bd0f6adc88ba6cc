"""The operations of both SQL backends, written once over a DB-API cursor.

A subclass supplies only its connection handling: `_cursor(write)` yields a cursor inside
a transaction that commits when the block ends normally (a write takes the database's
write lock at once, so two writers queue instead of deadlocking) and maps its driver's
exceptions into the store's family (`AlreadyExists`, `StoreUnavailable`). The
SQL text and the tables come from `schema`, so SQLite and Postgres run the same
statements, differing only by `Dialect`.

The schema is created or upgraded on first contact (`ping` or any operation), in one
transaction that holds the write lock (SQLite) or an advisory lock (Postgres), so several
processes starting at once upgrade it exactly once.
"""

from __future__ import annotations

import datetime
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import orjson

from . import schema
from .base import (
    BUSY,
    Busy,
    KeyRecord,
    StoredResponse,
    StoreError,
    UsageRow,
    UsageSummary,
    check_group_by,
    check_key_changes,
    from_nano,
    to_nano,
)

__all__ = ["SQLBackend"]

T = TypeVar("T")

_Cursor = Any  # sqlite3.Cursor or psycopg.Cursor: the DB-API subset both share
_GROUP_COLUMNS = {"key": "key_name", "model": "model", "provider": "provider"}
_HITS = "SUM(CASE WHEN cache IN ('hit-l1', 'hit-l2') THEN 1 ELSE 0 END)"
_TOTALS = (
    f"COUNT(*), {_HITS}, SUM(prompt_tokens), SUM(completion_tokens), "
    "SUM(cost_nusd), SUM(saved_nusd)"
)
_SUMMARY = (
    "COUNT(*), SUM(CASE WHEN cache = 'hit-l1' THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN cache = 'hit-l2' THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(cost_nusd), SUM(saved_nusd)"
)
_MIGRATION_LOCK = 0x65646765  # "edge": the Postgres advisory lock held while upgrading


def _columns(names: Sequence[str]) -> tuple[str, str]:
    return ", ".join(names), ", ".join("?" for _ in names)


_KEY_SELECT = f"SELECT {', '.join(schema.KEY_COLUMNS)} FROM edge_keys"
_KEY_INSERT = "INSERT INTO edge_keys ({}) VALUES ({})".format(*_columns(schema.KEY_COLUMNS))
_USAGE_INSERT = "INSERT INTO edge_usage ({}) VALUES ({})".format(*_columns(schema.USAGE_COLUMNS))
_RESPONSE_INSERT = "INSERT INTO edge_responses ({}) VALUES ({})".format(
    *_columns(schema.RESPONSE_COLUMNS)
)
_RESPONSE_SELECT = (
    f"SELECT {', '.join(schema.RESPONSE_COLUMNS)} FROM edge_responses "
    "WHERE id = ? AND key_name = ? AND expires_at > ?"
)
_BUMP_KEYS = "UPDATE edge_meta SET value = value + 1 WHERE name = 'keys_version'"


class SQLBackend:
    """A `Backend` over SQL; subclasses provide `_cursor` and `close`."""

    dialect: schema.Dialect
    url: str

    def __init__(self, url: str, dialect: schema.Dialect, upgrade_to: int | None) -> None:
        """`upgrade_to` stops the upgrade at an older version (tests of the upgrade path)."""
        self.url = url
        self.dialect = dialect
        self._target = len(schema.MIGRATIONS) if upgrade_to is None else upgrade_to
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    # -- what subclasses provide ------------------------------------------------

    def _cursor(self, write: bool) -> AbstractContextManager[_Cursor]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def now(self, fn: Callable[..., T], *args: Any) -> T | Busy:
        """A database over a network or a file may block: never at once (see `Backend`)."""
        return BUSY

    # -- plumbing ------------------------------------------------------------------

    def _session(self, write: bool) -> AbstractContextManager[_Cursor]:
        """A cursor in a transaction, after making sure the schema is current."""
        if not self._schema_ready:
            self._upgrade()
        return self._cursor(write)

    def _upgrade(self) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            with self._cursor(True) as cur:
                self._migrate(cur)
            self._schema_ready = True

    def _migrate(self, cur: _Cursor) -> None:
        sql = self.dialect.sql
        if self.dialect is schema.POSTGRES:
            cur.execute(sql("SELECT pg_advisory_xact_lock(?)"), (_MIGRATION_LOCK,))
        cur.execute(sql(schema.META_DDL))
        seed = sql("INSERT INTO edge_meta (name, value) VALUES (?, 0) ON CONFLICT DO NOTHING")
        for name in schema.META_ROWS:
            cur.execute(seed, (name,))
        version = _version(cur, sql)
        known = len(schema.MIGRATIONS)
        if version > known:
            raise StoreError(
                f"the store's schema is at version {version}, newer than this edge knows "
                f"({known}); upgrade edge"
            )
        for step in schema.MIGRATIONS[version:self._target]:
            for statement in step:
                cur.execute(sql(statement))
        if self._target > version:
            cur.execute(
                sql("UPDATE edge_meta SET value = ? WHERE name = 'schema_version'"), (self._target,)
            )

    # -- Backend -------------------------------------------------------------------

    def ping(self) -> None:
        with self._session(False) as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    def schema_version(self) -> int:
        with self._session(False) as cur:
            return _version(cur, self.dialect.sql)

    def create_key(self, key: KeyRecord) -> None:
        with self._session(True) as cur:
            cur.execute(self.dialect.sql(_KEY_INSERT), _key_params(key))
            cur.execute(_BUMP_KEYS)

    def get_key(self, name: str) -> KeyRecord | None:
        return self._one_key(f"{_KEY_SELECT} WHERE name = ?", (name,))

    def find_key(self, digest: bytes) -> KeyRecord | None:
        return self._one_key(f"{_KEY_SELECT} WHERE digest = ?", (digest,))

    def list_keys(self) -> list[KeyRecord]:
        with self._session(False) as cur:
            cur.execute(f"{_KEY_SELECT} ORDER BY name")
            return [_key_record(row) for row in cur.fetchall()]

    def update_key(self, name: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        check_key_changes(changes)
        if not changes:
            return self.get_key(name)
        fields = list(changes)
        values = [_models_text(v) if f == "models" else v for f, v in changes.items()]
        assignments = ", ".join(f"{field} = ?" for field in fields)
        return self._write_key(
            f"UPDATE edge_keys SET {assignments} WHERE name = ?", (*values, name), name
        )

    def rotate_key(self, name: str, digest: bytes, key_prefix: str) -> KeyRecord | None:
        return self._write_key(
            "UPDATE edge_keys SET digest = ?, key_prefix = ? WHERE name = ?",
            (digest, key_prefix, name),
            name,
        )

    def delete_key(self, name: str) -> bool:
        with self._session(True) as cur:
            cur.execute(self.dialect.sql("DELETE FROM edge_keys WHERE name = ?"), (name,))
            if cur.rowcount < 1:
                return False
            cur.execute(_BUMP_KEYS)
            return True

    def keys_version(self) -> int:
        with self._session(False) as cur:
            cur.execute("SELECT value FROM edge_meta WHERE name = 'keys_version'")
            return int(cur.fetchone()[0])

    def insert_usage(self, rows: Sequence[UsageRow]) -> None:
        if not rows:
            return
        with self._session(True) as cur:
            cur.executemany(self.dialect.sql(_USAGE_INSERT), [_usage_params(r) for r in rows])

    def aggregate_usage(
        self,
        since: float,
        until: float,
        group_by: Sequence[str] = ("key",),
        key_name: str | None = None,
    ) -> list[dict[str, Any]]:
        fields = check_group_by(group_by)
        columns = [self.dialect.day_number if f == "day" else _GROUP_COLUMNS[f] for f in fields]
        select = ", ".join([*columns, _TOTALS])
        where = "ts >= ? AND ts < ?" + (" AND key_name = ?" if key_name is not None else "")
        params: tuple[Any, ...] = (since, until) if key_name is None else (since, until, key_name)
        text = f"SELECT {select} FROM edge_usage WHERE {where}"
        if fields:
            text += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(fields)))
        with self._session(False) as cur:
            cur.execute(self.dialect.sql(text), params)
            rows = cur.fetchall()
        groups = [_usage_group(fields, row) for row in rows if int(row[len(fields)]) > 0]
        groups.sort(key=lambda g: tuple(_sort_key(g[f]) for f in fields))
        return groups

    def usage_summary(self, since: float, until: float, bucket_s: float) -> UsageSummary:
        if not bucket_s > 0:
            raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
        d = self.dialect
        window = (since, until)
        with self._session(False) as cur:
            cur.execute(d.sql(f"SELECT {d.bucket_number}, {_SUMMARY} FROM edge_usage "
                              "WHERE ts >= ? AND ts < ? GROUP BY 1 ORDER BY 1"),
                        (since, float(bucket_s), *window))
            buckets = [_summary_bucket(row) for row in cur.fetchall()]
            cur.execute(d.sql("SELECT status, COUNT(*) FROM edge_usage "
                              "WHERE ts >= ? AND ts < ? AND status >= 400 GROUP BY status"),
                        window)
            by_status = {int(status): int(n) for status, n in cur.fetchall()}
            count = sum(b["requests"] for b in buckets)
            p50, p99 = (self._latency_rank(cur, window, _rank(q, count)) if count else None
                        for q in (0.5, 0.99))
        return UsageSummary(buckets, by_status, p50, p99)

    def _latency_rank(self, cur: _Cursor, window: tuple[float, float], rank: int) -> float:
        cur.execute(self.dialect.sql("SELECT latency_ms FROM edge_usage WHERE ts >= ? AND "
                                     "ts < ? ORDER BY latency_ms LIMIT 1 OFFSET ?"),
                    (*window, rank))
        return float(cur.fetchone()[0])

    def spend_by_key(self, windows: Mapping[str, float]) -> dict[str, float]:
        text = self.dialect.sql(
            "SELECT COALESCE(SUM(cost_nusd), 0) FROM edge_usage WHERE key_name = ? AND ts >= ?"
        )
        spent: dict[str, float] = {}
        with self._session(False) as cur:
            for name, since in windows.items():
                cur.execute(text, (name, since))
                spent[name] = from_nano(int(cur.fetchone()[0]))
        return spent

    def delete_usage_before(self, before: float) -> int:
        return self._delete("DELETE FROM edge_usage WHERE ts < ?", (before,))

    def put_response(self, response: StoredResponse) -> None:
        self.put_responses([response])

    def put_responses(self, responses: Sequence[StoredResponse]) -> None:
        if not responses:
            return
        with self._session(True) as cur:
            cur.executemany(
                self.dialect.sql(_RESPONSE_INSERT),
                [tuple(getattr(r, c) for c in schema.RESPONSE_COLUMNS) for r in responses],
            )

    def get_response(self, id: str, key_name: str, now: float) -> StoredResponse | None:
        with self._session(False) as cur:
            cur.execute(self.dialect.sql(_RESPONSE_SELECT), (id, key_name, now))
            row = cur.fetchone()
        if row is None:
            return None
        id_, key, created, expires, response, input_items, conversation = row
        return StoredResponse(
            id_, key, created, expires, bytes(response), bytes(input_items), bytes(conversation)
        )

    def delete_response(self, id: str, key_name: str) -> bool:
        deleted = self._delete(
            "DELETE FROM edge_responses WHERE id = ? AND key_name = ?", (id, key_name)
        )
        return deleted > 0

    def delete_expired_responses(self, now: float) -> int:
        return self._delete("DELETE FROM edge_responses WHERE expires_at <= ?", (now,))

    # -- helpers -------------------------------------------------------------------

    def _one_key(self, text: str, params: tuple[Any, ...]) -> KeyRecord | None:
        with self._session(False) as cur:
            cur.execute(self.dialect.sql(text), params)
            row = cur.fetchone()
        return None if row is None else _key_record(row)

    def _write_key(self, text: str, params: tuple[Any, ...], name: str) -> KeyRecord | None:
        """Run a key UPDATE; bump the version and return the new record if a row changed."""
        with self._session(True) as cur:
            cur.execute(self.dialect.sql(text), params)
            if cur.rowcount < 1:
                return None
            cur.execute(_BUMP_KEYS)
            cur.execute(self.dialect.sql(f"{_KEY_SELECT} WHERE name = ?"), (name,))
            return _key_record(cur.fetchone())

    def _delete(self, text: str, params: tuple[Any, ...]) -> int:
        with self._session(True) as cur:
            cur.execute(self.dialect.sql(text), params)
            return int(cur.rowcount)


def _version(cur: _Cursor, sql: Any) -> int:
    cur.execute(sql("SELECT value FROM edge_meta WHERE name = 'schema_version'"))
    return int(cur.fetchone()[0])


def _models_text(models: Sequence[str] | None) -> str | None:
    return None if models is None else orjson.dumps(list(models)).decode()


def _key_params(key: KeyRecord) -> tuple[Any, ...]:
    return (
        key.name, key.digest, key.key_prefix, key.created_at, key.expires_at,
        key.rpm, key.tpm, key.budget_usd, key.budget_period, _models_text(key.models),
    )


def _key_record(row: Sequence[Any]) -> KeyRecord:
    name, digest, prefix, created, expires, rpm, tpm, budget, period, models = row
    return KeyRecord(
        name=name,
        digest=bytes(digest),
        key_prefix=prefix,
        created_at=float(created),
        expires_at=None if expires is None else float(expires),
        rpm=None if rpm is None else int(rpm),
        tpm=None if tpm is None else int(tpm),
        budget_usd=None if budget is None else float(budget),
        budget_period=period,
        models=None if models is None else tuple(orjson.loads(models)),
    )


def _usage_params(row: UsageRow) -> tuple[Any, ...]:
    return (
        row.time, row.request_id, row.key_name, row.endpoint, row.model, row.provider,
        row.upstream_model, row.cache, row.status, row.prompt_tokens, row.completion_tokens,
        to_nano(row.cost_usd), to_nano(row.saved_usd), row.latency_ms,
    )


def _usage_group(fields: tuple[str, ...], row: Sequence[Any]) -> dict[str, Any]:
    group: dict[str, Any] = {}
    for field, value in zip(fields, row, strict=False):
        group[field] = _day(int(value)) if field == "day" else value
    requests, hits, prompt, completion, cost, saved = row[len(fields):]
    group.update(
        requests=int(requests),
        cache_hits=int(hits),
        prompt_tokens=int(prompt),
        completion_tokens=int(completion),
        cost_usd=from_nano(int(cost)),
        saved_usd=from_nano(int(saved)),
    )
    return group


def _summary_bucket(row: Sequence[Any]) -> dict[str, Any]:
    bucket, requests, l1, l2, errors, cost, saved = row
    return {"bucket": int(bucket), "requests": int(requests), "hits_l1": int(l1),
            "hits_l2": int(l2), "errors": int(errors), "cost_usd": from_nano(int(cost)),
            "saved_usd": from_nano(int(saved))}


def _rank(quantile: float, count: int) -> int:
    """The 0-based index of the nearest-rank `quantile` among `count` sorted values."""
    return max(0, math.ceil(quantile * count) - 1)


def _day(number: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=number)).isoformat()


def _sort_key(value: str | None) -> tuple[bool, str]:
    return (value is not None, value or "")
