"""`edge keys` and `edge usage` through the real `edge` command, on a SQLite file and on a
real PostgreSQL, with no server running (SPEC §7 "CLI")."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.store import UsageRow, open_store


def edge(*args: str, cwd: Path,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("EDGE_CONFIG", "EDGE_STORE_URL", "EDGE_API_KEYS", "EDGE_ADMIN_KEY")}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """(the store URL, the environment naming it): SQLite through the config file's
    [store].url, Postgres through EDGE_STORE_URL."""
    (tmp_path / "edge.toml").write_text(
        '[store]\nurl = "sqlite:///data/edge.db"\n'
        '[auth]\nkeys = [{ name = "team-a", key = "env:TEAM_A", budget_usd = 5 }]\n')
    (tmp_path / "data").mkdir()
    env = {"TEAM_A": "sk-team-a"}
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data/edge.db", env
    url = request.getfixturevalue("postgres_url")
    return url, {**env, "EDGE_STORE_URL": url}


def test_create_list_revoke(tmp_path: Path, store_env: tuple[str, dict[str, str]]) -> None:
    url, env = store_env
    made = edge("keys", "create", "bob", "--rpm", "10", "--budget-usd", "2.5",
                "--budget-period", "1d", "--models", "gpt-4o*,fast", "--config", "edge.toml",
                cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.split("secret (shown only now): ")[1].strip()
    assert secret.startswith("sk-edge-")
    backend = open_store(url)
    try:
        record = backend.get_key("bob")
    finally:
        backend.close()
    assert record is not None
    assert record.digest == hashlib.sha256(secret.encode()).digest()
    assert (record.rpm, record.budget_usd, record.budget_period, record.models) == (
        10, 2.5, "1d", ("gpt-4o*", "fast"))

    listed = edge("keys", "list", "--config", "edge.toml", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "source", "prefix"]
    assert lines[1].split()[:2] == ["team-a", "config"]
    assert lines[2].split()[:3] == ["bob", "admin", secret[:12]]
    assert secret not in listed.stdout

    again = edge("keys", "create", "bob", "--config", "edge.toml", cwd=tmp_path, env=env)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    bad = edge("keys", "create", "carol", "--rpm", "lots", "--budget-period", "week",
               "--config", "edge.toml", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "rpm:" in bad.stderr
    assert "budget_period:" in bad.stderr
    file_key = edge("keys", "revoke", "team-a", "--config", "edge.toml", cwd=tmp_path, env=env)
    assert file_key.returncode == 2
    assert "config file" in file_key.stderr

    revoked = edge("keys", "revoke", "bob", "--config", "edge.toml", cwd=tmp_path, env=env)
    assert revoked.returncode == 0, revoked.stderr
    gone = edge("keys", "revoke", "bob", "--config", "edge.toml", cwd=tmp_path, env=env)
    assert gone.returncode == 2
    assert "No key named 'bob'" in gone.stderr


def test_usage_table_and_json(tmp_path: Path, store_env: tuple[str, dict[str, str]]) -> None:
    url, env = store_env
    now = time.time()
    backend = open_store(url)
    try:
        backend.insert_usage([
            UsageRow(time=now - 3600 * h, request_id=f"r{h}", key_name="team-a",
                     endpoint="/v1/chat/completions", model=model, provider="openai",
                     upstream_model=model, cache="miss", status=200, prompt_tokens=10,
                     completion_tokens=5, cost_usd=0.000_000_007, saved_usd=0.0, latency_ms=2.0)
            for h, model in [(1, "gpt-4o"), (2, "gpt-4o"), (30, "gpt-4o-mini")]])
    finally:
        backend.close()
    shown = edge("usage", "--since", "7d", "--group-by", "key,model", "--config", "edge.toml",
                 cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].split() == ["key", "model", "requests", "cache_hits", "prompt_tokens",
                                "completion_tokens", "cost_usd", "saved_usd"]
    assert lines[2].split() == ["team-a", "gpt-4o", "2", "0", "20", "10", "0.000000", "0.000000"]
    assert lines[3].split()[:3] == ["team-a", "gpt-4o-mini", "1"]
    as_json = edge("usage", "--json", "--config", "edge.toml", cwd=tmp_path, env=env)
    assert as_json.returncode == 0, as_json.stderr
    payload = json.loads(as_json.stdout)
    assert set(payload) == {"data", "since", "until"}
    assert payload["data"] == [{"key": "team-a", "requests": 2, "cache_hits": 0,
                                "prompt_tokens": 20, "completion_tokens": 10,
                                "cost_usd": 0.000_000_014, "saved_usd": 0.0}]
    bad = edge("usage", "--group-by", "colour", "--config", "edge.toml", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "colour" in bad.stderr


def test_refused_on_a_memory_store(tmp_path: Path) -> None:
    for args in (("keys", "list"), ("keys", "create", "bob"), ("usage",)):
        result = edge(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert "memory://" in result.stderr
        assert "EDGE_STORE_URL" in result.stderr
        assert "[store].url" in result.stderr
