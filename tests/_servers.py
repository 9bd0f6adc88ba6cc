"""Real processes for end-to-end tests: `edge mock-upstream` and `edge serve`.

Both are started exactly as a user would start them (the console entry point, with
flags, environment and a TOML file), on free ports, and waited for by polling with a
deadline. Each process's stderr goes to a file so a failing test can show it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from _redis import free_port

__all__ = ["EdgeProcess", "MockUpstream", "edge_factory", "mock_upstream", "spawn_mock",
           "wait_until"]

_DEADLINE = 30.0


def wait_until(check, deadline: float = _DEADLINE, interval: float = 0.02, what: str = "") -> None:
    """Poll `check()` until it returns truthy; fail the test at the deadline."""
    end = time.monotonic() + deadline
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what or check}")
        time.sleep(interval)


def _edge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge", *args]


def _clean_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL",
                        "ANTHROPIC_BASE_URL", "EDGE_CONFIG", "EDGE_API_KEYS", "REDIS_URL",
                        "ENABLE_L2_CACHE", "HOST", "PORT", "METRICS_PORT", "LOG_LEVEL")}
    env.update(extra or {})
    return env


class _Process:
    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=cwd)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = _DEADLINE) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class MockUpstream(_Process):
    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        super().__init__(_edge_cmd("mock-upstream", "--port", str(self.port), *args),
                         _clean_env(None), tmp / f"mock-{self.port}.log", tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: self.alive() and httpx.get(f"{self.url}/mock/stats").status_code == 200,
                   what=f"mock upstream on {self.port}")

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/mock/stats").json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/mock/reset")


class EdgeProcess(_Process):
    """`edge serve` on free ports; `.url` is the proxy, `.metrics_url` the metrics listener."""

    def __init__(self, tmp: Path, *, config: str | None = None,
                 env: Mapping[str, str] | None = None, args: tuple[str, ...] = (),
                 wait_ready: bool = True) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        cmd = ["serve", "--port", str(self.port), "--metrics-port", str(self.metrics_port), *args]
        if config is not None:
            path = tmp / f"edge-{self.port}.toml"
            path.write_text(config)
            cmd += ["--config", str(path)]
        super().__init__(_edge_cmd(*cmd), _clean_env(env), tmp / f"edge-{self.port}.log", tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        if wait_ready:
            wait_until(self._ready, what=f"edge on {self.port}")

    def _ready(self) -> bool:
        if not self.alive():
            pytest.fail(f"edge exited early ({self.proc.returncode}):\n{self.output()}")
        return httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200


def spawn_mock(tmp: Path, *args: str) -> MockUpstream:
    return MockUpstream(tmp, *args)


@pytest.fixture(scope="module")
def mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockUpstream]:
    """One fast mock provider shared by a test module."""
    mock = MockUpstream(tmp_path_factory.mktemp("mock"))
    yield mock
    mock.stop()


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator:
    """Start `edge serve` processes; all are stopped (SIGTERM) at the end of the test."""
    started: list[EdgeProcess] = []

    def start(**kwargs) -> EdgeProcess:
        proc = EdgeProcess(tmp_path, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
