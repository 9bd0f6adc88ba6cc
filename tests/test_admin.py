"""The /admin/* handlers (SPEC §7), driven in process under Trio against a real
StoreService over SQLite and over a real PostgreSQL; no ASGI involved."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import trio

from edge.admin import AdminAPI, parse_time
from edge.auth import Authenticator
from edge.budgets import SpendCounters, window
from edge.config import AuthConfig, AuthKey
from edge.store import StoreService, UsageRow, open_store

NOW = 1_772_884_800.0  # 2026-03-07T12:00:00Z
ADMIN = {b"authorization": b"Bearer sk-admin"}
FILE_KEY = AuthKey(name="team-a", secret="sk-team-a",
                   sha256=hashlib.sha256(b"sk-team-a").hexdigest(), rpm=600,
                   budget_usd=50.0, budget_period="month", models=("gpt-4o*", "fast"))
KEY_FIELDS = {"name", "source", "key_prefix", "created_at", "expires_at", "rpm", "tpm",
              "budget_usd", "budget_period", "models", "spend_usd", "window_resets_at"}


@pytest.fixture(params=["sqlite", "postgres"])
async def admin(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[AdminAPI]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/edge.db"
    else:
        url = request.getfixturevalue("postgres_url")
    # The store's clock is the test's: its retention sweep at start would otherwise delete
    # rows dated around NOW (months before the wall clock) whenever it ran after an insert.
    store = StoreService(open_store(url), clock=lambda: NOW)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        auth = Authenticator(AuthConfig(keys=(FILE_KEY,), admin_key="sk-admin"), store)
        yield AdminAPI(store, auth, SpendCounters(clock=lambda: NOW), clock=lambda: NOW)
        nursery.cancel_scope.cancel()
    await store.aclose()


async def call(api: AdminAPI, method: str, path: str, body: Any = None, query: bytes = b"",
               headers: dict[bytes, bytes] = ADMIN) -> tuple[int, Any]:
    raw = b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    status, payload, extra = await api.handle(method, path, query, raw, headers)
    if status != 204:
        assert (b"content-type", b"application/json") in extra
    return status, orjson.loads(payload) if payload else None


async def test_create_shows_the_secret_once_and_stores_only_its_digest(admin: AdminAPI) -> None:
    status, made = await call(admin, "POST", "/admin/keys", {
        "name": "bob", "rpm": 10, "tpm": 1000, "budget_usd": 2, "budget_period": "1d",
        "models": ["claude-*"], "expires_at": "2027-01-01T00:00:00Z"})
    assert status == 201
    secret = made.pop("key")
    assert secret.startswith("sk-edge-")
    assert len(secret) == 48
    assert set(made) == KEY_FIELDS
    assert made == {"name": "bob", "source": "admin", "key_prefix": secret[:12],
                    "created_at": "2026-03-07T12:00:00Z", "expires_at": "2027-01-01T00:00:00Z",
                    "rpm": 10, "tpm": 1000, "budget_usd": 2.0, "budget_period": "1d",
                    "models": ["claude-*"], "spend_usd": 0.0,
                    "window_resets_at": "2026-03-08T00:00:00Z"}
    record = await admin.store.get_key("bob")
    assert record is not None
    assert record.digest == hashlib.sha256(secret.encode()).digest()
    # the new key works at once on this replica's snapshot
    policy = admin.auth.authenticate({b"authorization": f"Bearer {secret}".encode()}, NOW)
    assert (policy.name, policy.models) == ("bob", ("claude-*",))
    status, shown = await call(admin, "GET", "/admin/keys/bob")
    assert status == 200
    assert shown == made
    assert secret not in orjson.dumps(shown).decode()


async def test_list_has_file_keys_and_admin_keys(admin: AdminAPI) -> None:
    await call(admin, "POST", "/admin/keys", {"name": "bob"})
    status, listed = await call(admin, "GET", "/admin/keys")
    assert status == 200
    assert [(k["name"], k["source"]) for k in listed["data"]] == [("team-a", "config"),
                                                                  ("bob", "admin")]
    team = listed["data"][0]
    assert team["key_prefix"] is None
    assert team["created_at"] is None
    assert team["models"] == ["gpt-4o*", "fast"]
    assert team["budget_period"] == "month"
    assert team["window_resets_at"] == "2026-04-01T00:00:00Z"
    bob = listed["data"][1]
    assert bob["budget_usd"] is None
    assert bob["budget_period"] == "total"
    assert bob["window_resets_at"] is None
    assert bob["models"] is None


async def test_conflicts_and_unknown_keys(admin: AdminAPI) -> None:
    assert (await call(admin, "POST", "/admin/keys", {"name": "bob"}))[0] == 201
    status, error = await call(admin, "POST", "/admin/keys", {"name": "bob"})
    assert status == 409
    assert "already exists" in error["error"]["message"]
    status, error = await call(admin, "POST", "/admin/keys", {"name": "team-a"})
    assert status == 409
    assert "config file" in error["error"]["message"]
    for method, path, body in [("PATCH", "/admin/keys/team-a", {"rpm": 1}),
                               ("POST", "/admin/keys/team-a/rotate", None),
                               ("DELETE", "/admin/keys/team-a", None)]:
        status, error = await call(admin, method, path, body)
        assert status == 409
        assert "defined in the config file" in error["error"]["message"]
    for method, path, body in [("GET", "/admin/keys/nobody", None),
                               ("PATCH", "/admin/keys/nobody", {"rpm": 1}),
                               ("POST", "/admin/keys/nobody/rotate", None),
                               ("DELETE", "/admin/keys/nobody", None),
                               ("GET", "/admin/elsewhere", None)]:
        status, error = await call(admin, method, path, body)
        assert status == 404
        assert error["error"]["type"] == "not_found_error"
    status, error = await call(admin, "PUT", "/admin/keys/bob")
    assert status == 405


async def test_bad_fields_are_400_naming_every_one(admin: AdminAPI) -> None:
    status, error = await call(admin, "POST", "/admin/keys", {
        "name": "ok", "rpm": 0, "tpm": "many", "budget_usd": -1, "budget_period": "week",
        "models": "gpt-4o", "expires_at": "tomorrow", "colour": "red"})
    assert status == 400
    message = error["error"]["message"]
    for field in ("rpm", "tpm", "budget_usd", "budget_period", "models", "expires_at",
                  "colour"):
        assert f"{field}:" in message
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == "rpm"
    for body, field in [({}, "name"), ({"name": "a b"}, "name"),
                        ({"name": "anonymous"}, "name")]:
        status, error = await call(admin, "POST", "/admin/keys", body)
        assert status == 400
        assert error["error"]["param"] == field
    assert (await call(admin, "POST", "/admin/keys", b"{not json"))[0] == 400
    assert (await call(admin, "POST", "/admin/keys", [1]))[0] == 400
    await call(admin, "POST", "/admin/keys", {"name": "bob"})
    status, error = await call(admin, "PATCH", "/admin/keys/bob", {"name": "carol"})
    assert status == 400
    assert error["error"]["param"] == "name"


async def test_patch_rotate_delete(admin: AdminAPI) -> None:
    _, made = await call(admin, "POST", "/admin/keys", {"name": "bob", "rpm": 5})
    old = {b"authorization": f"Bearer {made['key']}".encode()}
    status, changed = await call(admin, "PATCH", "/admin/keys/bob", {
        "rpm": None, "budget_usd": 1.5, "budget_period": "7d", "models": ["gpt-4o"]})
    assert status == 200
    assert (changed["rpm"], changed["budget_usd"], changed["budget_period"],
            changed["models"]) == (None, 1.5, "7d", ["gpt-4o"])
    assert changed["window_resets_at"] == "2026-03-09T00:00:00Z"  # the next Monday
    assert admin.auth.authenticate(old, NOW).budget_usd == 1.5
    status, rotated = await call(admin, "POST", "/admin/keys/bob/rotate")
    assert status == 200
    assert rotated["key"] != made["key"]
    assert rotated["key_prefix"] == rotated["key"][:12]
    with pytest.raises(Exception, match="Invalid API key"):
        admin.auth.authenticate(old, NOW)
    new = {b"authorization": f"Bearer {rotated['key']}".encode()}
    assert admin.auth.authenticate(new, NOW).name == "bob"
    status, body = await call(admin, "DELETE", "/admin/keys/bob")
    assert (status, body) == (204, None)
    with pytest.raises(Exception, match="Invalid API key"):
        admin.auth.authenticate(new, NOW)
    assert (await call(admin, "GET", "/admin/keys/bob"))[0] == 404


async def test_spend_in_key_objects_comes_from_the_budget_counters(admin: AdminAPI) -> None:
    await call(admin, "POST", "/admin/keys", {"name": "bob", "budget_usd": 1,
                                              "budget_period": "1h"})
    policy = admin.auth.config_policies["team-a"]
    admin.budgets.charge(policy, 0.123_456_789, NOW)
    status, team = await call(admin, "GET", "/admin/keys/team-a")
    assert team["spend_usd"] == 0.123_456_789


async def test_the_admin_key_is_required_and_client_keys_are_refused(admin: AdminAPI) -> None:
    for headers in ({}, {b"authorization": b"Bearer sk-team-a"},
                    {b"authorization": b"Bearer sk-wrong"}, {b"x-api-key": b"sk-admin"}):
        status, error = await call(admin, "GET", "/admin/keys", headers=headers)
        assert status == 401
        assert error["error"]["type"] == "authentication_error"
    off = AdminAPI(admin.store, Authenticator(AuthConfig(keys=(FILE_KEY,)), admin.store),
                   admin.budgets)
    status, _ = await call(off, "GET", "/admin/keys")
    assert status == 404


def row(n: int, *, t: float, key: str, model: str, provider: str | None, cost: float,
        cache: str = "miss", saved: float = 0.0) -> UsageRow:
    return UsageRow(time=t, request_id=f"r{n}", key_name=key, endpoint="/v1/chat/completions",
                    model=model, provider=provider, upstream_model=None, cache=cache,
                    status=200, prompt_tokens=10, completion_tokens=5, cost_usd=cost,
                    saved_usd=saved, latency_ms=3.0)


async def test_usage_aggregates_in_the_shape_of_the_spec(admin: AdminAPI) -> None:
    rows = [row(0, t=NOW - 3600, key="team-a", model="gpt-4o", provider="openai", cost=0.001),
            row(1, t=NOW - 60, key="team-a", model="gpt-4o", provider=None, cost=0.0,
                cache="hit-l1", saved=0.001),
            row(2, t=NOW - 7200, key="bob", model="claude-3-haiku", provider="anthropic",
                cost=0.000_000_003),
            row(3, t=NOW - 3 * 86400, key="bob", model="gpt-4o", provider="openai", cost=1.0)]
    await trio.to_thread.run_sync(admin.store.backend.insert_usage, rows)
    status, usage = await call(admin, "GET", "/admin/usage")
    assert status == 200
    assert usage["since"] == "2026-03-06T12:00:00Z"
    assert usage["until"] == "2026-03-07T12:00:00Z"
    assert usage["data"] == [
        {"key": "bob", "requests": 1, "cache_hits": 0, "prompt_tokens": 10,
         "completion_tokens": 5, "cost_usd": 0.000_000_003, "saved_usd": 0.0},
        {"key": "team-a", "requests": 2, "cache_hits": 1, "prompt_tokens": 20,
         "completion_tokens": 10, "cost_usd": 0.001, "saved_usd": 0.001}]
    status, usage = await call(admin, "GET", "/admin/usage",
                               query=b"since=7d&group_by=key,model&key=bob")
    assert status == 200
    assert usage["since"] == "2026-02-28T12:00:00Z"
    assert [(r["key"], r["model"], r["cost_usd"]) for r in usage["data"]] == [
        ("bob", "claude-3-haiku", 0.000_000_003), ("bob", "gpt-4o", 1.0)]
    status, usage = await call(admin, "GET", "/admin/usage",
                               query=b"since=2026-03-04T00:00:00Z&until=30m&group_by=day")
    assert [r["day"] for r in usage["data"]] == ["2026-03-04", "2026-03-07"]
    for query, param in [(b"since=yesterday", "since"), (b"until=3w", "until"),
                         (b"group_by=key,colour", "group_by"), (b"since=1h&until=2h", "since")]:
        status, error = await call(admin, "GET", "/admin/usage", query=query)
        assert status == 400
        assert error["error"]["param"] == param


async def test_a_store_that_is_down_answers_503(admin: AdminAPI) -> None:
    admin.store._fail(RuntimeError("down for the test"), admin.store._generation)
    status, error = await call(admin, "GET", "/admin/keys")
    assert status == 503
    assert error["error"]["code"] == "store_unavailable"


def test_relative_and_rfc3339_times() -> None:
    assert parse_time("24h", NOW, relative=True) == NOW - 86400
    assert parse_time("30m", NOW, relative=True) == NOW - 1800
    assert parse_time("2026-03-07T12:00:00+01:00", 0.0) == NOW - 3600
    assert parse_time("2026-03-07T12:00:00", 0.0) == NOW
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("7d", NOW)
    assert window("month", NOW)[1] == parse_time("2026-04-01T00:00:00Z", 0.0)


