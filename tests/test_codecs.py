"""Hub codecs: golden files per codec and direction, every door x kind pair through the hub
checked with the official SDK types, and a decode/encode/decode round-trip property.

Golden files (tests/golden/hub/<codec>/<function>__<case>.json) hold an input, the
arguments, and the expected output or the error it must raise. Hub values are written
as JSON by `to_json` below (each dataclass tagged ``{"hub": "<class>"}``), so a golden
file shows exactly what a decoder keeps and what an encoder is given. Their inputs are
those of tests/golden/anthropic/, where the composed translators are checked.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from _codec_pairs import openai_request_to_anthropic
from anthropic.types import Message
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion
from test_anthropic_translate import (
    ANTHROPIC_REQUEST,
    ERRORS,
    OPENAI_REQUEST,
    PROPERTY_SETTINGS,
    assemble_anthropic,
    assemble_openai,
    openai_conversations,
    tool_names,
)

from edge import hub
from edge.codecs import bedrock, chat, gemini, messages, responses

GOLDEN = Path(__file__).parent / "golden" / "hub"
CASES = sorted(GOLDEN.glob("*/*.json"))
CODECS = {"chat": chat, "messages": messages, "responses": responses, "gemini": gemini,
          "bedrock": bedrock}
GOLDEN_ANTHROPIC = Path(__file__).parent / "golden" / "anthropic"

# Fields whose values are plain JSON (schemas, pass-through extras), not hub values.
_OPAQUE = frozenset({"parameters", "schema", "extras"})
_HUB_TYPES = {
    name: value
    for name, value in vars(hub).items()
    if isinstance(value, type) and dataclasses.is_dataclass(value)
}


def to_json(value: Any) -> Any:
    """A hub value (or a list of them) as plain JSON, each dataclass tagged by class."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"hub": type(value).__name__}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            out[field.name] = item if field.name in _OPAQUE else to_json(item)
        return out
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_json(item) for key, item in value.items()}
    return value


def from_json(value: Any) -> Any:
    """The inverse of `to_json`: tagged objects become hub dataclasses, lists tuples."""
    if isinstance(value, list):
        return tuple(from_json(item) for item in value)
    if isinstance(value, dict) and "hub" in value:
        kind = _HUB_TYPES[value["hub"]]
        fields = {
            key: item if key in _OPAQUE else from_json(item)
            for key, item in value.items()
            if key != "hub"
        }
        return kind(**fields)
    return value


def run(codec: Any, function: str, args: Mapping[str, Any], given_input: Any) -> Any:
    """Call one codec function the way a golden case describes; hub values in and out
    as JSON. Stream decoders get every item, then `finish` where the codec has one."""
    if function == "StreamDecoder":
        decoder = codec.StreamDecoder()
        events: list[hub.Event] = []
        for item in given_input:
            events += (decoder.feed_item(tuple(item)) if isinstance(item, list)
                       else decoder.feed(item))
        if hasattr(decoder, "finish"):
            events += decoder.finish()
        assert decoder.done
        return to_json(events)
    if function == "StreamEncoder":
        encoder = codec.StreamEncoder(**args)
        items = [item for event in from_json(given_input) for item in encoder.feed(event)]
        return [list(item) if isinstance(item, tuple) else item for item in items]
    if function.startswith("decode_"):
        return to_json(getattr(codec, function)(given_input, **args))
    return getattr(codec, function)(from_json(given_input), **args)


def test_golden_directory_covers_every_codec_and_direction() -> None:
    seen = {(path.parent.name, path.name.split("__")[0]) for path in CASES}
    for codec, module in CODECS.items():
        # a door's codec from its request; a kind-only codec (no door) from its encoder
        first = "decode_request" if hasattr(module, "decode_request") else "encode_request"
        for function in (first, "decode_answer", "StreamDecoder"):
            assert (codec, function) in seen
    assert all(json.loads(path.read_text())["doc"] for path in CASES)


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    codec, function = CODECS[path.parent.name], path.name.split("__")[0]
    args, given_input = case["args"], case["input"]
    pristine = copy.deepcopy(given_input)
    if "error" in case:
        expected = case["error"]
        with pytest.raises(ERRORS[expected["type"]]) as caught:
            run(codec, function, args, given_input)
        assert type(caught.value) is ERRORS[expected["type"]]
        assert caught.value.param == expected.get("param")  # type: ignore[attr-defined]
        assert str(caught.value) == expected["message"]
    else:
        output = run(codec, function, args, given_input)
        assert output == case["expected"]
        assert json.loads(json.dumps(output)) == output
    assert given_input == pristine, "a codec mutated its input"


def test_to_json_and_from_json_are_inverse_on_every_golden_hub_value() -> None:
    for path in CASES:
        case = json.loads(path.read_text())
        for key in ("input", "expected"):
            value = case.get(key)
            if isinstance(value, dict | list) and '"hub"' in json.dumps(value):
                assert to_json(from_json(value)) == value, path.name


