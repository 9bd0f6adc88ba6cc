"""The Responses door codec: requests decode to the hub, answers parse as the SDK's Response."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from openai import OpenAI
from openai.types.responses import Response

from edge import hub
from edge.codecs import responses
from edge.errors import BadRequest, UpstreamError


def test_items_instructions_and_tools_decode_to_hub_turns() -> None:
    req = responses.decode_request(
        {
            "model": "m",
            "instructions": "be brief",
            "input": [
                {"role": "developer", "content": "no jokes"},
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
            "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get"},
            "max_output_tokens": 50,
            "temperature": 0.5,
            "text": {"format": {"type": "json_object"}},
            "metadata": {"k": "v"},
            "store": True,
        }
    )
    assert req.system == ("be brief", "no jokes")
    assert [t.role for t in req.turns] == ["user", "assistant", "user"]
    assert req.turns[1].parts == (hub.ToolCall("c1", "get", "{}", "input[2].arguments"),)
    assert req.turns[2].parts == (hub.ToolResult("c1", "sunny", where="input[3].output"),)
    assert (req.tool_choice, req.tool_name, req.max_tokens) == ("tool", "get", 50)
    assert req.response_format == hub.ResponseFormat("json_object")
    assert req.where == "input"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"model": "m", "input": "x", "tool_choice": "always"}, "tool_choice"),
    ],
)
def test_bad_fields_are_named(body: dict[str, object], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        responses.decode_request(body)
    assert caught.value.param == param


def test_answer_parses_as_the_sdk_response() -> None:
    answer = hub.Answer(
        id="up",
        model="m",
        parts=(hub.Text("hi"), hub.ToolCall("c1", "get", '{"a":1}')),
        finish="length",
        usage=hub.Usage(prompt=3, completion=4),
    )
    body = responses.encode_answer(
        answer, "m", response_id="resp_1", item_prefix="r1", created=7
    )
    parsed = Response.model_validate(body)
    assert parsed.output_text == "hi"
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.usage is not None
    assert parsed.usage.total_tokens == 7
    assert [item.id for item in parsed.output] == ["msg_r1_0", "fc_r1_1"]


def _sse(events: list[tuple[str, dict[str, object]]]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


def test_stream_events_accumulate_in_the_sdk_to_the_json_answer() -> None:
    """The SDK's own accumulator, over real HTTP, rebuilds the same Response as the JSON path."""
    encoder = responses.StreamEncoder("m", response_id="resp_1", item_prefix="it", created=7)
    events = []
    for event in (
        hub.Start("up"),
        hub.TextDelta("he"),
        hub.TextDelta("llo"),
        hub.ToolCallStart(0, "c1", "get"),
        hub.ToolCallDelta(0, '{"a":'),
        hub.ToolCallDelta(0, "1}"),
        hub.Finish("tool_calls"),
        hub.End(hub.Usage(prompt=3, completion=4)),
    ):
        events += encoder.feed(event)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[-1][0] == "response.completed"
    payload = _sse(events)

    class Replay(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            """Quiet: the test reports through its assertions, not the server's access log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with (
            OpenAI(api_key="k", base_url=base, max_retries=0) as client,
            client.responses.stream(model="m", input="hi") as stream,
        ):
            for _ in stream:
                pass  # read every event: the SDK's accumulator builds the final response
            final = stream.get_final_response()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    expected = responses.encode_answer(
        hub.Answer(
            "up",
            "m",
            (hub.Text("hello"), hub.ToolCall("c1", "get", '{"a":1}')),
            "tool_calls",
            hub.Usage(prompt=3, completion=4),
        ),
        "m",
        response_id="resp_1",
        item_prefix="it",
        created=7,
    )
    assert final.model_dump(exclude_none=True) == Response.model_validate(expected).model_dump(
        exclude_none=True
    )


def test_kind_half_round_trips_through_the_door_half() -> None:
    """What encode_request sends, a Responses door decodes back; likewise the answer."""
    body = {
        "model": "m",
        "instructions": "sys",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
        "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}],
        "tool_choice": "required",
        "max_output_tokens": 9,
        "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
    }
    req = responses.decode_request(body)
    assert responses.decode_request(responses.encode_request(req, "up-model")) == (
        responses.decode_request({**body, "model": "up-model"})
    )
    answer = hub.Answer(
        "resp_9",
        "m",
        (hub.Text("a"), hub.ToolCall("c2", "f", "{}")),
        "tool_calls",
        hub.Usage(prompt=1, completion=2),
        created=5,
    )
    wire = responses.encode_answer(
        answer, "m", response_id="resp_9", item_prefix="r9", created=5
    )
    assert responses.decode_answer(wire) == answer


def test_stream_decoder_reads_back_what_the_encoder_sends() -> None:
    """Encoder then decoder gives the same hub events (the kind half reads the door half)."""
    events: list[hub.Event] = [
        hub.Start("resp_1"),
        hub.TextDelta("hi"),
        hub.ToolCallStart(0, "c1", "get"),
        hub.ToolCallDelta(0, "{}"),
        hub.Finish("tool_calls"),
        hub.End(hub.Usage(prompt=2, completion=3)),
    ]
    encoder = responses.StreamEncoder("m", response_id="resp_1", item_prefix="it", created=1)
    decoder = responses.StreamDecoder()
    seen: list[hub.Event] = []
    for event in events:
        for item in encoder.feed(event):
            seen += decoder.feed_item(item)
    seen += decoder.finish()
    assert seen == events


def test_stream_decoder_raises_on_failure_and_on_a_cut_stream() -> None:
    decoder = responses.StreamDecoder()
    with pytest.raises(UpstreamError, match="overloaded"):
        decoder.feed({"type": "response.failed", "response": {"error": {"message": "overloaded"}}})
    with pytest.raises(UpstreamError):
        responses.StreamDecoder().finish()


def test_interleaved_tool_call_deltas_are_an_upstream_error_not_misattributed() -> None:
    """A delta for a call whose item was already closed would land in the wrong item."""
    encoder = responses.StreamEncoder("m", response_id="resp_1", item_prefix="it", created=1)
    for event in (hub.Start("up"), hub.ToolCallStart(0, "c0", "f"), hub.ToolCallDelta(0, "{"),
                  hub.ToolCallStart(1, "c1", "g"), hub.ToolCallDelta(0, "")):
        encoder.feed(event)  # an empty delta of the earlier call is harmless
    with pytest.raises(UpstreamError):
        encoder.feed(hub.ToolCallDelta(0, "}"))
