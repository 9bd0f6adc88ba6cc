"""The gemini kind codec: request encoding, answers, streams and embeddings, checked
against the documented generateContent / batchEmbedContents shapes."""

from __future__ import annotations

import pytest

from edge import hub
from edge.codecs import bedrock, chat, gemini
from edge.errors import BadRequest, UpstreamError

CHAT_REQUEST = {
    "model": "gemini-2.5-flash",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": gemini.call_id(0, "r1", "ab+/cw=="),
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": gemini.call_id(0, "r1", "ab+/cw=="), "content": "sunny"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "temperature": 0.5,
    "top_p": 0.9,
    "max_tokens": 64,
    "stop": ["END"],
    "seed": 7,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    },
}


def test_encode_request_maps_every_field_and_carries_the_thought_signature() -> None:
    body = gemini.encode_request(chat.decode_request(CHAT_REQUEST), "gemini-2.5-flash")
    assert body == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Weather here?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"name": "weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "ab+/cw==",
                    }
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "weather", "response": {"content": "sunny"}}}
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "weather",
                        "description": "Weather of a city",
                        "parametersJsonSchema": CHAT_REQUEST["tools"][0]["function"]["parameters"],  # type: ignore[index]
                    }
                ]
            }
        ],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}
        },
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.9,
            "maxOutputTokens": 64,
            "seed": 7,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
        },
    }


def test_signature_survives_the_call_id_round_trip() -> None:
    signature = "Cq8BAVSoXO+/ab=="
    made = gemini.call_id(2, "resp-1.x", signature)
    assert all(c.isalnum() or c in "_-" for c in made)
    assert gemini._signature_of(made) == signature
    assert gemini._signature_of(gemini.call_id(0, "r", None)) is None


def test_tool_result_for_an_unknown_call_names_the_field() -> None:
    req = chat.decode_request(
        {"model": "m", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}
    )
    with pytest.raises(BadRequest) as caught:
        gemini.encode_request(req, "m")
    assert caught.value.param == "messages[0]"


def test_decode_answer_makes_call_ids_and_maps_finish_and_usage() -> None:
    answer = gemini.decode_answer(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "thinking", "thought": True},
                            {"text": "Checking."},
                            {
                                "functionCall": {"name": "weather", "args": {"city": "Paris"}},
                                "thoughtSignature": "c2ln",
                            },
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 10,
                "candidatesTokenCount": 5,
                "thoughtsTokenCount": 3,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "abc",
        }
    )
    assert answer.parts == (
        hub.Text("Checking."),
        hub.ToolCall("call_0_abc__sig_c2ln", "weather", '{"city":"Paris"}'),
    )
    assert answer.finish == "tool_calls"
    assert answer.usage == hub.Usage(10, 8)
    for raw, mapped in (("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("OTHER", "stop")):
        body = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": raw}]}
        assert gemini.decode_answer(body).finish == mapped
    assert (
        gemini.decode_answer({"promptFeedback": {"blockReason": "SAFETY"}}).finish
        == "content_filter"
    )
    with pytest.raises(UpstreamError):
        gemini.decode_answer({"candidates": "no"})


def test_stream_decoder_yields_deltas_then_finish_and_usage() -> None:
    decoder = gemini.StreamDecoder()
    events = decoder.feed(
        {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}], "responseId": "r"}
    )
    events += decoder.feed(
        {
            "candidates": [
                {
                    "content": {
                        "parts": [{"text": "lo"}, {"functionCall": {"name": "f", "args": {}}}]
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2},
        }
    )
    events += decoder.finish()
    assert events == [
        hub.Start("r"),
        hub.TextDelta("Hel"),
        hub.TextDelta("lo"),
        hub.ToolCallStart(0, "call_0_r", "f"),
        hub.ToolCallDelta(0, "{}"),
        hub.Finish("tool_calls"),
        hub.End(hub.Usage(4, 2)),
    ]
    with pytest.raises(UpstreamError):
        gemini.StreamDecoder().feed(
            {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}
        )


def test_embeddings_translate_both_ways() -> None:
    body = gemini.encode_embeddings({"input": ["a", "b"], "dimensions": 8}, "text-embedding-004")
    assert body["requests"][1] == {
        "model": "models/text-embedding-004",
        "content": {"parts": [{"text": "b"}]},
        "outputDimensionality": 8,
    }
    out = gemini.decode_embeddings({"embeddings": [{"values": [0.1]}, {"values": [0.2]}]}, "m")
    assert [item["embedding"] for item in out["data"]] == [[0.1], [0.2]]
    with pytest.raises(BadRequest) as caught:
        gemini.encode_embeddings({"input": [[1, 2]]}, "m")
    assert caught.value.param == "input"


# --------------------------------------------------------------------------- bedrock


def test_bedrock_encode_request_writes_converse_blocks_and_configs() -> None:
    req = chat.decode_request({**CHAT_REQUEST, "response_format": None})
    body = bedrock.encode_request(req, "anthropic.claude-3-haiku")
    call_id = CHAT_REQUEST["messages"][2]["tool_calls"][0]["id"]  # type: ignore[index]
    assert body["system"] == [{"text": "Be brief."}]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"text": "Weather here?"},
                {"image": {"format": "png", "source": {"bytes": "iVBO"}}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": call_id, "name": "weather", "input": {"city": "Paris"}}}
            ],
        },
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": call_id, "content": [{"text": "sunny"}]}}],
        },
    ]
    assert body["inferenceConfig"] == {
        "maxTokens": 64,
        "temperature": 0.5,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "weather"}}
    with pytest.raises(BadRequest) as caught:
        bedrock.encode_request(
            chat.decode_request({**CHAT_REQUEST, "response_format": {"type": "json_object"}}), "m"
        )
    assert caught.value.param == "response_format"


def test_bedrock_answer_and_stream_map_stop_reasons_usage_and_tool_use() -> None:
    answer = bedrock.decode_answer(
        {
            "output": {
                "message": {
                    "role": "assistant",
                    "content": [
                        {"text": "ok"},
                        {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}},
                    ],
                }
            },
            "stopReason": "tool_use",
            "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
        }
    )
    assert answer.parts == (hub.Text("ok"), hub.ToolCall("t1", "f", '{"a":1}'))
    assert (answer.finish, answer.usage) == ("tool_calls", hub.Usage(3, 4))
    decoder = bedrock.StreamDecoder()
    items = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        (
            "contentBlockStart",
            {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "f"}}},
        ),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a":'}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "max_tokens"}),
        ("metadata", {"usage": {"inputTokens": 2, "outputTokens": 1}}),
    ]
    events = [event for item in items for event in decoder.feed_item(item)] + decoder.finish()
    assert events == [
        hub.Start(""),
        hub.TextDelta("Hi"),
        hub.ToolCallStart(0, "t", "f"),
        hub.ToolCallDelta(0, '{"a":'),
        hub.Finish("length"),
        hub.End(hub.Usage(2, 1)),
    ]
    with pytest.raises(UpstreamError) as caught:
        bedrock.StreamDecoder().feed_item(("throttlingException", {"message": "slow down"}))
    assert caught.value.code == "throttlingException"
