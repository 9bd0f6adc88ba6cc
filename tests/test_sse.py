"""Server-sent events: the incremental parser and the framers, on both twins.

Every test runs on the compiled module and on the pure twin. Beyond examples, three
properties pin the parser down: the events do not depend on how the stream is cut into
reads, both twins agree feed by feed on random bytes, and both agree with `reference`, a
whole-stream model written straight from the rules (normalise line endings, split into
lines, dispatch at each blank line).
"""

from __future__ import annotations

import types
from typing import Any

import orjson
import pytest
from _twins import NO_EXTENSIONS, both, compiled, pure
from hypothesis import given, settings
from hypothesis import strategies as st

import edge.fastpath as fastpath
import edge.sse as sse

Event = tuple[str | None, bytes]


def feed_all(parser: Any, pieces: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events


def reference(stream: bytes, limit: int = pure.MAX_EVENT_BYTES) -> tuple[list[Event], bool, bool]:
    """(events, too_big, pending) for a whole stream, by the rules and nothing clever.

    too_big: some complete event, or the unfinished one at the end, is longer than
    `limit` (its lines joined with LF). pending: the unfinished part is not all whitespace.
    """
    text = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    *lines, partial = text.split(b"\n")
    events: list[Event] = []
    name: str | None = None
    data: list[bytes] = []
    current: list[bytes] = []
    too_big = False
    for line in lines:
        if not line:
            if current and len(b"\n".join(current)) > limit:
                too_big = True
            if data or name is not None:
                events.append((name, b"\n".join(data)))
            name, data, current = None, [], []
            continue
        current.append(line)
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    tail = current + [partial] if partial else current
    if len(b"\n".join(tail)) > limit:
        too_big = True
    end = text.rfind(b"\n\n")
    pending = bool(text[end + 2 :].strip()) if end >= 0 else bool(text.strip())
    return events, too_big, pending


# A stream with everything: names, multi-line data, comments, unknown fields, runs of
# blank lines, a lone "data" line, spaces to keep, non-ASCII and invalid UTF-8.
STREAM = (
    b": keep-alive comment\n"
    b"\n"
    b"event: message_start\n"
    b'data: {"type":"message_start"}\n'
    b"\n\n\n"
    b"id: 7\n"
    b"retry: 1000\n"
    b"data: first\n"
    b"data:second\n"
    b"data:  third keeps a space\n"
    b"data\n"
    b"unknown: field\n"
    b"\n"
    b"event:  ping \n"
    b"\n"
    b": only a comment\n"
    b"\n"
    b"event: caf\xc3\xa9\n"
    b"event: last \xff wins\n"
    b"data: \xe2\x82\xac\n"
    b"\n"
    b"data:\n"
    b"data:\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED: list[Event] = [
    ("message_start", b'{"type":"message_start"}'),
    (None, b"first\nsecond\n third keeps a space"),
    ("ping", b""),
    ("last \ufffd wins", "€".encode()),
    (None, b"\n"),
    (None, b"[DONE]"),
]


def with_endings(stream: bytes, ending: bytes) -> bytes:
    return stream.replace(b"\n", ending)


# ----------------------------------------------------------------------------- selector


def test_selector_and_reexports() -> None:
    if NO_EXTENSIONS or compiled is None:
        assert fastpath.SSEParser is pure.SSEParser
    else:
        assert fastpath.COMPILED is True
        assert fastpath.SSEParser is compiled.SSEParser
        assert fastpath.frame is compiled.frame
        assert fastpath.frame_event is compiled.frame_event
    assert sse.SSEParser is fastpath.SSEParser
    assert sse.frame is fastpath.frame
    assert sse.frame_event is fastpath.frame_event
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.MAX_EVENT_BYTES == 8 * 1024 * 1024


def test_one_error_class_for_both_twins() -> None:
    assert issubclass(pure.SSEError, ValueError)
    assert sse.SSEError is fastpath.SSEError is pure.SSEError
    for mod in both():
        assert mod.SSEError is pure.SSEError
        assert mod.DONE == pure.DONE
        assert mod.MAX_EVENT_BYTES == pure.MAX_EVENT_BYTES
        with pytest.raises(sse.SSEError):  # what edge's providers catch
            mod.SSEParser(max_event_bytes=1).feed(b"data: too long")


# ------------------------------------------------------------------------------- parser


def test_whole_stream(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    assert parser.feed(STREAM) == EXPECTED
    assert reference(STREAM) == (EXPECTED, False, False)
    assert parser.pending is False


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_byte_boundary(impl: types.ModuleType, ending: bytes) -> None:
    stream = with_endings(STREAM, ending)
    for cut in range(len(stream) + 1):
        parser = impl.SSEParser()
        assert feed_all(parser, [stream[:cut], stream[cut:]]) == EXPECTED, cut
        assert parser.pending is False
    parser = impl.SSEParser()
    assert feed_all(parser, [stream[i : i + 1] for i in range(len(stream))]) == EXPECTED


def test_every_pair_of_boundaries_in_a_short_stream(impl: types.ModuleType) -> None:
    stream = b"event: e\r\ndata: a\r\r\ndata: b\n\r\n\n\r\rdata: c\r\n\r\n"
    expected: list[Event] = [("e", b"a"), (None, b"b"), (None, b"c")]
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            pieces = [stream[:first], stream[first:second], stream[second:]]
            assert feed_all(impl.SSEParser(), pieces) == expected, (first, second)


def test_line_endings_are_equivalent(impl: types.ModuleType) -> None:
    for ending in (b"\r\n", b"\r"):
        assert impl.SSEParser().feed(with_endings(STREAM, ending)) == EXPECTED
    mixed = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    assert impl.SSEParser().feed(mixed) == [(None, b"a\nb\nc"), (None, b"d")]


def test_crlf_split_across_reads_is_one_line_ending(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # completes the CRLF: not yet a blank line
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"\n\r") == [(None, b"a\nb")]
    assert parser.feed(b"\ndata: c\r\n\r") == [(None, b"c")]  # that LF pairs with the CR
    assert parser.pending is False


def test_lone_crs_split_across_reads(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [(None, b"a")]  # CR CR: a line ending, then a blank line
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"") == []  # an empty read does not forget the CR
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r\n") == [(None, b"b")]


def test_multi_line_data(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    assert parser.feed(b"data: one\ndata: two\ndata:three\n\n") == [(None, b"one\ntwo\nthree")]
    assert parser.feed(b"data:\ndata: x\ndata:\n\n") == [(None, b"\nx\n")]
    many = b"".join(b"data: line %d\n" % i for i in range(2000)) + b"\n"  # > a stack buffer
    joined = b"\n".join(b"line %d" % i for i in range(2000))
    assert parser.feed(many) == [(None, joined)]


def test_one_leading_space_is_stripped(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    stream = b"data:x\n\ndata: x\n\ndata:  x\n\ndata: \n\ndata:\tx \n\n"
    assert parser.feed(stream) == [
        (None, b"x"),
        (None, b"x"),
        (None, b" x"),
        (None, b""),
        (None, b"\tx "),
    ]


def test_comments_and_unknown_fields_are_ignored(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    assert parser.feed(b": ping\n\n:\n\nid: 3\nretry: 5\n\n") == []
    stream = b": a comment\nid: 1\nretry: 10\nfoo: bar\nDATA: shout\ndata: x\n: more\n\n"
    assert parser.feed(stream) == [(None, b"x")]
    assert parser.feed(b"data\n\nevent\n\n") == []  # no colon: not the data/event fields


def test_event_names(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    stream = (
        b"event: message_start\ndata: {}\n\n"
        b"event: ping\n\n"  # a name alone is an event, with empty data
        b"data: {}\nevent: late\n\n"  # order of fields does not matter
        b"event: a\nevent: b\ndata: 1\n\n"  # the last name wins
        b"event:\t spaced \x0b\ndata: 2\n\n"
        b"event: \xe2\x82\xac\xc3\n\n"  # UTF-8, invalid bytes replaced
        b"event:\ndata: 3\n\n"  # an empty name is a name
    )
    assert parser.feed(stream) == [
        ("message_start", b"{}"),
        ("ping", b""),
        ("late", b"{}"),
        ("b", b"1"),
        ("spaced", b"2"),
        ("€\ufffd", b""),
        ("", b"3"),
    ]


def test_pending(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    assert parser.pending is False
    assert parser.feed(b'data: {"a":') == []
    assert parser.pending is True
    assert parser.feed(b"1}\n") == []
    assert parser.pending is True
    assert parser.feed(b"\n") == [(None, b'{"a":1}')]
    assert parser.pending is False
    assert parser.feed(b"\n\n \t\r\n") == []
    assert parser.pending is False
    assert parser.feed(b": comment") == []
    assert parser.pending is True  # a cut stream, whatever the bytes were


def test_feed_takes_bytes_like_objects(impl: types.ModuleType) -> None:
    parser = impl.SSEParser()
    assert parser.feed(bytearray(b"data: a")) == []
    assert parser.feed(memoryview(b"\n\ndata: b\n\n")) == [(None, b"a"), (None, b"b")]
    with pytest.raises(TypeError):
        parser.feed("data: text\n\n")
    for data in impl.SSEParser().feed(bytearray(b"data: c\n\n")):
        assert type(data[1]) is bytes


def test_constructor_checks_the_limit(impl: types.ModuleType) -> None:
    with pytest.raises(ValueError, match="max_event_bytes"):
        impl.SSEParser(-1)
    with pytest.raises(TypeError):
        impl.SSEParser(1.5)
    assert impl.SSEParser(0).feed(b"\n\n\n") == []  # blank lines are no event


def test_size_limit_is_exact(impl: types.ModuleType) -> None:
    at_limit = b"data: 1234"  # 10 bytes
    assert impl.SSEParser(10).feed(at_limit + b"\n\n") == [(None, b"1234")]
    assert impl.SSEParser(10).feed(b"\n\n\n" + at_limit + b"\n\n\n") == [(None, b"1234")]
    # Lines are counted with the LF between them: "data: 1\ndata: 2" is 15 bytes.
    assert impl.SSEParser(15).feed(b"data: 1\r\ndata: 2\r\n\r\n") == [(None, b"1\n2")]
    with pytest.raises(pure.SSEError, match="size limit of 14 bytes"):
        impl.SSEParser(14).feed(b"data: 1\ndata: 2\n\n")
    with pytest.raises(pure.SSEError):
        impl.SSEParser(9).feed(at_limit + b"\n\n")


def test_size_limit_does_not_depend_on_the_reads(impl: types.ModuleType) -> None:
    fits = b"data: 1234\r\n\r\ndata: 5678\r\n\r\n"
    too_big = b"data: 1234\r\n\r\ndata: 56789\r\n\r\n"
    for cut in range(len(too_big) + 1):
        parser = impl.SSEParser(10)
        assert feed_all(parser, [fits[:cut], fits[cut:]]) == [(None, b"1234"), (None, b"5678")]
        with pytest.raises(pure.SSEError):
            feed_all(impl.SSEParser(10), [too_big[:cut], too_big[cut:]])


def test_an_unfinished_event_over_the_limit_raises_at_once(impl: types.ModuleType) -> None:
    parser = impl.SSEParser(10)
    assert parser.feed(b"data: 1234\n") == []  # 11 bytes, but the LF may end the event
    with pytest.raises(pure.SSEError):
        parser.feed(b"x")
    # Broken for good: the bytes are gone, and later reads raise too.
    assert parser.pending is False
    with pytest.raises(pure.SSEError, match="already broke"):
        parser.feed(b"\n\ndata: ok\n\n")


def test_default_limit_is_max_event_bytes(impl: types.ModuleType) -> None:
    body = b"data: " + b"x" * (impl.MAX_EVENT_BYTES - 6)
    parser = impl.SSEParser()
    assert parser.feed(body[: len(body) // 2]) == []
    assert parser.feed(body[len(body) // 2 :]) == []
    assert parser.feed(b"\n\n") == [(None, body[6:])]
    with pytest.raises(pure.SSEError):
        impl.SSEParser().feed(body + b"x")


def test_a_long_event_in_small_reads(impl: types.ModuleType) -> None:
    payload = orjson.dumps({"text": "word " * 20_000})
    stream = b"event: big\ndata: " + payload + b"\n\n"
    parser = impl.SSEParser()
    events = feed_all(parser, [stream[i : i + 1000] for i in range(0, len(stream), 1000)])
    assert events == [("big", payload)]


# ------------------------------------------------------------------ properties (hypothesis)

_TOKENS = [
    b"data:", b"data: ", b"event:", b"event: ", b":", b"id: 1", b"data", b"dat", b"\n",
    b"\n", b"\r", b"\r\n", b"\n\n", b" ", b"\t", b"x", b"yz", b"{}", b"[DONE]",
    b"\xc3\xa9", b"\xff", b"\xe2\x82",
]  # fmt: skip
_LINES = st.lists(
    st.tuples(
        st.sampled_from([b"data:", b"data: ", b"event:", b"event: ", b":", b"id:", b"data", b""]),
        st.sampled_from([b"", b"x", b" y", b"{}", b"\xff", b"\xc3\xa9 z", b"abcdefghijkl"]),
        st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n"]),
    ),
    max_size=12,
).map(lambda lines: b"".join(field + value + ending for field, value, ending in lines))
STREAMS = st.one_of(
    _LINES,  # mostly well-formed: events, names, comments, every line ending
    st.lists(st.sampled_from(_TOKENS), max_size=60).map(b"".join),  # fragments of fields
    st.binary(max_size=80),
)
LIMITS = st.one_of(st.just(pure.MAX_EVENT_BYTES), st.integers(0, 24))


def run(mod: types.ModuleType, pieces: list[bytes], limit: int) -> list[Any]:
    """What each feed returned (or the error), then the final `pending`."""
    parser = mod.SSEParser(limit)
    outcome: list[Any] = []
    for piece in pieces:
        try:
            outcome.append(parser.feed(piece))
        except pure.SSEError as error:
            outcome.append(("SSEError", str(error)))
            break
    outcome.append(parser.pending)
    return outcome


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(stream) + 1) for p in points), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(stream=STREAMS, points=st.lists(st.integers(0, 10_000), max_size=6), limit=LIMITS)
def test_twins_agree_read_by_read(stream: bytes, points: list[int], limit: int) -> None:
    pieces = cut(stream, points)
    outcomes = [run(mod, pieces, limit) for mod in both()]
    assert all(outcome == outcomes[0] for outcome in outcomes)


@settings(max_examples=300, deadline=None)
@given(stream=STREAMS, points=st.lists(st.integers(0, 10_000), max_size=6), limit=LIMITS)
def test_any_cut_matches_the_reference(stream: bytes, points: list[int], limit: int) -> None:
    events, too_big, pending = reference(stream, limit)
    for mod in both():
        outcome = run(mod, cut(stream, points), limit)
        raised = any(isinstance(step, tuple) for step in outcome[:-1])
        assert raised == too_big
        if not raised:
            assert [event for step in outcome[:-1] for event in step] == events
            assert outcome[-1] == pending


@settings(max_examples=100, deadline=None)
@given(
    objs=st.lists(
        st.tuples(
            st.sampled_from(["message_start", "content_block_delta", "ping", "é"]),
            st.dictionaries(
                st.text(max_size=5), st.text(max_size=20) | st.integers(-(2**53), 2**53)
            ),
        ),
        max_size=8,
    ),
    points=st.lists(st.integers(0, 10_000), max_size=5),
)
def test_framed_events_parse_back(
    objs: list[tuple[str, dict[str, Any]]], points: list[int]
) -> None:
    for mod in both():
        stream = b"".join(
            mod.frame_event(name, obj) if i % 2 else mod.frame(obj)
            for i, (name, obj) in enumerate(objs)
        )
        expected = [
            (name if i % 2 else None, orjson.dumps(obj)) for i, (name, obj) in enumerate(objs)
        ]
        assert feed_all(mod.SSEParser(), cut(stream, points)) == expected


# ------------------------------------------------------------------------------- framing


def test_frame_bytes(impl: types.ModuleType) -> None:
    assert impl.frame({"a": 1, "b": [True, None], "c": "é"}) == (
        b'data: {"a":1,"b":[true,null],"c":"\xc3\xa9"}\n\n'
    )
    assert impl.frame({}) == b"data: {}\n\n"
    assert impl.frame("text\nwith newline") == b'data: "text\\nwith newline"\n\n'
    chunk = {"choices": [{"delta": {"content": "x" * 10_000}}]}
    assert impl.frame(chunk) == b"data: " + orjson.dumps(chunk) + b"\n\n"


def test_frame_event_bytes(impl: types.ModuleType) -> None:
    assert impl.frame_event("message_stop", {"type": "message_stop"}) == (
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert impl.frame_event("", []) == b"event: \ndata: []\n\n"
    assert impl.frame_event("caf\u00e9", 1) == b"event: caf\xc3\xa9\ndata: 1\n\n"


class Name(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"wrong"


def test_frame_event_names_are_strs(impl: types.ModuleType) -> None:
    assert impl.frame_event(Name("ping"), {}) == b"event: ping\ndata: {}\n\n"
    with pytest.raises(TypeError):
        impl.frame_event(b"ping", {})
    with pytest.raises(UnicodeEncodeError):
        impl.frame_event("\ud800", {})


def test_framing_errors_are_orjsons(impl: types.ModuleType) -> None:
    with pytest.raises(orjson.JSONEncodeError):
        impl.frame({"a": {1, 2}})
    with pytest.raises(orjson.JSONEncodeError):
        impl.frame_event("x", object())
