"""Streams without an end marker: the body's end is the stream's normal end.

OpenAI ends its streams with ``data: [DONE]`` and Anthropic with ``message_stop``, so
`ChunkStream` takes the body's end before that marker for a cut. Gemini's SSE and
Bedrock's event stream have no marker: the answer is whole when the body ends after the
upstream said how the answer finished (a finish reason, a stop event). `EndsAtEOF`
reads to the body's end (which also lets the connection go back to the pool) and takes
it for the normal end exactly then; a body that ends before that is still a cut. Once the
answer is whole, the body's end gets `TAIL_S` to come: an upstream that lingers after its
last event must not hold the client's finish back for a whole idle timeout, so the
stream ends there (the connection is dropped, not pooled).

The framing is pluggable too: `parser` is any object whose ``feed(bytes)`` returns
``(name, payload)`` pairs (an `SSEParser`, or Bedrock's event-stream frames) and whose
optional ``close()`` raises `UpstreamError` when the body ended inside a frame.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
import trio

from ..errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from .base import ChunkStream, Provider

__all__ = ["TAIL_S", "EndsAtEOF", "Framing", "Whole"]

TAIL_S = 2.0  # how long the body's end may lag behind a whole answer's last event


class Framing(Protocol):
    def feed(self, data: bytes) -> list[tuple[Any, bytes]]: ...


class Whole(Protocol):
    """A stream decoder that knows when the answer it read is complete."""

    whole: bool

    def __call__(self, name: Any, data: bytes) -> tuple[list[Any], bool]: ...


class EndsAtEOF(ChunkStream):
    """A `ChunkStream` that ends at the body's end once `decode.whole` is true."""

    def __init__(self, response: httpx.Response, provider: Provider, decode: Whole,
                 parser: Framing | None = None) -> None:
        super().__init__(response, provider, decode)
        self._whole = decode
        if parser is not None:
            self._parser = parser  # type: ignore[assignment]

    async def _fill(self) -> None:
        try:
            await super()._fill()
        except (UpstreamConnectError, UpstreamTimeout) as cut:
            # The body ended, broke off or lingered after the last frame: whole or not is
            # the question.
            if not self._whole.whole:
                raise
            close = getattr(self._parser, "close", None)
            if close is not None:
                try:
                    close()
                except UpstreamError as error:
                    raise self.provider.scrub(error) from cut
            self._finished = True
            return
        if self._whole.whole and not self._finished:
            self._deadline = min(self._deadline, trio.current_time() + TAIL_S)
