"""The streaming load generator: many SSE clients in one Trio process, one connection each.

`benchmarks.streams` starts several of these processes (never inside a proxy's process)
and splits the streams between them. Each stream opens its own TCP connection at its
planned moment (all at once for a burst, evenly over `ramp_s` for a ramp), posts a chat
request with a prompt no other stream uses (so no proxy can answer from its cache) and
reads the answer with h11, stamping each content event as it arrives.

What a stream reports:
- time to first event: from just before the connect to the first content event;
- lateness of event i: how far it arrives behind `first + i * token_ms`, the upstream's
  own pace (the paced mock sets its wake-ups from the stream's start), never below 0.

The planned opening moments are wall-clock times, so that processes started one after
the other still open their streams on one shared schedule.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import h11
import orjson
import trio

_CONTENT = re.compile(rb'"content":\s*"[^"]')
_RECV = 65536


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client process's share of a run."""

    port: int
    headers: tuple[tuple[str, str], ...]
    model: str
    first: int  # the index of this process's first stream in the whole run
    count: int  # how many streams this process opens
    total: int  # streams in the whole run (a ramp spreads all of them)
    start_at: float  # wall-clock time of the run's first opening
    ramp_s: float  # 0: a burst
    tokens: int  # content events each answer should carry
    token_ms: float
    timeout_s: float
    tag: str  # makes prompts unique across runs against one proxy


@dataclass(slots=True)
class ClientResult:
    """What one process saw: per-stream first-event times, all lateness samples."""

    completed: int = 0
    errors: int = 0
    first_event_s: list[float] = field(default_factory=list)
    lateness_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)


def _request(http: h11.Connection, spec: ClientSpec, index: int) -> bytes:
    body = orjson.dumps({
        "model": spec.model, "stream": True,
        "messages": [{"role": "user", "content": f"stream {spec.tag}-{index}: say something"}],
    })
    head = [("Host", f"127.0.0.1:{spec.port}"), ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))), ("Connection", "close"), *spec.headers]
    data = http.send(h11.Request(method="POST", target="/v1/chat/completions", headers=head))
    return (data or b"") + (http.send(h11.Data(data=body)) or b"") + (
        http.send(h11.EndOfMessage()) or b"")


async def _one(spec: ClientSpec, index: int, result: ClientResult) -> None:
    http = h11.Connection(h11.CLIENT)
    wire = _request(http, spec, index)
    opened = time.monotonic()
    arrivals: list[float] = []
    pending = b""
    with trio.move_on_after(spec.timeout_s) as scope:
        stream = await trio.open_tcp_stream("127.0.0.1", spec.port)
        async with stream:
            await stream.send_all(wire)
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(await stream.receive_some(_RECV))
                    continue
                if isinstance(event, h11.Response) and event.status_code != 200:
                    raise RuntimeError(f"HTTP {event.status_code}")
                if isinstance(event, h11.Data):
                    now = time.monotonic()
                    pending += bytes(event.data)
                    *lines, pending = pending.split(b"\n")
                    arrivals += [now for line in lines
                                 if line.startswith(b"data:") and _CONTENT.search(line)]
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    if scope.cancelled_caught:
        raise RuntimeError(f"timed out after {spec.timeout_s:g}s with {len(arrivals)} events")
    if len(arrivals) != spec.tokens:
        raise RuntimeError(f"{len(arrivals)} content events, expected {spec.tokens}")
    result.first_event_s.append(arrivals[0] - opened)
    pace = spec.token_ms / 1000.0
    result.lateness_s += [max(0.0, t - arrivals[0] - i * pace) for i, t in enumerate(arrivals)]
    result.completed += 1


async def _run(spec: ClientSpec) -> ClientResult:
    result = ClientResult()
    # The schedule is wall-clock; Trio sleeps on its own clock, so translate once.
    offset = trio.current_time() - time.time()

    async def stream(index: int) -> None:
        await trio.sleep_until(offset + spec.start_at + index * spec.ramp_s / spec.total)
        try:
            await _one(spec, index, result)
        except (OSError, RuntimeError, h11.ProtocolError, trio.BrokenResourceError) as exc:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(f"{type(exc).__name__}: {exc}")

    async with trio.open_nursery() as nursery:
        for index in range(spec.first, spec.first + spec.count):
            nursery.start_soon(stream, index)
    return result


def run_clients(spec: ClientSpec) -> ClientResult:
    """A client process's entry point (picklable for multiprocessing)."""
    return trio.run(_run, spec)
