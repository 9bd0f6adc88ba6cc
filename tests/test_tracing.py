"""OpenTelemetry tracing, checked against a real OTLP/HTTP receiver on loopback.

The receiver is a small threaded HTTP server in this module: it accepts POST /v1/traces,
decodes the protobuf body with opentelemetry-proto's ExportTraceServiceRequest and keeps
the spans, so the tests see exactly what a collector (Jaeger, Tempo) would receive.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _servers import EdgeProcess, MockUpstream
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from edge.config import Config
from edge.tracing import Tracing

SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
STATUS_CODE_ERROR = 2

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[str]
    resource: dict[str, Any] = field(repr=False)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


class Receiver:
    """An OTLP/HTTP trace endpoint; `url` is what OTEL_EXPORTER_OTLP_ENDPOINT should say."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.changed = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(ReceivedSpan(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(), kind=span.kind,
                        attributes=_attributes(span.attributes), status_code=span.status.code,
                        status_message=span.status.message,
                        events=[event.name for event in span.events], resource=resource))
        with self.changed:
            self.spans.extend(spans)
            self.changed.notify_all()

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0) -> bool:
        """Block until `found(spans)` holds (True) or the deadline passes (False)."""
        with self.changed:
            return self.changed.wait_for(lambda: found(list(self.spans)), timeout=timeout)

    def by_name(self) -> dict[str, ReceivedSpan]:
        with self.changed:
            return {span.name: span for span in self.spans}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, receiver: Receiver, *args: Any) -> None:
        self.receiver = receiver
        super().__init__(*args)

    def do_POST(self) -> None:  # noqa: N802 - the http.server naming
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        encoding = self.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        protobuf = self.headers.get("content-type") == "application/x-protobuf"
        if self.path != "/v1/traces" or not protobuf:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.receiver.add(request)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return  # keep test output clean


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def tracing(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracing]:
    """Tracing on, exporting to `receiver`; tests call `shutdown()` to flush, then look."""
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_PROPAGATORS",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    t = Tracing.from_config(Config(enable_tracing=True))
    yield t
    t.shutdown()


def test_spans_nest_with_attributes_and_service_name(tracing: Tracing,
                                                     receiver: Receiver) -> None:
    assert tracing.enabled
    with tracing.request("POST /v1/chat/completions", {}) as root:
        root.set("http.response.status_code", 200)
        with tracing.span("cache.lookup", tier="l1") as lookup:
            lookup.set("hit", False)
            lookup.set("ignored", None)
        with tracing.span("upstream.attempt", provider="mock", model="gpt-4o", status=None) as up:
            up.set("status", 200)
    tracing.shutdown()
    spans = receiver.by_name()
    assert set(spans) == {"POST /v1/chat/completions", "cache.lookup", "upstream.attempt"}
    root_span = spans["POST /v1/chat/completions"]
    assert root_span.kind == SPAN_KIND_SERVER
    assert root_span.parent_id == ""
    assert root_span.attributes == {"http.response.status_code": 200}
    for child in ("cache.lookup", "upstream.attempt"):
        assert spans[child].trace_id == root_span.trace_id
        assert spans[child].parent_id == root_span.span_id
        assert spans[child].kind == SPAN_KIND_INTERNAL
    assert spans["cache.lookup"].attributes == {"tier": "l1", "hit": False}
    assert spans["upstream.attempt"].attributes == {"provider": "mock", "model": "gpt-4o",
                                                    "status": 200}
    assert root_span.resource["service.name"] == "edge"
    assert root_span.status_code != STATUS_CODE_ERROR


def test_request_continues_the_clients_traceparent(tracing: Tracing, receiver: Receiver) -> None:
    headers = {b"traceparent": TRACEPARENT.encode(), b"tracestate": b"vendor=abc",
               b"content-type": b"application/json"}
    with tracing.request("POST /v1/chat/completions", headers), tracing.span("cache.lookup"):
        pass  # empty spans: only their ids and parentage are under test
    tracing.shutdown()
    spans = receiver.by_name()
    root = spans["POST /v1/chat/completions"]
    assert root.trace_id == CLIENT_TRACE
    assert root.parent_id == CLIENT_SPAN
    assert spans["cache.lookup"].trace_id == CLIENT_TRACE
    assert spans["cache.lookup"].parent_id == root.span_id


