"""The store's tables, once, for both SQL dialects: data, not code.

`MIGRATIONS[i]` holds the statements that take a database from schema version `i` to
`i + 1`; a new edge appends a step and never edits an old one (a database at version 1
must upgrade by running exactly the later steps). The statements are written in SQLite's
parameter style (`?`) with `{int}`, `{real}` and `{blob}` for the column types that
differ; `Dialect` fills those in once per backend. The version lives in `edge_meta`
(row `schema_version`) beside `keys_version`, the counter every key write bumps.

Column names are fixed here and never come from input, so statements may be composed
from them; values always travel as parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "KEY_COLUMNS",
    "MIGRATIONS",
    "POSTGRES",
    "RESPONSE_COLUMNS",
    "SQLITE",
    "USAGE_COLUMNS",
    "Dialect",
]

META_DDL = "CREATE TABLE IF NOT EXISTS edge_meta (name TEXT PRIMARY KEY, value {int} NOT NULL)"
META_ROWS = ("schema_version", "keys_version")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: keys, the ledger and stored responses
    (
        """CREATE TABLE edge_keys (
            name TEXT PRIMARY KEY,
            digest {blob} NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            created_at {real} NOT NULL,
            expires_at {real},
            rpm {int},
            tpm {int},
            budget_usd {real},
            budget_period TEXT NOT NULL,
            models TEXT
        )""",
        """CREATE TABLE edge_usage (
            ts {real} NOT NULL,
            request_id TEXT NOT NULL,
            key_name TEXT,
            endpoint TEXT NOT NULL,
            model TEXT NOT NULL,
            provider TEXT,
            upstream_model TEXT,
            cache TEXT NOT NULL,
            status {int} NOT NULL,
            prompt_tokens {int} NOT NULL,
            completion_tokens {int} NOT NULL,
            cost_nusd {int} NOT NULL,
            saved_nusd {int} NOT NULL,
            latency_ms {real} NOT NULL
        )""",
        "CREATE INDEX edge_usage_ts ON edge_usage (ts)",
        """CREATE TABLE edge_responses (
            id TEXT PRIMARY KEY,
            key_name TEXT NOT NULL,
            created_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            response {blob} NOT NULL,
            input_items {blob} NOT NULL,
            conversation {blob} NOT NULL
        )""",
        "CREATE INDEX edge_responses_expires ON edge_responses (expires_at)",
    ),
    # 2: budgets are seeded per key (`spend_by_key`) and /admin/usage filters by key;
    # without this index both scan every row of the window
    ("CREATE INDEX edge_usage_key_ts ON edge_usage (key_name, ts)",),
)

KEY_COLUMNS = (
    "name", "digest", "key_prefix", "created_at", "expires_at",
    "rpm", "tpm", "budget_usd", "budget_period", "models",
)
USAGE_COLUMNS = (
    "ts", "request_id", "key_name", "endpoint", "model", "provider", "upstream_model",
    "cache", "status", "prompt_tokens", "completion_tokens", "cost_nusd", "saved_nusd",
    "latency_ms",
)
RESPONSE_COLUMNS = (
    "id", "key_name", "created_at", "expires_at", "response", "input_items", "conversation",
)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between SQLite and Postgres, as data."""

    name: str
    int_type: str
    real_type: str
    blob_type: str
    param: str
    #: an integer expression: the UTC day number (days since 1970-01-01) of column `ts`
    day_number: str
    #: an integer expression with two parameters (start, width): the bucket number of `ts`
    bucket_number: str = "CAST((ts - ?) / ? AS INTEGER)"

    def sql(self, text: str) -> str:
        """`text` with this dialect's types and parameter marks."""
        text = text.format(int=self.int_type, real=self.real_type, blob=self.blob_type)
        return text.replace("?", self.param) if self.param != "?" else text


SQLITE = Dialect("sqlite", "INTEGER", "REAL", "BLOB", "?", "CAST(ts / 86400 AS INTEGER)")
POSTGRES = Dialect(
    "postgres", "BIGINT", "DOUBLE PRECISION", "BYTEA", "%s", "CAST(floor(ts / 86400) AS BIGINT)",
    "CAST(floor((ts - ?) / ?) AS BIGINT)",
)
