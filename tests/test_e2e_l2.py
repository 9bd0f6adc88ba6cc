"""The Redis tier through real edge processes: shared L2, Redis dying and freezing, Cluster."""

from __future__ import annotations

import itertools
import threading
import time

import httpx
import pytest
import redis
from _servers import EdgeProcess, MockUpstream, wait_until

ENV = {"MOCK_KEY": "sk-mock-secret-abcdef123456"}


def config(mock: MockUpstream, redis_url: str, cluster: bool = False, prefix: str = "t:") -> str:
    return f"""
[cache]
l2_enabled = true
redis_url = "{redis_url}"
redis_cluster = {"true" if cluster else "false"}
key_prefix = "{prefix}"

[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*"]
timeout_s = 10
"""


def chat(edge: EdgeProcess, content: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{edge.url}/v1/chat/completions", timeout=timeout,
                      json={"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})


def health(edge: EdgeProcess) -> dict:
    return httpx.get(f"{edge.url}/health").json()["cache"]


def l2_healthy(edge: EdgeProcess) -> bool:
    return health(edge)["l2_healthy"] is True


def count_keys(client: redis.Redis | redis.RedisCluster, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{prefix}*"))


def test_two_processes_share_l2(tmp_path, redis_server) -> None:
    mock = MockUpstream(tmp_path)
    a = EdgeProcess(tmp_path, config=config(mock, redis_server.url), env=ENV)
    b = EdgeProcess(tmp_path, config=config(mock, redis_server.url), env=ENV)
    client = redis.Redis.from_url(redis_server.url)
    try:
        wait_until(lambda: l2_healthy(a) and l2_healthy(b), what="L2 healthy")
        assert health(a) == {"l1_healthy": True, "l2_healthy": True, "l2_configured": True}
        first = chat(a, "shared across replicas")
        assert first.headers["x-edge-cache"] == "miss"
        wait_until(lambda: count_keys(client, "t:") == 1, what="background L2 write")
        ttl = client.ttl(next(client.scan_iter(match="t:*")))
        assert 0 < ttl <= 3600
        second = chat(b, "shared across replicas")
        assert second.headers["x-edge-cache"] == "hit-l2"
        assert second.headers["x-edge-provider"] == "mock"
        assert second.json()["metadata"]["cache_tier"] == "l2"
        assert second.json()["choices"] == first.json()["choices"]
        # an L2 hit fills L1
        assert chat(b, "shared across replicas").headers["x-edge-cache"] == "hit-l1"
        assert 'llm_edge_cache_hits_total{tier="l2"} 1.0' in httpx.get(f"{b.url}/metrics").text
    finally:
        client.close()
        a.stop(), b.stop(), mock.stop()


def test_env_turns_l2_on(tmp_path, redis_server) -> None:
    mock = MockUpstream(tmp_path)
    edge = EdgeProcess(tmp_path, env={"OPENAI_API_KEY": "sk-x",
                                      "OPENAI_BASE_URL": f"{mock.url}/v1",
                                      "ENABLE_L2_CACHE": "true", "REDIS_URL": redis_server.url})
    try:
        wait_until(lambda: l2_healthy(edge), what="L2 healthy")
        assert health(edge)["l2_configured"] is True
    finally:
        edge.stop(), mock.stop()


def test_l2_not_configured(tmp_path) -> None:
    mock = MockUpstream(tmp_path)
    edge = EdgeProcess(tmp_path, env={"OPENAI_API_KEY": "sk-x",
                                      "OPENAI_BASE_URL": f"{mock.url}/v1"})
    try:
        assert health(edge) == {"l1_healthy": True, "l2_healthy": False, "l2_configured": False}
    finally:
        edge.stop(), mock.stop()


class Load:
    """Requests in a background thread: unique prompts (misses) and repeats (hits)."""

    def __init__(self, edge: EdgeProcess, tag: str) -> None:
        self.edge = edge
        self.tag = tag
        self.statuses: list[int] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        for i in itertools.count():
            if self._stop.is_set():
                return
            content = f"{self.tag} {i}" if i % 2 else f"{self.tag} repeat"
            began = time.monotonic()
            self.statuses.append(chat(self.edge, content).status_code)
            self.slowest = max(self.slowest, time.monotonic() - began)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def wait_for(self, n: int) -> None:
        target = len(self.statuses) + n
        wait_until(lambda: len(self.statuses) >= target, what=f"{n} more requests")


def test_redis_killed_under_load_then_restarted(tmp_path, redis_server) -> None:
    mock = MockUpstream(tmp_path)
    edge = EdgeProcess(tmp_path, config=config(mock, redis_server.url), env=ENV)
    try:
        wait_until(lambda: l2_healthy(edge), what="L2 healthy")
        with Load(edge, "kill") as load:
            load.wait_for(10)
            redis_server.kill()
            wait_until(lambda: not l2_healthy(edge), what="L2 marked down")
            load.wait_for(20)
            redis_server.restart()
            wait_until(lambda: l2_healthy(edge), what="L2 back by itself")
            load.wait_for(10)
        assert load.statuses
        assert set(load.statuses) == {200}
        print(f"slowest request while Redis was killed: {load.slowest * 1000:.1f} ms")
        client = redis.Redis.from_url(redis_server.url)
        chat(edge, "after the restart")
        wait_until(lambda: count_keys(client, "t:") >= 1, what="writes land after recovery")
        client.close()
    finally:
        edge.stop(), mock.stop()


def test_redis_frozen_under_load_then_thawed(tmp_path, redis_server) -> None:
    mock = MockUpstream(tmp_path)
    edge = EdgeProcess(tmp_path, config=config(mock, redis_server.url), env=ENV)
    try:
        wait_until(lambda: l2_healthy(edge), what="L2 healthy")
        with Load(edge, "freeze") as load:
            load.wait_for(10)
            redis_server.stop()
            try:
                load.wait_for(20)  # keeps serving while Redis does not answer at all
                wait_until(lambda: not l2_healthy(edge), what="L2 marked down")
            finally:
                redis_server.cont()
            wait_until(lambda: l2_healthy(edge), what="L2 back after SIGCONT")
            load.wait_for(10)
        assert load.statuses
        assert set(load.statuses) == {200}
        print(f"slowest request while Redis was frozen: {load.slowest * 1000:.1f} ms")
    finally:
        edge.stop(), mock.stop()


@pytest.mark.slow
def test_l2_on_redis_cluster(tmp_path, redis_cluster) -> None:
    mock = MockUpstream(tmp_path)
    cfg = config(mock, redis_cluster.url, cluster=True, prefix="c:")
    a = EdgeProcess(tmp_path, config=cfg, env=ENV)
    b = EdgeProcess(tmp_path, config=cfg, env=ENV)
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        wait_until(lambda: l2_healthy(a) and l2_healthy(b), what="cluster L2 healthy")
        prompts = [f"cluster prompt {i}" for i in range(6)]  # keys spread over slots
        for p in prompts:
            assert chat(a, p).headers["x-edge-cache"] == "miss"
        wait_until(lambda: sum(1 for _ in client.scan_iter(match="c:*", target_nodes="all"))
                   == len(prompts), what="writes on the cluster")
        for p in prompts:
            assert chat(b, p).headers["x-edge-cache"] == "hit-l2"
    finally:
        client.close()
        a.stop(), b.stop(), mock.stop()


def test_l2_hit_keeps_the_writers_ttl_on_another_replica(tmp_path, redis_server) -> None:
    mock = MockUpstream(tmp_path)
    a = EdgeProcess(tmp_path, config=config(mock, redis_server.url), env=ENV)
    b = EdgeProcess(tmp_path, config=config(mock, redis_server.url), env=ENV)
    client = redis.Redis.from_url(redis_server.url)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "short-lived"}]}
    try:
        wait_until(lambda: l2_healthy(a) and l2_healthy(b), what="L2 healthy")
        first = httpx.post(f"{a.url}/v1/chat/completions", json=body, timeout=30,
                           headers={"x-edge-cache-ttl": "5"})
        assert first.headers["x-edge-cache"] == "miss"
        wait_until(lambda: count_keys(client, "t:") == 1, what="background L2 write")
        assert chat(b, "short-lived").headers["x-edge-cache"] == "hit-l2"
        # b's L1 copy must expire with the writer's 5 s, not after the default hour
        wait_until(lambda: chat(b, "short-lived").headers["x-edge-cache"] == "miss",
                   deadline=30, interval=0.2, what="the entry to expire on the second replica")
    finally:
        client.close()
        a.stop(), b.stop(), mock.stop()
