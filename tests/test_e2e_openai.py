"""The official openai SDK against a real `edge serve` in front of `edge mock-upstream`."""

from __future__ import annotations

import base64
import json
import signal
import socket
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest
from _servers import EdgeProcess, MockUpstream, wait_until

PROVIDER_KEY = "sk-test-provider-secret-1234567890"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("stack")
    mock = MockUpstream(tmp)
    config = f"""
[server]
max_request_bytes = 65536

[routing]
max_attempts = 2
breaker_failures = 1000   # this module injects failures on purpose; breakers have their own tests

[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*", "text-embedding-*"]
timeout_s = 2

[models."gpt-4o"]
input_per_mtok = 2.0
output_per_mtok = 8.0
"""
    edge = EdgeProcess(tmp, config=config, env={"MOCK_KEY": PROVIDER_KEY})
    yield edge, mock
    edge.stop()
    mock.stop()


@pytest.fixture
def client(stack) -> Iterator[openai.OpenAI]:
    edge, _ = stack
    # closed after the test: a pooled socket left to the GC is a ResourceWarning in
    # whichever later test the collector happens to run
    with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="client-key", max_retries=0) as client:
        yield client


def test_chat_non_stream(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello edge"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Mock reply to: hello edge"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    meta = raw.http_response.json()["metadata"]
    assert meta["provider"] == "mock"
    assert meta["cached"] is False
    assert meta["cache_tier"] is None
    usage = completion.usage
    expected = (usage.prompt_tokens * 2.0 + usage.completion_tokens * 8.0) / 1e6
    assert meta["cost_usd"] == pytest.approx(expected)
    assert raw.headers["x-edge-provider"] == "mock"
    assert float(raw.headers["x-edge-cost-usd"]) == pytest.approx(expected)
    assert float(raw.headers["x-edge-latency-ms"]) > 0
    assert len(raw.headers["x-request-id"]) >= 8


def test_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": "stream me please"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: stream me please"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # edge asked upstream for usage, but this client did not: no usage-only chunk
    assert all(c.choices for c in chunks)


def test_chat_stream_include_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count my tokens"}]))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_stream_relayed_raw_ends_with_done(stack) -> None:
    edge, _ = stack
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-edge-provider"] == "mock"
        text = response.read().decode()
    assert text.rstrip().endswith("data: [DONE]")


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) > 0
    # the SDK asks for base64 by default and decodes it; ask for floats explicitly too
    floats = client.embeddings.create(model="text-embedding-3-small", input="a",
                                      encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding)


def test_embeddings_base64_raw(stack) -> None:
    edge, _ = stack
    r = httpx.post(f"{edge.url}/v1/embeddings",
                   json={"model": "text-embedding-3-small", "input": "a",
                         "encoding_format": "base64"})
    assert r.status_code == 200
    vector = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(vector) % 4 == 0
    assert struct.unpack(f"{len(vector)//4}f", vector)


def test_unknown_fields_pass_through(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "extra"}],
        extra_body={"some_vendor_field": {"x": 1}})
    assert completion.choices[0].message.content == "Mock reply to: extra"


def test_request_id_echoed(stack) -> None:
    edge, _ = stack
    r = httpx.post(f"{edge.url}/v1/chat/completions", headers={"x-request-id": "req-abc-123"},
                   json={"model": "gpt-4o", "messages": [{"role": "user", "content": "id"}]})
    assert r.headers["x-request-id"] == "req-abc-123"
    r = httpx.post(f"{edge.url}/v1/chat/completions", headers={"x-request-id": "req-err-1"},
                   content=b"{not json")
    assert r.status_code == 400
    assert r.headers["x-request-id"] == "req-err-1"


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"", 400, None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "gpt-4o"}', 400, "messages"),
        (b'{"model": "gpt-4o", "messages": [{"content": "x"}]}', 400, "messages[0].role"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], '
         b'"temperature": "hot"}', 400, "temperature"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         400, "stream"),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', 404,
         "model"),
        (b"\xff\xfe not utf8", 400, None),
    ],
)
def test_bad_requests(stack, content: bytes, status: int, param: str | None) -> None:
    edge, _ = stack
    r = httpx.post(f"{edge.url}/v1/chat/completions", content=content,
                   headers={"content-type": "application/json"})
    assert r.status_code == status
    err = _error(r)
    assert err["param"] == param
    if param:
        assert param.split("[")[0] in err["message"]


