"""The fleet-wide counters in Redis through real edge processes (SPEC §7 "Budgets" and
"Speed", §9 "Key pools"): a client key's rpm, tpm and budget, and a provider key's own rpm.

Round trips are counted by Redis itself (`INFO commandstats`: every counter update is one
EVALSHA), so "one round trip" is checked where it is paid, not guessed from the code.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from _redis import RedisServer
from _servers import EdgeProcess, MockUpstream, wait_until

IN_PER_MTOK = 1.234567
OUT_PER_MTOK = 7.654321
SECRETS = {"TEAM_KEY": "sk-team-counters", "TINY_KEY": "sk-tiny-counters",
           "SOLO_KEY": "sk-solo-counters",
           "PLAIN_KEY": "sk-plain-counters", "PROVIDER_KEY": "sk-provider-counters",
           "POOL_KEY": "sk-pool-counters-secret"}

CONFIG = """
[cache]
l2_enabled = true
redis_url = "{redis_url}"
key_prefix = "{prefix}"

[[providers]]
name = "up"
kind = "openai"
base_url = "{mock_url}/v1"
api_key = "env:PROVIDER_KEY"
models = ["gpt-4o-mini"]

[[providers]]
name = "pooled"
kind = "openai"
base_url = "{mock_url}/v1"
api_keys = [ {{ key = "env:POOL_KEY", rpm = 2 }} ]
models = ["gpt-pooled"]

[models."gpt-4o-mini"]
input_per_mtok = {inp}
output_per_mtok = {out}

[auth]
keys = [
  {{ name = "team", key = "env:TEAM_KEY", rpm = {rpm}, tpm = 1000000, budget_usd = 1000,
     budget_period = "1d" }},
  {{ name = "tiny", key = "env:TINY_KEY", rpm = 1000, budget_usd = 0.000000001,
     budget_period = "1d" }},
  {{ name = "solo", key = "env:SOLO_KEY", budget_usd = 1000, budget_period = "1d" }},
  {{ name = "plain", key = "env:PLAIN_KEY" }},
]

