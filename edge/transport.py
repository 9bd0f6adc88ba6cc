"""A lean HTTP/1.1 upstream transport on Trio + h11, a drop-in `httpx.AsyncBaseTransport`.

Theory of operation
-------------------
Providers build `httpx.Request` objects and call `handle_async_request` directly; going
through httpx's client and httpcore's pool costs most of a pass-through's CPU, so this module
does the minimum an upstream call needs and nothing else (no cookies, redirects, auth, HTTP/2).

Layers, top to bottom:

    LeanTransport     picks the `_OriginPool` for (scheme, host, port), reads the timeouts
    _OriginPool       a LIFO stack of idle keep-alive connections plus a FIFO-fair semaphore
                      of `max_connections` permits; runs one request/response exchange
    _Connection       one trio stream (TCP or TLS) and one h11 state machine
    _ResponseStream   the body: yields bytes as h11 produces `Data` events, then hands the
                      connection back (complete read) or closes it (anything else)

Invariants:

* A permit is held from the moment a request is admitted until its connection is back on
  the idle stack or closed.  Connections are only opened while holding a permit and with the
  idle stack empty, so open connections (active + idle) never exceed `max_connections`.
  Exactly one owner (the request, then its `_ResponseStream`) releases each permit.
* Only a connection whose h11 state machine reached DONE on both sides goes back on the idle
  stack; `Connection: close` from either side, an early `aclose()`, an error or a
  cancellation closes it instead (forcefully, inside a shielded scope, so the upstream sees
  the disconnect even when the caller was cancelled).
* Idle connections are checked on checkout, not by a background task: past
  `keepalive_expiry`, or readable while idle (the server closed it or sent junk), they are
  closed and the next one is tried.  The stack is LIFO, so the hottest connection is reused
  and the cold ones at the bottom age out.
* A reused connection can still lose the race against the server's idle timeout.  It is
  retried once on a fresh connection only when the server cannot have received the whole
  request: found dead at checkout (see above), or the write itself failed, with a body in
  memory to send again.  Once the request is written it may be running (and billed)
  upstream, so a connection dying after that fails the exchange: whether to try again is
  the caller's decision (failover), never this module's.
* Timeouts are trio cancel scopes around each awaited operation (connect incl. TLS handshake,
  each write, each read including those between body chunks, waiting for a permit), and are
  translated into httpx's timeout exceptions.  Every other failure leaves this module as an
  httpx exception too, so the provider layer has one family of errors to map.
"""

from __future__ import annotations

import ipaddress
import math
import select
import socket
import ssl
from collections.abc import AsyncIterable, Iterable
from typing import Any, cast

import h11
import httpx
import trio

__all__ = ["LeanTransport"]

_READ_SIZE = 65536
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HTTP11 = b"HTTP/1.1"
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_Timeout = float | None


def _describe(exc: BaseException) -> str:
    """Text for a wrapped error: trio's stream errors carry the real cause in __cause__."""
    cause = exc.__cause__
    text = str(exc)
    if cause is not None and str(cause) and str(cause) != text:
        text = f"{text}: {cause}" if text else str(cause)
    return text or type(exc).__name__


class _Connection:
    """One upstream socket and its h11 state machine."""

    __slots__ = ("stream", "h11", "poller", "idle_since", "reused")

    def __init__(self, stream: trio.abc.Stream, fileno: int) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.poller: Any = None
        if hasattr(select, "poll"):
            self.poller = select.poll()
            self.poller.register(fileno, select.POLLIN)
        self.idle_since = 0.0
        self.reused = False

    def readable_while_idle(self) -> bool:
        """An idle keep-alive socket must have nothing to read: data or EOF means it is dead."""
        return self.poller is not None and bool(self.poller.poll(0))

    async def close(self) -> None:
        """Close now, even inside a cancelled task; bounded because it is forceful."""
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


