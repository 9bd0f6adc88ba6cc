"""AWS event-stream framing (Bedrock's ``converse-stream``), decoded as bytes arrive.

A message is a 12-byte prelude (total length, headers length, CRC32 of those eight
bytes), the headers, the payload, and a CRC32 of everything before it. Reads from a
socket split messages anywhere, so `EventStreamDecoder.feed` buffers until a whole
message is there; a CRC that does not match, a length that cannot be, or a stream that
ends inside a message raises `UpstreamError` (502) instead of waiting for bytes that
will never come.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from edge.errors import UpstreamError

__all__ = ["EventStreamDecoder", "Message"]

_PRELUDE = 12
_CRC = 4
_MAX_MESSAGE = 16 * 1024 * 1024  # AWS caps a message at 16 MiB
# Header value types: fixed sizes; 6 (bytes) and 7 (string) carry a 2-byte length.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message: its string headers (``:event-type``...) and its payload."""

    headers: dict[str, str]
    payload: bytes


def _bad(problem: str) -> UpstreamError:
    return UpstreamError(f"upstream sent a malformed event stream: {problem}")


def _headers(data: bytes) -> dict[str, str]:
    """String headers by name; headers of other types are skipped, being unused here."""
    out: dict[str, str] = {}
    at = 0
    while at < len(data):
        size = data[at]
        name = data[at + 1 : at + 1 + size].decode("utf-8", "replace")
        at += 1 + size
        if at >= len(data):
            raise _bad("a header has no value type")
        kind = data[at]
        at += 1
        if kind in (6, 7):
            if at + 2 > len(data):
                raise _bad("a header value is cut short")
            (length,) = struct.unpack_from(">H", data, at)
            value = data[at + 2 : at + 2 + length]
            at += 2 + length
            if kind == 7:
                out[name] = value.decode("utf-8", "replace")
        elif kind in _FIXED:
            at += _FIXED[kind]
        else:
            raise _bad(f"unknown header value type {kind}")
        if at > len(data):
            raise _bad("a header value is cut short")
    return out


class EventStreamDecoder:
    """Bytes in (`feed`, in pieces of any size), whole `Message`s out; `close` at EOF."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """The messages completed by `data`.

        Raises:
            UpstreamError: a CRC does not match or a length is impossible.
        """
        return list(self.messages(data))

    def messages(self, data: bytes) -> Iterator[Message]:
        """The same, one by one: those before a bad message are had before its error."""
        self._buffer += data
        while len(self._buffer) >= _PRELUDE:
            total, headers_length, prelude_crc = struct.unpack_from(">III", self._buffer)
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise _bad("prelude CRC mismatch")
            if total > _MAX_MESSAGE or total < _PRELUDE + headers_length + _CRC:
                raise _bad(f"impossible message length {total}")
            if len(self._buffer) < total:
                break
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            (message_crc,) = struct.unpack_from(">I", frame, total - _CRC)
            if zlib.crc32(frame[: total - _CRC]) != message_crc:
                raise _bad("message CRC mismatch")
            headers = _headers(frame[_PRELUDE : _PRELUDE + headers_length])
            yield Message(headers, frame[_PRELUDE + headers_length : total - _CRC])

    def close(self) -> None:
        """Call at the end of the bytes.

        Raises:
            UpstreamError: the stream ended inside a message.
        """
        if self._buffer:
            raise _bad(f"the stream ended inside a message ({len(self._buffer)} bytes left)")
