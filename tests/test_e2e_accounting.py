"""What a stream costs, however it ends, against real edge processes.

A stream cut by the client, failed by the upstream or too large to cache is still
relayed, charged to the key's tpm, counted in the token and cost metrics, judged by the
provider's circuit breaker and logged with the status the metrics give it.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from _fake_upstream import FakeUpstream, Reply, chat_chunk, sse
from _scrape import metric
from _servers import EdgeProcess, MockUpstream, wait_until

ENV = {"MOCK_KEY": "sk-mock-secret-abcdef123456", "TEAM_KEY": "team-key-0123456789"}


def provider_toml(url: str) -> str:
    return f"""
[[providers]]
name = "mock"
kind = "openai"
base_url = "{url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*"]
timeout_s = 20

[models."gpt-4o"]
input_per_mtok = 2.0
output_per_mtok = 8.0
"""


def request_lines(edge: EdgeProcess) -> list[dict]:
    """The log lines of the chat requests edge answered so far."""
    lines = []
    for line in edge.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("msg") == "request" and record["path"] == "/v1/chat/completions":
                lines.append(record)
    return lines


def test_streams_cut_by_the_client_are_charged_to_tpm(tmp_path: Path) -> None:
    """tpm = 100: one stream the client hangs up on, with no usage from upstream yet, uses
    the key's minute (an estimate from the relayed text); the next request is refused."""
    mock = MockUpstream(tmp_path)
    config = """
[auth]
keys = [ { name = "team", key = "env:TEAM_KEY", tpm = 100 } ]
""" + provider_toml(mock.url)
    edge = EdgeProcess(tmp_path, config=config, env=ENV)
    headers = {"authorization": f"Bearer {ENV['TEAM_KEY']}"}
    body = {"model": "gpt-4o", "stream": True,
            "messages": [{"role": "user", "content": "!mock words=20000 chunk_delay_ms=2 go"}]}
    try:
        received = ""
        with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body, headers=headers,
                          timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        received += choice["delta"].get("content") or ""
                if len(received) >= 600:  # ~150 tokens, and far from the end: hang up
                    break
        wait_until(lambda: metric(edge.url, "llm_edge_tokens_estimated_total") > 0,
                   what="the cut stream to be accounted")
        refused = httpx.post(f"{edge.url}/v1/chat/completions", headers=headers, timeout=30,
                             json={**body, "stream": False})
        assert refused.status_code == 429, refused.text[:300]
        assert int(refused.headers["retry-after"]) >= 1

        completion = metric(edge.url, "llm_edge_tokens_completion_total", provider="mock",
                            model="gpt-4o")
        assert completion >= len(received.encode()) / 4  # at least what the client read
        used = metric(edge.url, "llm_edge_tokens_used_total", provider="mock", model="gpt-4o")
        assert used == metric(edge.url, "llm_edge_tokens_estimated_total")
        assert used > completion  # the prompt's estimate too
        assert metric(edge.url, "llm_edge_cost_usd_total", provider="mock",
                      model="gpt-4o") > 0
        wait_until(lambda: any(line.get("usage") == "estimated" and line["status"] == 499
                               for line in request_lines(edge)), what="the cut request's log")
    finally:
        edge.stop()
        mock.stop()


