"""What every provider adapter shares: the transport boundary and its error translation.

An adapter does only IO, in its upstream's own wire format: it turns a request body of
that format into an `httpx.Request` (URL, headers, auth), sends it through an httpx
transport (`handle_async_request`, no AsyncClient middleware) and hands back the answer,
or the stream's items, as the upstream sent them. Translating between formats is the
front door's job (`edge.dialects`, through the hub and `Provider.codec`). Every httpx
exception is translated here into an `Upstream*` error; nothing above this layer catches
httpx types.

Deadlines (SPEC §10 "Stalled upstreams"), all cancel scopes or transport timeouts:

* `first_byte_timeout_s` bounds the wait for a free connection and, from there, the wait
  for the answer's headers (a timeout: the next candidate is tried);
* `timeout_s` bounds a whole JSON answer, headers and body, from the request's start;
* `stream_idle_timeout_s` bounds the silence between two events of a stream.

Every error built from upstream data goes through `Provider.scrub`, after decoding, so a
provider key the upstream echoes (even JSON-escaped) never reaches a client in any field.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import httpx
import orjson
import trio

from ..config import ProviderConfig
from ..errors import (
    PoolExhausted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from ..keypool import Key, KeyPool
from ..sse import SSEError, SSEParser

MAX_ERROR_BODY = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# How long a finished stream's connection waits for the body's end to be kept for reuse.
FINISH_S = 1.0

# One SSE event (name, data) -> (stream items to emit, whether the stream is complete).
# An upstream error event raises `UpstreamError` (the codec's `error_in` reads it).
Decoder = Callable[[str | None, bytes], tuple[list[Any], bool]]



class AttemptWatch:
    """What `Provider.send` tells the attempt running in its task (`failover.Attempts`):
    when the answer's headers arrived (the hedge timer and the latency average stop there,
    not at the body's end) and which key of the pool it sent (its tokens count against
    that key's tpm)."""

    __slots__ = ("headers_at", "key", "on_headers")

    def __init__(self, on_headers: Callable[[], None] | None = None) -> None:
        self.headers_at = 0.0
        self.key: Key | None = None
        self.on_headers = on_headers

    def arrived(self) -> None:
        if not self.headers_at:
            self.headers_at = time.monotonic()
            if self.on_headers is not None:
                self.on_headers()


# Set by the attempt running in this task, read by `Provider.send`.
ATTEMPT: ContextVar[AttemptWatch | None] = ContextVar("edge_attempt", default=None)


class Redactor:
    """Takes a pool's secrets out of text and bytes; one substring search when clean.

    With several secrets the clean case first looks for their longest common prefix
    (``sk-proj-`` and the like) when it is long enough to be rare, so it stays one search.
    """

    __slots__ = ("_byte_pairs", "_byte_prefix", "_prefix", "secrets")

    MIN_PREFIX = 4

    def __init__(self, secrets: Sequence[str]) -> None:
        # Longest first: a key that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self._byte_pairs = tuple((s.encode(), b"[redacted]") for s in self.secrets)
        prefix = os.path.commonprefix(list(self.secrets)) if len(self.secrets) > 1 else ""
        self._prefix = prefix if len(prefix) >= self.MIN_PREFIX else ""
        self._byte_prefix = self._prefix.encode()

    def text(self, text: str) -> str:
        if self._prefix and self._prefix not in text:
            return text
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def data(self, data: bytes) -> bytes:
        if self._byte_prefix and self._byte_prefix not in data:
            return data
        for secret, mark in self._byte_pairs:
            if secret in data:
                data = data.replace(secret, mark)
        return data


