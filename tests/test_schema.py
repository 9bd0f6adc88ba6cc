"""`schema.parse_object`: repeated keys are refused, naming the key and where it is; then
the same through `edge serve` on both doors, with no upstream call."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import orjson
import pytest
from _servers import EdgeProcess, MockUpstream

from edge.errors import BadRequest
from edge.schema import parse_object


def repeated(raw: bytes) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_object(raw)
    return info.value


def test_a_repeated_top_level_key_is_refused_and_named() -> None:
    error = repeated(b'{"model": "gpt-4o-mini", "model": "gpt-4o", "messages": []}')
    assert error.param == "model"
    assert "'model'" in error.message
    assert "top-level object" in error.message


@pytest.mark.parametrize(("raw", "param", "where"), [
    (b'{"model": "m", "messages": [{"role": "user", "content": "a", "content": "b"}]}',
     "messages[0].content", "'messages[0]'"),
    (b'{"model": "m", "messages": [{"role": "user"}, {"role": "user", "role": "system"}]}',
     "messages[1].role", "'messages[1]'"),
    (b'{"model": "m", "tools": [{"type": "function", "function": {"name": "a", '
     b'"parameters": {"type": "object", "properties": {"x": {}, "x": {}}}}}]}',
     "tools[0].function.parameters.properties.x", "'tools[0].function.parameters.properties'"),
    (b'{"model": "m", "x": [[{"k": 1, "k" : 2}]]}', "x[0][0].k", "'x[0][0]'"),
    # whitespace before the colon, and raw line breaks between tokens
    (b'{"a" : 1,\n"a"\t:\r\n2}', "a", "top-level object"),
])
def test_a_repeat_in_a_nested_object_is_refused_with_its_path(raw: bytes, param: str,
                                                             where: str) -> None:
    error = repeated(raw)
    assert error.param == param
    assert where in error.message


def test_an_escaped_colon_cannot_mask_a_repeat() -> None:
    # one member dropped, one colon gained in the parse: the counts alone would agree
    error = repeated(b'{"a": 1, "a": 2, "b": "\\u003a"}')
    assert error.param == "a"


def test_the_same_key_written_two_ways_is_a_repeat() -> None:
    assert repeated(b'{"model": "a", "mod\\u0065l": "b"}').param == "model"


@pytest.mark.parametrize("body", [
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Note: see https://x.y/z"}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {
        "name": "w", "arguments": json.dumps({"city": "Paris", "when": "12:00"})}}]}]},
    {"model": "m", "a\\": {"b\\": "c : d"}, "e": "f \\u003a g"},
    {"same key in two objects": {"k": 1}, "other": {"k": 2}, "k": [{"k": {"k": 3}}]},
    {"big": 18446744073709551615, "small": -9223372036854775808, "s": ":" * 50},
])
@pytest.mark.parametrize("dumps", [orjson.dumps, json.dumps,
                                   lambda v: json.dumps(v, indent=2, separators=(" , ", " : "))])
def test_bodies_without_repeats_parse_as_before(body: dict, dumps) -> None:
    raw = dumps(body)
    raw = raw.encode() if isinstance(raw, str) else raw
    assert parse_object(raw) == orjson.loads(raw)


def test_a_huge_integer_without_a_repeat_still_parses() -> None:
    assert parse_object(b'{"n": 123456789012345678901234567890}') == {"n": 1.2345678901234568e29}


def test_an_escaped_colon_without_a_repeat_still_parses() -> None:
    assert parse_object(b'{"a": "\\u003a\\u003A", "b": "\\\\u003a"}') == {
        "a": "::", "b": "\\u003a"}


# -- end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeProcess, MockUpstream]]:
    tmp = tmp_path_factory.mktemp("schema")
    mock = MockUpstream(tmp)
    config = f"""
[cache]
scope = "global"

[[providers]]
name = "oai"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:K"
models = ["gpt-*"]

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{mock.url}"
api_key = "env:K"
models = ["claude-*"]
"""
    proc = EdgeProcess(tmp, config=config, env={"K": "sk-schema-provider-secret"})
    yield proc, mock
    proc.stop()
    mock.stop()


def post(edge: EdgeProcess, path: str, raw: bytes) -> httpx.Response:
    return httpx.post(f"{edge.url}{path}", content=raw, timeout=30,
                      headers={"content-type": "application/json"})


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "gpt-4o-mini", "model": "gpt-4o", '
     b'"messages": [{"role": "user", "content": "poison"}]}', "model"),
    (b'{"model": "gpt-4o-mini", '
     b'"messages": [{"role": "user", "content": "mine", "content": "theirs"}]}',
     "messages[0].content"),
])
def test_e2e_chat_refuses_repeated_keys(edge: tuple[EdgeProcess, MockUpstream], raw: bytes,
                                        param: str) -> None:
    proc, mock = edge
    mock.reset()
    response = post(proc, "/v1/chat/completions", raw)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert "repeats the key" in error["message"]
    assert mock.stats()["requests"] == 0


def test_e2e_messages_door_refuses_repeated_keys_in_anthropic_shape(
        edge: tuple[EdgeProcess, MockUpstream]) -> None:
    proc, mock = edge
    mock.reset()
    raw = (b'{"model": "claude-3-haiku-20240307", "max_tokens": 10, "max_tokens": 4000, '
           b'"messages": [{"role": "user", "content": "hi"}]}')
    response = post(proc, "/v1/messages", raw)
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "'max_tokens'" in body["error"]["message"]
    assert mock.stats()["requests"] == 0


def test_e2e_a_body_without_repeats_is_served(edge: tuple[EdgeProcess, MockUpstream]) -> None:
    proc, _ = edge
    raw = (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
           b'"content": "Note: {\\"a\\": 1} at https://x.y"}]}')
    response = post(proc, "/v1/chat/completions", raw)
    assert response.status_code == 200
