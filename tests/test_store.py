"""The store's contract, run alike against memory://, sqlite:/// and a real PostgreSQL.

Backends are exercised directly (the synchronous interface the CLI uses) and through
`StoreService` in a real Trio run with real threads: the batched ledger, drops when the
queue is full, a Postgres server stopped and started mid-run, two replicas sharing keys,
two OS processes writing one SQLite file, and restarts that must lose nothing.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from _postgres import PostgresServer

from edge.store import (
    AlreadyExists,
    Backend,
    KeyRecord,
    StoreConfigError,
    StoredResponse,
    StoreError,
    StoreService,
    StoreUnavailable,
    UsageRow,
    open_store,
    parse_store_url,
)
from edge.store.base import BUSY
from edge.store.schema import MIGRATIONS
from edge.store.sqlite import MemoryBackend, SQLiteBackend

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
#: Polls in the Trio tests end here at the latest; generous for two busy cores.
DEADLINE = 60.0


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _key(name: str, secret: str | None = None, **fields: object) -> KeyRecord:
    secret = secret or f"sk-edge-{name}-secret"
    return KeyRecord(name=name, digest=_digest(secret), key_prefix=secret[:12],
                     created_at=T0, **fields)  # type: ignore[arg-type]


def _row(n: int = 0, *, time: float = T0, key: str | None = "team-a", model: str = "gpt-4o",
         provider: str | None = "openai", cache: str = "miss", cost: float = 0.001,
         saved: float = 0.0, prompt: int = 10, completion: int = 5) -> UsageRow:
    return UsageRow(time=time, request_id=f"req-{n}", key_name=key, endpoint="/v1/chat/completions",
                    model=model, provider=provider,
                    upstream_model=None if provider is None else f"{model}-2024",
                    cache=cache, status=200, prompt_tokens=prompt, completion_tokens=completion,
                    cost_usd=cost, saved_usd=saved, latency_ms=12.5)


def _count(backend: Backend) -> int:
    totals = backend.aggregate_usage(0, 1e12, group_by=())
    return int(totals[0]["requests"]) if totals else 0


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/edge.db"  # an absolute path: four slashes
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/edge.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def backend(store_url: str) -> Iterator[Backend]:
    store = open_store(store_url)
    yield store
    store.close()


# -- URLs ------------------------------------------------------------------------------


def test_urls_name_their_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_store_url("memory://").durable is False
    assert parse_store_url("sqlite:///data/edge.db").path == "data/edge.db"
    assert parse_store_url("sqlite:////var/lib/edge/edge.db").path == "/var/lib/edge/edge.db"
    assert parse_store_url("postgres://u:pw@127.0.0.1:5432/db").kind == "postgres"
    (tmp_path / "data").mkdir()
    store = open_store("sqlite:///data/edge.db")  # relative: against the working directory
    store.ping()
    store.close()
    assert (tmp_path / "data" / "edge.db").exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u@h/db", "unknown store URL scheme 'mysql://'"),
        ("edge.db", "needs a scheme"),
        ("sqlite://edge.db", "three slashes"),
        ("sqlite:///", "three slashes"),
        ("memory://x", "nothing after"),
        ("postgresql://u:hunter2@h:notaport/db", "malformed"),
    ],
)
def test_bad_urls_are_config_errors(url: str, says: str) -> None:
    with pytest.raises(StoreConfigError, match=says) as caught:
        parse_store_url(url)
    assert "hunter2" not in str(caught.value)


def test_postgres_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg.conninfo", None)
    with pytest.raises(StoreConfigError, match=r"edge\[postgres\]"):
        open_store("postgresql://u@127.0.0.1/db")


def test_sqlite_in_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot open"):
        open_store(f"sqlite:///{tmp_path}/missing/edge.db")


# -- keys ------------------------------------------------------------------------------


def test_key_crud_rotate_delete_and_change_marker(backend: Backend) -> None:
    v0 = backend.keys_version()
    key = _key("team-a", rpm=600, tpm=200_000, budget_usd=50.0, budget_period="month",
               models=("gpt-4o*", "fast"), expires_at=T0 + 30 * DAY)
    backend.create_key(key)
    assert backend.get_key("team-a") == key
    assert backend.find_key(key.digest) == key
    v1 = backend.keys_version()
    assert v1 > v0
    backend.list_keys()
    backend.get_key("team-a")
    assert backend.keys_version() == v1  # reads do not move the marker

    with pytest.raises(AlreadyExists):
        backend.create_key(_key("team-a", "sk-edge-another-secret"))
    with pytest.raises(AlreadyExists):
        backend.create_key(_key("team-b", "sk-edge-team-a-secret"))  # same digest
    backend.create_key(_key("team-b"))
    assert [k.name for k in backend.list_keys()] == ["team-a", "team-b"]
    assert backend.get_key("team-b") == _key("team-b")  # None fields stay None

    v2 = backend.keys_version()
    updated = backend.update_key("team-a", {"rpm": 5, "models": ["x*"], "budget_usd": None})
    assert updated is not None
    assert (updated.rpm, updated.models, updated.budget_usd, updated.tpm) == (5, ("x*",), None,
                                                                             200_000)
    assert backend.get_key("team-a") == updated
    assert backend.keys_version() > v2
    assert backend.update_key("nobody", {"rpm": 1}) is None
    with pytest.raises(ValueError, match="'digest' cannot be changed"):
        backend.update_key("team-a", {"digest": b"x"})

    v3 = backend.keys_version()
    rotated = backend.rotate_key("team-a", _digest("sk-edge-new-one"), "sk-edge-new-")
    assert rotated is not None
    assert rotated.key_prefix == "sk-edge-new-"
    assert backend.find_key(key.digest) is None  # the old secret stops matching
    assert backend.find_key(_digest("sk-edge-new-one")) == rotated
    assert backend.keys_version() > v3
    assert backend.rotate_key("nobody", b"d" * 32, "p") is None
    with pytest.raises(AlreadyExists):
        backend.rotate_key("team-a", _key("team-b").digest, "sk-edge-team")

    v4 = backend.keys_version()
    assert backend.delete_key("team-a") is True
    assert backend.delete_key("team-a") is False
    assert backend.get_key("team-a") is None
    assert backend.find_key(_digest("sk-edge-new-one")) is None
    assert backend.keys_version() == v4 + 1


# -- the ledger --------------------------------------------------------------------------


def test_usage_aggregates_by_any_grouping(backend: Backend) -> None:
    rows = [
        _row(1, time=T0 + 10, key="a", model="gpt-4o", provider="openai", cost=0.25),
        _row(2, time=T0 + 20, key="a", model="gpt-4o", provider=None, cache="hit-l1",
             cost=0.0, saved=0.25),
        _row(3, time=T0 + DAY + 5, key="b", model="claude", provider="anthropic", cost=0.5,
             prompt=100, completion=50),
        _row(4, time=T0 + DAY + 6, key=None, model="claude", provider=None, cache="hit-l2",
             cost=0.0, saved=0.5),
        _row(5, time=T0 + 2 * DAY, key="a", model="gpt-4o", provider="openai", cost=1.0),
    ]
    backend.insert_usage(rows)
    backend.insert_usage([])

    everything = backend.aggregate_usage(T0, T0 + 3 * DAY, group_by=())
    assert everything == [{"requests": 5, "cache_hits": 2, "prompt_tokens": 140,
                           "completion_tokens": 70, "cost_usd": 1.75, "saved_usd": 0.75}]

    by_key = backend.aggregate_usage(T0, T0 + 3 * DAY, group_by=["key"])
    assert [(g["key"], g["requests"], g["cost_usd"]) for g in by_key] == [
        (None, 1, 0.0), ("a", 3, 1.25), ("b", 1, 0.5)]

    # `until` is exclusive, `since` inclusive
    window = backend.aggregate_usage(T0 + 20, T0 + 2 * DAY, group_by=["key", "day"])
    assert [(g["key"], g["day"], g["requests"], g["cache_hits"]) for g in window] == [
        (None, "2026-01-02", 1, 1), ("a", "2026-01-01", 1, 1), ("b", "2026-01-02", 1, 0)]

    by_model_provider = backend.aggregate_usage(T0, T0 + 3 * DAY, group_by=["provider", "model"])
    # ordered by the fields in their canonical order (key, model, provider, day), None first
    assert [(g["model"], g["provider"], g["requests"]) for g in by_model_provider] == [
        ("claude", None, 1), ("claude", "anthropic", 1), ("gpt-4o", None, 1),
        ("gpt-4o", "openai", 2)]
    assert set(by_model_provider[0]) == {"model", "provider", "requests", "cache_hits",
                                         "prompt_tokens", "completion_tokens", "cost_usd",
                                         "saved_usd"}

    one_key_by_day = backend.aggregate_usage(T0, T0 + 3 * DAY, group_by=["day"], key_name="a")
    assert [(g["day"], g["requests"], g["saved_usd"]) for g in one_key_by_day] == [
        ("2026-01-01", 2, 0.25), ("2026-01-03", 1, 0.0)]

    assert backend.aggregate_usage(T0 + 10 * DAY, T0 + 11 * DAY, group_by=()) == []
    with pytest.raises(ValueError, match="'status'"):
        backend.aggregate_usage(T0, T0 + DAY, group_by=["status"])


def test_money_adds_up_exactly(backend: Backend) -> None:
    # ten dimes and a nano-dollar: a float sum would be 1.0000000009999999 or so
    backend.insert_usage([_row(i, key="k", cost=0.1) for i in range(10)])
    backend.insert_usage([_row(10, key="k", cost=0.000000001)])
    backend.insert_usage([_row(11 + i, key="tiny", cost=1e-9) for i in range(1000)])
    totals = {g["key"]: g["cost_usd"] for g in backend.aggregate_usage(0, 1e12)}
    assert totals == {"k": 1.000000001, "tiny": 0.000001}
    assert backend.spend_by_key({"k": 0.0, "tiny": 0.0, "nobody": 0.0}) == {
        "k": 1.000000001, "tiny": 0.000001, "nobody": 0.0}


def test_spend_by_key_counts_each_window(backend: Backend) -> None:
    backend.insert_usage([
        _row(1, time=T0, key="a", cost=2.0),
        _row(2, time=T0 + 3600, key="a", cost=0.5),
        _row(3, time=T0 + 3600, key="b", cost=7.0),
    ])
    assert backend.spend_by_key({"a": T0 + 3600, "b": 0.0}) == {"a": 0.5, "b": 7.0}


def test_retention_drops_only_old_rows(backend: Backend) -> None:
    backend.insert_usage([_row(1, time=T0 - 100 * DAY), _row(2, time=T0 - DAY), _row(3, time=T0)])
    assert backend.delete_usage_before(T0 - 90 * DAY) == 1
    assert _count(backend) == 2


# -- stored responses -----------------------------------------------------------------


def _response(id: str, key: str = "a", expires_at: float = T0 + 30 * DAY) -> StoredResponse:
    return StoredResponse(id=id, key_name=key, created_at=T0, expires_at=expires_at,
                          response=b'{"id":"' + id.encode() + b'"}', input_items=b'[{"a":1}]',
                          conversation=b'[{"a":1},{"b":"\xc3\xa9"}]')


def test_responses_belong_to_their_key_and_expire(backend: Backend) -> None:
    kept = _response("resp_1")
    backend.put_response(kept)
    backend.put_response(_response("resp_2", expires_at=T0 + 10))
    backend.put_response(_response("resp_3", key="b"))
    with pytest.raises(AlreadyExists):
        backend.put_response(_response("resp_1"))

    assert backend.get_response("resp_1", "a", T0) == kept
    assert backend.get_response("resp_1", "b", T0) is None  # another key's
    assert backend.get_response("resp_2", "a", T0 + 10) is None  # expired, not yet swept
    assert backend.get_response("nope", "a", T0) is None

    assert backend.delete_response("resp_3", "a") is False
    assert backend.delete_response("resp_3", "b") is True
    assert backend.get_response("resp_3", "b", T0) is None
    assert backend.delete_expired_responses(T0 + 10) == 1
    assert backend.delete_expired_responses(T0 + 10) == 0
    assert backend.get_response("resp_1", "a", T0 + 10) == kept


# -- the schema -------------------------------------------------------------------------


def _reopen(url: str, **kwargs: int) -> Backend:
    """The backend for `url` (tests of upgrades pass `upgrade_to`)."""
    parsed = parse_store_url(url)
    if parsed.kind == "postgres":
        from edge.store.postgres import PostgresBackend

        return PostgresBackend(url, **kwargs)
    from edge.store.sqlite import SQLiteBackend

    assert parsed.path is not None
    return SQLiteBackend(url, parsed.path, **kwargs)


def test_a_version_1_database_is_upgraded_in_place(durable_url: str) -> None:
    old = _reopen(durable_url, upgrade_to=1)
    assert old.schema_version() == 1
    old.create_key(_key("team-a"))
    old.insert_usage([_row(1, key="team-a", cost=0.5)])
    old.put_response(_response("resp_1"))
    old.close()

    new = _reopen(durable_url)
    try:
        assert new.schema_version() == len(MIGRATIONS) == 2
        assert new.get_key("team-a") == _key("team-a")
        assert new.spend_by_key({"team-a": 0.0}) == {"team-a": 0.5}
        assert new.get_response("resp_1", "a", T0) == _response("resp_1")
        assert _has_index(durable_url, new, "edge_usage_key_ts")
    finally:
        new.close()


def _has_index(url: str, backend: Backend, name: str) -> bool:
    from edge.store.sql import SQLBackend

    assert isinstance(backend, SQLBackend)
    table = "pg_indexes WHERE indexname" if url.startswith("postgres") else \
        "sqlite_master WHERE type = 'index' AND name"
    with backend._cursor(False) as cur:
        cur.execute(backend.dialect.sql(f"SELECT COUNT(*) FROM {table} = ?"), (name,))
        return bool(cur.fetchone()[0])


def test_a_newer_schema_is_refused(durable_url: str) -> None:
    store = _reopen(durable_url)
    store.ping()
    from edge.store.sql import SQLBackend

    assert isinstance(store, SQLBackend)
    with store._cursor(True) as cur:
        cur.execute("UPDATE edge_meta SET value = 99 WHERE name = 'schema_version'")
    store.close()
    with pytest.raises(StoreError, match="version 99, newer than this edge knows"):
        _reopen(durable_url).ping()


# -- several processes, restarts ----------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    from edge.store import KeyRecord, UsageRow, open_store
    url, who = sys.argv[1], sys.argv[2]
    store = open_store(url)
    for batch in range(100):
        store.insert_usage([
            UsageRow(1.0e9 + batch, f"{who}-{batch}-{i}", who, "/v1/chat/completions", "m",
                     "p", "m", "miss", 200, 1, 1, 0.001, 0.0, 1.0)
            for i in range(10)
        ])
        if batch % 10 == 0:
            store.create_key(KeyRecord(f"{who}-{batch}", f"{who}-{batch}".encode().ljust(32),
                                       "sk-edge-", 1.0e9))
    store.close()
""")


