"""What the store holds, and the one interface every backend implements (SPEC §7, §8).

The interface is synchronous on purpose: backends are called from worker threads (by
`StoreService`, or directly by the CLI with no server running), so they may block on a
database. Nothing here touches Trio.

Units are fixed for every backend:

* **Times** are UTC epoch seconds as floats, in and out (`time.time()`).
* **Money** is USD as a float at the interface, kept as integer nano-USD in the database,
  so sums are exact: a thousand rows of $0.000000001 add up to exactly $0.000001, which a
  REAL/double column summed by the database does not promise. A cost is rounded to the
  nearest nano-USD when written; the largest sum a BIGINT holds is about $9.2e9.
* **JSON** (stored responses) is bytes, exactly as encoded by the caller: the store never
  parses what it keeps.

Errors form a small family: `StoreError` at the root; `StoreConfigError` for a URL that
cannot name a store (the config layer shows its message next to the key);
`StoreUnavailable` when the database could not be reached or failed (what makes
`StoreService` unhealthy); `AlreadyExists` when a key's name or secret digest (or a
response id) is taken.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = [
    "GROUP_FIELDS",
    "KEY_FIELDS",
    "Backend",
    "AlreadyExists",
    "BUSY",
    "Busy",
    "KeyRecord",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailable",
    "StoredResponse",
    "UsageRow",
    "UsageSummary",
    "from_nano",
    "to_nano",
]

#: The ledger fields `aggregate_usage` can group by (SPEC §7 `group_by`).
GROUP_FIELDS = ("key", "model", "provider", "day")
#: The key fields `update_key` may change (SPEC §7 PATCH /admin/keys/{name}).
KEY_FIELDS = ("rpm", "tpm", "budget_usd", "budget_period", "models", "expires_at")

_NANO = 1_000_000_000

T = TypeVar("T")


class Busy(enum.Enum):
    """What `Backend.now` answers when the call would have to wait: run it in a thread."""

    BUSY = "busy"


BUSY = Busy.BUSY


def to_nano(usd: float) -> int:
    """USD as integer nano-USD, rounded to the nearest."""
    return round(usd * _NANO)


def from_nano(nano: int) -> float:
    """Integer nano-USD as USD: the float nearest the exact value."""
    return nano / _NANO


class StoreError(Exception):
    """Anything the store refuses or fails to do."""


class StoreConfigError(StoreError, ValueError):
    """The store URL is malformed, names an unknown scheme, or needs a missing extra."""


class StoreUnavailable(StoreError):
    """The database could not be reached, timed out or failed; the cause is chained."""


class AlreadyExists(StoreError):
    """A key with that name or that secret's digest, or a response with that id, is stored."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An admin-made client key. `digest` is the SHA-256 of the secret; the secret itself
    is never stored. `models` None means any model; `budget_usd` None means no budget."""

    name: str
    digest: bytes
    key_prefix: str
    created_at: float
    expires_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "total"
    models: tuple[str, ...] | None = None


@dataclass(slots=True)
class UsageRow:
    """One ledger row: a request that reached routing or the cache (SPEC §7).

    Not frozen: one is made per request, and a frozen dataclass's `__init__` pays an
    `object.__setattr__` call per field. Nothing changes a row once it is queued.

    `provider` and `upstream_model` are None for a cache hit; `cache` is one of `hit-l1`,
    `hit-l2`, `miss`, `refresh`, `bypass`; `saved_usd` is a hit's would-have-been cost.
    """

    time: float
    request_id: str
    key_name: str | None
    endpoint: str
    model: str
    provider: str | None
    upstream_model: str | None
    cache: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    saved_usd: float
    latency_ms: float


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """The ledger over [since, until) cut into buckets of `bucket_s` seconds: what the
    dashboard charts (`usage_summary`).

    `buckets` holds one dict per bucket that has rows, ordered by `bucket` (its number,
    counting from `since`): `requests`, `hits_l1`, `hits_l2`, `errors` (status >= 400),
    `cost_usd`, `saved_usd`. `errors_by_status` counts the window's error rows by status;
    `p50_ms` and `p99_ms` are nearest-rank percentiles of `latency_ms` (None without rows).
    """

    buckets: list[dict[str, Any]]
    errors_by_status: dict[int, int]
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A Responses API answer kept for follow-ups (SPEC §8), JSON as the caller encoded it:
    the response object, that request's own input items, and the whole conversation
    (input plus output items) a follow-up expands into."""

    id: str
    key_name: str
    created_at: float
    expires_at: float
    response: bytes
    input_items: bytes
    conversation: bytes


