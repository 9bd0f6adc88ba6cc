"""LeanTransport against real loopback servers.

Well-behaved upstreams are trio + h11; broken ones (cut bodies, garbage, silent peers) write
raw bytes.  Waits that a bug could turn into a hang are bounded by `DEADLINE`, so it shows
up as a failure instead; nothing waits on a sleep.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from functools import partial

import h11
import httpx
import pytest
import trio
import trustme

from edge.transport import LeanTransport

DEADLINE = 10.0  # only ever reached when something is broken

# A socket left for the garbage collector to close is a leak here, not noise.
pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")

Handler = Callable[["Upstream", trio.abc.Stream], Awaitable[None]]


class Upstream:
    """A loopback server that counts accepted connections and runs `handler` for each."""

    def __init__(self, handler: Handler, scheme: str) -> None:
        self.handler = handler
        self.scheme = scheme
        self.port = 0
        self.accepts = 0
        self.in_flight = 0
        self.delivered = 0  # requests read in full, by handlers that count them
        self.release = trio.Event()  # handlers that stall wait on this
        self.disconnected = trio.Event()  # set by handlers that watch for the client leaving

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def _connection(self, stream: trio.abc.Stream) -> None:
        self.accepts += 1
        try:
            await self.handler(self, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; tests that care assert on `disconnected`
        finally:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def upstream(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Upstream]:
    server = Upstream(handler, "http" if tls is None else "https")
    async with trio.open_nursery() as nursery:
        if tls is None:
            listeners = await nursery.start(
                partial(trio.serve_tcp, server._connection, 0, host="127.0.0.1")
            )
            server.port = listeners[0].socket.getsockname()[1]
        else:
            listeners = await nursery.start(
                partial(
                    trio.serve_ssl_over_tcp,
                    server._connection,
                    0,
                    tls,
                    host="127.0.0.1",
                    https_compatible=True,
                )
            )
            server.port = listeners[0].transport_listener.socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


class Peer:
    """The server side of one connection, driven by h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER)

    async def _event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(bytes(await self.stream.receive_some(65536)))

    async def request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its body, or None once the client closed the connection."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        event = await self._event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request)
        body = bytearray()
        while not isinstance(part := await self._event(), h11.EndOfMessage):
            assert isinstance(part, h11.Data)
            body += part.data
        return event, bytes(body)

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                await self.stream.send_all(data)

    async def respond(
        self, body: bytes, status: int = 200, headers: list[tuple[str, str]] | None = None
    ) -> None:
        head = [("content-length", str(len(body))), *(headers or [])]
        await self.send(
            h11.Response(status_code=status, headers=head), h11.Data(data=body), h11.EndOfMessage()
        )

    async def wait_for_disconnect(self, server: Upstream) -> None:
        """Read until the client's EOF or reset; that is what cancellation must produce."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        finally:
            server.disconnected.set()


async def echo(server: Upstream, stream: trio.abc.Stream) -> None:
    """Keep-alive server answering 'METHOD target body' with Content-Length."""
    peer = Peer(stream)
    while (got := await peer.request()) is not None:
        request, body = got
        await peer.respond(request.method + b" " + request.target + b" " + body)


async def read_head(stream: trio.abc.Stream) -> None:
    """Consume one request head (bodiless requests only), for raw-bytes servers."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, "client closed before sending a request"
        data += chunk


async def until(check: Callable[[], bool]) -> None:
    """Poll state that no event announces (pool counters) until true, or fail."""
    with trio.fail_after(DEADLINE):
        while not check():  # noqa: ASYNC110 - polling with a deadline on purpose
            await trio.sleep(0.002)


async def get(transport: LeanTransport, url: str, **extensions: object) -> httpx.Response:
    response = await transport.handle_async_request(
        httpx.Request("GET", url, extensions=extensions)
    )
    await response.aread()
    return response


def clean(transport: LeanTransport) -> bool:
    stats = transport.pool_stats()
    return stats["idle"] == 0 and stats["active"] == 0 and stats["waiting"] == 0