def test_two_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, url, who]) for who in "ab"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    store = open_store(url)
    try:
        spent = store.spend_by_key({"a": 0.0, "b": 0.0})
        assert spent == {"a": 1.0, "b": 1.0}  # 1000 rows of $0.001 each, none lost
        assert _count(store) == 2000
        assert len(store.list_keys()) == 20
        assert store.keys_version() == 20
    finally:
        store.close()


async def test_a_restart_loses_nothing(durable_url: str) -> None:
    service = StoreService(open_store(durable_url), flush_interval=60.0, batch_size=1000,
                           clock=lambda: T0)  # retention judges the rows' times by this
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert service.healthy
        await service.create_key(_key("team-a"))
        await service.put_response(_response("resp_1"))
        for i in range(50):
            assert service.record_usage(_row(i, key="team-a", cost=0.01))
        await service.aclose()  # the queued rows are flushed here (flush_interval is long)
    assert (service.rows_written, service.rows_dropped) == (50, 0)

    again = open_store(durable_url)
    try:
        assert again.get_key("team-a") == _key("team-a")
        assert again.get_response("resp_1", "a", T0) == _response("resp_1")
        assert again.spend_by_key({"team-a": 0.0}) == {"team-a": 0.5}
        assert _count(again) == 50
    finally:
        again.close()


