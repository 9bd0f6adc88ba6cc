"""Governance through the real server (SPEC §7): keys with budgets and allowlists, the
admin API, the ledger, and what a shared store or a shared Redis makes replicas agree on.

Every test runs spawned `edge serve` processes against the mock upstream and talks to
them with the official openai and anthropic SDKs (clients) and httpx (the admin API).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from _postgres import PostgresServer
from _redis import RedisServer
from _scrape import metric
from _servers import EdgeProcess, MockUpstream, wait_until

ADMIN = "sk-admin-governance"
TEAM = "sk-team-a-governance"
# Prices with many digits, so the ledger's sum is checked to the nano-USD.
IN_PER_MTOK = 1.234567
OUT_PER_MTOK = 7.654321

CONFIG = """
[[providers]]
name = "up"
kind = "openai"
base_url = "{mock_url}/v1"
api_key = "env:PROVIDER_KEY"
models = ["*"]

[models."gpt-4o-mini"]
input_per_mtok = {inp}
output_per_mtok = {out}

[auth]
admin_key = "env:EDGE_ADMIN_KEY"
keys = [ {{ name = "team-a", key = "env:TEAM_A_KEY", models = ["gpt-4o*", "fast"] }} ]

[models.fast]
deployments = ["up/gpt-4o-mini"]