SHORT = {"connect": DEADLINE, "read": 0.05, "write": DEADLINE, "pool": DEADLINE}


# ------------------------------------------------------------------ keep-alive and bodies


async def test_sequential_requests_share_one_connection() -> None:
    async with upstream(echo) as server, LeanTransport() as transport:
        for i in range(3):
            response = await get(transport, f"{server.url}/n/{i}?q=1")
            assert response.status_code == 200
            assert response.content == f"GET /n/{i}?q=1 ".encode()
            assert response.extensions["http_version"] == b"HTTP/1.1"
        assert server.accepts == 1
        assert transport.pool_stats() == {
            "idle": 1,
            "active": 0,
            "waiting": 0,
            "created": 1,
            "reused": 2,
        }


async def test_request_bodies_bytes_and_streamed() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"al", b"", b"pha", b"bet"):
            yield part

    async with upstream(echo) as server, LeanTransport() as transport:
        fixed = httpx.Request("POST", f"{server.url}/b", content=b"x" * 100_000)
        response = await transport.handle_async_request(fixed)
        assert await response.aread() == b"POST /b " + b"x" * 100_000
        streamed = httpx.Request("PUT", f"{server.url}/s", content=chunks())
        assert streamed.headers["transfer-encoding"] == "chunked"
        response = await transport.handle_async_request(streamed)
        assert await response.aread() == b"PUT /s alphabet"
        assert server.accepts == 1


async def test_content_length_and_chunked_responses() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        while (got := await peer.request()) is not None:
            if got[0].target == b"/chunked":
                # No Content-Length to an HTTP/1.1 client: h11 frames the body as chunked.
                await peer.send(h11.Response(status_code=201, headers=[("x-kind", "chunked")]))
                await peer.send(h11.Data(data=b"ab"), h11.Data(data=b"cd"), h11.EndOfMessage())
            else:
                await peer.respond(b"fixed body", headers=[("X-Kind", "length")])

    async with upstream(handler) as server, LeanTransport() as transport:
        chunked = await get(transport, f"{server.url}/chunked")
        assert (chunked.status_code, chunked.content) == (201, b"abcd")
        assert chunked.headers["transfer-encoding"] == "chunked"
        fixed = await get(transport, f"{server.url}/fixed")
        assert fixed.content == b"fixed body"
        assert fixed.headers["content-length"] == "10"
        assert (b"X-Kind", b"length") in fixed.headers.raw  # upstream spelling kept
        assert server.accepts == 1


async def test_close_delimited_body() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
        await stream.send_all(b"world")
        # Returning closes the socket: that EOF is the end of the body.

    async with upstream(handler) as server, LeanTransport() as transport:
        response = await get(transport, f"{server.url}/")
        assert response.content == b"hello world"
        assert clean(transport), transport.pool_stats()  # close-delimited: never pooled
        assert (await get(transport, f"{server.url}/")).content == b"hello world"
        assert server.accepts == 2


async def test_response_chunks_stream_before_the_end() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        assert await peer.request() is not None
        await peer.send(h11.Response(status_code=200, headers=[]), h11.Data(data=b"first"))
        await server.release.wait()  # the client must have seen "first" already
        await peer.send(h11.Data(data=b"second"), h11.EndOfMessage())
        assert await peer.request() is None

    async with upstream(handler) as server, LeanTransport() as transport:
        received = b""
        with trio.fail_after(DEADLINE):  # buffering to the end would deadlock here
            request = httpx.Request("GET", f"{server.url}/sse")
            response = await transport.handle_async_request(request)
            async for chunk in response.aiter_raw():
                received += chunk
                if received == b"first":
                    server.release.set()
        assert received == b"firstsecond"
        assert transport.pool_stats()["idle"] == 1


# ------------------------------------------------------------------ broken upstreams