def test_inject_puts_the_current_span_in_upstream_headers(tracing: Tracing,
                                                          receiver: Receiver) -> None:
    headers = {b"traceparent": TRACEPARENT.encode(), b"tracestate": b"vendor=abc"}
    upstream = [("content-type", "application/json"), ("Traceparent", "00-stale-stale-00")]
    with tracing.request("POST /v1/chat/completions", headers), tracing.span("upstream.attempt"):
        tracing.inject(upstream)
    tracing.shutdown()
    attempt = receiver.by_name()["upstream.attempt"]
    names = [name.lower() for name, _ in upstream]
    assert names.count("traceparent") == 1  # replaced, not duplicated
    sent = dict(upstream)
    assert sent["content-type"] == "application/json"
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"
    assert sent["tracestate"] == "vendor=abc"


def test_inject_outside_any_span_adds_nothing(tracing: Tracing) -> None:
    upstream = [("content-type", "application/json")]
    tracing.inject(upstream)
    assert upstream == [("content-type", "application/json")]


async def test_trio_child_tasks_inherit_the_current_span(tracing: Tracing,
                                                         receiver: Receiver) -> None:
    both_started = trio.Event()
    started = 0

    async def attempt(provider: str) -> None:
        nonlocal started
        with tracing.span("upstream.attempt", provider=provider):
            started += 1
            if started == 2:
                both_started.set()
            await both_started.wait()  # both spans open at once, as in a hedge race

    with tracing.request("POST /v1/chat/completions", {}) as root:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "a")
            nursery.start_soon(attempt, "b")
        root.set("done", True)
        with tracing.span("after"):
            pass  # the children's spans did not leak into this task's context
    tracing.shutdown()
    spans = receiver.spans
    root_span = next(s for s in spans if s.name == "POST /v1/chat/completions")
    attempts = [s for s in spans if s.name == "upstream.attempt"]
    assert sorted(s.attributes["provider"] for s in attempts) == ["a", "b"]
    assert all(s.parent_id == root_span.span_id for s in attempts)
    assert next(s for s in spans if s.name == "after").parent_id == root_span.span_id


async def test_errors_mark_spans_but_cancellation_does_not(tracing: Tracing,
                                                           receiver: Receiver) -> None:
    with tracing.span("explicit") as span:
        span.error("upstream said 500")
    with pytest.raises(ValueError, match="bad input"), tracing.span("raised"):
        raise ValueError("bad input")
    with trio.CancelScope() as scope, tracing.span("cancelled"):
        scope.cancel()
        await trio.sleep_forever()
    tracing.shutdown()
    spans = receiver.by_name()
    assert spans["explicit"].status_code == STATUS_CODE_ERROR
    assert spans["explicit"].status_message == "upstream said 500"
    assert spans["raised"].status_code == STATUS_CODE_ERROR
    assert spans["raised"].status_message == "ValueError: bad input"
    assert "exception" in spans["raised"].events
    assert spans["cancelled"].status_code != STATUS_CODE_ERROR
    assert spans["cancelled"].attributes == {"edge.cancelled": True}


