"""An HTTP/1.1 load generator: closed loop (like wrk) and open loop at a constant rate.

Closed loop: each of N keep-alive connections sends one POST, waits for the whole answer,
records the latency and sends the next, for a fixed duration (or a fixed number of
requests). Open loop (``run_rate``): requests are due at a constant rate whatever the
server does, like wrk2; each one goes out on an idle keep-alive connection (a new one is
opened when none is idle) and its latency counts from the moment it was *due*, so a
server that stalls is charged for the queue it causes (no coordinated omission).

It must cost far less per request than the Python servers it measures, so it is a bare
``selectors`` (epoll) loop over non-blocking sockets with a minimal response parser
written for exactly this job: status line, ``content-length`` or chunked bodies,
``connection: close``. No Trio here on purpose: a scheduler hop per socket operation is
the very overhead being measured on the other side. ``processes > 1`` splits the
connections over worker processes to use more cores; every result carries the client's
own CPU time so a saturated client shows.

A body may contain ``SEQ_MARKER``; each request then replaces it with a fresh token
(``nonce-counter``: every request distinct, so a cache always misses) or, with
``key_space=K``, with one of K tokens drawn at random (a bounded working set).

Library use: ``run_load(LoadSpec(...))`` and ``run_rate(RateSpec(...))``, both
returning a ``LoadResult``. Command line:
``python -m benchmarks.loadgen --url http://127.0.0.1:8001/ -c 64 -d 10 --body '{}'``
(add ``--rate 100`` for the open loop).
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import json
import math
import multiprocessing
import random
import secrets
import selectors
import socket
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

_RECV_BYTES = 65536
_SWEEP_EVERY_S = 0.25
_RECONNECT_BACKOFF_S = 0.05
_LATE_NS = 1_000_000  # an open-loop request sent this long after it was due is "late"
_SPIN_NS = 1_500_000  # the open loop polls, rather than sleeps, this close to a due time

SEQ_MARKER = b"@@SEQ@@"


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to send, where, how hard and for how long (closed loop).

    ``max_requests`` > 0 stops after that many requests (split over the processes),
    or at ``duration_s``, whichever comes first. ``key_space`` and ``nonce`` shape the
    token that replaces ``SEQ_MARKER`` in the body (see the module docstring).
    """

    host: str
    port: int
    path: str = "/"
    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = ()
    connections: int = 64
    duration_s: float = 10.0
    processes: int = 1
    timeout_s: float = 10.0
    key_space: int = 0
    max_requests: int = 0
    nonce: str = ""


@dataclass(frozen=True, slots=True)
class Flow:
    """One kind of request in an open-loop mix, and its share of the rate."""

    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    weight: float = 1.0
    key_space: int = 0


@dataclass(frozen=True, slots=True)
class RateSpec:
    """An open-loop run: ``rate`` requests per second for ``duration_s``, drawn from flows."""

    host: str
    port: int
    flows: tuple[Flow, ...]
    rate: float = 100.0
    duration_s: float = 10.0
    path: str = "/"
    max_connections: int = 256
    timeout_s: float = 10.0
    seed: int = 0
    nonce: str = ""


@dataclass(slots=True)
class LoadResult:
    """Throughput and latency of one run; latencies cover every complete answer.

    ``late`` (open loop only) counts requests that left more than 1 ms after they were
    due: the client, or the connection cap, could not keep up with the rate.
    """

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    duration_s: float
    client_cpu_s: float
    statuses: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    late: int = 0
    done_ns: array[int] = field(default_factory=lambda: array("q"), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output (without the per-answer timeline)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "done_ns"}

    def rate_between(self, start_ns: int, end_ns: int) -> float:
        """2xx answers per second that completed in [start_ns, end_ns) of
        ``time.perf_counter_ns`` (one clock for every process on Linux)."""
        done = sum(1 for t in self.done_ns if start_ns <= t < end_ns)
        return done / ((end_ns - start_ns) / 1e9)


def build_request(spec: LoadSpec) -> bytes:
    """Encode the one request every connection repeats, once (a body without a marker)."""
    return _Maker(spec.host, spec.port, spec.path, spec.body, spec.headers)()


