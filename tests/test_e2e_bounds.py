"""A client's oversized strings stay out of /metrics, the log and error messages.

A glob such as "gpt-*" lets any model name through to the router, so without bounds a
few requests with megabyte model names made every scrape carry megabytes per series and
every log line and error echo them back. Everything runs through a real `edge serve` at
the default log level (one info line per request) in front of the bundled mock.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from _servers import EdgeProcess, MockUpstream, wait_until

from edge.metrics import MAX_LABEL_BYTES
from edge.schema import MAX_MODEL_BYTES

HUGE = "gpt-" + "x" * 1_000_000  # matches the configured glob
LONG_OK = "gpt-" + "y" * 196  # 200 bytes: served, but too long to be a label value
MAX_LINE = 4096
MAX_ERROR = 1024


def config(mock_url: str) -> str:
    return f"""
[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock_url}/v1"
api_key = "env:PROVIDER_KEY"
models = ["gpt-*", "claude-*"]
timeout_s = 10

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{mock_url}"
api_key = "env:PROVIDER_KEY"
models = ["claude-*"]
timeout_s = 10
"""


@pytest.fixture
def edge(tmp_path, mock_upstream: MockUpstream) -> Iterator[EdgeProcess]:
    proc = EdgeProcess(tmp_path, config=config(mock_upstream.url),
                       env={"PROVIDER_KEY": "sk-test-bounds"})
    try:
        yield proc
    finally:
        proc.stop()


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def test_huge_model_names_are_refused_and_echo_only_a_prefix(edge: EdgeProcess) -> None:
    with httpx.Client(base_url=edge.url, timeout=60) as client:
        for i in range(10):
            response = client.post("/v1/chat/completions", json=chat(HUGE + str(i)))
            assert response.status_code == 400, response.text[:500]
            assert len(response.content) < MAX_ERROR
            error = response.json()["error"]
            assert error["param"] == "model"
            assert error["type"] == "invalid_request_error"
            assert str(MAX_MODEL_BYTES) in error["message"]
            assert "gpt-xxx" in error["message"]
        anthropic = client.post("/v1/messages", json={
            "model": "claude-" + "z" * 1_000_000, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]})
        assert anthropic.status_code == 400, anthropic.text[:500]
        assert len(anthropic.content) < MAX_ERROR
        body = anthropic.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        served = client.post("/v1/chat/completions", json=chat("gpt-4o"))
        assert served.status_code == 200, served.text

    metrics = httpx.get(f"{edge.metrics_url}/metrics", timeout=30)
    assert metrics.status_code == 200
    assert len(metrics.content) < 200_000
    assert "xxxxxxxx" not in metrics.text

    # The served request's info line is written after the refused ones: once it is in the
    # log, every line of theirs is too.
    wait_until(lambda: '"model":"gpt-4o"' in edge.output(), what="the request log line")
    lines = edge.output().splitlines()
    assert sum('"status":400' in line for line in lines) == 11
    longest = max(lines, key=len)
    assert len(longest) < MAX_LINE, longest[:300]


def test_unknown_paths_and_models_are_echoed_clipped(edge: EdgeProcess) -> None:
    with httpx.Client(base_url=edge.url, timeout=60) as client:
        path = "/v1/" + "p" * 30_000
        missing = client.get(path)
        assert missing.status_code == 404
        assert len(missing.content) < MAX_ERROR
        assert missing.json()["error"]["code"] == "unknown_url"
        unknown = client.post("/v1/chat/completions", json=chat("nope-" + "q" * 250))
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        assert len(unknown.json()["error"]["message"]) < 400
        client.post("/v1/chat/completions", json=chat("gpt-4o"))
    wait_until(lambda: '"model":"gpt-4o"' in edge.output(), what="the request log line")
    lines = edge.output().splitlines()
    assert max(len(line) for line in lines) < MAX_LINE


def test_long_but_allowed_model_name_is_other_in_metrics(edge: EdgeProcess) -> None:
    assert MAX_LABEL_BYTES < len(LONG_OK) <= MAX_MODEL_BYTES
    with httpx.Client(base_url=edge.url, timeout=60) as client:
        response = client.post("/v1/chat/completions", json=chat(LONG_OK))
        assert response.status_code == 200, response.text
        assert response.json()["model"] == LONG_OK
    text = httpx.get(f"{edge.metrics_url}/metrics", timeout=30).text
    assert "yyyyyyyy" not in text
    assert 'llm_edge_tokens_used_total{model="other",provider="mock"}' in text
    assert 'llm_edge_provider_latency_seconds_count{model="other",provider="mock"} 1.0' in text