class Provider(ABC):
    """Base adapter. Subclasses set `kind` and `codec` and implement `complete` and
    `open_stream`, both in the upstream's own format (`codec`'s)."""

    kind = ""
    # The `edge.codecs` module of the format this upstream speaks: a front door of the
    # same format passes requests through; any other translates through the hub with it.
    codec: Any = None
    # Adds trace-context headers (traceparent) to each upstream request when tracing is on.
    inject: Callable[[list[tuple[str, str]]], None] | None = None
    # The header carrying the API key: its name and a format of the value ("{}" is the
    # key). `send` puts it on every request, so adapters prebuild their headers without
    # it. None for a kind that authenticates otherwise; it overrides `sign` instead.
    key_header: tuple[str, str] | None = None

    def __init__(
        self,
        config: ProviderConfig,
        transport: httpx.AsyncBaseTransport,
        retry_on: frozenset[int],
    ) -> None:
        self.config = config
        self.name = config.name
        self.transport = transport
        self.retry_on = retry_on
        self.keys = KeyPool(config.keys, self.key_header, rests=bool(config.api_keys))
        self._redactor = Redactor(self.keys.secrets)
        t = config.timeout_s
        first_byte = config.first_byte_s
        self.answer_timeout = t
        self.idle_timeout = config.stream_idle_timeout_s
        # No per-read timeout: the head, the JSON body and the gaps between stream events
        # each have their own deadline (module docstring), which a trickle cannot stretch.
        # The pool wait has its own limit, so edge's queue never passes for the upstream's
        # slowness (a JSON answer's head must also fit in its whole-answer deadline).
        self.timeouts = {"connect": min(first_byte, 10.0), "read": None, "write": t,
                         "pool": first_byte, "head": first_byte}
        self.json_timeouts = {**self.timeouts, "head": min(first_byte, t)}

    @abstractmethod
    async def complete(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> dict[str, Any]:
        """One non-streaming answer, in the upstream's format; raises `Upstream*` errors.

        `endpoint` is ``"chat"`` (`body` is a completion request in `codec`'s format) or
        ``"embeddings"`` (`body` is an OpenAI embeddings request, whatever the kind).
        """

    @abstractmethod
    async def open_stream(
        self, endpoint: str, body: dict[str, Any], model: str, raw: bytes | None
    ) -> ChunkStream:
        """Send a streaming request; returns once the upstream accepted it (2xx headers).

        The stream's items are the upstream's own (`codec.StreamDecoder.feed_item` reads them).
        """

    async def aclose(self) -> None:
        await self.transport.aclose()

    # -- shared plumbing -------------------------------------------------------------

    def redact(self, text: str) -> str:
        """Upstreams sometimes echo request headers in errors; never pass a key on."""
        return self._redactor.text(text)

    def scrub(self, error: UpstreamError) -> UpstreamError:
        """`error` with every key of the pool taken out of every field a client sees rendered.

        The one redaction for errors built from upstream data (error bodies, error events
        of either kind), applied to decoded text, where a JSON-escaped key is plain.
        """
        if self._redactor.secrets:
            for name in ("message", "type", "param", "code"):
                value = getattr(error, name)
                if isinstance(value, str):
                    setattr(error, name, self.redact(value))
        return error

    def redact_bytes(self, data: bytes) -> bytes:
        """The same for an answer or an event as received (one substring search when clean)."""
        return self._redactor.data(data)

    def sign(self, request: httpx.Request) -> None:
        """Authenticate `request` once it is complete, for a kind whose `key_header` is None
        (a signature over the request, such as SigV4). The default sends it as it is."""
        return None

    async def send(self, request: httpx.Request,
                   timeouts: dict[str, float | None] | None = None) -> httpx.Response:
        """Send and check the status; a non-2xx answer becomes an `UpstreamStatus`.

        The one place a request gets its credentials: a key of the pool in the kind's
        `key_header`, or the kind's `sign`.
        """
        request.extensions["timeout"] = self.timeouts if timeouts is None else timeouts
        if self.inject is not None:
            trace_headers: list[tuple[str, str]] = []
            self.inject(trace_headers)
            for name, value in trace_headers:
                request.headers[name] = value
        key = None
        if self.key_header is None:
            self.sign(request)
        else:
            key = self.keys.pick()
            if key is not None:
                if key.limited:
                    key = await self.keys.admit(key)
                request.headers[self.keys.header_name] = key.header_value
        watch = ATTEMPT.get()
        if watch is not None:
            watch.key = key
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.PoolTimeout:
            raise PoolExhausted(
                f"edge's {self.config.max_connections} connection(s) to provider {self.name} "
                "are all busy; retry shortly.") from None
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(
                f"provider {self.name} timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamConnectError(
                f"provider {self.name} could not be reached ({type(exc).__name__})"
            ) from None
        if watch is not None:
            watch.arrived()
        if response.status_code >= 400:
            body = b""
            with trio.move_on_after(self.idle_timeout):
                try:
                    body = await self.read_body(response, MAX_ERROR_BODY)
                except UpstreamError:
                    pass
            error = self.status_error(response, body)
            if error.status == 429 and key is not None and self.keys.rest(key, error.retry_after):
                error.retry_after = None  # the wait was this key's: the next key need not wait
            raise error
        return response

    async def answer_json(self, request: httpx.Request) -> dict[str, Any]:
        """Send `request` and read its JSON answer, all of it within `timeout_s`.

        The head's own limits (pool, head) come from the transport, so a full pool is
        told apart from a slow upstream; the body must be in by the same deadline.
        """
        began = trio.current_time()
        response = await self.send(request, self.json_timeouts)
        with trio.move_on_at(began + self.answer_timeout):
            return await self.read_json(response)
        raise UpstreamTimeout(
            f"provider {self.name} did not finish its answer within {self.answer_timeout:g}s")

    async def read_body(self, response: httpx.Response, limit: int = MAX_ANSWER_BYTES) -> bytes:
        """The whole body, refused as soon as it is known to be over `limit` bytes.

        An answer declaring more is refused unread, one without a length once the bytes read
        pass it, so a hostile Content-Length costs nothing and an endless body about `limit`.
        Either way the response is closed, which drops (never pools) an unfinished connection.
        """
        parts: list[bytes] = []
        declared = response.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else 0
        try:
            if size <= limit:
                size = 0
                async for part in response.stream:  # type: ignore[union-attr]
                    size += len(part)
                    if size > limit:
                        break
                    parts.append(part)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"provider {self.name} timed out reading the answer") from None
        except httpx.HTTPError as exc:
            raise UpstreamConnectError(
                f"provider {self.name} broke off the answer ({type(exc).__name__})"
            ) from None
        finally:
            await response.aclose()
        if size > limit:
            parts.clear()  # the error's traceback keeps this frame alive, not the bytes read
            raise UpstreamError(
                f"provider {self.name} answered more than {limit} bytes: the answer is too large"
            )
        return b"".join(parts)

    async def read_json(self, response: httpx.Response) -> dict[str, Any]:
        body = self.redact_bytes(await self.read_body(response))
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider {self.name} answered with invalid JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"provider {self.name} answered with an unexpected JSON value")
        return data

    def status_error(self, response: httpx.Response, body: bytes) -> UpstreamStatus:
        status = response.status_code
        message, err_type, param, code = f"provider {self.name} answered {status}", None, None, None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            err = data.get("error")
            if isinstance(err, dict):
                if isinstance(err.get("message"), str):
                    message = err["message"]
                err_type = err.get("type") if isinstance(err.get("type"), str) else None
                param = err.get("param") if isinstance(err.get("param"), str) else None
                code = err.get("code") if isinstance(err.get("code"), str) else None
            elif isinstance(err, str):
                message = err
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        error = UpstreamStatus(
            status,
            message,
            retryable=status in self.retry_on,
            upstream_type=err_type,
            param=param,
            code=code,
            retry_after=retry_after,
            provider=self.name,
        )
        self.scrub(error)
        return error


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds, in either form RFC 9110 allows (delay-seconds or an
    HTTP-date, counted from now and never below 0); None when absent or unreadable.

    A number that is not finite ("inf", "1e999") is unreadable too: it would otherwise
    reach the client's own Retry-After, which must be a whole number of seconds.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": the date is in UTC (RFC 5322)
            when = when.replace(tzinfo=datetime.UTC)
        return max(0.0, when.timestamp() - time.time())
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