def test_otel_service_name_overrides_the_default(receiver: Receiver,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-eu-1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    tracing = Tracing.from_config(Config(enable_tracing=True))
    with tracing.span("x"):
        pass  # an empty span: only its resource is under test
    tracing.shutdown()
    tracing.shutdown()  # twice is harmless
    assert receiver.by_name()["x"].resource["service.name"] == "edge-eu-1"


_DISABLED_SCRIPT = """
import sys
import edge.app, edge.server  # everything a server imports, so only tracing's own use is measured
before = {m for m in sys.modules if m.startswith("opentelemetry")}
from edge.config import Config
from edge.tracing import Tracing
tracing = Tracing.from_config(Config())
assert tracing.enabled is False
with tracing.request("POST /v1/chat/completions", {b"traceparent": b"00-x-y-01"}) as root:
    root.set("k", 1)
    with tracing.span("cache.lookup", tier="l1") as child:
        child.error("nothing happens")
headers = [("content-type", "application/json")]
tracing.inject(headers)
assert headers == [("content-type", "application/json")], headers
tracing.shutdown()
after = {m for m in sys.modules if m.startswith("opentelemetry")}
assert after == before, sorted(after - before)
tracer_parts = ("opentelemetry.sdk.trace", "opentelemetry.propagate", "opentelemetry.exporter")
assert not [m for m in after if m.startswith(tracer_parts)], sorted(after)
print("ok")
"""


def test_disabled_is_a_noop_that_imports_no_opentelemetry(tmp_path: Path) -> None:
    # A fresh interpreter: this test process has imported opentelemetry already.
    # (redis-py 8 itself imports opentelemetry's metrics SDK when it is installed, hence
    # the before/after comparison rather than "no opentelemetry module at all".)
    done = subprocess.run([sys.executable, "-c", _DISABLED_SCRIPT], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- end to end through `edge serve` ----------------------------------------------------


def _descends(span: ReceivedSpan, ancestor: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
    by_id = {s.span_id: s for s in spans if s.trace_id == ancestor.trace_id}
    current: ReceivedSpan | None = span
    while current is not None and current.parent_id:
        if current.parent_id == ancestor.span_id:
            return True
        current = by_id.get(current.parent_id)
    return False


def test_edge_serve_exports_a_request_trace(tmp_path: Path, receiver: Receiver,
                                            mock_upstream: MockUpstream) -> None:
    """Needs app.py to call Tracing (request span, cache.lookup, upstream.attempt)."""
    config = f"""
[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock_upstream.url}/v1"
api_key = "env:PROVIDER_KEY"
models = ["gpt-*"]
timeout_s = 10
"""
    env = {"PROVIDER_KEY": "sk-test-tracing", "ENABLE_TRACING": "true",
           "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_SERVICE_NAME": "", "OTEL_RESOURCE_ATTRIBUTES": ""}
    edge = EdgeProcess(tmp_path, config=config, env=env)
    try:
        response = httpx.post(
            f"{edge.url}/v1/chat/completions", timeout=20, headers={"traceparent": TRACEPARENT},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "trace me"}]})
        assert response.status_code == 200, response.text
    finally:
        code = edge.stop()  # a clean drain flushes the exporter
    assert code == 0, edge.log_path.read_text(errors="replace")

    def complete(spans: list[ReceivedSpan]) -> bool:
        servers = [s for s in spans if s.name == "POST /v1/chat/completions"
                   and s.trace_id == CLIENT_TRACE]
        if not servers:
            return False
        names = {s.name for s in spans if _descends(s, servers[0], spans)}
        return {"cache.lookup", "upstream.attempt"} <= names

    # Every export finished before edge exited (the exporter waits for our answer), so
    # there is nothing left to wait for beyond a small margin.
    assert receiver.wait_for(complete, timeout=2.0), (
        "no server span with cache.lookup and upstream.attempt under it in the client's "
        f"trace; received: {[(s.name, s.trace_id) for s in receiver.spans]}")
    spans = list(receiver.spans)
    server = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert server.kind == SPAN_KIND_SERVER
    assert server.parent_id == CLIENT_SPAN
    assert server.resource["service.name"] == "edge"
    attempt = next(s for s in spans if s.name == "upstream.attempt")
    assert attempt.trace_id == CLIENT_TRACE
    assert attempt.attributes["provider"] == "mock"
    assert attempt.attributes["model"] == "gpt-4o"
    assert str(attempt.attributes["status"]) == "200"