class Backend(Protocol):
    """The store's synchronous interface: memory, SQLite and Postgres implement it alike.

    Every method may raise `StoreUnavailable`. Methods are safe to call from several
    threads at once. The schema is created or upgraded on first use.
    """

    url: str

    def now(self, fn: Callable[..., T], *args: Any) -> T | Busy:
        """`fn(*args)` at once on the calling thread when that cannot block: only an
        in-process database that no other thread holds. Otherwise `BUSY`, and the
        caller runs it in a worker thread as usual."""

    def ping(self) -> None:
        """Reach the database (creating or upgrading its tables on first contact)."""

    def schema_version(self) -> int:
        """The schema version the database is at."""

    # -- keys --------------------------------------------------------------------
    def create_key(self, key: KeyRecord) -> None:
        """Store a new key. Raises `AlreadyExists` if its name or digest is taken."""

    def get_key(self, name: str) -> KeyRecord | None: ...

    def list_keys(self) -> list[KeyRecord]:
        """Every key, ordered by name."""

    def find_key(self, digest: bytes) -> KeyRecord | None:
        """The key whose secret has this SHA-256 digest."""

    def update_key(self, name: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        """Set the `KEY_FIELDS` named in `changes`; None if no such key.

        Raises:
            ValueError: `changes` names a field outside `KEY_FIELDS`.
        """

    def rotate_key(self, name: str, digest: bytes, key_prefix: str) -> KeyRecord | None:
        """Replace the key's digest and prefix in one step (the old secret stops matching).
        None if no such key; `AlreadyExists` if the new digest belongs to another key."""

    def delete_key(self, name: str) -> bool: ...

    def keys_version(self) -> int:
        """A number that grows with every key write: replicas poll it instead of the table."""

    # -- the usage ledger --------------------------------------------------------
    def insert_usage(self, rows: Sequence[UsageRow]) -> None:
        """Append rows to the ledger, all or none."""

    def aggregate_usage(
        self,
        since: float,
        until: float,
        group_by: Sequence[str] = ("key",),
        key_name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Totals of rows with `since <= time < until`, one dict per group.

        Each dict has the `group_by` fields (`day` as `YYYY-MM-DD`, UTC) and `requests`,
        `cache_hits` (rows served from `hit-l1` or `hit-l2`), `prompt_tokens`,
        `completion_tokens`, `cost_usd`, `saved_usd`; groups are ordered by their fields.
        No `group_by` gives one total (none if no rows match).

        Raises:
            ValueError: a `group_by` field outside `GROUP_FIELDS`.
        """

    def usage_summary(self, since: float, until: float, bucket_s: float) -> UsageSummary:
        """Rows with `since <= time < until` in `bucket_s`-second buckets, with the window's
        error statuses and latency percentiles (see `UsageSummary`)."""

    def spend_by_key(self, windows: Mapping[str, float]) -> dict[str, float]:
        """For each key name, its `cost_usd` spent since its window start (epoch s)."""

    def delete_usage_before(self, before: float) -> int:
        """Drop ledger rows older than `before`; the number dropped."""

    # -- stored responses --------------------------------------------------------
    def put_response(self, response: StoredResponse) -> None: ...

    def put_responses(self, responses: Sequence[StoredResponse]) -> None:
        """Store several responses in one transaction, all or none (`AlreadyExists` if
        any id is taken): what lets concurrent requests share one commit."""

    def get_response(self, id: str, key_name: str, now: float) -> StoredResponse | None:
        """The response, if `key_name` made it and it has not expired at `now`."""

    def delete_response(self, id: str, key_name: str) -> bool:
        """Delete `key_name`'s response `id`; False if there was none (or another key's)."""

    def delete_expired_responses(self, now: float) -> int: ...

    def close(self) -> None:
        """Release connections; the backend is unusable afterwards. Safe to call twice."""


def check_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    """`group_by` in `GROUP_FIELDS` order without repeats, or ValueError naming the field."""
    for field in group_by:
        if field not in GROUP_FIELDS:
            raise ValueError(
                f"cannot group usage by {field!r}; choose from {', '.join(GROUP_FIELDS)}"
            )
    return tuple(f for f in GROUP_FIELDS if f in group_by)


def check_key_changes(changes: Mapping[str, Any]) -> None:
    for field in changes:
        if field not in KEY_FIELDS:
            raise ValueError(f"key field {field!r} cannot be changed; only {', '.join(KEY_FIELDS)}")