class ChunkStream:
    """An upstream SSE answer as the upstream's stream items, read as it sends them.

    `decode(event_name, data)` turns one SSE event into items (possibly none) and says
    whether it completed the stream. Iteration ends there; an upstream that stops before
    it raises `UpstreamConnectError`, so a cut stream is never taken for a whole one, and
    one silent for `stream_idle_timeout_s` since its last event (or its headers) raises
    `UpstreamTimeout` after closing the connection.
    """

    def __init__(self, response: httpx.Response, provider: Provider, decode: Decoder) -> None:
        self.response = response
        self.provider = provider
        self._decode = decode
        self._parser = SSEParser()
        self._raw = response.stream.__aiter__()  # type: ignore[union-attr]
        self._pending: list[Any] = []
        self._finished = False
        self._complete = False  # the upstream's last event arrived; the body's end may not
        # A decode error is raised only after the chunks decoded before it in the same
        # network read have been handed out, so a client gets the text that preceded it.
        self._error: UpstreamError | None = None
        self._idle = provider.idle_timeout
        self._deadline = trio.current_time() + self._idle

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        while not self._pending:
            if self._error is not None:
                raise self._error
            if self._finished:
                raise StopAsyncIteration
            await self._fill()
        return self._pending.pop(0)

    def ready(self) -> bool:
        """True when the next `__anext__` needs no network read (an item, an end, an error).

        One read often carries several events; the relay sends what is ready as one write.
        """
        return bool(self._pending) or self._finished or self._error is not None

    async def _fill(self) -> None:
        name = self.provider.name
        try:
            with trio.move_on_at(self._deadline) as idle:
                data = await self._raw.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise UpstreamConnectError(f"provider {name} ended the stream early") from None
        except httpx.TimeoutException:
            await self.aclose()
            raise UpstreamTimeout(f"provider {name} timed out mid-stream") from None
        except httpx.HTTPError as exc:
            await self.aclose()
            raise UpstreamConnectError(
                f"provider {name} broke off the stream ({type(exc).__name__})"
            ) from None
        if idle.cancelled_caught:  # the transport has dropped the connection already
            await self.aclose()
            raise UpstreamTimeout(
                f"provider {name} sent no event for {self._idle:g}s mid-stream")
        try:
            events = self._parser.feed(data)
            if events:
                self._deadline = trio.current_time() + self._idle
            redact = self.provider.redact_bytes
            for event, payload in events:
                chunks, complete = self._decode(event, redact(payload))
                self._pending.extend(chunks)
                if complete:
                    # The connection stays checked out until `aclose`, which reads the
                    # body's end after the relay has sent the last frames, then keeps it.
                    self._finished = self._complete = True
                    return
        except (SSEError, orjson.JSONDecodeError):
            self._error = UpstreamError(f"provider {name} sent an invalid event stream")
        except UpstreamError as error:
            # a mid-stream error event may echo our request headers: never pass the key on
            self._error = self.provider.scrub(error)
        if self._error is not None:
            self._finished = True
            await self.aclose()

    async def aclose(self) -> None:
        """Release the connection: kept for reuse after a complete stream, else closed."""
        if self._complete:
            self._complete = False
            finish = getattr(self.response.stream, "finish", None)
            if finish is not None:
                await finish(FINISH_S)
        await self.response.aclose()