class _Maker:
    """The bytes of the next request: fixed, unique per call, or drawn from a key space."""

    __slots__ = ("head", "parts", "fixed", "key_space", "nonce", "counter", "rng")

    def __init__(self, host: str, port: int, path: str, body: bytes,
                 headers: Sequence[tuple[str, str]], key_space: int = 0, nonce: str = "",
                 seed: int = 0) -> None:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
                 "Content-Type: application/json"]
        lines += [f"{name}: {value}" for name, value in headers]
        self.head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self.parts = body.split(SEQ_MARKER)
        self.fixed = self._encode(body) if len(self.parts) == 1 else None
        self.key_space = key_space
        self.nonce = nonce or secrets.token_hex(4)
        self.counter = itertools.count(1)
        self.rng = random.Random(seed)

    def _encode(self, body: bytes) -> bytes:
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def __call__(self) -> bytes:
        if self.fixed is not None:
            return self.fixed
        if self.key_space > 0:
            token = str(self.rng.randrange(self.key_space)).encode()
        else:
            token = f"{self.nonce}-{next(self.counter)}".encode()
        return self._encode(token.join(self.parts))


class _Conn:
    """One keep-alive connection and the parse state of the answer it is waiting for."""

    __slots__ = (
        "sock", "buf", "out", "sent_at", "head_end", "body_end", "chunked", "chunk_pos",
        "status", "close", "retry_at", "busy",
    )

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.out = b""
        self.sent_at = 0
        self.retry_at = 0.0
        self.busy = False  # a request is out and its answer not complete
        self._reset_parse()

    def _reset_parse(self) -> None:
        self.head_end = -1
        self.body_end = -1
        self.chunked = False
        self.chunk_pos = 0
        self.status = 0
        self.close = False

    def reset(self) -> None:
        """Forget the answer in progress (after a complete one or a broken connection)."""
        self.buf.clear()
        self._reset_parse()

    def parse(self) -> bool:
        """Advance over the buffered bytes; True when one complete answer is buffered.

        Raises ValueError on bytes that are not an HTTP/1.1 answer.
        """
        buf = self.buf
        if self.head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(buf[:end]).lower()
            if not head.startswith(b"http/1."):
                raise ValueError("not an HTTP/1.x status line")
            self.status = int(head[9:12])
            self.head_end = end + 4
            self.close = b"\r\nconnection: close" in head
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                value = head[at + 17 : stop if stop >= 0 else len(head)]
                self.body_end = self.head_end + int(value)
            elif b"\r\ntransfer-encoding:" in head and b"chunked" in head:
                self.chunked = True
                self.chunk_pos = self.head_end
            elif self.status in (204, 304) or 100 <= self.status < 200:
                self.body_end = self.head_end
            else:
                # Body delimited by the end of the connection.
                self.close = True
                return False
        if self.chunked:
            return self._parse_chunks()
        return len(buf) >= self.body_end

    def _parse_chunks(self) -> bool:
        buf = self.buf
        pos = self.chunk_pos
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return False
            size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                # Last chunk: trailers (normally none) end with an empty line.
                if buf.find(b"\r\n\r\n", line_end) >= 0:
                    return True
                self.chunk_pos = pos
                return False
            data_end = line_end + 2 + size + 2
            if len(buf) < data_end:
                self.chunk_pos = pos
                return False
            pos = data_end
            self.chunk_pos = pos


@dataclass(slots=True)
class _Partial:
    ok: int
    errors: int
    duration_s: float
    cpu_s: float
    latencies_ns: bytes
    statuses: dict[str, int]
    error_kinds: dict[str, int]
    late: int = 0
    done_ns: bytes = b""