async def test_upstream_closing_mid_response_is_a_protocol_error() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        if server.accepts == 1:
            await read_head(stream)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            return  # cut the body short
        await echo(server, stream)

    async with upstream(handler) as server, LeanTransport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", f"{server.url}/"))
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
        assert clean(transport)
        assert (await get(transport, f"{server.url}/again")).content == b"GET /again "
        assert server.accepts == 2  # the broken connection was not reused


async def test_malformed_response_is_a_protocol_error() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        await read_head(stream)
        await stream.send_all(b"this is not http\r\n\r\n")
        await server.release.wait()

    async with upstream(handler) as server, LeanTransport() as transport:
        with pytest.raises(httpx.RemoteProtocolError):
            await get(transport, f"{server.url}/")
        assert clean(transport)
        server.release.set()


async def test_stale_idle_connection_is_replaced() -> None:
    """The server closed the idle connection: checkout notices and dials a new one."""

    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        got = await peer.request()
        assert got is not None
        await peer.respond(b"ok")  # keep-alive response ... then hang up anyway
        await stream.aclose()
        server.disconnected.set()

    async with upstream(handler) as server, LeanTransport() as transport:
        assert (await get(transport, f"{server.url}/")).content == b"ok"
        with trio.fail_after(DEADLINE):
            await server.disconnected.wait()
        assert (await get(transport, f"{server.url}/")).content == b"ok"
        assert server.accepts == 2
        stats = transport.pool_stats()
        assert (stats["created"], stats["reused"]) == (2, 0)  # found dead at checkout


def reset(stream: trio.abc.Stream) -> None:
    """Abort the connection with an RST (linger 0) instead of an orderly FIN."""
    assert isinstance(stream, trio.SocketStream)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


def dies_after_reading(hang_up: Callable[[trio.abc.Stream], Awaitable[None] | None]) -> Handler:
    """First connection: answer once, read the next request in full, then `hang_up` on it.
    Later connections echo, so a request sent again would succeed there."""

    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        if server.accepts == 1:
            assert await peer.request() is not None
            await peer.respond(b"first")
            assert await peer.request() is not None
            server.delivered += 1
            if (closing := hang_up(stream)) is not None:
                await closing
            return
        await echo(server, stream)

    return handler


@pytest.mark.parametrize("hang_up", [trio.aclose_forcefully, reset], ids=["fin", "rst"])
async def test_reused_connection_dying_after_the_request_was_sent_is_not_retried(
    hang_up: Callable[[trio.abc.Stream], Awaitable[None] | None],
) -> None:
    """The server may be running (and billing) the request: sending it again is not ours
    to decide, so the exchange fails and the caller's failover decides."""
    async with upstream(dies_after_reading(hang_up)) as server, LeanTransport() as transport:
        assert (await get(transport, f"{server.url}/")).content == b"first"
        request = httpx.Request("POST", f"{server.url}/p", content=b"payload")
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await transport.handle_async_request(request)
        assert server.delivered == 1
        assert server.accepts == 1
        assert clean(transport)


async def resets_while_the_body_arrives(server: Upstream, stream: trio.abc.Stream) -> None:
    """First connection: answer once, then reset on the next request's head, long before its
    body is in: the server cannot have acted on a request it never had whole."""
    peer = Peer(stream)
    if server.accepts == 1:
        assert await peer.request() is not None
        await peer.respond(b"first")
        peer.conn.start_next_cycle()
        assert isinstance(await peer._event(), h11.Request)
        reset(stream)
        return
    while (got := await peer.request()) is not None:
        server.delivered += 1
        await peer.respond(b"%d bytes" % len(got[1]))


BIG = 32 << 20  # more than loopback's socket buffers hold, so the write is still going


async def test_reused_connection_failing_the_write_is_retried_once() -> None:
    async with (
        upstream(resets_while_the_body_arrives) as server,
        LeanTransport() as transport,
    ):
        assert (await get(transport, f"{server.url}/")).content == b"first"
        request = httpx.Request("POST", f"{server.url}/p", content=b"x" * BIG)
        response = await transport.handle_async_request(request)
        assert await response.aread() == b"%d bytes" % BIG  # sent again, whole, once
        assert server.delivered == 1
        assert server.accepts == 2
        stats = transport.pool_stats()
        assert (stats["created"], stats["reused"]) == (2, 1)