[store]
url = "sqlite:///{db}"
"""


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


def start(tmp: Path, mock: MockUpstream, server: RedisServer, prefix: str,
          rpm: int = 1000) -> EdgeProcess:
    """An edge with its own SQLite store: only Redis is shared between two of them."""
    db = tmp / f"{uuid.uuid4().hex[:8]}.db"
    config = CONFIG.format(redis_url=server.url, prefix=prefix, mock_url=mock.url, db=db,
                           inp=IN_PER_MTOK, out=OUT_PER_MTOK, rpm=rpm)
    edge = EdgeProcess(tmp, config=config, env=SECRETS)
    wait_until(lambda: l2_healthy(edge), what="L2 healthy")
    return edge


def l2_healthy(edge: EdgeProcess) -> bool:
    return httpx.get(f"{edge.url}/health", timeout=5).json()["cache"]["l2_healthy"] is True


def chat(edge: EdgeProcess, key: str, text: str, model: str = "gpt-4o-mini") -> httpx.Response:
    return httpx.post(f"{edge.url}/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {SECRETS[key.upper() + '_KEY']}"},
                      json={"model": model, "messages": [{"role": "user", "content": text}]})


def cost_of(answer: httpx.Response) -> Fraction:
    """What edge charges for an answer at the test prices, as an exact fraction (USD)."""
    usage = answer.json()["usage"]
    return (Fraction(usage["prompt_tokens"]) * Fraction(str(IN_PER_MTOK))
            + Fraction(usage["completion_tokens"]) * Fraction(str(OUT_PER_MTOK))) / 1_000_000


def script_calls(client: redis.Redis) -> int:
    """Scripts Redis has run so far (each counter update is one)."""
    stats: dict[str, Any] = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
               for name in ("evalsha", "evalsha_ro", "eval", "eval_ro"))


def settles_at(client: redis.Redis, before: int, expected: int) -> None:
    """The scripts run since `before` reach `expected` (a charge may land just after its
    answer) and stop there."""
    wait_until(lambda: script_calls(client) - before >= expected, what=f"{expected} scripts")
    assert script_calls(client) - before == expected


def budget_key(client: redis.Redis, prefix: str, name: str) -> bytes:
    keys = list(client.scan_iter(match=f"{prefix}budget:{{{name}}}:1d:*"))
    assert len(keys) == 1, keys
    return keys[0]


def spend_nano(client: redis.Redis, prefix: str, name: str) -> int:
    return int(client.get(budget_key(client, prefix, name)) or 0)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


def test_a_miss_by_a_key_with_limits_and_a_budget_costs_two_round_trips(
    tmp_path: Path, mock_upstream: MockUpstream, redis_server: RedisServer,
    client: redis.Redis, prefix: str,
) -> None:
    edge = start(tmp_path, mock_upstream, redis_server, prefix)
    try:
        assert chat(edge, "team", "warm up: loads the script").status_code == 200
        before = script_calls(client)
        for i in range(4):
            answer = chat(edge, "team", f"miss {i}")
            assert answer.status_code == 200
            assert answer.headers["x-edge-cache"] == "miss"
        settles_at(client, before, 2 * 4)  # admission + charge, per miss
        hit = chat(edge, "team", "miss 0")
        assert hit.headers["x-edge-cache"].startswith("hit")
        settles_at(client, before, 2 * 4 + 1)  # a hit: its admission only
        # a key with a budget and no limits: one trip to check, one to charge
        assert chat(edge, "solo", "warm up solo").status_code == 200
        wait_until(lambda: any(int(client.get(k) or 0) > 0 for k in client.scan_iter(
                       match=f"{prefix}budget:{{solo}}:1d:*")),
                   what="solo's first charge")  # the charge lands just after the answer
        before = script_calls(client)
        assert chat(edge, "solo", "solo spends").status_code == 200
        settles_at(client, before, 2)
    finally:
        edge.stop()


def test_two_processes_share_one_budget_and_one_rpm_to_the_nano(
    tmp_path: Path, mock_upstream: MockUpstream, redis_server: RedisServer,
    client: redis.Redis, prefix: str,
) -> None:
    a = start(tmp_path, mock_upstream, redis_server, prefix, rpm=6)
    b = start(tmp_path, mock_upstream, redis_server, prefix, rpm=6)
    try:
        charged = Fraction(0)
        for i, edge in enumerate([a, b, a, b, a, b]):
            answer = chat(edge, "team", f"shared {i}")
            assert answer.status_code == 200, answer.text
            charged += cost_of(answer)
        # every answer's cost is counted once, in nano-USD, whichever process served it
        wait_until(lambda: abs(Fraction(spend_nano(client, prefix, "team"), 10**9) - charged)
                   <= Fraction(6, 2 * 10**9), what="every charge, each to the nano")
        window = client.hgetall(f"{prefix}rl:{{team}}")
        assert int(window[b"rn"]) == 6
        for edge in (a, b):  # the seventh request in the minute, on either process
            refused = chat(edge, "team", "one too many")
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"

        # tiny's budget is spent on a; b refuses its next miss, and still serves a hit
        assert chat(a, "tiny", "spent on a").status_code == 200
        refused = chat(b, "tiny", "refused on b")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "budget_exceeded"
        hit = chat(b, "tiny", "spent on a")
        assert hit.status_code == 200
        assert hit.headers["x-edge-cache"] == "hit-l2"
    finally:
        a.stop()
        b.stop()


def test_a_provider_keys_rpm_holds_across_processes(
    tmp_path: Path, mock_upstream: MockUpstream, redis_server: RedisServer,
    client: redis.Redis, prefix: str,
) -> None:
    a = start(tmp_path, mock_upstream, redis_server, prefix)
    b = start(tmp_path, mock_upstream, redis_server, prefix)
    try:
        assert chat(a, "plain", "pool 1", "gpt-pooled").status_code == 200
        assert chat(b, "plain", "pool 2", "gpt-pooled").status_code == 200
        # a sent one itself; Redis knows of two, so its only key is at its rpm
        refused = chat(a, "plain", "pool 3", "gpt-pooled")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        names = [k.decode() for k in client.scan_iter(match=f"{prefix}pk:*")]
        assert len(names) == 1
        assert SECRETS["POOL_KEY"] not in names[0]  # a digest, never the secret
    finally:
        a.stop()
        b.stop()


def test_redis_killed_mid_run_falls_back_and_recovers(
    tmp_path: Path, mock_upstream: MockUpstream, redis_server: RedisServer, prefix: str,
) -> None:
    edge = start(tmp_path, mock_upstream, redis_server, prefix)
    try:
        assert chat(edge, "team", "before the outage").status_code == 200
        redis_server.kill()
        wait_until(lambda: not l2_healthy(edge), what="health to see Redis down")
        for i in range(2):  # served, counted in the process
            assert chat(edge, "team", f"during the outage {i}").status_code == 200
        # the budget still holds, on this process's own counter
        assert chat(edge, "tiny", "spends it in the outage").status_code == 200
        refused = chat(edge, "tiny", "refused in the outage")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "budget_exceeded"

        redis_server.restart()  # empty
        wait_until(lambda: l2_healthy(edge), what="Redis back")
        after = chat(edge, "team", "after the outage")
        assert after.status_code == 200
        with redis.Redis.from_url(redis_server.url) as client:
            window = client.hgetall(f"{prefix}rl:{{team}}")
            # the outage's two admissions were sent along with this one
            assert int(window[b"rn"]) == 3
            wait_until(lambda: abs(Fraction(spend_nano(client, prefix, "team"), 10**9)
                                   - cost_of(after)) <= Fraction(1, 2 * 10**9),
                       what="the charge after the outage in Redis")
        assert "rate limits: Redis unavailable" in edge.output()
    finally:
        edge.stop()