# ------------------------------------------------ every door x kind pair through the hub


def _anthropic_inputs(function: str) -> list[Any]:
    """The inputs of the non-error golden cases of one composed translator."""
    inputs = []
    for path in sorted(GOLDEN_ANTHROPIC.glob(f"{function}__*.json")):
        case = json.loads(path.read_text())
        if "error" not in case:
            inputs.append(case["input"])
    assert inputs
    return inputs


DOOR_REQUESTS = {
    "chat": _anthropic_inputs("openai_request_to_anthropic"),
    "messages": _anthropic_inputs("anthropic_request_to_openai"),
}
KIND_ANSWERS = {
    "openai": _anthropic_inputs("openai_response_to_anthropic"),
    "anthropic": _anthropic_inputs("anthropic_response_to_openai"),
}
KIND_STREAMS = {
    "openai": _anthropic_inputs("OpenAIStreamToAnthropic"),
    "anthropic": _anthropic_inputs("AnthropicStreamToOpenAI"),
}
KIND_CODEC = {"openai": chat, "anthropic": messages}
PAIRS = [(door, kind) for door in ("chat", "messages") for kind in ("openai", "anthropic")]


def _check_upstream_request(kind: str, body: dict[str, Any]) -> None:
    schemas = OPENAI_REQUEST if kind == "openai" else ANTHROPIC_REQUEST
    schemas[bool(body.get("stream"))].validate_python(body)


def _door_answer(door: str, answer: hub.Answer) -> dict[str, Any]:
    if door == "chat":
        out = chat.encode_answer(answer, "door-model", created=7)
        ChatCompletion.model_validate(out)
    else:
        out = messages.encode_answer(answer, "door-model")
        Message.model_validate(out)
    return out


def _door_stream(door: str, events: list[hub.Event]) -> dict[str, Any]:
    """Encode `events` for the door and rebuild the answer the way its clients do
    (which validates every item with the SDK's types)."""
    if door == "chat":
        chat_encoder = chat.StreamEncoder("door-model", include_usage=True, created=7)
        chunks = [chunk for event in events for chunk in chat_encoder.feed(event)]
        return assemble_openai(chunks)
    messages_encoder = messages.StreamEncoder("door-model", message_id="msg_door")
    pairs = [pair for event in events for pair in messages_encoder.feed(event)]
    message = assemble_anthropic(pairs)
    Message.model_validate(message)
    return message


def _kind_events(kind: str, stream: list[Any]) -> list[hub.Event]:
    if kind == "openai":
        chat_decoder = chat.StreamDecoder()
        events = [event for chunk in stream for event in chat_decoder.feed(chunk)]
        return events + chat_decoder.finish()
    messages_decoder = messages.StreamDecoder()
    return [event for name, data in stream for event in messages_decoder.feed(name, data)]


def _text_of(door: str, out: dict[str, Any]) -> str:
    """The text of a door's answer, or of one rebuilt from its stream."""
    if door == "chat":
        message = out["choices"][0]["message"] if "choices" in out else out
        text: str = message["content"] or ""
        return text
    return "".join(block["text"] for block in out["content"] if block["type"] == "text")


@pytest.mark.parametrize(("door", "kind"), PAIRS, ids=lambda v: v)
def test_every_door_and_kind_pair_speaks_the_official_types(door: str, kind: str) -> None:
    door_codec, kind_codec = CODECS[door], KIND_CODEC[kind]
    for body in DOOR_REQUESTS[door]:
        pristine = copy.deepcopy(body)
        upstream = kind_codec.encode_request(door_codec.decode_request(body), "kind-model")
        _check_upstream_request(kind, upstream)
        assert upstream["model"] == "kind-model"
        assert body == pristine
    for answer_body in KIND_ANSWERS[kind]:
        answer = kind_codec.decode_answer(answer_body)
        out = _door_answer(door, answer)
        texts = "".join(p.text for p in answer.parts if isinstance(p, hub.Text))
        assert _text_of(door, out) == texts
    for stream in KIND_STREAMS[kind]:
        events = _kind_events(kind, stream)
        assert isinstance(events[0], hub.Start)
        assert isinstance(events[-1], hub.End)
        assert sum(isinstance(event, hub.Finish) for event in events) == 1
        rebuilt = _door_stream(door, events)
        streamed_text = "".join(e.text for e in events if isinstance(e, hub.TextDelta))
        assert _text_of(door, rebuilt) == streamed_text


def test_door_and_kind_of_one_format_keep_a_conversation_intact() -> None:
    """messages -> anthropic through the hub: what native pass-through would send."""
    case = json.loads(
        (
            GOLDEN_ANTHROPIC / "anthropic_request_to_openai__system_blocks_and_images.json"
        ).read_text()
    )
    body = case["input"]
    out = messages.encode_request(messages.decode_request(body), body["model"])
    assert out["messages"][0]["content"][1]["source"] == body["messages"][0]["content"][1]["source"]
    assert out["system"] == "\n\n".join(block["text"] for block in body["system"])