async def test_streamed_body_is_not_replayed() -> None:
    async def once() -> AsyncIterator[bytes]:
        yield b"x" * BIG  # cannot be sent twice

    async with (
        upstream(resets_while_the_body_arrives) as server,
        LeanTransport() as transport,
    ):
        await get(transport, f"{server.url}/")
        async with aclosing(once()) as body:
            request = httpx.Request("POST", f"{server.url}/p", content=body)
            with pytest.raises(httpx.WriteError):
                await transport.handle_async_request(request)
        assert server.accepts == 1
        assert clean(transport)


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def trusting_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_with_trusted_self_signed_certificate(ca: trustme.CA) -> None:
    tls = server_context(ca, "127.0.0.1")
    async with upstream(echo, tls) as server:
        async with LeanTransport(ssl_context=trusting_context(ca)) as transport:
            assert (await get(transport, f"{server.url}/a")).content == b"GET /a "
            assert (await get(transport, f"{server.url}/b")).content == b"GET /b "
            assert server.accepts == 1
        async with LeanTransport() as default:  # system trust store: our CA is unknown
            with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
                await get(default, f"{server.url}/")
            assert clean(default)


async def test_tls_checks_the_hostname(ca: trustme.CA) -> None:
    tls = server_context(ca, "upstream.example")
    async with (
        upstream(echo, tls) as server,
        LeanTransport(ssl_context=trusting_context(ca)) as transport,
    ):
        with pytest.raises(httpx.ConnectError):
            await get(transport, f"{server.url}/")


async def test_tls_handshake_counts_against_the_connect_timeout() -> None:
    async def silent(server: Upstream, stream: trio.abc.Stream) -> None:
        await server.release.wait()

    async with upstream(silent) as server, LeanTransport() as transport:
        url = f"https://127.0.0.1:{server.port}/"
        with trio.fail_after(DEADLINE), pytest.raises(httpx.ConnectTimeout):
            await get(transport, url, timeout={**SHORT, "connect": 0.05})
        assert clean(transport)
        server.release.set()


# ------------------------------------------------------------------ cancellation


async def test_cancel_mid_body_disconnects_upstream() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        assert await peer.request() is not None
        await peer.send(h11.Response(status_code=200, headers=[]), h11.Data(data=b"first"))
        await peer.wait_for_disconnect(server)

    async with upstream(handler) as server, LeanTransport() as transport:
        got_first = trio.Event()

        async def consume() -> None:
            response = await transport.handle_async_request(httpx.Request("GET", server.url))
            async for _ in response.aiter_raw():
                got_first.set()
            raise AssertionError("the body never ends")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            with trio.fail_after(DEADLINE):
                await got_first.wait()
            nursery.cancel_scope.cancel()
        with trio.fail_after(DEADLINE):
            await server.disconnected.wait()
        assert clean(transport)


async def test_cancel_while_waiting_for_the_head_disconnects_upstream() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        assert await peer.request() is not None
        server.in_flight += 1
        await peer.wait_for_disconnect(server)

    async with upstream(handler) as server, LeanTransport() as transport:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, transport, server.url)
            await until(lambda: server.in_flight == 1)
            nursery.cancel_scope.cancel()
        with trio.fail_after(DEADLINE):
            await server.disconnected.wait()
        assert clean(transport)


async def test_early_close_of_the_body_drops_the_connection() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        assert await peer.request() is not None
        await peer.send(h11.Response(status_code=200, headers=[]), h11.Data(data=b"partial"))
        await peer.wait_for_disconnect(server)

    async with upstream(handler) as server, LeanTransport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", server.url))
        await response.aclose()
        with trio.fail_after(DEADLINE):
            await server.disconnected.wait()
        assert clean(transport)