class _Broken(Exception):
    """The connection cannot carry on; ``kind`` is the error bucket it counts in ("": none)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class _Loop:
    """The socket work both loops share: send, flush, receive, close, and the tallies."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.latencies = array("q")
        self.done = array("q")  # perf_counter_ns of every 2xx answer: rate over time
        self.statuses: Counter[str] = Counter()
        self.error_kinds: Counter[str] = Counter()
        self.ok = 0
        self.errors = 0
        self.inflight = 0
        self.timeout_ns = int(timeout_s * 1e9)

    def open(self, conn: _Conn) -> None:
        """Connect ``conn``; raises OSError."""
        conn.sock = _connect(self.host, self.port)
        self.sel.register(conn.sock, selectors.EVENT_READ, conn)

    def send(self, conn: _Conn, request: bytes, sent_at: int) -> None:
        """Start one request; ``sent_at`` is when its latency starts. Raises OSError."""
        sock = conn.sock
        assert sock is not None
        conn.sent_at = sent_at
        conn.busy = True
        self.inflight += 1
        sent = sock.send(request)
        if sent < len(request):
            conn.out = request[sent:]
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def flush(self, conn: _Conn) -> None:
        """Send more of a request the socket could not take at once. Raises _Broken."""
        sock = conn.sock
        assert sock is not None
        try:
            sent = sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            raise _Broken("write") from None
        conn.out = conn.out[sent:]
        if not conn.out:
            self.sel.modify(sock, selectors.EVENT_READ, conn)

    def receive(self, conn: _Conn) -> bool:
        """Read what arrived; True when a whole answer is in (and recorded). Raises _Broken.

        After True the parse state still holds the answer's ``close`` flag: the caller
        resets the connection for the next request, or closes it.
        """
        sock = conn.sock
        assert sock is not None
        try:
            data = sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            raise _Broken("read") from None
        if data:
            conn.buf += data
            try:
                complete = conn.parse()
            except ValueError:
                raise _Broken("parse") from None
        elif conn.busy and conn.head_end >= 0 and conn.body_end < 0 and not conn.chunked:
            conn.close = True  # body delimited by connection close
            complete = True
        elif not conn.busy:
            raise _Broken("")  # an idle keep-alive connection the server let go: no error
        else:
            # Closed with our request unanswered: wrk counts this as a read error too.
            raise _Broken("closed" if not conn.buf else "read")
        if not complete or not conn.busy:
            return False
        now = time.perf_counter_ns()
        self.latencies.append(now - conn.sent_at)
        status = conn.status
        self.statuses[str(status)] += 1
        if 200 <= status < 300:
            self.ok += 1
            self.done.append(now)
        else:
            self.errors += 1
            self.error_kinds["status"] += 1
        conn.busy = False
        self.inflight -= 1
        return True  # the caller reads conn.close, then resets or closes the connection

    def close(self, conn: _Conn) -> None:
        """Close the socket and forget any answer in progress."""
        if conn.sock is not None:
            self.sel.unregister(conn.sock)
            conn.sock.close()
            conn.sock = None
        if conn.busy:
            conn.busy = False
            self.inflight -= 1
        conn.reset()
        conn.out = b""

    def fail(self, conn: _Conn, kind: str) -> None:
        """Count an error of ``kind`` and close the connection."""
        self.errors += 1
        self.error_kinds[kind] += 1
        self.close(conn)
        conn.retry_at = time.monotonic() + _RECONNECT_BACKOFF_S

    def events(self, timeout: float) -> list[tuple[_Conn, int]]:
        """Ready connections and their event masks."""
        return [(key.data, mask) for key, mask in self.sel.select(timeout)]

    def stale_before(self) -> int:
        """Requests sent before this perf_counter_ns stamp have timed out."""
        return time.perf_counter_ns() - self.timeout_ns

    def partial(self, elapsed: float, cpu: float, late: int = 0) -> _Partial:
        return _Partial(self.ok, self.errors, elapsed, cpu, self.latencies.tobytes(),
                        dict(self.statuses), dict(self.error_kinds), late,
                        self.done.tobytes())

    def shutdown(self, conns: Sequence[_Conn]) -> None:
        for conn in conns:
            if conn.sock is not None:
                conn.sock.close()
                conn.sock = None
        self.sel.close()


