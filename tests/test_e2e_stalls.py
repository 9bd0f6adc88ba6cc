"""Stalled upstreams, hedging on headers and edge's own pool limit (SPEC §3, §10).

The upstreams are in-test HTTP servers speaking OpenAI's and Anthropic's real wire formats
(JSON answers and SSE streams) that stall where the last user message says: before the
headers, between the headers and a slowly trickled body, or between two stream events. A
second server ("backup") always answers at once and counts what it was asked, so a test
can tell whether edge failed over or hedged. Every test runs a real `edge serve`; timing
is configured small (1-2 s) and never asserted, only outcomes are.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trio
from _servers import EdgeProcess, wait_until

from edge.config import RoutingConfig
from edge.errors import UpstreamStatus
from edge.failover import Attempts
from edge.fastpath import Breaker, DeploymentStats
from edge.keypool import KeyPool
from edge.metrics import Metrics
from edge.routing import Deployment

# What the "slow" upstream does, chosen by the last user message.
DIRECTIVES = ("stall-head", "trickle-json", "late-json", "stall-sse", "rate-limit")
LATE_S = 2.0  # "late-json": headers at once, the body this much later
CLIENT_TIMEOUT = 30.0  # generous: nothing here should take more than a few seconds


class Fake:
    """One upstream server; `obeys` says whether it acts on directives (backup does not)."""

    def __init__(self, obeys: bool) -> None:
        self.obeys = obeys
        self.release = threading.Event()  # set at teardown: every stalled handler returns
        self.lock = threading.Lock()
        self.requests = 0
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def seen(self) -> None:
        with self.lock:
            self.requests += 1

    def count(self) -> int:
        with self.lock:
            return self.requests

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: Fake

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        return

    def do_POST(self) -> None:  # noqa: N802 - stdlib's name
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        self.fake.seen()
        anthropic = self.path.endswith("/messages")
        content = (body.get("messages") or [{"content": ""}])[-1].get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        directive = next((d for d in DIRECTIVES if d in text), "") if self.fake.obeys else ""
        stream = bool(body.get("stream"))
        release = self.fake.release
        try:
            if directive == "stall-head":
                release.wait(60)
                return
            if directive == "rate-limit":
                error = {"message": "slow down", "type": "rate_limit_error"}
                payload = {"type": "error", "error": error} if anthropic else {"error": error}
                self.head(429, "application/json", len(json.dumps(payload)),
                          [("retry-after", "30")])
                self.write(json.dumps(payload).encode())
                return
            if stream:
                events = _sse(anthropic, body.get("model", "m"))
                self.head(200, "text/event-stream")
                if directive == "stall-sse":
                    self.write(events[0])  # the first event, then silence
                    release.wait(60)
                    return
                self.write(b"".join(events))
                self.close_connection = True
                return
            payload = _json(anthropic, body.get("model", "m"))
            self.head(200, "application/json", len(payload))
            if directive == "trickle-json":
                for i in range(len(payload)):  # valid JSON, one byte every 0.3 s
                    self.write(payload[i:i + 1])
                    if release.wait(0.3):
                        return
                return
            if directive == "late-json" and release.wait(LATE_S):
                return
            self.write(payload)
        except OSError:
            return  # edge gave up on us: that is what the test wants

    def head(self, status: int, ctype: str, length: int | None = None,
             extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        if length is None:
            self.send_header("connection", "close")  # a stream ends when we close
        else:
            self.send_header("content-length", str(length))
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()


def _json(anthropic: bool, model: str) -> bytes:
    if anthropic:
        return json.dumps({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "fine"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}).encode()
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()


def _sse(anthropic: bool, model: str) -> list[bytes]:
    """A whole stream, one item per event (the first carries text already)."""
    if anthropic:
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 3, "output_tokens": 0}}
        events = [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "fine"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 1}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return [f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events]
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "fine"},
                              "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [],
         "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
    ]
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[Fake, Fake]]:
    slow, backup = Fake(obeys=True), Fake(obeys=False)
    yield slow, backup
    slow.close()
    backup.close()


STALLS = """
timeout_s = 2
first_byte_timeout_s = 1
stream_idle_timeout_s = 1"""


def config(slow: Fake, backup: Fake, routing: str, slow_extra: str = STALLS) -> str:
    """slow, then backup, for each kind; the solo-* models only the slow one serves."""
    tables = []
    for suffix, kind, path in (("", "openai", "/v1"), ("-claude", "anthropic", "")):
        family = "claude" if suffix else "gpt"
        for name, fake, models, extra in (
                ("slow", slow, f'["{family}-*", "solo-{family}"]', slow_extra),
                ("backup", backup, f'["{family}-*"]', "")):
            tables.append(f'[[providers]]\nname = "{name}{suffix}"\nkind = "{kind}"\n'
                          f'base_url = "{fake.url}{path}"\nmodels = {models}{extra}\n')
    return "[cache]\nenabled = false\n\n[routing]\n" + routing + "\n\n" + "\n".join(tables)


# (door, model with a backup, model without one, slow provider, backup provider)
DOORS = [("/v1/chat/completions", "gpt-4o", "solo-gpt", "slow", "backup"),
         ("/v1/messages", "claude-3-5-haiku", "solo-claude", "slow-claude", "backup-claude")]
EACH_DOOR = pytest.mark.parametrize(("door", "model", "solo", "slow_name", "backup_name"),
                                    DOORS, ids=["chat", "messages"])
JSON_AND_SSE = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


@pytest.fixture(scope="module")
def stalls_edge(fakes: tuple[Fake, Fake],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    proc = EdgeProcess(tmp_path_factory.mktemp("stalls"),
                       config=config(*fakes, "max_attempts = 2\nbreaker_failures = 1000"))
    yield proc
    proc.stop()


def ask(edge: EdgeProcess, door: str, model: str, directive: str, stream: bool,
        timeout: float = CLIENT_TIMEOUT) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "stream": stream, "max_tokens": 16,
                            "messages": [{"role": "user", "content": f"please {directive}"}]}
    return httpx.post(f"{edge.url}{door}", json=body, timeout=timeout)


def metric(edge: EdgeProcess, name: str, **labels: str) -> float:
    """One sample of `name` (0 when absent) from the metrics listener."""
    text = httpx.get(f"{edge.metrics_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[:line.index("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_timeout_error(response: httpx.Response, door: str) -> None:
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    if door == "/v1/messages":
        assert response.json()["type"] == "error"
        assert error["type"] == "timeout_error"
    else:
        assert error["code"] == "upstream_timeout"


# -- stalls before the headers ---------------------------------------------------------


@JSON_AND_SSE
@EACH_DOOR
def test_no_headers_in_first_byte_timeout_fails_over(
        stalls_edge: EdgeProcess, fakes: tuple[Fake, Fake], door: str, model: str, solo: str,
        slow_name: str, backup_name: str, stream: bool) -> None:
    before = fakes[1].count()
    response = ask(stalls_edge, door, model, "stall-head", stream)
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-provider"] == backup_name
    assert "fine" in response.text
    assert fakes[1].count() == before + 1


@JSON_AND_SSE
@EACH_DOOR
def test_no_headers_and_no_other_candidate_is_504(
        stalls_edge: EdgeProcess, door: str, model: str, solo: str, slow_name: str,
        backup_name: str, stream: bool) -> None:
    response = ask(stalls_edge, door, solo, "stall-head", stream)
    assert_timeout_error(response, door)  # nothing was streamed yet: a plain error answer


# -- stalls after the headers ----------------------------------------------------------


@EACH_DOOR
def test_json_trickled_past_timeout_is_504(
        stalls_edge: EdgeProcess, door: str, model: str, solo: str, slow_name: str,
        backup_name: str) -> None:
    # every read brings a byte, so only a deadline on the whole answer can end this
    response = ask(stalls_edge, door, solo, "trickle-json", stream=False)
    assert_timeout_error(response, door)


@EACH_DOOR
def test_stream_silent_between_events_ends_with_error_event(
        stalls_edge: EdgeProcess, door: str, model: str, solo: str, slow_name: str,
        backup_name: str) -> None:
    errors = metric(stalls_edge, "llm_edge_provider_errors_total", provider=slow_name)
    response = ask(stalls_edge, door, solo, "stall-sse", stream=True)
    assert response.status_code == 200, response.text
    text = response.text
    if door == "/v1/messages":
        assert text.startswith("event: message_start")
        last = text.rstrip().rsplit("\n\n", 1)[-1]
        assert last.startswith("event: error\n"), text
        assert json.loads(last.split("data: ", 1)[1])["error"]["type"] == "timeout_error"
        assert "message_stop" not in text
    else:
        assert '"content":"fine"' in text  # the first event reached the client
        last = text.rstrip().rsplit("\n\n", 1)[-1]
        assert json.loads(last.removeprefix("data: "))["error"]["code"] == "upstream_timeout"
        assert "[DONE]" not in text
    assert metric(stalls_edge, "llm_edge_provider_errors_total",
                  provider=slow_name) == errors + 1


# -- hedging starts only while no headers have come -----------------------------------


@pytest.fixture(scope="module")
def hedge_edge(fakes: tuple[Fake, Fake],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    # generous deadlines: only the hedge timer (300 ms) decides here
    slow_extra = "\ntimeout_s = 20\nfirst_byte_timeout_s = 20"
    proc = EdgeProcess(tmp_path_factory.mktemp("hedge"), config=config(
        *fakes, "max_attempts = 2\nhedge_after_ms = 300\nbreaker_failures = 1000",
        slow_extra=slow_extra))
    yield proc
    proc.stop()


@EACH_DOOR
def test_headers_at_once_and_a_slow_body_is_not_hedged(
        hedge_edge: EdgeProcess, fakes: tuple[Fake, Fake], door: str, model: str, solo: str,
        slow_name: str, backup_name: str) -> None:
    before, hedges = fakes[1].count(), metric(hedge_edge, "llm_edge_hedges_total")
    response = ask(hedge_edge, door, model, "late-json", stream=False)
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-provider"] == slow_name
    assert fakes[1].count() == before
    assert metric(hedge_edge, "llm_edge_hedges_total") == hedges


@JSON_AND_SSE
@EACH_DOOR
def test_no_headers_in_hedge_after_ms_is_hedged(
        hedge_edge: EdgeProcess, fakes: tuple[Fake, Fake], door: str, model: str, solo: str,
        slow_name: str, backup_name: str, stream: bool) -> None:
    before = fakes[1].count()
    hedges = metric(hedge_edge, "llm_edge_hedges_total", provider=backup_name)
    response = ask(hedge_edge, door, model, "stall-head", stream)
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-provider"] == backup_name
    assert fakes[1].count() == before + 1
    assert metric(hedge_edge, "llm_edge_hedges_total", provider=backup_name) == hedges + 1


# -- edge's own pool limit is not the provider failing ---------------------------------


def test_full_pool_is_a_503_and_never_opens_the_circuit(
        fakes: tuple[Fake, Fake], tmp_path_factory: pytest.TempPathFactory) -> None:
    slow, _ = fakes
    slow_extra = "\ntimeout_s = 20\nfirst_byte_timeout_s = 1\nmax_connections = 1"
    proc = EdgeProcess(tmp_path_factory.mktemp("pool"), config=config(
        *fakes, "max_attempts = 1\nbreaker_failures = 1", slow_extra=slow_extra))
    try:
        with ThreadPoolExecutor(1) as pool:
            before = slow.count()
            # the one connection is busy for LATE_S: headers at once, the body later
            first = pool.submit(ask, proc, "/v1/chat/completions", "solo-gpt", "late-json",
                                False)
            wait_until(lambda: slow.count() == before + 1, what="the first request upstream")
            second = ask(proc, "/v1/chat/completions", "solo-gpt", "", stream=False)
            assert second.status_code == 503, second.text
            assert second.json()["error"]["code"] == "upstream_pool_exhausted"
            assert int(second.headers["retry-after"]) >= 1
            assert first.result(CLIENT_TIMEOUT).status_code == 200
        health = httpx.get(f"{proc.url}/health", timeout=10).json()
        assert health["providers"]["slow"]["healthy"] is True
        assert metric(proc, "llm_edge_circuit_open", provider="slow") == 0
        assert metric(proc, "llm_edge_provider_errors_total", provider="slow") == 0
        third = ask(proc, "/v1/chat/completions", "solo-gpt", "", stream=False)
        assert third.status_code == 200, third.text
    finally:
        proc.stop()


# -- backoff only before an attempt that will happen ----------------------------------


def test_last_attempt_429_is_passed_on_with_its_retry_after(
        fakes: tuple[Fake, Fake], tmp_path_factory: pytest.TempPathFactory) -> None:
    proc = EdgeProcess(tmp_path_factory.mktemp("backoff"), config=config(
        *fakes, "max_attempts = 1\nbreaker_failures = 1000"))
    try:
        for door, _, solo, _, _ in DOORS:
            # the upstream says Retry-After: 30; edge's capped backoff would be 5 s, and no
            # attempt follows, so the answer comes well inside this 4 s
            response = ask(proc, door, solo, "rate-limit", stream=False, timeout=4.0)
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "30"
    finally:
        proc.stop()


class _Named:
    """What Attempts reads of a provider: its name and its (here keyless) key pool."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.keys = KeyPool((), None)


@pytest.mark.parametrize(("hedge_after_ms", "candidates"), [(0, 1), (100, 2)],
                         ids=["sequential", "hedged"])
async def test_no_backoff_sleep_after_the_last_attempt(
        autojump_clock: trio.abc.Clock, hedge_after_ms: int, candidates: int) -> None:
    plan = [Deployment(_Named(f"p{i}"), "m", DeploymentStats(1.0, 1.0),  # type: ignore[arg-type]
                       Breaker(1000, 30.0)) for i in range(candidates)]
    calls = 0

    async def attempt(dep: Deployment) -> None:
        nonlocal calls
        calls += 1
        raise UpstreamStatus(429, "slow down", retryable=True, retry_after=3.0)

    # every candidate once: the round is over and no attempt follows it
    routing = RoutingConfig(max_attempts=candidates, hedge_after_ms=hedge_after_ms)
    began = trio.current_time()
    with pytest.raises(UpstreamStatus):
        await Attempts(plan, attempt, routing, Metrics()).run()
    assert calls == candidates
    assert trio.current_time() == began  # virtual time: not a moment slept