def test_deep_nesting_rejected(stack) -> None:
    edge, _ = stack
    deep = b"[" * 200 + b"]" * 200
    body = (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "x": '
            + deep + b"}")
    r = httpx.post(f"{edge.url}/v1/chat/completions", content=body)
    assert r.status_code == 400
    assert "nested" in _error(r)["message"]


def test_unknown_path_and_method(stack) -> None:
    edge, _ = stack
    r = httpx.get(f"{edge.url}/v1/nothing-here")
    assert r.status_code == 404
    assert _error(r)["type"] == "not_found_error"
    r = httpx.get(f"{edge.url}/v1/chat/completions")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert _error(r)["code"] == "method_not_allowed"
    r = httpx.delete(f"{edge.url}/v1/embeddings")
    assert r.status_code == 405


def test_oversized_body_refused_and_server_keeps_serving(stack, client: openai.OpenAI) -> None:
    edge, _ = stack
    big = (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"x" * 100_000
           + b'"}]}')
    r = httpx.post(f"{edge.url}/v1/chat/completions", content=big)
    assert r.status_code == 413
    assert _error(r)["code"] == "request_too_large"

    # A chunked body (no Content-Length) is cut off as soon as it passes the limit.
    def chunks():
        for _ in range(100):
            yield b"x" * 4096

    r = httpx.post(f"{edge.url}/v1/chat/completions", content=chunks())
    assert r.status_code == 413
    assert client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "still here"}]
    ).choices[0].message.content == "Mock reply to: still here"


def test_upstream_4xx_passed_through(client: openai.OpenAI, stack) -> None:
    _, mock = stack
    before = mock.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "!mock status=400"}])
    assert info.value.status_code == 400
    assert mock.stats()["requests"] == before + 1  # a 400 is not retried
    assert PROVIDER_KEY not in str(info.value.body)
    assert info.value.response.headers["x-edge-provider"] == "mock"  # it did answer


def test_upstream_500_retried_then_502(client: openai.OpenAI, stack) -> None:
    _, mock = stack
    before = mock.stats()["requests"]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "!mock status=500"}])
    assert info.value.status_code == 502
    assert info.value.body["type"] == "upstream_error"  # type: ignore[index]
    assert mock.stats()["requests"] == before + 2  # max_attempts = 2


def test_upstream_timeout_is_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "!mock delay_ms=5000"}])
    assert info.value.status_code == 504


def test_upstream_invalid_json_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "!mock invalid=1"}])
    assert info.value.status_code == 502


def test_stream_cut_midway_ends_with_error_not_done(stack) -> None:
    edge, _ = stack
    body = {"model": "gpt-4o", "stream": True,
            "messages": [{"role": "user", "content": "!mock cut_after=2 words=10"}]}
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body) as response:
        text = response.read().decode()
    assert response.status_code == 200
    assert "[DONE]" not in text
    assert '"error"' in text


def test_stream_closed_before_first_chunk_fails_over(stack) -> None:
    edge, mock = stack
    before = mock.stats()["requests"]
    body = {"model": "gpt-4o", "stream": True,
            "messages": [{"role": "user", "content": "!mock close=1"}]}
    r = httpx.post(f"{edge.url}/v1/chat/completions", json=body)
    assert r.status_code == 502
    assert _error(r)["type"] == "upstream_error"
    assert mock.stats()["requests"] == before + 2  # retried: nothing had reached the client


def test_completed_streams_keep_their_upstream_connection(stack) -> None:
    """A stream read to its [DONE] hands its connection back for the next request, rather
    than costing the provider a new connection (and a TLS handshake) per stream. (The
    mock sends a stream's chunked terminator in a write after its last event.)"""
    edge, mock = stack
    with httpx.Client(base_url=mock.url) as stats:  # one kept-alive connection of its own
        before = stats.get("/mock/stats").json()["connections"]
        for i in range(4):
            body = {"model": "gpt-4o", "stream": True,
                    "messages": [{"role": "user", "content": f"keep-alive {i}"}]}
            with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body) as response:
                assert response.read().decode().rstrip().endswith("data: [DONE]")
        opened = stats.get("/mock/stats").json()["connections"] - before
    # One new connection at most (the pool may hold none yet), and one more should a
    # request win the race against the connection being handed back.
    assert opened <= 2