def _worker(spec: LoadSpec, connections: int, start_gate: Any = None,
            max_requests: int = 0) -> _Partial:
    """Drive ``connections`` connections for ``spec.duration_s``; runs in any process.

    With ``max_requests`` > 0 it stops sending after that many and returns once the
    last answer is in (or the duration is up).
    """
    make = _Maker(spec.host, spec.port, spec.path, spec.body, spec.headers,
                  spec.key_space, spec.nonce)
    loop = _Loop(spec.host, spec.port, spec.timeout_s)
    conns = [_Conn() for _ in range(connections)]
    remaining = max_requests if max_requests > 0 else -1
    now_ns = time.perf_counter_ns

    def send(conn: _Conn) -> None:
        nonlocal remaining
        if remaining == 0:
            return
        remaining -= 1 if remaining > 0 else 0
        try:
            loop.send(conn, make(), now_ns())
        except OSError:
            loop.fail(conn, "write")

    def open_and_send(conn: _Conn) -> None:
        if remaining == 0:
            return
        try:
            loop.open(conn)
        except OSError:
            loop.fail(conn, "connect")
            return
        send(conn)

    try:
        # Connect before the clock starts, like wrk does.
        for conn in conns:
            try:
                loop.open(conn)
            except OSError:
                loop.fail(conn, "connect")
        if start_gate is not None:
            start_gate.wait()
        cpu_start = time.process_time()
        started = time.monotonic()
        deadline = started + spec.duration_s
        next_sweep = started + _SWEEP_EVERY_S
        for conn in conns:
            if conn.sock is None:
                open_and_send(conn)
            else:
                send(conn)

        while True:
            now = time.monotonic()
            if now >= deadline or (remaining == 0 and loop.inflight == 0):
                break
            for conn, mask in loop.events(min(deadline - now, _SWEEP_EVERY_S)):
                if conn.sock is None:
                    continue
                try:
                    if mask & selectors.EVENT_WRITE and conn.out:
                        loop.flush(conn)
                    if not mask & selectors.EVENT_READ or not loop.receive(conn):
                        continue
                except _Broken as exc:
                    if exc.kind:
                        loop.fail(conn, exc.kind)
                    else:
                        loop.close(conn)  # the sweep reconnects it
                    continue
                if conn.close:
                    loop.close(conn)
                    open_and_send(conn)
                else:
                    conn.reset()
                    send(conn)

            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_EVERY_S
                stale = loop.stale_before()
                for conn in conns:
                    if conn.sock is None:
                        if now >= conn.retry_at:
                            open_and_send(conn)
                    elif conn.busy and conn.sent_at < stale:
                        loop.fail(conn, "timeout")
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu_start
    finally:
        loop.shutdown(conns)
    return loop.partial(elapsed, cpu)


def _pick(cumulative: list[float], rng: random.Random) -> int:
    """Index of a flow drawn by weight."""
    return min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]),
               len(cumulative) - 1)


