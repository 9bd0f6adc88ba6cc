"""Background work of the service: a task that fails after start-up is restarted (the
real server keeps serving and stays ready); one that keeps failing ends the service."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from _redis import free_port

from edge import cache as cache_module
from edge.config import load_config
from edge.logs import log
from edge.server import serve
from edge.service import MAX_RESTARTS, BackgroundTaskFailed, open_edge
from edge.store import open_store
from edge.store.base import UsageRow
from edge.store.service import StoreService

HANG_GUARD = 30.0
_RealLRU = cache_module.LRUCache


class FailingSweep:
    """The real L1, except that its expiry sweep raises `failures` times (the test hook)."""

    instances: list[FailingSweep] = []

    def __init__(self, *args: Any, failures: int = 1) -> None:
        self._real = _RealLRU(*args)
        self.failures = failures
        self.sweeps = 0
        FailingSweep.instances.append(self)

    def sweep(self, now: float, limit: int) -> Any:
        self.sweeps += 1
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("injected sweep failure")
        return self._real.sweep(now, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict]]:
    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)

    def lines() -> list[dict]:
        log.flush()  # the writer thread batches lines; read what was logged, not what was written
        return [orjson.loads(line) for line in stream.getvalue().splitlines()]
    return lines


def config() -> Any:
    return load_config(env={"OPENAI_API_KEY": "sk-service-test-secret",
                            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                            "PORT": "0", "METRICS_PORT": "0"})


async def test_a_sweep_that_fails_once_is_restarted_and_the_server_keeps_serving(
        monkeypatch: pytest.MonkeyPatch, log_lines: Callable[[], list[dict]]) -> None:
    FailingSweep.instances.clear()
    monkeypatch.setattr(cache_module, "LRUCache", FailingSweep)
    stop = trio.Event()
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: serve(
                config(), shutdown_trigger=stop.wait, task_status=task_status))
            url = binds[0]
            [l1] = FailingSweep.instances
            async with httpx.AsyncClient(base_url=url) as client:
                while l1.sweeps < 3:  # noqa: ASYNC110 - the failed sweep, then two more
                    await trio.sleep(0.05)
                assert (await client.get("/health/ready")).status_code == 200
                assert (await client.get("/v1/models")).status_code == 200
                assert (await client.get("/health/live")).status_code == 200
            stop.set()
    errors = [line for line in log_lines() if line["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["msg"] == "background task failed; restarting it"
    assert errors[0]["task"] == "cache"
    assert "injected sweep failure" in errors[0]["error"]


async def test_a_task_that_keeps_failing_ends_the_service(
        monkeypatch: pytest.MonkeyPatch, log_lines: Callable[[], list[dict]],
        autojump_clock: trio.testing.MockClock) -> None:
    monkeypatch.setattr(cache_module, "LRUCache",
                        lambda *args: FailingSweep(*args, failures=10**6))
    seen_ready = []
    with pytest.raises(BaseExceptionGroup) as info:  # noqa: PT012 - the block is the service
        async with open_edge(config()) as edge:
            seen_ready.append(edge.ready)
            await trio.sleep_forever()  # the service, not the test, has to end this
    assert info.group_contains(BackgroundTaskFailed)
    assert seen_ready == [True]
    assert not edge.ready
    errors = [line for line in log_lines() if line["level"] == "error"]
    assert len(errors) == MAX_RESTARTS + 1
    assert errors[-1]["msg"] == "background task keeps failing; stopping so the process is replaced"
    # restarts back off: each wait doubles
    waits = [line["restart_in_s"] for line in errors[:-1]]
    assert waits == [0.5 * 2 ** i for i in range(MAX_RESTARTS)]


_FAILING_SERVE = """
import sys
from edge import cache, service
from edge.cli import main
sys.path.insert(0, sys.argv[1])
from test_service import FailingSweep
service.RESTART_BACKOFF_S = 0.05
cache.LRUCache = lambda *args: FailingSweep(*args, failures=10**6)
sys.exit(main(["serve", "--port", sys.argv[2], "--metrics-port", "0"]))
"""


def test_edge_serve_whose_task_keeps_failing_exits_non_zero() -> None:
    """`edge serve`'s own entry point, with the sweep hook installed before it starts."""
    port = free_port()
    env = {"OPENAI_API_KEY": "sk-service-test-secret", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _FAILING_SERVE, str(Path(__file__).parent),
                           str(port)], env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    lines = [orjson.loads(line) for line in done.stderr.splitlines() if line.startswith(b"{")]
    assert any(line["msg"] == "background task keeps failing; stopping so the process is replaced"
               for line in lines)
    assert b"sk-service-test-secret" not in done.stderr


# -- the store (SPEC §7): owned by the service, opened from [store] url / EDGE_STORE_URL ----


def store_row(request_id: str) -> UsageRow:
    return UsageRow(time=time.time(), request_id=request_id, key_name="team-a",
                    endpoint="chat", model="gpt-4o", provider="openai",
                    upstream_model="gpt-4o", cache="miss", status=200, prompt_tokens=3,
                    completion_tokens=4, cost_usd=0.25, saved_usd=0.0, latency_ms=1.0)


async def test_the_service_runs_the_store_and_flushes_the_ledger_at_exit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'edge.db'}"
    config = load_config(env={"OPENAI_API_KEY": "sk-service-test-secret",
                              "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                              "EDGE_STORE_URL": url, "PORT": "0", "METRICS_PORT": "0"})
    async with open_edge(config) as edge:
        assert edge.store.healthy  # the first probe finished before the service started
        edge.record_usage(store_row("req-1"))
        edge.record_usage(store_row("req-2"))
    # a fresh backend on the same file: the rows queued at exit were written, none dropped
    backend = open_store(url)
    try:
        (total,) = backend.aggregate_usage(0, time.time() + 60, group_by=())
    finally:
        backend.close()
    assert (total["requests"], total["prompt_tokens"], total["cost_usd"]) == (2, 6, 0.5)
    assert b"llm_edge_usage_rows_dropped_total 0.0" in edge.metrics.render()


async def test_a_full_ledger_queue_counts_the_dropped_row() -> None:
    async with open_edge(config()) as edge:
        running, edge.store = edge.store, StoreService(open_store("memory://"), queue_size=1)
        try:
            edge.record_usage(store_row("kept"))
            edge.record_usage(store_row("dropped"))
            assert b"llm_edge_usage_rows_dropped_total 1.0" in edge.metrics.render()
        finally:
            await edge.store.aclose()
            edge.store = running


async def test_a_restart_seeds_each_budget_from_the_durable_ledger(tmp_path: Path) -> None:
    (tmp_path / "edge.toml").write_text(f"""
[auth]
keys = [ {{ name = "team-a", key = "sk-team-a", budget_usd = 1.0, budget_period = "total" }} ]
[store]
url = "sqlite:///{tmp_path / 'edge.db'}"
""")
    env = {"OPENAI_API_KEY": "sk-service-test-secret", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
           "PORT": "0", "METRICS_PORT": "0", "EDGE_CONFIG": str(tmp_path / "edge.toml")}
    async with open_edge(load_config(env=env)) as edge:
        assert edge.spend.spent("team-a", "total") == 0.0
        for i in range(3):
            edge.record_usage(store_row(f"req-{i}"))
    async with open_edge(load_config(env=env)) as edge:
        assert edge.spend.spent("team-a", "total") == 0.75
        assert b'llm_edge_key_spend_usd{key="team-a"} 0.75' in edge.metrics.render()
