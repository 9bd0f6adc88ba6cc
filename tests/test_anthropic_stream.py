"""MessageAssembler and replay_events: the Anthropic stream <-> message round trip."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from edge.anthropic_stream import MessageAssembler, replay_events

EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)

TEXT = {
    "id": "msg_01TEXT",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-sonnet-20241022",
    "content": [{"type": "text", "text": "Hello, world. ¡Olé! 你好"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 7},
}
TOOL = {
    "id": "msg_01TOOL",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-haiku-20240307",
    "content": [
        {
            "type": "tool_use",
            "id": "toolu_01A",
            "name": "get_weather",
            "input": {"city": "Paris", "days": [1, 2.5], "units": {"celsius": True}, "x": None},
        }
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 80, "output_tokens": 31},
}
BOTH = {
    "id": "msg_01BOTH",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [
        {"type": "text", "text": "Let me check both cities."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 100,
        "output_tokens": 50,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2048,
    },
}
THINKING = {
    "id": "msg_01THINK",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [
        {"type": "thinking", "thinking": "The user wants a haiku.", "signature": "EqQBCkYIARgC"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {
            "type": "text",
            "text": "Grass is green.",
            "citations": [
                {
                    "type": "char_location",
                    "cited_text": "The grass is green.",
                    "document_index": 0,
                    "document_title": "Facts",
                    "start_char_index": 0,
                    "end_char_index": 19,
                }
            ],
        },
    ],
    "stop_reason": "stop_sequence",
    "stop_sequence": "###",
    "usage": {"input_tokens": 9, "output_tokens": 120},
}
EMPTY = {**TEXT, "id": "msg_01EMPTY", "content": [], "stop_reason": "max_tokens"}
MESSAGES = {"text": TEXT, "tool": TOOL, "both": BOTH, "thinking": THINKING, "empty": EMPTY}


def assemble(events: list[tuple[str | None, dict[str, Any]]]) -> MessageAssembler:
    assembler = MessageAssembler()
    for name, data in events:
        assembler.feed(name, data)
    return assembler


def check_events(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Every event parses as the official SDK type and its name is its data's type."""
    for name, data in events:
        assert EVENT.validate_python(data).type == name


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
def test_replay_then_assemble_is_identity(message: dict[str, Any]) -> None:
    pristine = copy.deepcopy(message)
    events = replay_events(message)
    assert message == pristine, "replay must not modify the stored message"
    check_events(events)
    assembler = assemble(events)
    assert assembler.finished
    result = assembler.result()
    assert result == message
    Message.model_validate(result)


def test_replay_event_order_and_shape() -> None:
    events = replay_events(BOTH)
    assert [name for name, _ in events] == [
        "message_start",
        *["content_block_start", "content_block_delta", "content_block_stop"] * 3,
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 100
    assert start["usage"]["output_tokens"] == 0
    assert start["usage"]["cache_read_input_tokens"] == 2048
    tool_start = events[4][1]
    assert tool_start["index"] == 1
    assert tool_start["content_block"] == {
        "type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}
    }
    assert events[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Oslo"}'}
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Let me check both cities."}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 50}


def test_replay_thinking_and_citations_shape() -> None:
    events = replay_events(THINKING)
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert [d["type"] for d in deltas] == [
        "thinking_delta", "signature_delta", "text_delta", "citations_delta",
    ]
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert starts[0] == {"type": "thinking", "thinking": "", "signature": ""}
    assert starts[1] == THINKING["content"][1]  # redacted thinking comes whole
    assert starts[2]["citations"] == []
    assert starts[2]["text"] == ""


def realistic_events() -> list[tuple[str | None, dict[str, Any]]]:
    """What the API sends for text then a tool call: split deltas, pings, usage in two halves."""
    return [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
            "model": "claude-3-haiku-20240307", "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 472, "output_tokens": 2}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Okay, let"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "'s check the weather"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": " for San Francisco:"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
            "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta",
                                           "partial_json": '{"location": "San Fra'}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta",
                                           "partial_json": 'ncisco, CA", "unit": "fah'}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta",
                                           "partial_json": 'renheit"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 89}}),
        ("message_stop", {"type": "message_stop"}),
    ]