async def _send_all(conn: _Connection, data: bytes, write_timeout: _Timeout) -> None:
    try:
        if write_timeout is None:
            await conn.stream.send_all(data)
            return
        with trio.move_on_after(write_timeout) as scope:
            await conn.stream.send_all(data)
    except _IO_ERRORS as exc:
        raise httpx.WriteError(_describe(exc)) from exc
    if scope.cancelled_caught:
        raise httpx.WriteTimeout(f"upstream write timed out after {write_timeout}s")


async def _receive(conn: _Connection, read_timeout: _Timeout) -> bytes:
    try:
        # Streams may hand back a bytearray; h11 takes either (its annotation says bytes).
        if read_timeout is None:
            return cast(bytes, await conn.stream.receive_some(_READ_SIZE))
        with trio.move_on_after(read_timeout):
            return cast(bytes, await conn.stream.receive_some(_READ_SIZE))
    except _IO_ERRORS as exc:
        raise httpx.ReadError(_describe(exc)) from exc
    # Only reached when the scope swallowed the cancellation.
    raise httpx.ReadTimeout(f"upstream read timed out after {read_timeout}s")


def _literal_family(host: str) -> int | None:
    """AF_INET or AF_INET6 when `host` is an IP address written out, else None (a name)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


async def _connect_literal(family: int, host: str, port: int) -> trio.SocketStream:
    """One TCP connect to an address already known: no resolver, no racing of attempts.

    `trio.open_tcp_stream` resolves the name and races the addresses it gets (happy
    eyeballs) in a nursery of its own, which costs about 130 us of CPU per connect here
    even for "127.0.0.1"; a sidecar or a local model on a literal address has one address
    to try, so edge connects to it directly. Names keep trio's full walk.
    """
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)  # sets TCP_NODELAY, as open_tcp_stream does


def _replayable_body(request: httpx.Request) -> bytes | None:
    """The body as bytes if it is already in memory (safe to send twice), else None."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return None