def _rate_worker(spec: RateSpec) -> _Partial:
    """Open loop: due times on a fixed grid; idle connections take them, new ones open.

    Scheduling stops at ``duration_s``; answers still out then get up to ``timeout_s`` to
    arrive, so the slowest requests are not cut from the percentiles.
    """
    nonce = spec.nonce or secrets.token_hex(4)
    makers = [_Maker(spec.host, spec.port, spec.path, flow.body, flow.headers, flow.key_space,
                     f"{nonce}f{i}", spec.seed + i) for i, flow in enumerate(spec.flows)]
    cumulative = list(itertools.accumulate(flow.weight for flow in spec.flows))
    rng = random.Random(spec.seed)
    loop = _Loop(spec.host, spec.port, spec.timeout_s)
    conns: list[_Conn] = []
    idle: list[_Conn] = []
    pending: deque[tuple[int, int]] = deque()
    interval_ns = 1e9 / spec.rate
    now_ns = time.perf_counter_ns
    late = 0

    def new_conn() -> _Conn | None:
        conn = _Conn()
        try:
            loop.open(conn)
        except OSError:
            loop.fail(conn, "connect")
            return None
        conns.append(conn)
        return conn

    def retire(conn: _Conn, kind: str | None) -> None:
        if kind is None:
            loop.close(conn)
        else:
            loop.fail(conn, kind)
        if conn in conns:
            conns.remove(conn)
        if conn in idle:
            idle.remove(conn)

    try:
        # A few warm connections, so the first requests do not pay for the handshake.
        for _ in range(min(spec.max_connections, max(2, math.ceil(spec.rate * 0.02)))):
            conn = new_conn()
            if conn is not None:
                idle.append(conn)
        cpu_start = time.process_time()
        started = now_ns()
        end = started + int(spec.duration_s * 1e9)
        drain_until = end + loop.timeout_ns
        due_count = 0
        next_sweep = started + int(_SWEEP_EVERY_S * 1e9)
        while True:
            now = now_ns()
            while True:
                due = started + int(due_count * interval_ns)
                if due > now or due >= end:
                    break
                pending.append((due, _pick(cumulative, rng)))
                due_count += 1
            while pending:
                if idle:
                    conn = idle.pop()
                elif len(conns) < spec.max_connections:
                    fresh = new_conn()
                    if fresh is None:
                        pending.popleft()  # that request is lost: counted as a connect error
                        continue
                    conn = fresh
                else:
                    break
                due, flow = pending.popleft()
                if now_ns() - due > _LATE_NS:
                    late += 1
                try:
                    loop.send(conn, makers[flow](), due)
                except OSError:
                    retire(conn, "write")
            now = now_ns()
            if now >= end and not pending and loop.inflight == 0:
                break
            if now >= drain_until:
                for conn in list(conns):
                    if conn.busy:
                        retire(conn, "timeout")
                break
            next_due = started + int(due_count * interval_ns)
            wait_ns = next_due - now if next_due < end else _SWEEP_EVERY_S * 1e9
            # epoll sleeps whole milliseconds (rounded up): wake a little early and poll
            # the last stretch, so requests leave on time rather than up to 1 ms late.
            wait_ns = 0 if wait_ns < _SPIN_NS else wait_ns - _SPIN_NS
            for conn, mask in loop.events(min(wait_ns / 1e9, _SWEEP_EVERY_S)):
                if conn.sock is None:
                    continue
                try:
                    if mask & selectors.EVENT_WRITE and conn.out:
                        loop.flush(conn)
                    if not mask & selectors.EVENT_READ or not loop.receive(conn):
                        continue
                except _Broken as exc:
                    retire(conn, exc.kind or None)
                    continue
                if conn.close:
                    retire(conn, None)
                else:
                    conn.reset()
                    idle.append(conn)
            now = now_ns()
            if now >= next_sweep:
                next_sweep = now + int(_SWEEP_EVERY_S * 1e9)
                stale = loop.stale_before()
                for conn in list(conns):
                    if conn.busy and conn.sent_at < stale:
                        retire(conn, "timeout")
        window_ns = min(now_ns(), end) - started  # throughput over the scheduling window
        cpu = time.process_time() - cpu_start
    finally:
        loop.shutdown(conns)
    return loop.partial(window_ns / 1e9, cpu, late)


def _process_main(spec: LoadSpec, connections: int, gate: Any, results: Any,
                  max_requests: int) -> None:
    try:
        results.put(_worker(spec, connections, gate, max_requests))
    except BaseException as exc:  # report, never hang the parent
        results.put(repr(exc))
        raise