EXPECTED_REALISTIC = {
    "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-haiku-20240307",
    "content": [
        {"type": "text", "text": "Okay, let's check the weather for San Francisco:"},
        {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
         "input": {"location": "San Francisco, CA", "unit": "fahrenheit"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 472, "output_tokens": 89},
}


def test_assemble_realistic_upstream_stream() -> None:
    events = realistic_events()
    check_events([(name, data) for name, data in events if name not in (None, "ping")])
    assembler = assemble(events)
    assert assembler.finished
    assert assembler.result() == EXPECTED_REALISTIC


def test_assembler_agrees_with_the_sdk_accumulator() -> None:
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in realistic_events():
        if name == "ping":  # not a RawMessageStreamEvent: the SDK drops pings before this
            continue
        snapshot = accumulate_event(event=EVENT.validate_python(data),
                                    current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    ours = Message.model_validate(assemble(realistic_events()).result())
    assert ours.content[0].text == snapshot.content[0].text  # type: ignore[union-attr]
    assert ours.content[1].input == snapshot.content[1].input  # type: ignore[union-attr]
    assert (ours.stop_reason, ours.usage.output_tokens, ours.usage.input_tokens) == (
        snapshot.stop_reason, snapshot.usage.output_tokens, snapshot.usage.input_tokens)


def test_event_name_falls_back_to_data_type() -> None:
    assembler = assemble([(None, data) for _, data in realistic_events()])
    assert assembler.finished
    assert assembler.result() == EXPECTED_REALISTIC


def test_not_finished_until_message_stop_after_message_delta() -> None:
    events = realistic_events()
    assembler = MessageAssembler()
    for name, data in events[:-1]:
        assembler.feed(name, data)
        assert not assembler.finished
    assembler.feed(*events[-1])
    assert assembler.finished
    # a message_stop with no message_delta before it is a stream that lost its ending
    without_delta = assemble([e for e in events if e[0] != "message_delta"])
    assert not without_delta.finished
    assert not assemble(events[1:]).finished  # no message_start


def test_broken_tool_json_is_not_finished() -> None:
    events = realistic_events()
    events[12] = ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                          "delta": {"type": "input_json_delta",
                                                    "partial_json": "renheit"}})
    assembler = assemble(events)
    assert not assembler.finished
    assert assembler.result()["content"][1]["input"] == {}  # kept as started, never half-parsed


def test_tool_input_that_is_not_an_object_is_not_finished() -> None:
    events = [e for e in realistic_events() if e[1].get("index") != 1]
    events[-2:-2] = [
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": "[1, 2]"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ]
    assert not assemble(events).finished


def test_unknown_and_malformed_events_are_skipped() -> None:
    events = realistic_events()
    noise: list[tuple[str | None, dict[str, Any]]] = [
        ("some_future_event", {"type": "some_future_event", "x": 1}),
        ("content_block_delta", {"type": "content_block_delta", "index": 7,
                                 "delta": {"type": "text_delta", "text": "orphan"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "future_delta", "text": "?"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": True,
                                 "delta": {"type": "text_delta", "text": "bool index"}}),
        ("content_block_start", {"type": "content_block_start", "index": -1,
                                 "content_block": {"type": "text", "text": ""}}),
    ]
    assembler = assemble(events[:6] + noise + events[6:])
    assert assembler.finished
    assert assembler.result() == EXPECTED_REALISTIC


def test_message_delta_usage_is_cumulative_and_keeps_start_values() -> None:
    events = realistic_events()
    events[0][1]["message"]["usage"]["cache_read_input_tokens"] = 100
    events[-2] = ("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None,
                  "container": None, "stop_details": None},
        "usage": {"output_tokens": 95, "input_tokens": 480, "cache_read_input_tokens": None}})
    result = assemble(events).result()
    assert result["usage"] == {"input_tokens": 480, "output_tokens": 95,
                               "cache_read_input_tokens": 100}
    assert result["stop_reason"] == "end_turn"
    assert "container" not in result
    assert "stop_details" not in result


def test_signature_delta_replaces() -> None:
    events = replay_events(THINKING)
    extra = ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "signature_delta", "signature": "NEW"}})
    events.insert(3, extra)  # a second signature for block 0
    assert assemble(events).result()["content"][0]["signature"] == "EqQBCkYIARgC"
    events.insert(5, ("content_block_delta", {**extra[1]}))
    assert assemble(events).result()["content"][0]["signature"] == "NEW"


