"""Anthropic ⇄ OpenAI translation: golden files, SDK schema checks, round-trip properties.

Golden files (tests/golden/anthropic/<function>__<case>.json) hold an input, the
arguments, and either the exact expected output or the error it must raise. They were
written by hand from the public API documentation, not generated from the code.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from _codec_pairs import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamToOpenAI,
    OpenAIStreamToAnthropic,
    anthropic_request_to_openai,
    anthropic_response_to_openai,
    openai_request_to_anthropic,
    openai_response_to_anthropic,
)
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types import message_create_params as anthropic_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat import completion_create_params as openai_params
from pydantic import TypeAdapter

from edge.errors import BadRequest, UpstreamError

GOLDEN = Path(__file__).parent / "golden" / "anthropic"
CASES = sorted(GOLDEN.glob("*.json"))
FUNCTIONS = {
    "openai_request_to_anthropic",
    "anthropic_response_to_openai",
    "AnthropicStreamToOpenAI",
    "anthropic_request_to_openai",
    "openai_response_to_anthropic",
    "OpenAIStreamToAnthropic",
}
ERRORS: dict[str, type[Exception]] = {"BadRequest": BadRequest, "UpstreamError": UpstreamError}

# Official SDK models: translated output must parse as what real clients expect.
ANTHROPIC_REQUEST: dict[bool, TypeAdapter[Any]] = {
    False: TypeAdapter(anthropic_params.MessageCreateParamsNonStreaming),
    True: TypeAdapter(anthropic_params.MessageCreateParamsStreaming),
}
OPENAI_REQUEST: dict[bool, TypeAdapter[Any]] = {
    False: TypeAdapter(openai_params.CompletionCreateParamsNonStreaming),
    True: TypeAdapter(openai_params.CompletionCreateParamsStreaming),
}
ANTHROPIC_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def run(function: str, args: Mapping[str, Any], given_input: Any) -> Any:
    """Call one translator the way a golden case describes."""
    if function == "openai_request_to_anthropic":
        return openai_request_to_anthropic(given_input, **args)
    if function == "anthropic_response_to_openai":
        return anthropic_response_to_openai(given_input, **args)
    if function == "anthropic_request_to_openai":
        return anthropic_request_to_openai(given_input, **args)
    if function == "openai_response_to_anthropic":
        return openai_response_to_anthropic(given_input, **args)
    if function == "AnthropicStreamToOpenAI":
        to_openai = AnthropicStreamToOpenAI(**args)
        chunks = []
        for event, data in given_input:
            chunks += to_openai.feed(event, data)
        assert to_openai.done
        return chunks
    if function == "OpenAIStreamToAnthropic":
        to_anthropic = OpenAIStreamToAnthropic(**args)
        events: list[tuple[str, dict[str, Any]]] = []
        for chunk in given_input:
            events += to_anthropic.feed(chunk)
        events += to_anthropic.finish()
        return [[event, data] for event, data in events]
    raise AssertionError(f"unknown function {function}")


def check_schema(function: str, output: Any) -> None:
    """Validate `output` against the official SDK types for its direction."""
    if function == "openai_request_to_anthropic":
        ANTHROPIC_REQUEST[bool(output.get("stream"))].validate_python(output)
    elif function == "anthropic_request_to_openai":
        OPENAI_REQUEST[bool(output.get("stream"))].validate_python(output)
    elif function == "anthropic_response_to_openai":
        ChatCompletion.model_validate(output)
    elif function == "openai_response_to_anthropic":
        Message.model_validate(output)
    elif function == "AnthropicStreamToOpenAI":
        for chunk in output:
            ChatCompletionChunk.model_validate(chunk)
    else:
        for event, data in output:
            assert ANTHROPIC_EVENT.validate_python(data).type == event


def test_golden_directory_covers_every_function() -> None:
    seen = {json.loads(path.read_text())["function"] for path in CASES}
    assert seen == FUNCTIONS
    assert len(CASES) >= 40


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    function, args, given_input = case["function"], case["args"], case["input"]
    pristine = copy.deepcopy(given_input)
    if "error" in case:
        expected_error = case["error"]
        with pytest.raises(ERRORS[expected_error["type"]]) as caught:
            run(function, args, given_input)
        error = caught.value
        assert type(error) is ERRORS[expected_error["type"]]
        if "param" in expected_error:
            assert error.param == expected_error["param"]  # type: ignore[attr-defined]
            if expected_error["param"] is not None:
                # The message itself names the field, for clients that only show text.
                assert expected_error["param"] in str(error)
        if "message" in expected_error:
            assert str(error) == expected_error["message"]
    else:
        output = run(function, args, given_input)
        assert output == case["expected"]
        # Exactly JSON: serialising and reading back changes nothing.
        assert json.loads(json.dumps(output)) == output
        check_schema(function, output)
    assert given_input == pristine, "a translator mutated its input"


# --------------------------------------------------------------------------- unit cases


def test_default_max_tokens_is_used_only_when_absent() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert openai_request_to_anthropic(body, "c")["max_tokens"] == DEFAULT_MAX_TOKENS
    assert openai_request_to_anthropic({**body, "max_tokens": 7}, "c")["max_tokens"] == 7


@pytest.mark.parametrize(
    ("temperature", "expected"), [(-0.5, 0), (0, 0), (0.7, 0.7), (1, 1), (2, 1)]
)
def test_temperature_is_clamped_to_anthropic_range(temperature: float, expected: float) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": temperature}
    assert openai_request_to_anthropic(body, "c")["temperature"] == expected


@pytest.mark.parametrize(
    ("url", "media_type"),
    [
        ("data:image/jpeg;base64,AAAA", "image/jpeg"),
        ("data:IMAGE/WEBP;base64,AAAA", "image/webp"),
        ("data:image/gif;charset=binary;base64,AAAA", "image/gif"),
    ],
)
def test_data_url_media_type_is_parsed(url: str, media_type: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]}
    block = openai_request_to_anthropic(body, "c")["messages"][0]["content"][0]
    assert block == {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": "AAAA"},
    }


@pytest.mark.parametrize(
    "url",
    ["data:image/png,rawbytes", "data:application/pdf;base64,AAAA", "data:image/png;base64,", "x"],
)
def test_unusable_image_urls_name_the_field(url: str) -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
        ]
    }
    with pytest.raises(BadRequest) as caught:
        openai_request_to_anthropic(body, "c")
    assert caught.value.param == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]},
            "tools[0].function",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}], "tool_choice": "sometimes"},
            "tool_choice",
        ),
        ({"messages": [{"role": "user", "content": "a"}], "stop": 5}, "stop"),
        ({"messages": [{"role": "user", "content": "a"}], "functions": []}, "functions"),
        ({"messages": [{"role": "user", "content": "a"}], "temperature": "hot"}, "temperature"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "user", "content": ""}]}, "messages"),
    ],
)
def test_openai_request_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        openai_request_to_anthropic(body, "c")
    assert caught.value.param == param
    assert caught.value.message.startswith(param + ":")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"model": "c", "max_tokens": True, "messages": [{"role": "user", "content": "a"}]},
            "max_tokens",
        ),
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "a"}]},
            "messages[0].role",
        ),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "system": 3,
                "messages": [{"role": "user", "content": "a"}],
            },
            "system",
        ),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}
                ],
            },
            "messages[0].content[0].source.type",
        ),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "a"}],
                "tool_choice": {"type": "tool"},
            },
            "tool_choice.name",
        ),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "a"}],
                "tools": [{"name": "f"}],
            },
            "tools[0].input_schema",
        ),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "a"}],
                "metadata": {"user_id": 1},
            },
            "metadata.user_id",
        ),
    ],
)
def test_anthropic_request_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        anthropic_request_to_openai(body, "gpt")
    assert caught.value.param == param
    assert param in caught.value.message


def test_tool_results_lead_the_merged_user_turn() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "now"}}]},
            {"role": "user", "content": "Please hurry."},
            {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        ]
    }
    turn = openai_request_to_anthropic(body, "c")["messages"][2]
    assert turn == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "12:00"},
            {"type": "text", "text": "Please hurry."},
        ],
    }


def test_tool_choice_without_tools_is_dropped_both_ways() -> None:
    openai_body = {"messages": [{"role": "user", "content": "a"}], "tool_choice": "required"}
    assert "tool_choice" not in openai_request_to_anthropic(openai_body, "c")
    anthropic_body = {
        "model": "c",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "a"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    out = anthropic_request_to_openai(anthropic_body, "gpt")
    assert "tool_choice" not in out
    assert "parallel_tool_calls" not in out


def test_anthropic_stream_ignores_events_after_stop_and_unknown_events() -> None:
    stream = AnthropicStreamToOpenAI("m", include_usage=False, created=1)
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 1}}}
    assert len(stream.feed("message_start", start)) == 1
    assert stream.feed("some_future_event", {"type": "some_future_event"}) == []
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "x"},
    }
    assert stream.feed("content_block_delta", delta) == []
    assert not stream.done
    # No message_delta carried a stop reason: message_stop still finishes the choice.
    (last,) = stream.feed("message_stop", {"type": "message_stop"})
    assert last["choices"][0]["finish_reason"] == "stop"
    assert stream.done
    assert stream.feed("message_stop", {"type": "message_stop"}) == []


def test_anthropic_stream_out_of_order_is_an_upstream_error() -> None:
    stream = AnthropicStreamToOpenAI("m", include_usage=False, created=1)
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "x"},
    }
    with pytest.raises(UpstreamError):
        stream.feed("content_block_delta", delta)


def test_anthropic_stream_error_event_keeps_the_upstream_type() -> None:
    stream = AnthropicStreamToOpenAI("m", include_usage=True, created=1)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamError) as caught:
        stream.feed("error", error)
    assert caught.value.message == "Overloaded"
    assert caught.value.code == "overloaded_error"


def test_openai_stream_interleaved_tool_calls_are_refused() -> None:
    stream = OpenAIStreamToAnthropic("m", message_id="msg_x")

    def tool_delta(index: int, **function: str) -> dict[str, Any]:
        call = {"index": index, "id": f"call_{index}", "function": function}
        return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}

    stream.feed(tool_delta(0, name="a", arguments="{"))
    stream.feed(tool_delta(1, name="b", arguments="{}"))
    with pytest.raises(UpstreamError):
        stream.feed(tool_delta(0, arguments="}"))


def test_openai_stream_missing_tool_id_is_synthesised_and_finish_is_idempotent() -> None:
    stream = OpenAIStreamToAnthropic("m", message_id="msg_x")
    chunk = {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]},
                "finish_reason": "stop",
            }
        ]
    }
    events = stream.feed(chunk)
    started = [data for name, data in events if name == "content_block_start"]
    assert started[0]["content_block"]["id"] == "toolu_msg_x_0"
    end = stream.finish()
    # "stop" after a tool call still tells an Anthropic client to run the tool.
    assert end[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert stream.done
    assert stream.finish() == []
    assert stream.feed(chunk) == []


def test_openai_response_refusal_becomes_text_and_refusal_stop() -> None:
    body = {
        "id": "chatcmpl-9",
        "choices": [
            {
                "message": {"role": "assistant", "content": None, "refusal": "I can't help."},
                "finish_reason": "stop",
            }
        ],
    }
    message = openai_response_to_anthropic(body, "gpt")
    assert message["content"] == [{"type": "text", "text": "I can't help."}]
    assert message["stop_reason"] == "refusal"
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_every_stop_reason_maps(stop_reason: str | None, finish_reason: str) -> None:
    msg = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    out = anthropic_response_to_openai(msg, "m", created=0)
    assert out["choices"][0]["finish_reason"] == finish_reason


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_every_finish_reason_maps(finish_reason: str | None, stop_reason: str) -> None:
    body = {"id": "x", "choices": [{"message": {"content": "x"}, "finish_reason": finish_reason}]}
    assert openai_response_to_anthropic(body, "m")["stop_reason"] == stop_reason


# ------------------------------------------------------------------ property: round trip

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
texts = st.text(max_size=12)
nonempty_texts = st.text(min_size=1, max_size=12)
json_scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=6)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
tool_names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


@st.composite
def openai_conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """OpenAI message lists: system anywhere, user text or parts, assistant text and
    tool calls, each tool call answered by a tool message."""
    messages: list[dict[str, Any]] = []
    counter = 0
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["system", "user", "user_parts", "assistant"]))
        if kind == "system":
            messages.append(
                {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(texts)}
            )
        elif kind == "user":
            messages.append({"role": "user", "content": draw(texts)})
        elif kind == "user_parts":
            parts = [{"type": "text", "text": t} for t in draw(st.lists(texts, max_size=3))]
            messages.append({"role": "user", "content": parts})
        else:
            calls = []
            for _ in range(draw(st.integers(0, 2))):
                counter += 1
                calls.append(
                    {
                        "id": f"call_{counter}",
                        "type": "function",
                        "function": {
                            "name": draw(tool_names),
                            "arguments": json.dumps(draw(arguments)),
                        },
                    }
                )
            message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | texts)}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
            for call in calls:
                content = draw(
                    texts
                    | st.lists(texts, max_size=2).map(
                        lambda ts: [{"type": "text", "text": t} for t in ts]
                    )
                )
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
    messages.append({"role": "user", "content": draw(nonempty_texts)})
    return messages


def _text_list(content: Any) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    return [part["text"] for part in content if part["text"]]


def conversation_meaning(messages: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """What survives translation: the system text and, per speaker turn, its texts,
    tool calls (name + parsed arguments) and tool results. Consecutive messages of one
    side form one turn, since Anthropic merges them."""
    system: list[str] = []
    items: list[tuple[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            system += _text_list(message["content"])
        elif role == "user":
            items += [("user", ("text", t)) for t in _text_list(message["content"])]
        elif role == "tool":
            items.append(
                ("user", ("result", message["tool_call_id"], _text_list(message["content"])))
            )
        else:
            text = "".join(_text_list(message.get("content")))
            if text:
                items.append(("assistant", ("text", text)))
            for call in message.get("tool_calls") or []:
                function = call["function"]
                items.append(
                    (
                        "assistant",
                        ("call", call["id"], function["name"], json.loads(function["arguments"])),
                    )
                )
    turns: list[Any] = []
    for side, item in items:
        if not turns or turns[-1][0] != side:
            turns.append((side, []))
        turns[-1][1].append(item)
    meaning: list[tuple[str, Any, list[Any]]] = []
    for side, turn_items in turns:
        if side == "user":
            # Tool results lead their turn on both sides of the translation.
            results = [i for i in turn_items if i[0] == "result"]
            meaning.append(("user", results, [i[1] for i in turn_items if i[0] == "text"]))
        else:
            text = "".join(i[1] for i in turn_items if i[0] == "text")
            meaning.append(("assistant", text, [i[1:] for i in turn_items if i[0] == "call"]))
    return "\n\n".join(system), meaning


@PROPERTY_SETTINGS
@given(openai_conversations())
def test_openai_anthropic_openai_keeps_the_conversation(messages: list[dict[str, Any]]) -> None:
    anthropic_body = openai_request_to_anthropic({"messages": messages}, "claude")
    ANTHROPIC_REQUEST[False].validate_python(anthropic_body)
    roles = [m["role"] for m in anthropic_body["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), "roles must alternate"
    for turn in anthropic_body["messages"]:
        if isinstance(turn["content"], list):
            kinds = [block["type"] == "tool_result" for block in turn["content"]]
            assert kinds == sorted(kinds, reverse=True), "tool_result blocks must lead a turn"
    back = anthropic_request_to_openai(anthropic_body, "gpt")
    assert back["max_tokens"] == DEFAULT_MAX_TOKENS
    assert conversation_meaning(back["messages"]) == conversation_meaning(messages)


# --------------------------------------------------- property: stream == non-stream


@st.composite
def anthropic_messages(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """An Anthropic message and a documented event stream that delivers it, with text
    and tool input split at arbitrary points."""
    blocks: list[dict[str, Any]] = []
    events: list[tuple[str, dict[str, Any]]] = []
    for index in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            pieces = draw(st.lists(texts, max_size=4))
            blocks.append({"type": "text", "text": "".join(pieces)})
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces]
        else:
            tool_input = draw(arguments)
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{index}",
                    "name": draw(tool_names),
                    "input": tool_input,
                }
            )
            start = {**blocks[-1], "input": {}}
            encoded = json.dumps(tool_input)
            cuts = sorted(draw(st.lists(st.integers(0, len(encoded)), max_size=4)))
            bounds = [0, *cuts, len(encoded)]
            deltas = [
                {"type": "input_json_delta", "partial_json": encoded[a:b]}
                for a, b in zip(bounds, bounds[1:], strict=False)
            ]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        events += [
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop_reason = draw(
        st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"])
    )
    usage = {
        "input_tokens": draw(st.integers(0, 500)),
        "cache_read_input_tokens": draw(st.integers(0, 50)),
        "output_tokens": draw(st.integers(1, 500)),
    }
    message = {
        "id": "msg_p",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    start_usage = {**usage, "output_tokens": 1}
    head = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
            },
        )
    ]
    tail = [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return message, head + events + tail


def assemble_openai(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Rebuild a completion from chunks the way OpenAI clients do."""
    content = ""
    calls: dict[int, dict[str, Any]] = {}
    finish = usage = None
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls", []):
                slot = calls.setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.get("id", slot["id"])
                slot["name"] += call.get("function", {}).get("name", "")
                slot["arguments"] += call.get("function", {}).get("arguments", "")
            if choice["finish_reason"] is not None:
                assert finish is None, "finish_reason sent twice"
                finish = choice["finish_reason"]
    ordered = [calls[i] for i in sorted(calls)]
    assert sorted(calls) == list(range(len(calls)))
    return {
        "content": content,
        "tool_calls": [(c["id"], c["name"], json.loads(c["arguments"])) for c in ordered],
        "finish_reason": finish,
        "usage": usage,
    }