# ------------------------------------------------------------------ pool bounds and timeouts


async def slow(server: Upstream, stream: trio.abc.Stream) -> None:
    """Keep-alive server that holds every response until `release` is set."""
    peer = Peer(stream)
    while await peer.request() is not None:
        server.in_flight += 1
        await server.release.wait()
        await peer.respond(b"done")


async def test_max_connections_makes_extra_requests_wait() -> None:
    async with upstream(slow) as server, LeanTransport(max_connections=2) as transport:
        results: list[int] = []

        async def call() -> None:
            results.append((await get(transport, server.url)).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call)
            await until(lambda: server.in_flight == 2 and transport.pool_stats()["waiting"] == 1)
            assert server.accepts == 2
            assert transport.pool_stats()["active"] == 2
            server.release.set()
        assert results == [200, 200, 200]
        assert server.accepts == 2
        stats = transport.pool_stats()
        assert (stats["created"], stats["reused"], stats["idle"]) == (2, 1, 2)


async def test_pool_timeout() -> None:
    async with upstream(slow) as server, LeanTransport(max_connections=1) as transport:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, transport, server.url)
            await until(lambda: server.in_flight == 1)
            with trio.fail_after(DEADLINE), pytest.raises(httpx.PoolTimeout):
                await get(transport, server.url, timeout={**SHORT, "read": DEADLINE, "pool": 0.05})
            assert transport.pool_stats()["waiting"] == 0
            server.release.set()
        assert server.accepts == 1
        assert transport.pool_stats()["idle"] == 1


async def test_read_timeout_waiting_for_the_head() -> None:
    async with upstream(slow) as server, LeanTransport() as transport:
        with trio.fail_after(DEADLINE), pytest.raises(httpx.ReadTimeout):
            await get(transport, server.url, timeout=SHORT)
        assert clean(transport)
        server.release.set()


async def test_read_timeout_between_body_chunks() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        assert await peer.request() is not None
        await peer.send(h11.Response(status_code=200, headers=[]), h11.Data(data=b"first"))
        await server.release.wait()

    async with upstream(handler) as server, LeanTransport() as transport:
        request = httpx.Request("GET", server.url, extensions={"timeout": SHORT})
        response = await transport.handle_async_request(request)
        assert response.status_code == 200
        with trio.fail_after(DEADLINE), pytest.raises(httpx.ReadTimeout):
            await response.aread()
        assert clean(transport)
        server.release.set()


async def test_write_timeout_when_upstream_stops_reading() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        await read_head(stream)
        await server.release.wait()

    async with upstream(handler) as server, LeanTransport() as transport:
        # More than loopback's socket buffers can hold, to a server that never reads it.
        request = httpx.Request(
            "POST",
            server.url,
            content=b"x" * (32 << 20),
            extensions={"timeout": {**SHORT, "write": 0.2}},
        )
        with trio.fail_after(DEADLINE), pytest.raises(httpx.WriteTimeout):
            await transport.handle_async_request(request)
        assert clean(transport)
        server.release.set()


async def test_connection_reset_is_a_read_error() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        await read_head(stream)
        reset(stream)

    async with upstream(handler) as server, LeanTransport() as transport:
        with pytest.raises(httpx.ReadError):
            await get(transport, server.url)
        assert clean(transport)


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nobody listens there
    async with LeanTransport() as transport:
        request = httpx.Request("GET", f"http://127.0.0.1:{port}/")
        with pytest.raises(httpx.ConnectError) as caught:
            await transport.handle_async_request(request)
        assert caught.value.request is request
        assert clean(transport)


