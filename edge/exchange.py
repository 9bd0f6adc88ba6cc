"""One HTTP exchange as edge's handlers see it: the request, its body, its disconnect, the answer.

Hypercorn hands the app ASGI messages; everything here turns them into what a handler
needs (a `Request` built once, a bounded body read, a way to run work that stops when
the client goes away) and back (a JSON answer with its Content-Length).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from .auth import ANONYMOUS, KeyPolicy
from .cache import Flight
from .errors import PayloadTooLarge, RequestTimeout
from .http1 import CONTINUE_EXTENSION, PEER_CLOSED_EXTENSION
from .request_head import request_id

T = TypeVar("T")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
JSON_HEADERS = [(b"content-type", JSON)]


class ClientGone(Exception):
    """The client disconnected; nothing more is sent."""


class Request:
    """What the handlers need to know about one request; built once, passed along."""

    __slots__ = ("scope", "receive", "send", "headers", "request_id", "start", "key", "tenant",
                 "anthropic", "endpoint", "status", "finished", "provider", "model", "cache",
                 "usage")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.request_id = request_id(self.headers.get(b"x-request-id"))
        self.start = time.perf_counter()
        self.key: KeyPolicy = ANONYMOUS  # the caller's key, once authenticated
        self.tenant = "anonymous"
        self.anthropic = False
        self.endpoint = "other"
        self.status = 200
        # Set just before the last body message: Hypercorn reports "disconnect" as soon as a
        # response is complete, and that must not cancel the work that follows it.
        self.finished = False
        # For the request's log line: who answered, for which model, from where.
        self.provider: str | None = None
        self.model: str | None = None
        self.cache: bytes | None = None
        self.usage: str | None = None  # "upstream" or "estimated": where the token counts came from

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


async def send_json(req: Request, status: int, body: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    # Content-Length spares Hypercorn the chunked framing and its terminator write.
    all_headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body)),
                   (b"x-request-id", req.request_id)]
    if headers:
        all_headers.extend(headers)
    req.status = status
    await req.send({"type": "http.response.start", "status": status, "headers": all_headers})
    req.finished = True
    await req.send({"type": "http.response.body", "body": body})


async def read_body(req: Request, max_body: int, body_timeout_s: float) -> bytes:
    """The whole body, refusing more than `max_body` bytes before reading it.

    A client that waits for `100 Continue` gets it here, once the key and the declared
    size have passed. The whole read is bounded by `body_timeout_s` seconds (408).
    """
    declared = req.headers.get(b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            size = 0
        if size > max_body:
            raise PayloadTooLarge(
                f"Request body of {size} bytes exceeds the limit of {max_body} bytes.")
    if b"expect" in req.headers:
        go_ahead = req.scope.get("extensions", {}).get(CONTINUE_EXTENSION)
        if go_ahead is not None:
            await go_ahead["send"]()
    body = _Body(max_body)
    # Usually the whole body is already queued when the app first runs (Hypercorn parses
    # the packet that carried it before the app's task starts): then it is taken as it
    # is, with no deadline to register and cancel, which every request would pay for.
    nowait = getattr(getattr(req.receive, "__self__", None), "receive_nowait", None)
    if nowait is not None and body.take_queued(nowait):
        return body.joined()
    with trio.move_on_after(body_timeout_s):
        while not body.add(await req.receive()):
            pass
        return body.joined()
    raise RequestTimeout(
        f"The request body did not arrive within {body_timeout_s:g} seconds.")


class _Body:
    """A request body arriving as ASGI messages, refused once past `max_body` bytes."""

    __slots__ = ("max_body", "parts", "size")

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, message: dict[str, Any]) -> bool:
        """Add one message; True when it was the last."""
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.max_body:
            raise PayloadTooLarge(f"Request body exceeds the limit of {self.max_body} bytes.")
        self.parts.append(chunk)
        return not message.get("more_body", False)

    def take_queued(self, receive_nowait: Callable[[], dict[str, Any]]) -> bool:
        """Add the messages already queued; True once the last one came."""
        while True:
            try:
                message = receive_nowait()
            except trio.WouldBlock:
                return False
            if self.add(message):
                return True

    def joined(self) -> bytes:
        parts = self.parts
        return parts[0] if len(parts) == 1 else b"".join(parts)


async def _until_disconnect(req: Request, scope: trio.CancelScope,
                            flight: Flight | None = None) -> None:
    """Cancel `scope` when the client goes away (Hypercorn never cancels the app).

    A coalescing leader whose followers still wait keeps its upstream call going until
    none is left waiting, so their answer is not thrown away.
    """
    while True:
        message = await req.receive()
        if message["type"] == "http.disconnect":
            if req.finished:
                return
            if flight is not None:
                await flight.wait_idle()
            scope.cancel()
            return


async def run_watched(req: Request, work: Callable[[], Awaitable[T]],
                      flight: Flight | None = None) -> T:
    """Run `work`, cancelling it at once if the client disconnects (then ClientGone).

    Errors from `work` are re-raised as themselves, not wrapped in an ExceptionGroup.
    """
    box: list[tuple[bool, Any]] = []
    peer_closed = req.scope.get("extensions", {}).get(PEER_CLOSED_EXTENSION)
    if peer_closed is not None and peer_closed():
        raise ClientGone()  # it left before its request was read: no upstream call at all
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_disconnect, req, nursery.cancel_scope, flight)
        try:
            box.append((True, await work()))
        except Exception as exc:
            box.append((False, exc))
        nursery.cancel_scope.cancel()
    if not box:
        raise ClientGone()
    ok, value = box[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
