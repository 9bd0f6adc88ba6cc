"""edge's HTTP/1.1: Hypercorn's protocol, with three changes it offers no setting for.

1. Heads edge refuses (`request_head.refusal`: over 64 KiB, or both Content-Length and
   Transfer-Encoding) are answered here, before an app task exists, with the error in
   the caller's format and `connection: close`, and the connection is then closed. In
   the app this would race: a client that pipelines more bytes after such a request
   makes h11 fail the connection (its state is "must close"), and Hypercorn then closes
   the socket at once, mid-way through the app's answer.

2. `Expect: 100-continue` is answered when edge wants the body, not at once. A client
   that sends it waits for `100 Continue` before sending its body, so that a request
   refused anyway (a wrong key, a body over the size limit) costs no upload; RFC 9110
   §10.1.1 lets the server check first. Hypercorn sends 100 as soon as it has parsed the
   head, and ASGI has no message with which an app could send it itself. Here
   `_DeferredContinue` (an h11 connection whose `they_are_waiting_for_100_continue` is
   always False) keeps Hypercorn's loop from sending it, and a waiting request gets a
   `send` coroutine function under `scope["extensions"][CONTINUE_EXTENSION]`, which
   `exchange.read_body` awaits after authentication and the Content-Length check. A
   request answered without reading its body gets its final status and no 100 (Hypercorn
   then closes the connection: the unread body is still on it); a client that sends its
   body without waiting makes h11 drop the flag, and `send` does nothing. The extension
   is added after Hypercorn has started the app's task but before that task first runs:
   `H11Protocol._create_stream` reaches no checkpoint between the two.

3. A request whose client has already closed its connection is not served. Under a burst,
   clients give up while their connections wait in the listen queue; edge then accepts a
   connection whose request and end (FIN) are both already there, and Hypercorn reports
   the end to the app only after the app has started, by which time the app has sent the
   request upstream. So the client's socket is polled (zero timeout, for POLLRDHUP,
   hang-up or error: about a microsecond) when a request head is complete: a request
   whose client is gone is dropped there, with a log line and no app task. The same
   probe goes to the app under `scope["extensions"][PEER_CLOSED_EXTENSION]`, and
   `exchange.run_watched` asks it again before any upstream call (the client may leave
   while its body arrives or its request is validated). A half-closed connection counts
   as gone, as Hypercorn already counts it (its end of input becomes `http.disconnect`).

Hypercorn builds its protocol by name (`hypercorn.protocol.H11Protocol`); `install`
points that name at `EdgeH11Protocol`. Checked against Hypercorn 0.18.0 and h11 0.16.0;
`tests/test_http_edges.py` covers all three end to end through `edge serve`.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

import h11
import hypercorn.protocol
from hypercorn.events import Closed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream

from .errors import ClosingError, render
from .logs import log
from .request_head import anthropic_path, origin_path, refusal, request_id

__all__ = ["CONTINUE_EXTENSION", "PEER_CLOSED_EXTENSION", "EdgeH11Protocol", "install"]

CONTINUE_EXTENSION = "edge.http.100-continue"
PEER_CLOSED_EXTENSION = "edge.http.peer-closed"


class _DeferredContinue(h11.Connection):
    """An h11 server connection that leaves `100 Continue` to `EdgeH11Protocol`."""

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return False


class EdgeH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol with edge's head checks and a deferred 100 Continue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = _DeferredContinue(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size)
        # this connection's "has the client closed?" probe (None where none can be made)
        self._peer_closed = _peer_probe(self.send)

    async def _create_stream(self, request: h11.Request) -> None:
        # h11's Headers is a Sequence whose items are built per index in Python; its
        # (raw name, name, value) list, when it has one, is read directly instead
        full = getattr(request.headers, "_full_items", None)
        error = refusal(request.target, request.headers if full is None else full)
        if error is not None:
            await self._refuse(request, error)
            return
        if self._peer_closed is not None and self._peer_closed():
            await self._drop(request)
            return
        await super()._create_stream(request)
        if isinstance(self.stream, HTTPStream):
            extensions: dict[str, Any] = self.stream.scope["extensions"]
            if self._client_waits():
                extensions[CONTINUE_EXTENSION] = {"send": self._send_continue}
            if self._peer_closed is not None:
                extensions[PEER_CLOSED_EXTENSION] = self._peer_closed

    def _client_waits(self) -> bool:
        connection = self.connection
        return (isinstance(connection, h11.Connection)
                and connection.client_is_waiting_for_100_continue)

    async def _send_continue(self) -> None:
        if self._client_waits():
            await self._send_h11_event(h11.InformationalResponse(
                status_code=100, headers=self.config.response_headers("h11")))

    async def _drop(self, request: h11.Request) -> None:
        """Close a connection whose client left before its request was read: no app task,
        no answer (nobody would read it), one log line."""
        await self.send(Closed())
        path, rid = _path_and_id(request)
        log.info("request dropped: the client left before it was read",
                 request_id=rid.decode(), method=request.method.decode(), path=path[:200])

    async def _refuse(self, request: h11.Request, error: ClosingError) -> None:
        """Answer `error` in the caller's format, then close the connection."""
        path, rid = _path_and_id(request)
        status, body = render(error, anthropic=anthropic_path(path))
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", b"%d" % len(body)), (b"x-request-id", rid),
                   *error.headers(), *self.config.response_headers("h11")]
        await self._send_h11_event(h11.Response(status_code=status, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())
        await self.send(Closed())
        log.info("request refused", request_id=rid.decode(), method=request.method.decode(),
                 path=path[:200], status=status, code=error.code)


def _path_and_id(request: h11.Request) -> tuple[str, bytes]:
    """A head's origin path and the request id it will be logged and answered under."""
    path = origin_path(request.target.partition(b"?")[0].decode("latin-1"))
    sent_id = next((v for n, v in request.headers if n == b"x-request-id"), None)
    return path, request_id(sent_id)


def _peer_probe(send: Any) -> Callable[[], bool] | None:
    """A probe of the client's socket for its end, or None where none can be made.

    Hypercorn hands the protocol its `TCPServer.protocol_send`; that server holds the
    connection's Trio stream (an SSL stream wraps the socket's stream).
    """
    stream = getattr(getattr(send, "__self__", None), "stream", None)
    sock = getattr(getattr(stream, "transport_stream", stream), "socket", None)
    if sock is None or not hasattr(select, "poll") or not hasattr(select, "POLLRDHUP"):
        return None
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)  # POLLHUP and POLLERR come anyway

    def peer_closed() -> bool:
        return bool(poller.poll(0))

    return peer_closed


def install() -> None:
    """Make Hypercorn serve HTTP/1.1 with `EdgeH11Protocol` (idempotent)."""
    hypercorn.protocol.H11Protocol = EdgeH11Protocol  # type: ignore[attr-defined]
