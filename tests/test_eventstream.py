"""AWS event-stream decoding: frames split at every byte offset, CRC errors, truncation.
Frames are built by hand in the layout the AWS docs define (botocore only parses them;
where it is installed, it must read them the same way)."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from edge.errors import UpstreamError
from edge.eventstream import EventStreamDecoder, Message


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = b"".join(
        bytes([len(name)])
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value))
        + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return body + struct.pack(">I", zlib.crc32(body))


HEADERS = {":event-type": "contentBlockDelta", ":message-type": "event"}
PAYLOAD = json.dumps({"contentBlockIndex": 0, "delta": {"text": "hi"}}).encode()
TWO = frame(HEADERS, PAYLOAD) + frame(
    {":message-type": "event", ":event-type": "messageStop"}, b"{}"
)


def test_a_frame_split_at_every_offset_decodes_the_same() -> None:
    for cut in range(len(TWO) + 1):
        decoder = EventStreamDecoder()
        messages = decoder.feed(TWO[:cut]) + decoder.feed(TWO[cut:])
        decoder.close()
        assert messages == [
            Message(HEADERS, PAYLOAD),
            Message({":message-type": "event", ":event-type": "messageStop"}, b"{}"),
        ]


def test_byte_by_byte_feeding_decodes_both_frames() -> None:
    decoder = EventStreamDecoder()
    messages = [m for i in range(len(TWO)) for m in decoder.feed(TWO[i : i + 1])]
    assert [m.headers[":event-type"] for m in messages] == ["contentBlockDelta", "messageStop"]


@pytest.mark.parametrize("offset", [5, 20, -2])
def test_a_flipped_byte_is_a_502_not_a_hang(offset: int) -> None:
    broken = bytearray(frame(HEADERS, PAYLOAD))
    broken[offset] ^= 0x01
    with pytest.raises(UpstreamError) as caught:
        EventStreamDecoder().feed(bytes(broken))
    assert caught.value.status == 502


def test_a_truncated_stream_raises_at_close() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(TWO[:-3]) == [Message(HEADERS, PAYLOAD)]
    with pytest.raises(UpstreamError):
        decoder.close()


def test_botocore_reads_the_test_frames_the_same_way() -> None:
    eventstream = pytest.importorskip("botocore.eventstream")
    buffer = eventstream.EventStreamBuffer()
    buffer.add_data(TWO)
    parsed = [(dict(m.headers), m.payload) for m in buffer]
    assert parsed == [(m.headers, m.payload) for m in EventStreamDecoder().feed(TWO)]
