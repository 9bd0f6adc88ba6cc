"""A closed-loop HTTP/1.1 load generator for when wrk is not installed.

Each of N keep-alive connections sends one POST, waits for the whole answer, records
the latency and sends the next, for a fixed duration. It must cost far less per request
than the Python servers it measures, so it is a bare ``selectors`` (epoll) loop over
non-blocking sockets with a minimal response parser written for exactly this job:
status line, ``content-length`` or chunked bodies, ``connection: close``. No Trio here on
purpose: a scheduler hop per socket operation is the very overhead being measured on the
other side. ``processes > 1`` splits the connections over worker processes to use more
cores; every result carries the client's own CPU time so a saturated client shows.

Library use: ``run_load(LoadSpec(...)) -> LoadResult``. Command line:
``python -m benchmarks.loadgen --url http://127.0.0.1:8001/ -c 64 -d 10 --body '{}'``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import selectors
import socket
import sys
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

_RECV_BYTES = 65536
_SWEEP_EVERY_S = 0.25
_RECONNECT_BACKOFF_S = 0.05


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to send, where, how hard and for how long."""

    host: str
    port: int
    path: str = "/"
    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = ()
    connections: int = 64
    duration_s: float = 10.0
    processes: int = 1
    timeout_s: float = 10.0


@dataclass(slots=True)
class LoadResult:
    """Throughput and latency of one run; latencies cover every complete answer."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    duration_s: float
    client_cpu_s: float
    statuses: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return asdict(self)


def build_request(spec: LoadSpec) -> bytes:
    """Encode the one request every connection repeats, once."""
    lines = [
        f"POST {spec.path} HTTP/1.1",
        f"Host: {spec.host}:{spec.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(spec.body)}",
    ]
    lines += [f"{name}: {value}" for name, value in spec.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + spec.body


class _Conn:
    """One keep-alive connection and the parse state of the answer it is waiting for."""

    __slots__ = (
        "sock", "buf", "out", "sent_at", "head_end", "body_end", "chunked", "chunk_pos",
        "status", "close", "retry_at",
    )

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.out = b""
        self.sent_at = 0
        self.retry_at = 0.0
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


def _connect(spec: LoadSpec) -> socket.socket:
    sock = socket.create_connection((spec.host, spec.port), timeout=2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _worker(spec: LoadSpec, connections: int, start_gate: Any = None) -> _Partial:
    """Drive ``connections`` connections for ``spec.duration_s``; runs in any process."""
    request = build_request(spec)
    sel = selectors.DefaultSelector()
    conns = [_Conn() for _ in range(connections)]
    latencies = array("q")
    record = latencies.append
    statuses: Counter[str] = Counter()
    error_kinds: Counter[str] = Counter()
    ok = 0
    errors = 0
    now_ns = time.perf_counter_ns
    timeout_ns = int(spec.timeout_s * 1e9)

    def send(conn: _Conn) -> None:
        sock = conn.sock
        assert sock is not None
        conn.sent_at = now_ns()
        sent = sock.send(request)
        if sent < len(request):
            conn.out = request[sent:]
            sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def drop(conn: _Conn, kind: str) -> None:
        nonlocal errors
        errors += 1
        error_kinds[kind] += 1
        close(conn)
        conn.retry_at = time.monotonic() + _RECONNECT_BACKOFF_S

    def close(conn: _Conn) -> None:
        if conn.sock is not None:
            sel.unregister(conn.sock)
            conn.sock.close()
            conn.sock = None
        conn.reset()
        conn.out = b""

    def open_and_send(conn: _Conn) -> None:
        try:
            conn.sock = _connect(spec)
        except OSError:
            drop(conn, "connect")
            return
        sel.register(conn.sock, selectors.EVENT_READ, conn)
        try:
            send(conn)
        except OSError:
            drop(conn, "write")

    try:
        # Connect before the clock starts, like wrk does.
        for conn in conns:
            try:
                conn.sock = _connect(spec)
                sel.register(conn.sock, selectors.EVENT_READ, conn)
            except OSError:
                errors += 1
                error_kinds["connect"] += 1
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
                try:
                    send(conn)
                except OSError:
                    drop(conn, "write")

        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            for key, mask in sel.select(min(deadline - now, _SWEEP_EVERY_S)):
                conn = key.data
                sock = conn.sock
                if sock is None:
                    continue
                if mask & selectors.EVENT_WRITE and conn.out:
                    try:
                        sent = sock.send(conn.out)
                    except BlockingIOError:
                        continue
                    except OSError:
                        drop(conn, "write")
                        continue
                    conn.out = conn.out[sent:]
                    if not conn.out:
                        sel.modify(sock, selectors.EVENT_READ, conn)
                if not mask & selectors.EVENT_READ:
                    continue
                try:
                    data = sock.recv(_RECV_BYTES)
                except BlockingIOError:
                    continue
                except OSError:
                    drop(conn, "read")
                    continue
                if data:
                    conn.buf += data
                    try:
                        complete = conn.parse()
                    except ValueError:
                        drop(conn, "parse")
                        continue
                elif conn.head_end >= 0 and conn.body_end < 0 and not conn.chunked:
                    complete = True  # body delimited by connection close
                else:
                    # Closed with our request unanswered: wrk counts this as a read error too.
                    drop(conn, "closed" if not conn.buf else "read")
                    continue
                if not complete:
                    continue
                record(now_ns() - conn.sent_at)
                status = conn.status
                statuses[str(status)] += 1
                if 200 <= status < 300:
                    ok += 1
                else:
                    errors += 1
                    error_kinds["status"] += 1
                if conn.close or not data:
                    close(conn)
                    open_and_send(conn)
                    continue
                conn.reset()
                try:
                    send(conn)
                except OSError:
                    drop(conn, "write")

            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_EVERY_S
                stale = now_ns() - timeout_ns
                for conn in conns:
                    if conn.sock is None:
                        if now >= conn.retry_at:
                            open_and_send(conn)
                    elif conn.sent_at < stale:
                        drop(conn, "timeout")
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu_start
    finally:
        for conn in conns:
            if conn.sock is not None:
                conn.sock.close()
        sel.close()
    return _Partial(
        ok, errors, elapsed, cpu, latencies.tobytes(), dict(statuses), dict(error_kinds)
    )


def _process_main(spec: LoadSpec, connections: int, gate: Any, results: Any) -> None:
    try:
        results.put(_worker(spec, connections, gate))
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
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for part in parts:
        latencies.frombytes(part.latencies_ns)
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
    )


def run_load(spec: LoadSpec) -> LoadResult:
    """Run the load described by ``spec`` and summarise it.

    Args:
        spec: target, request, concurrency and duration.
    Returns:
        Requests per second counting 2xx answers only, latency percentiles over every
        complete answer, and error counts by kind (status, connect, read, write,
        timeout, parse).
    Raises:
        RuntimeError: a worker process failed.
    """
    if spec.connections < 1 or spec.processes < 1:
        raise ValueError("connections and processes must be at least 1")
    processes = min(spec.processes, spec.connections)
    if processes == 1:
        return _combine([_worker(spec, spec.connections)])
    ctx = multiprocessing.get_context("spawn")
    gate = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    shares = [spec.connections // processes + (i < spec.connections % processes)
              for i in range(processes)]
    workers = [ctx.Process(target=_process_main, args=(spec, share, gate, results), daemon=True)
               for share in shares]
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
    parser.add_argument("-c", "--connections", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("-p", "--processes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--body", default="{}", help="JSON body to POST")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
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
        timeout_s=args.timeout,
    )
    print(json.dumps(run_load(spec).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