@PROPERTY_SETTINGS
@given(anthropic_messages())
def test_anthropic_stream_assembles_to_the_non_stream_translation(
    case: tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]],
) -> None:
    message, events = case
    stream = AnthropicStreamToOpenAI("m", include_usage=True, created=5)
    chunks = [chunk for event, data in events for chunk in stream.feed(event, data)]
    assert stream.done
    whole = anthropic_response_to_openai(message, "m", created=5)
    assert {c["id"] for c in chunks} == {whole["id"]}
    streamed = assemble_openai(chunks)
    expected = whole["choices"][0]
    assert streamed["content"] == (expected["message"]["content"] or "")
    assert streamed["tool_calls"] == [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in expected["message"].get("tool_calls", [])
    ]
    assert streamed["finish_reason"] == expected["finish_reason"]
    assert streamed["usage"] == whole["usage"]


@st.composite
def openai_completions(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An OpenAI completion and a chunk stream that delivers it (text first, then tool
    calls one after another, finish chunk, usage chunk)."""
    pieces = draw(st.lists(texts, max_size=4))
    text = "".join(pieces)
    calls: list[dict[str, Any]] = []
    for k in range(draw(st.integers(0, 3))):
        encoded = json.dumps(draw(arguments))
        calls.append(
            {
                "id": f"call_{k}",
                "type": "function",
                "function": {"name": draw(tool_names), "arguments": encoded},
            }
        )
    finish = draw(
        st.sampled_from(["stop", "length", "content_filter", "tool_calls" if calls else "stop"])
    )
    prompt, completion = draw(st.integers(0, 900)), draw(st.integers(0, 900))
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    body = {
        "id": "chatcmpl-p",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text or None,
                    "tool_calls": calls or None,
                },
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-p",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": p}) for p in pieces]
    for k, call in enumerate(calls):
        encoded = call["function"]["arguments"]
        cut = draw(st.integers(0, len(encoded)))
        head = {
            "index": k,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": encoded[:cut]},
        }
        chunks.append(chunk({"tool_calls": [head]}))
        chunks.append(
            chunk({"tool_calls": [{"index": k, "function": {"arguments": encoded[cut:]}}]})
        )
    chunks.append(chunk({}, finish))
    chunks.append(
        {
            "id": "chatcmpl-p",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt",
            "choices": [],
            "usage": usage,
        }
    )
    return body, chunks


def assemble_anthropic(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Rebuild a message from events, checking the documented order on the way."""
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    message = copy.deepcopy(events[0][1]["message"])
    partial: dict[int, str] = {}
    open_index: int | None = None
    for name, data in events:
        assert ANTHROPIC_EVENT.validate_python(data).type == name
        if name == "content_block_start":
            assert open_index is None
            assert data["index"] == len(message["content"])
            open_index = data["index"]
            message["content"].append(copy.deepcopy(data["content_block"]))
        elif name == "content_block_delta":
            assert open_index is not None
            assert data["index"] == open_index
            delta = data["delta"]
            if delta["type"] == "text_delta":
                message["content"][open_index]["text"] += delta["text"]
            else:
                partial[open_index] = partial.get(open_index, "") + delta["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        elif name == "message_delta":
            assert open_index is None
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    for index, encoded in partial.items():
        message["content"][index]["input"] = json.loads(encoded) if encoded else {}
    result: dict[str, Any] = message
    return result


@PROPERTY_SETTINGS
@given(openai_completions())
def test_openai_stream_assembles_to_the_non_stream_translation(
    case: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    body, chunks = case
    stream = OpenAIStreamToAnthropic("gpt", message_id="msg_p")
    events = [event for chunk in chunks for event in stream.feed(chunk)] + stream.finish()
    whole = openai_response_to_anthropic(body, "gpt")
    streamed = assemble_anthropic(events)
    Message.model_validate(streamed)
    for key in ("content", "stop_reason", "stop_sequence", "usage", "model", "role", "type"):
        assert streamed[key] == whole[key], key


# ------------------------------------------------- the real SDK accepts what we emit


def test_openai_sdk_stream_state_assembles_translated_chunks() -> None:
    """The openai SDK's own accumulator reads a translated Anthropic stream."""
    from openai.lib.streaming.chat import ChatCompletionStreamState

    case = json.loads((GOLDEN / "AnthropicStreamToOpenAI__tool_use.json").read_text())
    stream = AnthropicStreamToOpenAI("m", include_usage=True, created=3)
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for event, data in case["input"]:
        for chunk in stream.feed(event, data):
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    completion = state.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "San Francisco"}),
        ("now", {}),
    ]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 89