# -- the Trio facade ---------------------------------------------------------------------


async def _poll(check: Callable[[], object], what: str) -> None:
    with trio.move_on_after(DEADLINE):
        while True:
            if check():
                return
            await trio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


async def test_the_ledger_is_written_in_batches(store_url: str) -> None:
    backend = open_store(store_url)
    service = StoreService(backend, batch_size=7, flush_interval=0.05, clock=lambda: T0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for i in range(30):
            assert service.record_usage(_row(i))
        await _poll(lambda: service.rows_written == 30, "30 rows written")
        assert await service.aggregate_usage(0, 1e12, group_by=()) == [
            {"requests": 30, "cache_hits": 0, "prompt_tokens": 300, "completion_tokens": 150,
             "cost_usd": 0.03, "saved_usd": 0.0}]
        await service.aclose()
    assert service.rows_dropped == 0


async def test_a_full_queue_drops_and_counts() -> None:
    service = StoreService(open_store("memory://"), queue_size=3, clock=lambda: T0)
    # not running yet: nothing drains the queue
    accepted = [service.record_usage(_row(i)) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert (service.rows_dropped, service.queued) == (2, 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await _poll(lambda: service.rows_written == 3, "the three queued rows written")
        assert _count(service.backend) == 3
        await service.aclose()
    assert not service.record_usage(_row(9))  # closed: refused and counted
    assert service.rows_dropped == 3


async def test_retention_runs_in_the_background(store_url: str) -> None:
    backend = open_store(store_url)
    backend.insert_usage([_row(1, time=T0 - 91 * DAY), _row(2, time=T0 - 89 * DAY)])
    backend.put_response(_response("resp_old", expires_at=T0 - 1))
    backend.put_response(_response("resp_new"))
    service = StoreService(backend, retention_days=90, cleanup_interval=0.05, clock=lambda: T0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await _poll(lambda: _count(backend) == 1, "the old row deleted")
        await _poll(lambda: backend.get_response("resp_old", "a", 0.0) is None,
                    "the expired response deleted")
        assert await service.get_response("resp_new", "a") == _response("resp_new")
        await service.aclose()


async def test_replicas_see_each_others_keys(durable_url: str) -> None:
    one = StoreService(open_store(durable_url), key_poll_interval=0.05, clock=lambda: T0)
    two = StoreService(open_store(durable_url), key_poll_interval=0.05, clock=lambda: T0)
    key = _key("team-a")
    async with trio.open_nursery() as nursery:
        await nursery.start(one.run)
        await nursery.start(two.run)
        await one.create_key(key)
        assert one.key_by_digest(key.digest) == key  # the writer's own snapshot at once
        await _poll(lambda: two.key_by_digest(key.digest) == key, "replica two sees the key")
        rotated = await two.rotate_key("team-a", _digest("sk-edge-rotated"), "sk-edge-rota")
        assert rotated is not None
        await _poll(lambda: one.key_by_digest(key.digest) is None
                    and one.key_by_digest(rotated.digest) == rotated, "one sees the rotation")
        assert await one.delete_key("team-a")
        await _poll(lambda: two.cached_keys() == [], "replica two forgets the key")
        await one.aclose()
        await two.aclose()


async def test_postgres_stopped_mid_run(postgres_factory: Callable[[], PostgresServer]) -> None:
    server = postgres_factory()
    url = server.create_database()
    downs: list[str] = []
    # only the writer touches the store (no key polls, no cleanup passes), so it is the
    # ledger write that meets the outage and must keep its batch
    service = StoreService(open_store(url), flush_interval=0.05, key_poll_interval=3600,
                           cleanup_interval=3600, probe_interval=0.05, max_probe_interval=0.5,
                           queue_size=1000, batch_size=50, on_error=downs.append,
                           clock=lambda: T0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert service.healthy
        await service.create_key(_key("team-a"))
        for i in range(20):
            assert service.record_usage(_row(i))
        await _poll(lambda: service.rows_written == 20, "rows written while up")

        await trio.to_thread.run_sync(server.stop)
        for i in range(20, 320):
            assert service.record_usage(_row(i))
        await _poll(lambda: not service.healthy, "the store marked unhealthy")
        assert downs
        assert service.errors >= 1  # a write failed...
        # ...and its batch is still buffered (a row handed to the waiting writer counts
        # once it has it), not dropped
        await _poll(lambda: service.queued == 300, "300 rows buffered")
        assert (service.rows_written, service.rows_dropped) == (20, 0)
        with pytest.raises(StoreUnavailable):
            await service.get_key("team-a")  # fails fast while down
        assert service.key_by_digest(_key("team-a").digest) == _key("team-a")  # last read

        await trio.to_thread.run_sync(server.start)
        await _poll(lambda: service.healthy, "the store healthy again by itself")
        await _poll(lambda: service.rows_written == 320, "the buffered rows written")
        assert await service.aggregate_usage(0, 1e12, group_by=()) == [
            {"requests": 320, "cache_hits": 0, "prompt_tokens": 3200,
             "completion_tokens": 1600, "cost_usd": 0.32, "saved_usd": 0.0}]
        await service.aclose()
    assert service.rows_dropped == 0


def test_the_memory_store_keeps_a_bounded_number_of_responses() -> None:
    backend = MemoryBackend("memory://", max_responses=3)
    for i in range(5):
        backend.put_response(_response(f"resp_{i}"))
    assert [backend.get_response(f"resp_{i}", "a", T0) is not None for i in range(5)] == [
        False, False, True, True, True]  # the oldest two made room
    with pytest.raises(AlreadyExists):
        backend.put_responses([_response("resp_9"), _response("resp_9")])
    assert backend.get_response("resp_9", "a", T0) is None  # the batch wrote nothing


def test_the_memory_store_keeps_its_newest_ledger_rows() -> None:
    backend = MemoryBackend("memory://", max_usage_rows=20)
    for batch in range(10):
        backend.insert_usage([_row(batch * 5 + i) for i in range(5)])  # 50 rows, 5 at a time
    kept = backend.aggregate_usage(T0 - 1, T0 + 1, ())[0]["requests"]
    assert 20 <= kept <= 22  # trimmed every 2 rows past the bound, never below it
    newest = backend.aggregate_usage(T0 - 1, T0 + 1, ("key",))
    assert newest[0]["requests"] == kept
    assert backend.delete_usage_before(T0 + 1) == kept  # the oldest went, not the newest


def test_a_free_memory_store_is_written_on_the_spot_a_held_one_from_a_thread(
        tmp_path: Path) -> None:
    """`Backend.now`: the event loop never waits for a lock a worker thread holds."""
    memory = MemoryBackend("memory://")
    assert memory.now(memory.put_response, _response("resp_1")) is None  # done
    assert memory.get_response("resp_1", "a", T0) is not None
    held = trio.Event()
    release = trio.Event()

    def hold() -> None:
        with memory._lock:
            trio.from_thread.run_sync(held.set)
            trio.from_thread.run(release.wait)

    async def main() -> None:
        service = StoreService(memory, clock=lambda: T0)  # nothing of T0 expired
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            nursery.start_soon(trio.to_thread.run_sync, hold)
            await held.wait()
            assert memory.now(memory.put_response, _response("resp_2")) is BUSY
            with trio.fail_after(30):
                async with trio.open_nursery() as writers:
                    writers.start_soon(service.put_response, _response("resp_3"))
                    await trio.testing.wait_all_tasks_blocked()
                    assert "resp_3" not in memory._responses  # queued for the writer
                    release.set()
            assert memory.get_response("resp_3", "a", T0) is not None
            nursery.cancel_scope.cancel()

    trio.run(main)
    on_disk = SQLiteBackend("sqlite", str(tmp_path / "edge.db"))
    assert on_disk.now(len, "x") is BUSY  # a file may wait on another process's lock