@pytest.mark.parametrize(
    ("options", "response_headers"),
    [
        pytest.param({}, [("Connection", "close")], id="server-says-close"),
        pytest.param({"max_idle_per_host": 0}, [], id="no-idle-slots"),
        pytest.param({"keepalive_expiry": 0.0}, [], id="expired"),
    ],
)
async def test_connections_not_kept(
    options: dict[str, float], response_headers: list[tuple[str, str]]
) -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        while await peer.request() is not None:
            await peer.respond(b"ok", headers=response_headers)
            if response_headers:
                return

    async with upstream(handler) as server, LeanTransport(**options) as transport:  # type: ignore[arg-type]
        for _ in range(2):
            assert (await get(transport, server.url)).content == b"ok"
        assert server.accepts == 2
        assert transport.pool_stats()["reused"] == 0


async def test_aclose_closes_idle_connections_and_refuses_new_requests() -> None:
    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        while await peer.request() is not None:
            await peer.respond(b"ok")
        server.disconnected.set()

    async with upstream(handler) as server:
        transport = LeanTransport()
        await get(transport, server.url)
        await transport.aclose()
        with trio.fail_after(DEADLINE):
            await server.disconnected.wait()
        with pytest.raises(httpx.ConnectError, match="closed"):
            await get(transport, server.url)


async def test_unsupported_scheme() -> None:
    async with LeanTransport() as transport:
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/"))


async def test_works_under_async_client() -> None:
    async with (
        upstream(echo) as server,
        httpx.AsyncClient(transport=LeanTransport(), base_url=server.url) as client,
    ):
        response = await client.post("/v1/chat", json={"a": 1})
        assert response.status_code == 200
        assert response.text == 'POST /v1/chat {"a":1}'
        async with client.stream("GET", "/stream") as streamed:
            assert [chunk async for chunk in streamed.aiter_bytes()] == [b"GET /stream "]
        assert server.accepts == 1


# ------------------------------------------------------- finishing a stream read in part


def chunked_stream(tail: list[h11.Event]) -> Handler:
    """Answer each request with a chunked body: an event, then `tail` in writes of its own
    once the client has read the event (as an SSE upstream sends its terminator)."""

    async def handler(server: Upstream, stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        while await peer.request() is not None:
            await peer.send(h11.Response(status_code=200, headers=[]), h11.Data(data=b"last"))
            await server.release.wait()
            for event in tail:
                await peer.send(event)
            if not tail:
                await trio.sleep_forever()

    return handler


async def read_first_then_finish(transport: LeanTransport, server: Upstream,
                                 wait_s: float) -> None:
    timeouts = SHORT | {"read": DEADLINE}
    response = await transport.handle_async_request(
        httpx.Request("GET", f"{server.url}/sse", extensions={"timeout": timeouts}))
    body = response.stream.__aiter__()  # type: ignore[union-attr]
    assert await body.__anext__() == b"last"
    server.release.set()
    await response.stream.finish(wait_s)  # type: ignore[union-attr]
    await response.aclose()


async def test_finish_keeps_the_connection_when_the_body_ends_after_its_last_event() -> None:
    async with upstream(chunked_stream([h11.EndOfMessage()])) as server, \
            LeanTransport() as transport:
        with trio.fail_after(DEADLINE):
            await read_first_then_finish(transport, server, DEADLINE)
        assert transport.pool_stats()["idle"] == 1
        assert (await get(transport, f"{server.url}/again")).content == b"last"
        assert server.accepts == 1
        assert transport.pool_stats()["reused"] == 1


@pytest.mark.parametrize("tail", [
    pytest.param([h11.Data(data=b"more"), h11.EndOfMessage()], id="more-body"),
    pytest.param([], id="no-end-in-time"),
])
async def test_finish_drops_the_connection_unless_the_body_ends_empty(
        tail: list[h11.Event]) -> None:
    async with upstream(chunked_stream(tail)) as server, LeanTransport() as transport:
        with trio.fail_after(DEADLINE):
            await read_first_then_finish(transport, server, 0.05)
        assert clean(transport)
        assert transport.pool_stats()["created"] == 1


async def test_a_named_host_still_connects_through_the_resolver() -> None:
    async with upstream(echo) as server, LeanTransport() as transport:
        response = await get(transport, f"http://localhost:{server.port}/by-name")
        assert response.content == b"GET /by-name "
