"""Scale-out proof: three `edge serve` replicas sharing one real 3-master Redis Cluster.

This is the deployment README's "Scaling out" describes (replicas behind a balancer, one
Redis Cluster), on loopback: what one replica learned from upstream, the others answer
from L2, and one client key's rpm limit holds across all three instead of per replica.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from _redis import RedisClusterProcesses
from _servers import EdgeProcess, MockUpstream, wait_until

pytestmark = pytest.mark.slow

MOCK_KEY = "sk-mock-scale-out-0123456789"
TEAM_KEY = "sk-edge-scale-out-team-key"
#: Small enough to reach quickly, large enough that each replica alone stays under it.
RPM = 6


def config(mock: MockUpstream, cluster: RedisClusterProcesses, prefix: str, auth: str = "") -> str:
    return f"""
{auth}
[cache]
l2_enabled = true
redis_cluster = true
redis_url = "{cluster.url}"
key_prefix = "{prefix}"

[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*"]
timeout_s = 10
"""


def chat(edge: EdgeProcess, content: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{edge.url}/v1/chat/completions", timeout=30, headers=headers,
                      json={"model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": content}]})


def l2_healthy(edge: EdgeProcess) -> bool:
    return httpx.get(f"{edge.url}/health", timeout=5).json()["cache"]["l2_healthy"] is True


def chat_calls(mock: MockUpstream) -> int:
    return int(mock.stats()["by_path"].get("/v1/chat/completions", 0))


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockUpstream]:
    upstream = MockUpstream(tmp_path_factory.mktemp("mock"))
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def cluster_client(redis_cluster: RedisClusterProcesses) -> Iterator[redis.RedisCluster]:
    client = redis.RedisCluster.from_url(redis_cluster.url)
    yield client
    client.close()


def start_replicas(tmp_path: Path, cfg: str, env: dict[str, str]) -> list[EdgeProcess]:
    replicas: list[EdgeProcess] = []
    try:
        for _ in range(3):
            replicas.append(EdgeProcess(tmp_path, config=cfg, env=env))
        wait_until(lambda: all(l2_healthy(r) for r in replicas), what="L2 healthy on all three")
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    return replicas


def test_a_miss_on_one_replica_is_an_l2_hit_on_the_other_two(
    tmp_path: Path, mock: MockUpstream, redis_cluster: RedisClusterProcesses,
    cluster_client: redis.RedisCluster,
) -> None:
    prefix = "scale:l2:"
    replicas = start_replicas(tmp_path, config(mock, redis_cluster, prefix), {"MOCK_KEY": MOCK_KEY})
    try:
        mock.reset()
        for stored, origin in enumerate(replicas, start=1):
            others = [r for r in replicas if r is not origin]
            prompt = f"learned once by replica {origin.port}"
            first = chat(origin, prompt)
            assert first.status_code == 200
            assert first.headers["x-edge-cache"] == "miss"
            # L2 writes are in the background: wait until the entry is in the cluster.
            wait_until(lambda n=stored: sum(1 for _ in cluster_client.scan_iter(
                match=f"{prefix}*")) == n, what=f"entry {stored} written to the cluster")
            for other in others:
                hit = chat(other, prompt)
                assert hit.status_code == 200
                assert hit.headers["x-edge-cache"] == "hit-l2"
                assert hit.headers["x-edge-provider"] == "mock"
                assert hit.json()["metadata"]["cache_tier"] == "l2"
                assert hit.json()["choices"] == first.json()["choices"]
        # Three prompts, one upstream call each, whichever replica was asked.
        assert chat_calls(mock) == 3
        for replica in replicas:
            metrics = httpx.get(f"{replica.metrics_url}/metrics").text
            assert 'llm_edge_cache_hits_total{tier="l2"} 2.0' in metrics
    finally:
        for replica in replicas:
            replica.stop()


def test_one_keys_rpm_limit_holds_across_the_three_replicas(
    tmp_path: Path, mock: MockUpstream, redis_cluster: RedisClusterProcesses,
) -> None:
    auth = f'[auth]\nkeys = [{{ name = "team", key = "env:TEAM_KEY", rpm = {RPM} }}]'
    replicas = start_replicas(tmp_path, config(mock, redis_cluster, "scale:rpm:", auth),
                              {"MOCK_KEY": MOCK_KEY, "TEAM_KEY": TEAM_KEY})
    try:
        # Round-robin, as a balancer would: after RPM requests each replica has seen only
        # RPM / 3 of them, so only a shared counter can refuse the next ones.
        rotation = itertools.cycle(replicas)
        answers = [chat(next(rotation), f"rpm request {i}", TEAM_KEY) for i in range(RPM + 3)]
        statuses = [a.status_code for a in answers]
        assert statuses == [200] * RPM + [429] * 3
        for refused in answers[RPM:]:
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["type"]
        # A request with no key is still refused for what it is, not counted against the key.
        assert chat(replicas[0], "no key").status_code == 401
    finally:
        for replica in replicas:
            replica.stop()