# --------------------------------------------------- property: decode . encode . decode


def canonical(req: hub.Request) -> tuple[str, list[Any], hub.Request]:
    """`req` modulo what a format may not carry back: empty texts, turn boundaries
    (consecutive turns of one role merge), the order of a user turn's tool results
    (they lead it), an assistant turn's text split, how tool arguments and tool
    results are spelt, the system split, tools offered with tool_choice "none", and
    `where`. Returns the system text, the turns and the rest of the request."""
    turns: list[tuple[str, list[Any]]] = []
    for turn in req.turns:
        items: list[Any] = [item for part in turn.parts if (item := _meaning(part))]
        if not items:
            continue
        if turns and turns[-1][0] == turn.role:
            turns[-1][1].extend(items)
        else:
            turns.append((turn.role, items))
    for role, items in turns:
        if role == "user":
            items.sort(key=lambda item: item[0] != "result")
        else:
            text = "".join(item[1] for item in items if item[0] == "text")
            items[:] = [("text", text)] * bool(text) + [i for i in items if i[0] == "call"]
    offered = bool(req.tools) and req.tool_choice != "none"
    rest = dataclasses.replace(
        req,
        turns=(),
        system=(),
        tools=req.tools if offered else (),
        tool_choice=req.tool_choice if offered else None,
        tool_name=req.tool_name if offered else None,
        parallel_tool_calls=req.parallel_tool_calls if offered else None,
        where="",
    )
    return "\n\n".join(t for t in req.system if t), turns, rest


def _meaning(part: hub.Part) -> tuple[Any, ...]:
    """What one part says, or () for an empty text."""
    if isinstance(part, hub.Text):
        return ("text", part.text) if part.text else ()
    if isinstance(part, hub.Image):
        return ("image", part.url)
    if isinstance(part, hub.ToolCall):
        return ("call", part.id, part.name, json.loads(part.arguments or "{}"))
    if isinstance(part.content, str):
        content: tuple[str, ...] = (part.content,)
    else:
        content = tuple(c.text if isinstance(c, hub.Text) else c.url for c in part.content)
    return ("result", part.call_id, tuple(c for c in content if c))


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A chat request: a generated conversation, maybe tools, tool choice and params."""
    body: dict[str, Any] = {"model": "m", "messages": draw(openai_conversations())}
    names = draw(st.lists(tool_names, max_size=2, unique=True))
    if names:
        body["tools"] = [
            {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
            for n in names
        ]
        body["tool_choice"] = draw(
            st.sampled_from(
                ["auto", "required", "none", {"type": "function", "function": {"name": names[0]}}]
            )
        )
        if draw(st.booleans()):
            body["parallel_tool_calls"] = False
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 1))
        body["stop"] = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=2))
        body["max_tokens"] = draw(st.integers(1, 9000))
    return body


def _round_trip(codec: Any, body: dict[str, Any]) -> None:
    first = codec.decode_request(body)
    again = codec.decode_request(codec.encode_request(first, first.model))
    assert canonical(again) == canonical(first)


@PROPERTY_SETTINGS
@given(chat_requests())
def test_chat_decode_encode_decode_keeps_the_request(body: dict[str, Any]) -> None:
    _round_trip(chat, body)


@PROPERTY_SETTINGS
@given(chat_requests())
def test_messages_decode_encode_decode_keeps_the_request(body: dict[str, Any]) -> None:
    _round_trip(messages, openai_request_to_anthropic(body, "claude"))


def test_round_trip_property_can_fail() -> None:
    """canonical() is not so lax that it hides a lost turn or a changed argument."""
    body = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    first = chat.decode_request(body)
    fewer = dataclasses.replace(first, turns=first.turns[:1])
    assert canonical(fewer) != canonical(first)
    call = hub.ToolCall("c", "f", '{"x":1}')
    changed = hub.ToolCall("c", "f", '{"x":2}')
    one = dataclasses.replace(first, turns=(hub.Turn("assistant", (call,)),))
    two = dataclasses.replace(first, turns=(hub.Turn("assistant", (changed,)),))
    assert canonical(one) != canonical(two)


# --------------------------------------------------------------------- unit properties


@pytest.mark.parametrize(
    ("decoder", "items"),
    [
        (chat.StreamDecoder, []),
        (
            messages.StreamDecoder,
            [
                ["message_start", {"type": "message_start", "message": {"id": "msg_1"}}],
                ["message_stop", {"type": "message_stop"}],
            ],
        ),
    ],
)
def test_stream_decoders_always_start_finish_once_and_end(
    decoder: Callable[[], Any], items: list[Any]
) -> None:
    stream = decoder()
    events = [event for item in items for event in stream.feed(*item)]
    if hasattr(stream, "finish"):
        events += stream.finish()
    assert [type(e).__name__ for e in events] == ["Start", "Finish", "End"]