async def _exchange(
    conn: _Connection,
    request: httpx.Request,
    body: bytes | None,
    read_timeout: _Timeout,
    write_timeout: _Timeout,
) -> h11.Response:
    """Send the request and read up to the final response head."""
    h = conn.h11
    try:
        head = h.send(
            h11.Request(
                method=request.method, target=request.url.raw_path, headers=request.headers.raw
            )
        )
        assert head is not None
        if body is not None:
            # One buffer, one syscall: head, body and (for chunked framing) the terminator.
            pieces = (h.send_with_data_passthrough(h11.Data(data=body)) or []) if body else []
            end = h.send(h11.EndOfMessage())
            await _send_all(conn, b"".join([head, *pieces, end or b""]), write_timeout)
        else:
            await _send_all(conn, head, write_timeout)
            stream = request.stream
            if isinstance(stream, AsyncIterable):
                chunks = stream.__aiter__()
                try:
                    async for chunk in chunks:
                        if chunk:
                            data = h.send(h11.Data(data=chunk)) or b""
                            await _send_all(conn, data, write_timeout)
                finally:
                    # A failed write abandons the body's generator: close it now rather
                    # than leave it to the garbage collector (which trio warns about).
                    close = getattr(chunks, "aclose", None)
                    if close is not None:
                        await close()
            else:
                assert isinstance(stream, Iterable)
                for chunk in stream:
                    if chunk:
                        await _send_all(conn, h.send(h11.Data(data=chunk)) or b"", write_timeout)
            end = h.send(h11.EndOfMessage())
            if end:
                await _send_all(conn, end, write_timeout)
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc)) from exc
    # h11's receive buffer is empty here (fresh connection, or put_back checked it), so
    # read first instead of asking h11 for an event it cannot have.
    try:
        while True:
            h.receive_data(await _receive(conn, read_timeout))
            while (event := h.next_event()) is not h11.NEED_DATA:
                if type(event) is h11.Response:
                    return event
                if type(event) is not h11.InformationalResponse:
                    raise httpx.RemoteProtocolError(
                        "upstream closed the connection without sending a response"
                    )
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    """Response body straight from h11; owns the connection and its permit until the end."""

    __slots__ = ("_pool", "_conn", "_read_timeout")

    def __init__(self, pool: _OriginPool, conn: _Connection, read_timeout: _Timeout) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout

    def __aiter__(self) -> _ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        h = conn.h11
        try:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    h.receive_data(await _receive(conn, self._read_timeout))
                    continue
                if type(event) is h11.Data:
                    return bytes(event.data)
                if type(event) is h11.EndOfMessage:
                    break
                raise httpx.RemoteProtocolError("upstream response ended unexpectedly")
        except BaseException as exc:
            self._conn = None
            await self._pool.discard(conn)
            if isinstance(exc, h11.RemoteProtocolError):
                raise httpx.RemoteProtocolError(str(exc)) from exc
            raise
        self._conn = None
        await self._pool.put_back(conn)
        raise StopAsyncIteration

    async def finish(self, wait_s: float) -> None:
        """The caller has read all it wants (an SSE stream's last event): read on to the
        body's end for up to `wait_s` and keep the connection, else drop it.

        An upstream sends the chunked terminator just after its stream's last event, often
        in a write of its own; without this every stream would cost a fresh connection
        (and a TLS handshake) to the provider. Anything but an empty rest of the body, or
        no end in time, drops the connection as `aclose` does.
        """
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        h = conn.h11
        ended = False
        try:
            with trio.move_on_after(wait_s):
                while True:
                    event = h.next_event()
                    if event is h11.NEED_DATA:
                        h.receive_data(cast(bytes, await conn.stream.receive_some(_READ_SIZE)))
                        continue
                    ended = type(event) is h11.EndOfMessage
                    if ended or type(event) is not h11.Data or event.data:
                        break
        except (h11.RemoteProtocolError, *_IO_ERRORS):
            ended = False
        except BaseException:
            await self._pool.discard(conn)
            raise
        if ended:
            await self._pool.put_back(conn)
        else:
            await self._pool.discard(conn)

    async def aclose(self) -> None:
        """Closing before the end: the connection is in an unknown state, so it is dropped."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            await self._pool.discard(conn)


class _OriginPool:
    """Connections to one (scheme, host, port): idle LIFO stack, permits, counters."""

    __slots__ = (
        "host",
        "port",
        "label",
        "ssl_context",
        "idle",
        "active",
        "permits",
        "max_idle",
        "expiry",
        "closed",
        "created",
        "reused",
        "family",
    )

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        max_connections: int,
        max_idle: int,
        expiry: float,
    ) -> None:
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        self.ssl_context = ssl_context
        self.idle: list[_Connection] = []
        self.active: set[_Connection] = set()
        self.permits = trio.Semaphore(max_connections)
        self.max_idle = max_idle
        self.expiry = expiry
        self.closed = False
        self.created = 0
        self.reused = 0
        self.family = _literal_family(host)

    async def request(
        self,
        request: httpx.Request,
        connect_timeout: _Timeout,
        read_timeout: _Timeout,
        write_timeout: _Timeout,
        pool_timeout: _Timeout,
        head_timeout: _Timeout = None,
    ) -> httpx.Response:
        """Admit, check out a connection, exchange; on any failure free what was taken.

        `head_timeout` bounds everything from admission to the response head (connect,
        send, the upstream's think time), so a wait for a pool permit never counts in it.
        """
        await self._acquire(pool_timeout)
        conn: _Connection | None = None
        try:
            with trio.move_on_after(math.inf if head_timeout is None else head_timeout) as head:
                conn = await self._checkout(connect_timeout)
                body = _replayable_body(request)
                try:
                    event = await _exchange(conn, request, body, read_timeout, write_timeout)
                except httpx.WriteError:
                    # The request did not get out whole, so the server cannot have acted on it.
                    if not conn.reused or body is None:
                        raise
                    stale, conn = conn, None
                    await self._drop(stale)
                    conn = await self._open(connect_timeout)
                    event = await _exchange(conn, request, body, read_timeout, write_timeout)
            if head.cancelled_caught:
                raise httpx.ReadTimeout(f"no response head from {self.label} in {head_timeout}s")
            assert conn is not None  # the block above ran to its end
            return httpx.Response(
                event.status_code,
                headers=event.headers.raw_items(),
                stream=_ResponseStream(self, conn, read_timeout),
                extensions={"http_version": _HTTP11, "reason_phrase": event.reason},
                request=request,
            )
        except BaseException:
            if conn is not None:
                await self._drop(conn)
            self.permits.release()
            raise

    async def _acquire(self, pool_timeout: _Timeout) -> None:
        try:
            self.permits.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        if pool_timeout is None:
            await self.permits.acquire()
            return
        with trio.move_on_after(pool_timeout):
            await self.permits.acquire()
            return
        raise httpx.PoolTimeout(f"no free connection to {self.label} within {pool_timeout}s")

    async def _checkout(self, connect_timeout: _Timeout) -> _Connection:
        idle = self.idle
        if idle:
            now = trio.current_time()
            while idle:
                conn = idle.pop()
                if now - conn.idle_since >= self.expiry or conn.readable_while_idle():
                    await conn.close()
                    continue
                conn.reused = True
                self.reused += 1
                self.active.add(conn)
                return conn
        return await self._open(connect_timeout)

    async def _open(self, connect_timeout: _Timeout) -> _Connection:
        deadline = math.inf if connect_timeout is None else trio.current_time() + connect_timeout
        with trio.CancelScope(deadline=deadline) as scope:
            try:
                if self.family is None:
                    tcp = await trio.open_tcp_stream(self.host, self.port)
                else:
                    tcp = await _connect_literal(self.family, self.host, self.port)
            except OSError as exc:
                raise httpx.ConnectError(f"cannot connect to {self.label}: {exc}") from exc
            stream: trio.abc.Stream = tcp
            if self.ssl_context is not None:
                tls = trio.SSLStream(
                    tcp, self.ssl_context, server_hostname=self.host, https_compatible=True
                )
                try:
                    await tls.do_handshake()
                except BaseException as exc:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(tcp)
                    if isinstance(exc, trio.BrokenResourceError):
                        raise httpx.ConnectError(
                            f"TLS handshake with {self.label} failed: {_describe(exc)}"
                        ) from exc
                    raise
                stream = tls
        if scope.cancelled_caught:
            raise httpx.ConnectTimeout(
                f"connecting to {self.label} timed out after {connect_timeout}s"
            )
        conn = _Connection(stream, tcp.socket.fileno())
        self.created += 1
        self.active.add(conn)
        return conn

    async def _drop(self, conn: _Connection) -> None:
        self.active.discard(conn)
        await conn.close()

    async def discard(self, conn: _Connection) -> None:
        """Close a checked-out connection and free its permit."""
        try:
            await self._drop(conn)
        finally:
            self.permits.release()

    async def put_back(self, conn: _Connection) -> None:
        """After a complete response: keep the connection if both sides allow it."""
        self.active.discard(conn)
        h = conn.h11
        try:
            # trailing_data: a close-delimited body ends in DONE/DONE too, but with the
            # receive side closed; and bytes after a complete response mean a confused peer.
            if (
                h.our_state is h11.DONE
                and h.their_state is h11.DONE
                and h.trailing_data == (b"", False)
                and not self.closed
                and self.max_idle > 0
            ):
                h.start_next_cycle()
                conn.idle_since = trio.current_time()
                conn.reused = False
                self.idle.append(conn)
                if len(self.idle) > self.max_idle:
                    await self.idle.pop(0).close()  # evict the coldest
            else:
                await conn.close()
        finally:
            self.permits.release()

    async def aclose(self) -> None:
        self.closed = True
        conns = [*self.idle, *self.active]
        self.idle.clear()
        for conn in conns:
            await conn.close()


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive transport for upstream calls.

    Args:
        max_connections: open connections (active + idle) allowed per origin; further
            requests wait for one, bounded by the request's pool timeout.
        max_idle_per_host: idle connections kept per origin (default: `max_connections`).
        keepalive_expiry: seconds an idle connection may be reused after its last response.
        connect_timeout: connect + TLS handshake limit when the request names none.
        ssl_context: TLS settings for https; default is the system trust store with
            hostname checking.
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        max_idle_per_host: int | None = None,
        keepalive_expiry: float = 30.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if max_idle_per_host is None:
            max_idle_per_host = max_connections
        if not 0 <= max_idle_per_host <= max_connections:
            raise ValueError("max_idle_per_host must be between 0 and max_connections")
        if keepalive_expiry < 0 or connect_timeout <= 0:
            raise ValueError("keepalive_expiry must be >= 0 and connect_timeout > 0")
        self._max_connections = max_connections
        self._max_idle = max_idle_per_host
        self._expiry = keepalive_expiry
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._pools: dict[tuple[bytes, bytes, int | None], _OriginPool] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` and return a response whose body streams from the socket.

        Raises:
            httpx.TimeoutException: ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout.
            httpx.NetworkError: ConnectError, ReadError, WriteError.
            httpx.ProtocolError: RemoteProtocolError (peer broke HTTP), LocalProtocolError.
            httpx.UnsupportedProtocol: a scheme other than http/https.
        """
        url = request.url
        key = (url.raw_scheme, url.raw_host, url.port)
        try:
            if self._closed:
                raise httpx.ConnectError("LeanTransport is closed")
            pool = self._pools.get(key)
            if pool is None:
                pool = self._new_pool(key)
            timeouts = request.extensions.get("timeout")
            if timeouts:
                return await pool.request(
                    request,
                    timeouts.get("connect", self._connect_timeout),
                    timeouts.get("read"),
                    timeouts.get("write"),
                    timeouts.get("pool"),
                    timeouts.get("head"),
                )
            return await pool.request(request, self._connect_timeout, None, None, None)
        except httpx.RequestError as exc:
            exc.request = request
            raise

    def _new_pool(self, key: tuple[bytes, bytes, int | None]) -> _OriginPool:
        scheme, raw_host, port = key
        default_port = _DEFAULT_PORTS.get(scheme)
        if default_port is None:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode()!r}")
        if not raw_host:
            raise httpx.UnsupportedProtocol("request URL has no host")
        context = None
        if scheme == b"https":
            context = self._ssl_context
            if context is None:
                context = self._ssl_context = ssl.create_default_context()
                context.set_alpn_protocols(["http/1.1"])
        pool = _OriginPool(
            raw_host.decode("ascii"),
            port or default_port,
            context,
            max_connections=self._max_connections,
            max_idle=self._max_idle,
            expiry=self._expiry,
        )
        self._pools[key] = pool
        return pool

    async def aclose(self) -> None:
        """Close every connection; later requests fail with ConnectError."""
        self._closed = True
        for pool in list(self._pools.values()):
            await pool.aclose()

    def pool_stats(self) -> dict[str, int]:
        """Counts over all origins: idle/active connections and requests waiting for one
        (now), connections created and idle connections reused (since start)."""
        pools = self._pools.values()
        return {
            "idle": sum(len(p.idle) for p in pools),
            "active": sum(len(p.active) for p in pools),
            "waiting": sum(p.permits.statistics().tasks_waiting for p in pools),
            "created": sum(p.created for p in pools),
            "reused": sum(p.reused for p in pools),
        }