def test_failures_mid_stream_open_the_circuit_and_log_5xx(tmp_path: Path) -> None:
    """breaker_failures = 2: two streams that the upstream cuts after their first bytes
    open the provider's circuit, like two failed attempts; each logs the 502 it counts."""
    mock = MockUpstream(tmp_path)
    config = """
[routing]
breaker_failures = 2
breaker_cooldown_s = 600
""" + provider_toml(mock.url)
    edge = EdgeProcess(tmp_path, config=config, env={**ENV, "LOG_LEVEL": "info"})
    try:
        for i in range(2):
            with httpx.stream("POST", f"{edge.url}/v1/chat/completions", timeout=30, json={
                    "model": "gpt-4o", "stream": True, "messages": [
                        {"role": "user", "content": f"!mock cut_after=2 words=10 cut {i}"}]}) as r:
                assert r.status_code == 200
                text = r.read().decode()
            assert "[DONE]" not in text
            assert '"error"' in text
        health = httpx.get(f"{edge.url}/health").json()
        assert health["providers"]["mock"]["healthy"] is False
        assert metric(edge.url, "llm_edge_circuit_open", provider="mock") == 1
        assert metric(edge.url, "llm_edge_provider_errors_total", provider="mock") == 2
        assert metric(edge.url, "llm_edge_requests_total", endpoint="chat", status="5xx") == 2
        assert metric(edge.url, "llm_edge_requests_total", endpoint="chat", status="2xx") == 0
        wait_until(lambda: len(request_lines(edge)) >= 2, what="two request log lines")
        assert [(line["status"], line["level"]) for line in request_lines(edge)] == [
            (502, "warning")] * 2
        # the relayed part was paid for: counted, from an estimate (no usage came)
        assert metric(edge.url, "llm_edge_tokens_estimated_total") > 0
        # the circuit is open: the next request fails fast without calling the upstream
        calls = mock.stats()["by_path"].get("/v1/chat/completions", 0)
        r = httpx.post(f"{edge.url}/v1/chat/completions", timeout=30, json={
            "model": "gpt-4o", "messages": [{"role": "user", "content": "after"}]})
        assert r.status_code == 503
        assert mock.stats()["by_path"].get("/v1/chat/completions", 0) == calls
    finally:
        edge.stop()
        mock.stop()


def _vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_answer_past_max_entry_bytes_is_relayed_whole_and_not_cached(tmp_path: Path) -> None:
    """64 MB of stream with max_entry_bytes = 64 KiB: every event reaches the client, the
    server's memory does not grow with the stream, and a repeat is a miss (the JSON
    answer, also over the cap, is not stored either)."""
    pieces, piece = 16_000, "x" * 4000

    def reply(path: str, body: dict) -> Reply:
        if not body.get("stream"):
            answer = {"id": "chatcmpl-big", "object": "chat.completion", "created": 1,
                      "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant",
                                                                  "content": "y" * 100_000}}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": 25_000}}
            return Reply(json.dumps(answer).encode())
        events = (sse(chat_chunk(piece)) for _ in range(pieces))
        tail = [sse(chat_chunk(finish="stop")),
                sse(chat_chunk(usage={"prompt_tokens": 5, "completion_tokens": 16_000})),
                sse("[DONE]")]
        return Reply((part for chunks in (events, tail) for part in chunks),
                     content_type="text/event-stream")

    fake = FakeUpstream(reply)
    config = "[cache]\nmax_entry_bytes = 65536\n" + provider_toml(fake.url)
    edge = EdgeProcess(tmp_path, config=config, env=ENV)
    body = {"model": "gpt-4o", "stream": True,
            "messages": [{"role": "user", "content": "a very long answer"}]}
    try:
        pid = edge.proc.pid
        before = _vm_kib(pid, "VmRSS")
        content = 0
        data_events = 0
        last = ""
        with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body,
                          timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["x-edge-cache"] == "miss"
            for line in r.iter_lines():
                if line.startswith("data: "):
                    data_events += 1
                    last = line
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:])["choices"]:
                            content += len(choice["delta"].get("content") or "")
        assert content == pieces * len(piece)
        assert data_events == pieces + 2  # the finish chunk and [DONE]; usage was not asked for
        assert last == "data: [DONE]"
        grown_mib = (_vm_kib(pid, "VmHWM") - before) / 1024
        assert grown_mib < 32, f"edge grew by {grown_mib:.0f} MiB relaying a 64 MB stream"

        again = httpx.post(f"{edge.url}/v1/chat/completions", json={**body, "stream": False},
                           timeout=60)
        assert again.status_code == 200
        assert again.headers["x-edge-cache"] == "miss"
        third = httpx.post(f"{edge.url}/v1/chat/completions", json={**body, "stream": False},
                           timeout=60)
        assert third.headers["x-edge-cache"] == "miss"  # 100 kB of JSON: over the cap too
        assert fake.count("/v1/chat/completions") == 3
        # the relayed answer was charged from the upstream's own usage, not an estimate
        assert metric(edge.url, "llm_edge_tokens_completion_total", provider="mock",
                      model="gpt-4o") == 16_000 + 2 * 25_000
        assert metric(edge.url, "llm_edge_tokens_estimated_total") == 0
    finally:
        edge.stop()
        fake.close()
