"""The JSON logger writes off the caller's thread, yet loses nothing and holds a bounded queue.

Lines are queued and written by a background thread; these tests check the three promises
that makes (edge.logs): a line reaches the stream by itself soon after it is logged, the
queue never holds more than MAX_PENDING lines, and everything queued is written when
`edge serve` drains on SIGTERM and exits.
"""

from __future__ import annotations

import io
import re
import signal

import httpx
import orjson
from _servers import EdgeProcess, MockUpstream, wait_until

from edge.logs import MAX_PENDING, JsonLogger

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_a_line_is_written_without_an_explicit_flush() -> None:
    stream = io.StringIO()
    logger = JsonLogger(stream=stream)
    logger.add_secrets(["sk-secret-abcdef"])
    logger.info("hello", key="sk-secret-abcdef")
    wait_until(lambda: stream.getvalue().endswith("\n"), deadline=10, what="the writer thread")
    record = orjson.loads(stream.getvalue())
    assert record["msg"] == "hello"
    assert record["key"] == "[redacted]"
    assert TS.fullmatch(record["ts"])


def test_the_queue_is_bounded_and_keeps_order() -> None:
    stream = io.StringIO()
    logger = JsonLogger(stream=stream)
    total = MAX_PENDING * 2 + 7
    for i in range(total):
        logger.info("line", i=i)
    # Whatever the writer thread has done meanwhile, at most MAX_PENDING lines are queued.
    written = stream.getvalue().count("\n")
    assert written >= total - MAX_PENDING
    logger.flush()
    numbers = [orjson.loads(line)["i"] for line in stream.getvalue().splitlines()]
    assert numbers == list(range(total))


def test_sigterm_exit_writes_every_queued_line(tmp_path, mock_upstream: MockUpstream) -> None:
    edge = EdgeProcess(tmp_path, env={"OPENAI_API_KEY": "sk-test-logs",
                                      "OPENAI_BASE_URL": f"{mock_upstream.url}/v1"})
    try:
        with httpx.Client(base_url=edge.url, timeout=30) as client:
            for i in range(5):
                body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"n{i}"}]}
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        edge.signal(signal.SIGTERM)
        assert edge.wait() == 0
        output = edge.output()
    finally:
        edge.stop()
    records = [orjson.loads(line) for line in output.splitlines()]
    assert sum(r["msg"] == "request" for r in records) == 5
    assert records[-1]["msg"] == "edge stopped"
    assert all(TS.fullmatch(r["ts"]) for r in records)