# --------------------------------------------------------------------------- properties

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)
_text_block = st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=40))
_tool_block = st.builds(
    lambda i, n, args: {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": args},
    st.integers(0, 10**6),
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,20}", fullmatch=True),
    st.dictionaries(st.text(max_size=8), _json, max_size=4),
)
_thinking_block = st.builds(
    lambda t, s: {"type": "thinking", "thinking": t, "signature": s},
    st.text(max_size=30), st.text(min_size=1, max_size=12),
)
_redacted_block = st.builds(lambda d: {"type": "redacted_thinking", "data": d},
                            st.text(min_size=1, max_size=12))
_usage = st.fixed_dictionaries(
    {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)},
    optional={"cache_creation_input_tokens": st.integers(0, 10**5),
              "cache_read_input_tokens": st.integers(0, 10**5)},
)
_messages = st.fixed_dictionaries({
    "id": st.from_regex(r"msg_[A-Za-z0-9]{1,24}", fullmatch=True),
    "type": st.just("message"),
    "role": st.just("assistant"),
    "model": st.sampled_from(["claude-3-haiku-20240307", "claude-3-5-sonnet-latest", "x"]),
    "content": st.lists(_text_block | _tool_block | _thinking_block | _redacted_block,
                        max_size=4),
    "stop_reason": st.sampled_from(
        ["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal", None]),
    "stop_sequence": st.none() | st.text(min_size=1, max_size=5),
    "usage": _usage,
})

_PROPERTY = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(_messages)
def test_property_replay_assemble_round_trip(message: dict[str, Any]) -> None:
    events = replay_events(message)
    check_events(events)
    assembler = assemble(events)
    assert assembler.finished
    assert assembler.result() == message


_SPLIT_FIELDS = {"text_delta": "text", "thinking_delta": "thinking",
                 "input_json_delta": "partial_json"}


@_PROPERTY
@given(_messages, st.data())
def test_property_any_split_of_the_deltas_assembles_the_same(
    message: dict[str, Any], data: st.DataObject
) -> None:
    """Upstreams cut text and JSON anywhere, even inside a JSON token or escape."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    for name, event in replay_events(message):
        delta = event.get("delta", {})
        field = _SPLIT_FIELDS.get(delta.get("type", ""))
        if name != "content_block_delta" or field is None:
            events.append((name, event))
            continue
        whole = delta[field]
        cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=4)))
        bounds = [0, *cuts, len(whole)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            events.append((name, {**event, "delta": {**delta, field: whole[a:b]}}))
        if data.draw(st.booleans()):
            events.append(("ping", {"type": "ping"}))
    assembler = assemble(events)
    assert assembler.finished
    assert assembler.result() == message


def test_replayed_tool_input_is_compact_json() -> None:
    events = replay_events(TOOL)
    partial = next(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == TOOL["content"][0]["input"]
    assert ": " not in partial
    assert ", " not in partial


def long_text_events(pieces: int, piece: str) -> list[tuple[str, dict[str, Any]]]:
    start = {**TEXT, "content": [], "stop_reason": None, "usage": {"input_tokens": 12,
                                                                   "output_tokens": 1}}
    delta = {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": piece}}
    return [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        *[("content_block_delta", delta)] * pieces,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 900}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_past_max_bytes_nothing_is_kept_but_everything_is_counted() -> None:
    piece = "¡Olé! " * 10  # 80 bytes of UTF-8 in 60 characters
    events = long_text_events(1000, piece)
    assert assemble(events).finished  # the same stream, uncapped, is a whole message
    capped = MessageAssembler(max_bytes=4096)
    for i, (name, data) in enumerate(events):
        capped.feed(name, data)
        if name == "content_block_delta":
            assert not capped.overflowed or capped.result()["content"] == []
        if i == len(events) - 3:  # before message_delta: only the input count is real
            assert capped.reported_usage() == (12, None)
    assert capped.overflowed
    assert not capped.finished
    assert capped.result()["content"] == []
    assert capped.text_bytes == 1000 * len(piece.encode())
    assert capped.reported_usage() == (12, 900)


def test_deltas_of_blocks_started_past_the_cap_are_counted() -> None:
    capped = MessageAssembler(max_bytes=10)
    for name, data in long_text_events(3, "x" * 20):
        capped.feed(name, data)
    capped.feed("content_block_start", {"type": "content_block_start", "index": 1,
                                        "content_block": {"type": "tool_use", "id": "t",
                                                          "name": "f", "input": {}}})
    capped.feed("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
        "type": "input_json_delta", "partial_json": '{"a": 1}'}})
    assert capped.text_bytes == 60 + 8
    assert capped.result()["content"] == []
