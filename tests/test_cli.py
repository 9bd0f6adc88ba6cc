"""The `edge` command as a user runs it: exit codes, messages, signals, drain."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from _servers import EdgeProcess, MockUpstream, _clean_env, wait_until

import edge


def run_edge(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], env=_clean_env(env),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_version() -> None:
    result = run_edge("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edge {edge.__version__}"


def test_check_config_good(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("""
[routing]
strategy = "cost"

[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:9999/v1"
api_key = "env:LOCAL_KEY"
models = ["llama-*"]
""")
    result = run_edge("check-config", str(path), env={"LOCAL_KEY": "sk-very-secret-value"})
    assert result.returncode == 0, result.stderr
    assert "local" in result.stdout
    assert "cost" in result.stdout
    assert "sk-very-secret-value" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[cache]\nttl_s = \"long\"\n", "cache.ttl_s"),
        ("[servr]\nport = 1\n", "servr"),
        ("[routing]\nstrategy = \"fastest\"\n", "routing.strategy"),
        ("[server\nport = 1\n", "edge.toml"),
    ],
)
def test_check_config_bad(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(toml)
    result = run_edge("check-config", str(path), env={"OPENAI_API_KEY": "sk-x"})
    assert result.returncode == 2
    assert "edge.toml" in result.stderr
    assert needle in result.stderr


def test_serve_refuses_bad_config_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[cache]\nl1_max_entries = -5\n")
    result = run_edge("serve", "--config", str(path), env={"OPENAI_API_KEY": "sk-x"})
    assert result.returncode == 2
    assert "cache.l1_max_entries" in result.stderr


def test_serve_without_providers(tmp_path: Path) -> None:
    result = run_edge("serve", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: No providers configured")
    assert "OPENAI_API_KEY" in result.stderr
    assert "ANTHROPIC_API_KEY" in result.stderr


def test_serve_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    result = run_edge("serve", "--host", "0.0.0.0", "--port", "0",
                      env={"OPENAI_API_KEY": "sk-x"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "allow_anonymous" in result.stderr
    assert "EDGE_API_KEYS" in result.stderr


def test_env_config_and_flag_precedence(tmp_path: Path) -> None:
    """--port beats PORT beats [server].port; the server really binds the winner."""
    mock = MockUpstream(tmp_path)
    try:
        proc = EdgeProcess(
            tmp_path, config="[server]\nport = 1\n",
            env={"PORT": "2", "OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": f"{mock.url}/v1"})
        try:
            assert httpx.get(f"{proc.url}/health/live").status_code == 200
        finally:
            assert proc.stop() == 0
    finally:
        mock.stop()


def test_sigterm_drains_slow_request_then_exits_zero(tmp_path: Path) -> None:
    mock = MockUpstream(tmp_path)
    proc = EdgeProcess(tmp_path, env={"OPENAI_API_KEY": "sk-x",
                                      "OPENAI_BASE_URL": f"{mock.url}/v1"})
    try:
        result: dict[str, httpx.Response] = {}

        def slow() -> None:
            result["r"] = httpx.post(
                f"{proc.url}/v1/chat/completions", timeout=30,
                json={"model": "gpt-4o",
                      "messages": [{"role": "user", "content": "!mock delay_ms=1500"}]})

        def slow_stream() -> None:
            body = {"model": "gpt-4o", "stream": True, "messages": [
                {"role": "user", "content": "!mock words=20 chunk_delay_ms=60"}]}
            with httpx.stream("POST", f"{proc.url}/v1/chat/completions", json=body,
                              timeout=30) as r:
                result["stream"] = r
                result["text"] = r.read()  # type: ignore[assignment]

        threads = [threading.Thread(target=slow), threading.Thread(target=slow_stream)]
        for t in threads:
            t.start()
        wait_until(lambda: mock.stats()["in_flight"] >= 2, what="both requests upstream")
        proc.signal(signal.SIGTERM)
        wait_until(lambda: not proc.alive() or
                   httpx.get(f"{proc.url}/health/ready").status_code == 503,
                   what="ready turns 503 (or the listener closes) while draining")
        for t in threads:
            t.join(timeout=30)
        assert result["r"].status_code == 200
        assert result["r"].json()["choices"][0]["message"]["content"].startswith("Mock reply")
        assert result["stream"].status_code == 200
        assert result["text"].rstrip().endswith(b"data: [DONE]")  # type: ignore[attr-defined]
        assert proc.wait() == 0
    finally:
        proc.stop()
        mock.stop()


def test_two_workers_serve_and_drain(tmp_path: Path) -> None:
    mock = MockUpstream(tmp_path)
    proc = EdgeProcess(tmp_path, args=("--workers", "2"),
                       env={"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": f"{mock.url}/v1"})
    try:
        for i in range(10):
            r = httpx.post(f"{proc.url}/v1/chat/completions", json={
                "model": "gpt-4o", "messages": [{"role": "user", "content": f"w{i}"}]})
            assert r.status_code == 200
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    finally:
        proc.stop()
        mock.stop()


def test_two_workers_refuse_new_connections_while_draining(tmp_path: Path) -> None:
    """Once SIGTERM arrives, a new client is refused at once, not taken in and left hanging
    until the drain ends (which is what happens if the parent keeps the listening socket)."""
    mock = MockUpstream(tmp_path)
    proc = EdgeProcess(tmp_path, args=("--workers", "2"),
                       env={"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": f"{mock.url}/v1"})
    try:
        result: dict[str, bytes] = {}
        streaming = threading.Event()

        def long_stream() -> None:
            body = {"model": "gpt-4o", "stream": True, "messages": [
                {"role": "user", "content": "!mock words=60 chunk_delay_ms=200"}]}
            with httpx.stream("POST", f"{proc.url}/v1/chat/completions", json=body,
                              timeout=60) as r:
                streaming.set()
                result["text"] = r.read()

        thread = threading.Thread(target=long_stream)
        thread.start()
        assert streaming.wait(30)
        proc.signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(f"{proc.url}/health/live", timeout=httpx.Timeout(5.0, connect=5.0))
            except httpx.ConnectError:
                return True
            except httpx.TransportError:
                pass  # accepted just as a listener closed, then reset: look again
            return False

        wait_until(refused, what="new connections refused during the drain")
        assert thread.is_alive(), "the stream ended before new connections were refused"
        thread.join(timeout=60)
        assert result["text"].rstrip().endswith(b"data: [DONE]")
        assert proc.wait() == 0
    finally:
        proc.stop()
        mock.stop()