def _percentile(sorted_values: array[int], q: float) -> float:
    """Nearest-rank percentile in milliseconds; NaN when there is no sample."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1] / 1e6


def _combine(parts: list[_Partial]) -> LoadResult:
    latencies = array("q")
    done = array("q")
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for part in parts:
        latencies.frombytes(part.latencies_ns)
        done.frombytes(part.done_ns)
        statuses.update(part.statuses)
        kinds.update(part.error_kinds)
    ordered = array("q", sorted(latencies))
    duration = max(part.duration_s for part in parts)
    return LoadResult(
        requests_per_s=sum(part.ok / part.duration_s for part in parts if part.duration_s > 0),
        p50_ms=_percentile(ordered, 0.50),
        p99_ms=_percentile(ordered, 0.99),
        ok=sum(part.ok for part in parts),
        errors=sum(part.errors for part in parts),
        duration_s=duration,
        client_cpu_s=sum(part.cpu_s for part in parts),
        statuses=dict(statuses),
        error_kinds=dict(kinds),
        late=sum(part.late for part in parts),
        done_ns=done,
    )


def run_load(spec: LoadSpec) -> LoadResult:
    """Run the closed-loop load described by ``spec`` and summarise it.

    Args:
        spec: target, request, concurrency and duration.
    Returns:
        Requests per second counting 2xx answers only, latency percentiles over every
        complete answer, and error counts by kind (status, connect, read, write,
        timeout, parse, closed).
    Raises:
        ValueError: fewer than one connection or process.
        RuntimeError: a worker process failed.
    """
    if spec.connections < 1 or spec.processes < 1:
        raise ValueError("connections and processes must be at least 1")
    nonce = spec.nonce or secrets.token_hex(4)
    processes = min(spec.processes, spec.connections)
    if spec.max_requests > 0:
        processes = min(processes, spec.max_requests)
    if processes == 1:
        return _combine([_worker(dataclasses.replace(spec, nonce=nonce), spec.connections,
                                 max_requests=spec.max_requests)])
    ctx = multiprocessing.get_context("spawn")
    gate = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    shares = [spec.connections // processes + (i < spec.connections % processes)
              for i in range(processes)]
    caps = [spec.max_requests // processes + (i < spec.max_requests % processes)
            for i in range(processes)] if spec.max_requests > 0 else [0] * processes
    workers = [
        ctx.Process(target=_process_main, daemon=True, args=(
            dataclasses.replace(spec, nonce=f"{nonce}p{i}"), share, gate, results, cap))
        for i, (share, cap) in enumerate(zip(shares, caps, strict=True))
    ]
    for worker in workers:
        worker.start()
    try:
        gate.wait(timeout=60)
        parts: list[_Partial] = []
        for _ in workers:
            part = results.get(timeout=spec.duration_s + spec.timeout_s + 60)
            if not isinstance(part, _Partial):
                raise RuntimeError(f"load worker failed: {part}")
            parts.append(part)
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()
    return _combine(parts)


def run_rate(spec: RateSpec) -> LoadResult:
    """Run an open-loop, constant-rate load and summarise it.

    Args:
        spec: target, the request mix, the rate and the duration.
    Returns:
        As ``run_load``; latencies count from each request's due time, ``requests_per_s``
        is the 2xx rate over the scheduling window and ``late`` counts requests sent more
        than 1 ms after they were due.
    Raises:
        ValueError: no flows, a rate or duration that is not positive.
    """
    if not spec.flows or spec.rate <= 0 or spec.duration_s <= 0 or spec.max_connections < 1:
        raise ValueError("run_rate needs flows, a positive rate, duration and connection cap")
    return _combine([_rate_worker(spec)])


def spec_from_url(url: str, **kwargs: Any) -> LoadSpec:
    """Split an http:// URL into the host, port and path a LoadSpec needs."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only plain http:// URLs are supported, got {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return LoadSpec(host=parts.hostname, port=parts.port or 80, path=path, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Command line: print one JSON object with the result."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("-c", "--connections", type=int, default=64,
                        help="closed loop: connections; open loop: the most it may open")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("-p", "--processes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--body", default="{}",
                        help=f"JSON body to POST; {SEQ_MARKER.decode()} in it is replaced by a "
                             "fresh token per request")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests per second, open loop (default: closed loop)")
    parser.add_argument("--requests", type=int, default=0,
                        help="closed loop: stop after this many requests")
    parser.add_argument("--key-space", type=int, default=0,
                        help="draw the marker's token from this many values")
    args = parser.parse_args(argv)
    headers = []
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep:
            parser.error(f"header must look like 'Name: value', got {raw!r}")
        headers.append((name.strip(), value.strip()))
    spec = spec_from_url(
        args.url, body=args.body.encode(), headers=tuple(headers),
        connections=args.connections, duration_s=args.duration, processes=args.processes,
        timeout_s=args.timeout, key_space=args.key_space, max_requests=args.requests,
    )
    if args.rate > 0:
        result = run_rate(RateSpec(
            host=spec.host, port=spec.port, path=spec.path,
            flows=(Flow(spec.body, spec.headers, key_space=spec.key_space),),
            rate=args.rate, duration_s=spec.duration_s, max_connections=spec.connections,
            timeout_s=spec.timeout_s,
        ))
    else:
        result = run_load(spec)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
