"""Server-sent events, sans-IO: parse what an upstream sends, frame what we send.

The parser takes bytes in whatever pieces the network delivers and returns complete
events; it never touches a socket, so it is tested synchronously.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one SSE event larger than this is a broken upstream


class SSEError(ValueError):
    """The byte stream is not valid server-sent events."""


class SSEParser:
    """Incremental parser: `feed(bytes)` returns the events completed by those bytes.

    An event is `(name, data)`: `name` is the `event:` field or None, `data` the `data:`
    lines joined with newlines. Comments and unknown fields are ignored, as the SSE
    standard says.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        parts = buffer.split(b"\n\n")
        self._buffer = parts.pop()
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise SSEError("an upstream event exceeded the size limit")
        events = []
        for block in parts:
            if not block:
                continue
            name: str | None = None
            data: list[bytes] = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode("utf-8", "replace")
            if data or name is not None:
                events.append((name, b"\n".join(data)))
        return events

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered (a cut stream)."""
        return bool(self._buffer.strip())


def frame(obj: Any) -> bytes:
    """One OpenAI-style event: `data: {json}` and the blank line."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def frame_event(name: str, obj: Any) -> bytes:
    """One Anthropic-style event: `event: name` then `data: {json}`."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