def test_client_disconnect_closes_upstream(stack) -> None:
    edge, mock = stack
    before = mock.stats()["disconnects"]
    body = {"model": "gpt-4o", "stream": True,
            "messages": [{"role": "user", "content": "!mock words=2000 chunk_delay_ms=5"}]}
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body) as response:
        for _ in response.iter_lines():
            break  # read one line, then hang up
    wait_until(lambda: mock.stats()["disconnects"] > before, what="upstream disconnect")


def test_a_request_whose_client_already_left_is_not_sent_upstream(stack) -> None:
    """Under a burst, clients give up while their connections wait in the listen queue;
    edge then accepts connections whose request and end are both already there. None of
    those requests may reach the upstream (nobody would read the answer)."""
    edge, mock = stack
    before = mock.stats()["requests"]
    ids = [f"gone-{n}" for n in range(20)]
    edge.signal(signal.SIGSTOP)  # nothing is accepted now: the connections queue
    try:
        for n, rid in enumerate(ids):
            body = json.dumps({"model": "gpt-4o", "stream": n % 2 == 0, "messages": [
                {"role": "user", "content": f"left before the answer {n}"}]}).encode()
            with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as conn:
                conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n"
                             b"Content-Type: application/json\r\nx-request-id: %s\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (rid.encode(), len(body), body))
    finally:
        edge.signal(signal.SIGCONT)

    def logged() -> list[dict]:
        """Each one's line: dropped as its head was read, or a 499 if it left later."""
        lines = [json.loads(line) for line in edge.output().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("request_id") in ids and (
            line.get("msg", "").startswith("request dropped")
            or (line.get("msg") == "request" and line.get("status") == 499))]

    wait_until(lambda: len(logged()) == len(ids), what="all 20 requests handled")
    assert sorted(line["request_id"] for line in logged()) == sorted(ids)
    assert mock.stats()["requests"] == before
    answer = httpx.post(f"{edge.url}/v1/chat/completions", headers={"Cache-Control": "no-store"},
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "here"}]})
    assert answer.status_code == 200
    assert mock.stats()["requests"] == before + 1


def test_stream_events_reach_the_client_while_the_upstream_pauses(stack) -> None:
    """edge sends what it has before waiting on the upstream again: the first words arrive
    while the mock is still pausing between the rest (a relay that held them would hang
    here until the read timeout, since the whole stream takes a minute)."""
    edge, _ = stack
    body = {"model": "gpt-4o", "stream": True,
            "messages": [{"role": "user", "content": "!mock words=60 chunk_delay_ms=1000"}]}
    words: list[str] = []
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body,
                      timeout=httpx.Timeout(30.0)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    words.append(delta["content"])
            if len(words) == 2:
                break
    assert len(words) == 2


def test_health_endpoints(stack) -> None:
    edge, _ = stack
    health = httpx.get(f"{edge.url}/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy"
    assert body["version"]
    assert body["cache"] == {"l1_healthy": True, "l2_healthy": False, "l2_configured": False}
    assert body["providers"] == {"mock": {"configured": True, "healthy": True,
                                          "keys": {"total": 1, "available": 1}}}
    assert httpx.get(f"{edge.url}/health/live").status_code == 200
    assert httpx.get(f"{edge.url}/health/ready").status_code == 200


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    # [models.*] names and price-table models the provider's globs cover; no glob patterns
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4", "text-embedding-3-small"} <= ids
    assert not any("*" in i for i in ids)
    assert "claude-3-haiku-20240307" not in ids


def test_metrics_on_both_listeners(stack, client: openai.OpenAI) -> None:
    edge, _ = stack
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "m"}])
    for url in (f"{edge.url}/metrics", f"{edge.metrics_url}/metrics"):
        text = httpx.get(url).text
        assert 'llm_edge_requests_total{endpoint="chat",status="2xx"}' in text
        assert "llm_edge_cost_usd_total" in text
        assert PROVIDER_KEY not in text


def test_provider_key_never_logged(stack) -> None:
    edge, _ = stack
    assert PROVIDER_KEY not in edge.output()


def test_async_client_concurrent(stack) -> None:
    """The async SDK (httpx on Trio via anyio) with concurrent requests."""
    import trio

    edge, _ = stack

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0)
        out: list[str] = []

        async def one(i: int) -> None:
            c = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"n{i}"}])
            out.append(c.choices[0].message.content or "")

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        await client.close()
        return out

    results = trio.run(main)
    assert sorted(results) == sorted(f"Mock reply to: n{i}" for i in range(20))