[store]
url = "{store_url}"
"""


def start(tmp: Path, mock: MockUpstream, store_url: str, **env: str) -> EdgeProcess:
    config = CONFIG.format(mock_url=mock.url, store_url=store_url, inp=IN_PER_MTOK,
                           out=OUT_PER_MTOK)
    return EdgeProcess(tmp, config=config, env={
        "PROVIDER_KEY": "sk-provider-governance", "EDGE_ADMIN_KEY": ADMIN,
        "TEAM_A_KEY": TEAM, **env})


def admin(edge: EdgeProcess, method: str, path: str, body: Any = None,
          key: str = ADMIN) -> httpx.Response:
    return httpx.request(method, f"{edge.url}{path}", json=body, timeout=10,
                         headers={"authorization": f"Bearer {key}"})


def new_key(edge: EdgeProcess, name: str, **fields: Any) -> str:
    made = admin(edge, "POST", "/admin/keys", {"name": name, **fields})
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def chat(edge: EdgeProcess, key: str, text: str, model: str = "gpt-4o-mini") -> Any:
    with openai.OpenAI(base_url=f"{edge.url}/v1", api_key=key, max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}])


served_count = [0]  # answers `served` saw, for the ledger checks


def served(edge: EdgeProcess, key: str, text: str) -> bool:
    """True when `key` is served, False when it is refused as unknown (401)."""
    try:
        ok = chat(edge, key, text).status_code == 200
    except openai.AuthenticationError:
        return False
    served_count[0] += ok
    return ok


def cost_of(usage: Any) -> Fraction:
    """What edge charges for `usage` at the test prices, as an exact fraction."""
    return (Fraction(usage.prompt_tokens) * Fraction(str(IN_PER_MTOK))
            + Fraction(usage.completion_tokens) * Fraction(str(OUT_PER_MTOK))) / 1_000_000


def usage_rows(edge: EdgeProcess, **query: str) -> list[dict[str, Any]]:
    answer = admin(edge, "GET", "/admin/usage?" + "&".join(f"{k}={v}" for k, v in query.items()))
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


def requests_of(edge: EdgeProcess, name: str) -> int:
    return sum(r["requests"] for r in usage_rows(edge, key=name))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'edge.db'}"


def test_the_admin_api_needs_the_admin_key_and_the_admin_key_is_not_a_client_key(
    tmp_path: Path, mock_upstream: MockUpstream, sqlite_url: str,
) -> None:
    edge = start(tmp_path, mock_upstream, sqlite_url)
    try:
        assert httpx.get(f"{edge.url}/admin/keys").status_code == 401
        refused = admin(edge, "GET", "/admin/keys", key=TEAM)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            chat(edge, ADMIN, "the admin key is not a client key")
        listed = admin(edge, "GET", "/admin/keys").json()["data"]
        assert [(k["name"], k["source"], k["key_prefix"]) for k in listed] == [
            ("team-a", "config", None)]
        bad = admin(edge, "POST", "/admin/keys", {"name": "x", "budget_usd": -1})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "budget_usd"
        assert admin(edge, "PUT", "/admin/keys").status_code == 405
    finally:
        edge.stop()


def test_without_an_admin_key_admin_paths_are_404(tmp_path: Path,
                                                  mock_upstream: MockUpstream) -> None:
    config = CONFIG.format(mock_url=mock_upstream.url, store_url="memory://",
                           inp=IN_PER_MTOK, out=OUT_PER_MTOK)
    config = config.replace('admin_key = "env:EDGE_ADMIN_KEY"\n', "")
    edge = EdgeProcess(tmp_path, config=config, env={"PROVIDER_KEY": "sk-p", "TEAM_A_KEY": TEAM})
    try:
        for path in ("/admin", "/admin/keys", "/admin/usage"):
            answer = admin(edge, "GET", path)
            assert answer.status_code == 404, path
            assert answer.json()["error"]["code"] == "unknown_url"
    finally:
        edge.stop()


def test_the_model_allowlist_refuses_before_any_upstream_call_and_filters_models(
    tmp_path: Path, mock_upstream: MockUpstream, sqlite_url: str,
) -> None:
    edge = start(tmp_path, mock_upstream, sqlite_url)
    try:
        mock_upstream.reset()
        with pytest.raises(openai.PermissionDeniedError) as refused:
            chat(edge, TEAM, "not allowed", model="gpt-3.5-turbo")
        assert refused.value.code == "model_not_allowed"
        assert refused.value.body["type"] == "permission_error"  # type: ignore[index]
        with anthropic.Anthropic(base_url=edge.url, api_key=TEAM, max_retries=0) as client:
            with pytest.raises(anthropic.PermissionDeniedError) as by_anthropic:
                client.messages.create(model="claude-3-5-haiku-20241022", max_tokens=5,
                                       messages=[{"role": "user", "content": "no"}])
        assert by_anthropic.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
        assert mock_upstream.stats()["requests"] == 0
        # allowed: a glob and a group name
        assert chat(edge, TEAM, "allowed").status_code == 200
        assert chat(edge, TEAM, "a group", model="fast").status_code == 200
        with openai.OpenAI(base_url=f"{edge.url}/v1", api_key=TEAM, max_retries=0) as client:
            names = {m.id for m in client.models.list()}
        assert "fast" in names
        assert "gpt-4o-mini" in names
        assert "gpt-3.5-turbo" not in names
        assert not any(n.startswith("claude") for n in names)
    finally:
        edge.stop()


def test_a_budget_refuses_misses_with_retry_after_serves_hits_and_adds_up_exactly(
    tmp_path: Path, mock_upstream: MockUpstream, sqlite_url: str,
) -> None:
    edge = start(tmp_path, mock_upstream, sqlite_url)
    try:
        secret = new_key(edge, "bob", budget_usd=0.00002, budget_period="1h")
        charged = Fraction(0)
        first = chat(edge, secret, "question 0")
        texts = ["question 0"]
        charged += cost_of(first.parse().usage)
        n = 1
        while charged < Fraction("0.00002"):
            answer = chat(edge, secret, f"question {n}")
            texts.append(f"question {n}")
            charged += cost_of(answer.parse().usage)
            n += 1
        with pytest.raises(openai.RateLimitError) as refused:
            chat(edge, secret, "one more")
        error = refused.value
        assert error.code == "budget_exceeded"
        assert error.body["type"] == "insufficient_quota"  # type: ignore[index]
        assert "bob" in error.message
        assert "resets" in error.message
        assert 0 < float(error.response.headers["retry-after"]) <= 3600
        with anthropic.Anthropic(base_url=edge.url, api_key=secret, max_retries=0) as client:
            with pytest.raises(anthropic.RateLimitError) as by_anthropic:
                client.messages.create(model="gpt-4o-mini", max_tokens=5,
                                       messages=[{"role": "user", "content": "more"}])
        assert by_anthropic.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        # a cache hit is free, and served over budget
        hit = chat(edge, secret, "question 0")
        assert hit.headers["x-edge-cache"] == "hit-l1"
        # the ledger: every request, each cost exact; hits saved what they would have cost
        wait_until(lambda: requests_of(edge, "bob") == n + 3, what="bob's ledger rows")
        (row,) = usage_rows(edge, key="bob")
        assert row["cache_hits"] == 1
        assert abs(Fraction(str(row["cost_usd"])) - charged) <= Fraction(1, 10**9)
        assert abs(Fraction(str(row["saved_usd"])) - cost_of(first.parse().usage)) \
            <= Fraction(1, 10**9)
        shown = admin(edge, "GET", "/admin/keys/bob").json()
        assert abs(Fraction(str(shown["spend_usd"])) - charged) <= Fraction(1, 10**9)
        assert shown["window_resets_at"] is not None
        assert metric(edge.metrics_url, "llm_edge_budget_refusals_total") >= 2
        assert abs(metric(edge.metrics_url, "llm_edge_key_spend_usd", key="bob")
                   - float(charged)) < 1e-9
    finally:
        edge.stop()


def test_a_total_budget_has_no_retry_after_and_survives_a_restart(
    tmp_path: Path, mock_upstream: MockUpstream, sqlite_url: str,
) -> None:
    edge = start(tmp_path, mock_upstream, sqlite_url)
    try:
        secret = new_key(edge, "carol", budget_usd=0.000001)  # period "total", the default
        chat(edge, secret, "spend it")
        with pytest.raises(openai.RateLimitError) as refused:
            chat(edge, secret, "again")
        assert "retry-after" not in refused.value.response.headers
    finally:
        assert edge.stop() == 0  # SIGTERM flushes the ledger rows still queued
    again = start(tmp_path, mock_upstream, sqlite_url)
    try:
        with pytest.raises(openai.RateLimitError):
            chat(again, secret, "after the restart")
        assert requests_of(again, "carol") == 2
    finally:
        again.stop()


def test_an_expired_key_is_refused_with_key_expired(
    tmp_path: Path, mock_upstream: MockUpstream, sqlite_url: str,
) -> None:
    edge = start(tmp_path, mock_upstream, sqlite_url)
    try:
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
        secret = new_key(edge, "dave", expires_at=soon)
        assert chat(edge, secret, "before").status_code == 200

        wait_until(lambda: not served(edge, secret, "after"), deadline=30, interval=0.2,
                   what="the key to expire")
        with pytest.raises(openai.AuthenticationError) as refused:
            chat(edge, secret, "expired")
        assert refused.value.code == "key_expired"
    finally:
        edge.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    factory: Callable[[], PostgresServer] = request.getfixturevalue("postgres_factory")
    return factory().create_database()


def test_two_replicas_sharing_a_store_see_keys_revocation_and_the_ledger(
    tmp_path: Path, mock_upstream: MockUpstream, shared_url: str,
) -> None:
    a = start(tmp_path, mock_upstream, shared_url)
    b = start(tmp_path, mock_upstream, shared_url)
    served_count[0] = 0
    try:
        secret = new_key(a, "erin")

        wait_until(lambda: served(b, secret, "on b"), deadline=5, interval=0.1,
                   what="b to know erin's key")
        rotated = admin(a, "POST", "/admin/keys/erin/rotate")
        assert rotated.status_code == 200
        fresh = rotated.json()["key"]
        assert fresh != secret
        assert rotated.json()["key_prefix"] == fresh[:12]

        wait_until(lambda: not served(b, secret, "old secret"), deadline=5, interval=0.1,
                   what="rotation on b")
        assert served(a, fresh, "new secret")
        wait_until(lambda: served(b, fresh, "new secret on b"), deadline=5, interval=0.1,
                   what="b to know the new secret")
        assert admin(a, "DELETE", "/admin/keys/erin").status_code == 204
        wait_until(lambda: not served(b, fresh, "deleted"), deadline=5, interval=0.1,
                   what="revocation on b")
        # both replicas wrote the ledger; either reads all of it
        wait_until(lambda: 2 <= requests_of(a, "erin") == requests_of(b, "erin")
                   == served_count[0], what="the shared ledger")
    finally:
        a.stop()
        b.stop()


def test_a_store_stopped_mid_run_loses_no_ledger_row(
    tmp_path: Path, mock_upstream: MockUpstream,
    postgres_factory: Callable[[], PostgresServer],
) -> None:
    server = postgres_factory()
    url = server.create_database()
    edge = start(tmp_path, mock_upstream, url)
    try:
        assert chat(edge, TEAM, "before the outage").status_code == 200
        server.stop()
        wait_until(lambda: httpx.get(f"{edge.url}/health").json()["store"]
                   == {"configured": True, "healthy": False}, what="health to see it down")
        for i in range(3):  # served while the store is down; the rows wait in the buffer
            assert chat(edge, TEAM, f"during the outage {i}").status_code == 200
        server.start()
        wait_until(lambda: httpx.get(f"{edge.url}/health").json()["store"]["healthy"],
                   what="the store to recover")
        wait_until(lambda: requests_of(edge, "team-a") == 4, what="the buffered rows")
    finally:
        edge.stop()


def test_replicas_sharing_redis_enforce_one_budget(
    tmp_path: Path, mock_upstream: MockUpstream, redis_server: RedisServer,
) -> None:
    url = f"sqlite:///{tmp_path / 'redis-budget.db'}"
    env = {"REDIS_URL": redis_server.url, "ENABLE_L2_CACHE": "true"}
    a = start(tmp_path, mock_upstream, url, **env)
    b = start(tmp_path, mock_upstream, url, **env)
    try:
        secret = new_key(a, "frank", budget_usd=0.000001, budget_period="1d")
        wait_until(lambda: served(b, secret, "known on b"), deadline=5, interval=0.1,
                   what="b to know frank")
        # b spent it (in Redis); a refuses, having never served frank a miss itself
        with pytest.raises(openai.RateLimitError) as refused:
            chat(a, secret, "refused on a")
        assert refused.value.code == "budget_exceeded"
    finally:
        a.stop()
        b.stop()
