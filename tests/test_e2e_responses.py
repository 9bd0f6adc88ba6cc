"""POST /v1/responses through the real server with the official openai SDK (SPEC §8).

Three provider kinds behind one edge: `native` (kind openai, `responses_api = true`, the
mock's own /v1/responses), `oai` (kind openai, translated to Chat Completions) and
`claude` (kind anthropic, translated to Messages). Every behaviour that should not
depend on the kind is checked on all three.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from _fake_upstream import FakeUpstream, Reply, sse
from _servers import EdgeProcess, MockUpstream, wait_until

KEY_A = "sk-team-a-responses-key-1"
KEY_B = "sk-team-b-responses-key-2"
PROVIDER_KEY = "sk-provider-secret-responses-77"
MODELS = {"native": "native-model", "oai": "gpt-4o-mini", "claude": "claude-3-haiku"}
KINDS = list(MODELS)
TOOL: Any = {"type": "function", "name": "get_weather", "description": "Weather for a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}

PROVIDERS = """
[[providers]]
name = "native"
kind = "openai"
base_url = "{url}/v1"
api_key = "env:PK"
models = ["native-*"]
responses_api = true

[[providers]]
name = "oai"
kind = "openai"
base_url = "{url}/v1"
api_key = "env:PK"
models = ["gpt-*"]

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{url}"
api_key = "env:PK"
models = ["claude-*"]
"""
AUTH = """
[auth]
keys = [{ name = "team-a", key = "env:KEY_A" },
        { name = "team-b", key = "env:KEY_B", models = ["claude-*"] }]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeProcess, MockUpstream]]:
    tmp = tmp_path_factory.mktemp("responses")
    mock = MockUpstream(tmp)
    edge = EdgeProcess(tmp, config=PROVIDERS.format(url=mock.url) + AUTH,
                       env={"PK": PROVIDER_KEY, "KEY_A": KEY_A, "KEY_B": KEY_B})
    yield edge, mock
    edge.stop()
    mock.stop()


def _client(edge: EdgeProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{edge.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def client(stack: tuple[EdgeProcess, MockUpstream]) -> Iterator[openai.OpenAI]:
    with _client(stack[0]) as sdk:
        yield sdk


@pytest.fixture
def other(stack: tuple[EdgeProcess, MockUpstream]) -> Iterator[openai.OpenAI]:
    with _client(stack[0], KEY_B) as sdk:
        yield sdk


def _nocache() -> dict[str, str]:
    return {"cache-control": "no-store"}


# -- the response object ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_json_answer_is_an_sdk_response_with_the_client_fields_echoed(
        stack: tuple[EdgeProcess, MockUpstream], client: openai.OpenAI, kind: str) -> None:
    edge, mock = stack
    before = mock.stats()["by_path"].get("/v1/responses", 0)
    raw = client.responses.with_raw_response.create(
        model=MODELS[kind], input=f"hello {kind}", instructions="Be brief.",
        metadata={"team": "a"}, temperature=0.5, top_p=0.9, max_output_tokens=100,
        extra_headers=_nocache())
    response = raw.parse()
    assert raw.headers["x-edge-provider"] == kind
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == f"Mock reply to: hello {kind}"
    message = response.output[0]
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.status == "completed"
    assert message.content[0].annotations == []
    assert response.usage is not None
    assert response.usage.total_tokens == (response.usage.input_tokens
                                           + response.usage.output_tokens) > 0
    # the client's fields, and no metadata block of edge's own
    assert response.metadata == {"team": "a"}
    assert response.instructions == "Be brief."
    assert response.temperature == 0.5
    assert response.top_p == 0.9
    assert response.store is True
    assert response.previous_response_id is None
    assert response.error is None
    assert response.incomplete_details is None
    assert raw.http_response.json()["metadata"] == {"team": "a"}
    native_calls = mock.stats()["by_path"].get("/v1/responses", 0) - before
    assert native_calls == (1 if kind == "native" else 0)


@pytest.mark.parametrize("kind", KINDS)
def test_length_stop_is_incomplete_json_and_stream(client: openai.OpenAI, kind: str) -> None:
    words = "one two three four five six seven eight"
    cut = client.responses.create(model=MODELS[kind], input=words, max_output_tokens=2,
                                  extra_headers=_nocache())
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    with client.responses.stream(model=MODELS[kind], input=words, max_output_tokens=2,
                                 extra_headers=_nocache()) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.incomplete"
    assert "response.completed" not in kinds


# -- streams ----------------------------------------------------------------------------

MESSAGE_SEQUENCE = ["response.created", "response.in_progress", "response.output_item.added",
                    "response.content_part.added", "response.output_text.delta",
                    "response.output_text.done", "response.content_part.done",
                    "response.output_item.done", "response.completed"]


def _collapse(kinds: list[str]) -> list[str]:
    """The event types with runs of deltas folded into one."""
    out: list[str] = []
    for kind in kinds:
        if not (out and kind == out[-1] and kind.endswith(".delta")):
            out.append(kind)
    return out


def _shape(response: openai.types.responses.Response) -> dict[str, Any]:
    """A response without what differs between two answers to one question (ids, time)."""
    data = response.model_dump(exclude_none=True)
    for field in ("id", "created_at"):
        data.pop(field)
    for item in data["output"]:
        item.pop("id")
    return data


@pytest.mark.parametrize("kind", KINDS)
def test_stream_sequence_ids_and_final_response_match_the_json_answer(
        stack: tuple[EdgeProcess, MockUpstream], client: openai.OpenAI, kind: str) -> None:
    question = f"stream me a reply, {kind}"
    with client.responses.stream(model=MODELS[kind], input=question, metadata={"s": "1"},
                                 extra_headers=_nocache()) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert _collapse([e.type for e in events]) == MESSAGE_SEQUENCE
    assert [e.sequence_number for e in events] == list(range(len(events)))
    response_ids = {e.response.id for e in events if hasattr(e, "response")}
    assert response_ids == {final.id}
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    item_ids |= {e.item.id for e in events if hasattr(e, "item")}
    assert item_ids == {final.output[0].id}
    assert {e.output_index for e in events if hasattr(e, "output_index")} == {0}
    assert {e.content_index for e in events if hasattr(e, "content_index")} == {0}
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        final.output_text)
    plain = client.responses.create(model=MODELS[kind], input=question, metadata={"s": "1"},
                                    extra_headers=_nocache())
    assert _shape(final) == _shape(plain)
    # the wire itself: event lines, data with type and sequence_number, no [DONE]
    edge, _ = stack
    with httpx.stream("POST", f"{edge.url}/v1/responses", headers={
            "authorization": f"Bearer {KEY_A}", **_nocache()},
            json={"model": MODELS[kind], "input": question, "stream": True}) as wire:
        text = wire.read().decode()
    assert wire.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in text
    blocks = [b for b in text.split("\n\n") if b.strip()]
    for block in blocks:
        name, data = block.split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        assert isinstance(payload["sequence_number"], int)


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_failure_after_the_first_byte_ends_with_response_failed(
        stack: tuple[EdgeProcess, MockUpstream], kind: str) -> None:
    edge, _ = stack
    body = {"model": MODELS[kind], "stream": True, "input": "!mock cut_after=3 words=20"}
    with httpx.stream("POST", f"{edge.url}/v1/responses", json=body, headers={
            "authorization": f"Bearer {KEY_A}", **_nocache()}) as wire:
        text = wire.read().decode()
    assert wire.status_code == 200
    names = [line.removeprefix("event: ") for line in text.splitlines()
             if line.startswith("event: ")]
    assert names[0] == "response.created"
    assert names[-1] == "response.failed"
    assert "response.completed" not in names
    assert "[DONE]" not in text
    failed = json.loads(text.strip().split("\n\n")[-1].split("\n", 1)[1].removeprefix("data: "))
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["message"]
    assert PROVIDER_KEY not in text
    numbers = [json.loads(b.split("\n", 1)[1].removeprefix("data: "))["sequence_number"]
               for b in text.strip().split("\n\n")]
    assert numbers == list(range(len(numbers)))


def test_client_gone_mid_stream_stores_nothing_and_edge_keeps_serving(
        stack: tuple[EdgeProcess, MockUpstream], client: openai.OpenAI) -> None:
    edge, mock = stack
    body = {"model": MODELS["native"], "stream": True,
            "input": "!mock words=50 chunk_delay_ms=200"}
    response_id = None
    with httpx.stream("POST", f"{edge.url}/v1/responses", json=body, headers={
            "authorization": f"Bearer {KEY_A}", **_nocache()}) as wire:
        for line in wire.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if data["type"] == "response.output_text.delta":
                    response_id = data["item_id"].split("_")[1]
                    break  # hang up mid-stream
    assert response_id is not None
    wait_until(lambda: mock.stats()["in_flight"] == 0, what="the upstream call to be closed")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + response_id)
    assert client.responses.create(model=MODELS["native"], input="still there?").output_text


# -- function calls ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_function_call_round_trip_by_previous_response_id(client: openai.OpenAI,
                                                          kind: str) -> None:
    first = client.responses.create(model=MODELS[kind], input="Paris", tools=[TOOL],
                                    extra_headers=_nocache())
    call = first.output[0]
    assert call.type == "function_call"
    assert call.id.startswith("fc_")
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.status == "completed"
    assert first.tools[0].name == "get_weather"  # echoed
    second = client.responses.create(
        model=MODELS[kind], previous_response_id=first.id, tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        extra_headers=_nocache())
    assert second.output_text == "Tool said: sunny"
    assert second.previous_response_id == first.id


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_function_call_events(client: openai.OpenAI, kind: str) -> None:
    with client.responses.stream(model=MODELS[kind], input="Rome", tools=[TOOL],
                                 extra_headers=_nocache()) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert _collapse([e.type for e in events]) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    call = final.output[0]
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"city": "Rome"}
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == call.arguments
    assert done.item_id == call.id


# -- conversation state -----------------------------------------------------------------


def test_three_turns_cross_providers_and_each_lists_only_its_own_input(
        stack: tuple[EdgeProcess, MockUpstream], client: openai.OpenAI) -> None:
    _, mock = stack
    one = client.responses.create(model=MODELS["native"], input="first turn",
                                  extra_headers=_nocache())
    two = client.responses.create(model=MODELS["claude"], previous_response_id=one.id,
                                  input=[{"role": "user", "content": "second turn"}],
                                  extra_headers=_nocache())
    three = client.responses.create(model=MODELS["oai"], previous_response_id=two.id,
                                    input="third turn", extra_headers=_nocache())
    solo = client.responses.create(model=MODELS["oai"], input="third turn",
                                   extra_headers=_nocache())
    assert three.output_text == "Mock reply to: third turn"
    # the mock's chat prompt counts every message sent: the whole conversation travelled
    assert three.usage is not None
    assert solo.usage is not None
    assert three.usage.input_tokens > solo.usage.input_tokens
    assert two.previous_response_id == one.id
    for response, text in ((one, "first turn"), (two, "second turn"), (three, "third turn")):
        items = client.responses.input_items.list(response.id)
        assert [item.type for item in items.data] == ["message"]
        assert items.data[0].content[0].text == text  # type: ignore[union-attr]
        assert items.data[0].id
    assert client.responses.retrieve(three.id).model_dump() == three.model_dump()


def test_input_items_in_order_sent_and_paged_as_the_sdk_pages_them(
        client: openai.OpenAI) -> None:
    sent: list[Any] = [
        {"role": "developer", "content": "Answer shortly."},
        {"role": "user", "content": [{"type": "input_text", "text": "weather in Oslo"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "cold"},
    ]
    response = client.responses.create(model=MODELS["oai"], input=sent, tools=[TOOL],
                                       extra_headers=_nocache())
    assert response.output_text == "Tool said: cold"
    page = client.responses.input_items.list(response.id)
    assert [item.type for item in page.data] == ["message", "message", "function_call",
                                                 "function_call_output"]
    assert page.has_more is False
    assert page.first_id == page.data[0].id
    assert page.last_id == page.data[-1].id
    assert len({item.id for item in page.data}) == 4
    walked = [item.id for item in client.responses.input_items.list(response.id, limit=1)]
    assert walked == [item.id for item in page.data]  # auto-paging with `after`
    desc = client.responses.input_items.list(response.id, order="desc")
    assert [item.id for item in desc.data] == [item.id for item in page.data][::-1]


def test_store_false_is_not_kept_and_cannot_be_continued(client: openai.OpenAI) -> None:
    gone = client.responses.create(model=MODELS["oai"], input="forget me", store=False,
                                   extra_headers=_nocache())
    assert gone.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODELS["oai"], input="and?", previous_response_id=gone.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_unknown_previous_response_id_is_400_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODELS["native"], input="hi",
                                previous_response_id="resp_does_not_exist")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert "resp_does_not_exist" in caught.value.message


def test_a_response_is_visible_only_to_the_key_that_made_it(
        client: openai.OpenAI, other: openai.OpenAI) -> None:
    mine = client.responses.create(model=MODELS["claude"], input="private",
                                   extra_headers=_nocache())
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError) as caught:
        other.responses.create(model=MODELS["claude"], input="x", previous_response_id=mine.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner


def test_a_key_allowlist_holds_on_the_responses_door(other: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        other.responses.create(model=MODELS["oai"], input="not mine to ask")
    assert caught.value.body["code"] == "model_not_allowed"  # type: ignore[index]


def test_delete_then_it_is_gone_everywhere(stack: tuple[EdgeProcess, MockUpstream],
                                           client: openai.OpenAI) -> None:
    edge, _ = stack
    made = client.responses.create(model=MODELS["native"], input="delete me",
                                   extra_headers=_nocache())
    deleted = httpx.delete(f"{edge.url}/v1/responses/{made.id}",
                           headers={"authorization": f"Bearer {KEY_A}"})
    assert deleted.status_code == 200
    assert deleted.json() == {"id": made.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(made.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODELS["native"], input="x", previous_response_id=made.id)


def test_a_stored_response_is_retrieved_as_its_stream_too(client: openai.OpenAI) -> None:
    made = client.responses.create(model=MODELS["claude"], input="replay me later",
                                   extra_headers=_nocache())
    with client.responses.retrieve(made.id, stream=True) as stream:
        events = list(stream)
    assert _collapse([e.type for e in events]) == MESSAGE_SEQUENCE
    assert events[-1].response.model_dump() == made.model_dump()  # type: ignore[union-attr]
    with client.responses.retrieve(made.id, stream=True, starting_after=3) as resumed:
        assert [e.sequence_number for e in resumed] == list(range(4, len(events)))


def test_metered_and_counted_under_its_own_endpoint(stack: tuple[EdgeProcess, MockUpstream],
                                                    client: openai.OpenAI) -> None:
    edge, _ = stack

    def answered() -> float:
        text = httpx.get(f"{edge.metrics_url}/metrics", timeout=30).text
        line = 'llm_edge_requests_total{endpoint="responses",status="2xx"} '
        return sum(float(row.removeprefix(line)) for row in text.splitlines()
                   if row.startswith(line))

    before = answered()
    made = client.responses.create(model=MODELS["oai"], input="count me",
                                   extra_headers=_nocache())
    assert made.usage is not None
    assert made.usage.output_tokens > 0
    wait_until(lambda: answered() >= before + 1, what="the request counted")


def test_stored_response_paths_and_methods(stack: tuple[EdgeProcess, MockUpstream]) -> None:
    edge, _ = stack
    auth = {"authorization": f"Bearer {KEY_A}"}
    assert httpx.get(f"{edge.url}/v1/responses/resp_x/other", headers=auth).status_code == 404
    assert httpx.get(f"{edge.url}/v1/responses/resp_x", headers=auth).status_code == 404
    put = httpx.put(f"{edge.url}/v1/responses/resp_x", headers=auth)
    assert put.status_code == 405
    assert httpx.get(f"{edge.url}/v1/responses/resp_x").status_code == 401


# -- the cache --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_hit_is_a_new_continuable_response_replayed_as_json_and_stream(
        client: openai.OpenAI, kind: str) -> None:
    question = f"cache this one for {kind}"
    first = client.responses.with_raw_response.create(model=MODELS[kind], input=question,
                                                      metadata={"n": "1"})
    assert first.headers["x-edge-cache"] == "miss"
    # metadata, store and user do not change the answer, so not the key either
    again = client.responses.with_raw_response.create(model=MODELS[kind], input=question,
                                                      metadata={"n": "2"}, user="someone")
    assert again.headers["x-edge-cache"] == "hit-l1"
    one, two = first.parse(), again.parse()
    assert two.id != one.id
    assert two.output[0].id != one.output[0].id
    assert two.output_text == one.output_text
    assert two.metadata == {"n": "2"}
    assert two.user == "someone"
    assert one.user is None
    with client.responses.create(model=MODELS[kind], input=question, stream=True) as stream:
        events = list(stream)
    assert stream.response.headers["x-edge-cache"] == "hit-l1"
    replayed = events[-1].response  # type: ignore[union-attr]
    assert _collapse([e.type for e in events]) == MESSAGE_SEQUENCE
    assert replayed.id not in (one.id, two.id)
    assert _shape(replayed) == _shape(client.responses.retrieve(replayed.id))
    assert replayed.output_text == one.output_text
    follow = client.responses.create(model=MODELS[kind], previous_response_id=two.id,
                                     input="and then?")
    assert follow.previous_response_id == two.id
    assert client.responses.retrieve(two.id).metadata == {"n": "2"}


def test_cache_key_covers_the_expanded_conversation(client: openai.OpenAI) -> None:
    """The same follow-up text after two different turns is two questions."""
    a = client.responses.create(model=MODELS["oai"], input="topic apples")
    b = client.responses.create(model=MODELS["oai"], input="topic pears")
    after_a = client.responses.with_raw_response.create(
        model=MODELS["oai"], previous_response_id=a.id, input="tell me more")
    after_b = client.responses.with_raw_response.create(
        model=MODELS["oai"], previous_response_id=b.id, input="tell me more")
    assert after_a.headers["x-edge-cache"] == "miss"
    assert after_b.headers["x-edge-cache"] == "miss"


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "mystery"}]}, "input[0].type"),
    ({"input": []}, "input"),
    ({"input": "hi", "store": "yes"}, "store"),
    ({"input": "hi", "metadata": {"k": 1}}, "metadata.k"),
    ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_malformed_requests_are_400_naming_the_field(client: openai.OpenAI, body: dict[str, Any],
                                                     param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODELS["native"], **body)
    assert caught.value.body["param"] == param  # type: ignore[index]


@pytest.mark.parametrize("kind", ["oai", "claude"])
def test_built_in_tools_to_a_translated_kind_are_400_naming_the_type(client: openai.OpenAI,
                                                                     kind: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODELS[kind], input="search",
                                tools=[TOOL, {"type": "web_search"}])
    assert caught.value.body["param"] == "tools[1].type"  # type: ignore[index]
    assert "web_search" in caught.value.message


@pytest.mark.parametrize("fmt", [{"type": "json_object"},
                                 {"type": "json_schema", "name": "w",
                                  "schema": {"type": "object"}}])
def test_json_modes_to_anthropic_are_400_naming_the_kind(client: openai.OpenAI,
                                                         fmt: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODELS["claude"], input="json please",
                                text={"format": fmt})  # type: ignore[arg-type]
    assert caught.value.body["param"] == "text.format"  # type: ignore[index]
    assert "anthropic" in caught.value.message
    ok = client.responses.create(model=MODELS["oai"], input="json please",
                                 text={"format": fmt})  # type: ignore[arg-type]
    assert ok.text.format.type == fmt["type"]  # type: ignore[union-attr]


def test_huge_input_is_413(stack: tuple[EdgeProcess, MockUpstream]) -> None:
    edge, _ = stack
    huge = {"model": MODELS["native"], "input": "x" * (5 * 1024 * 1024)}
    answer = httpx.post(f"{edge.url}/v1/responses", json=huge,
                        headers={"authorization": f"Bearer {KEY_A}"}, timeout=30)
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "invalid_request_error"


# -- native pass-through, as the upstream sees it -----------------------------------------


def _native_answer(body: dict[str, Any]) -> dict[str, Any]:
    return {"id": "resp_upstream", "object": "response", "created_at": 1, "status": "completed",
            "model": body["model"], "error": None, "incomplete_details": None,
            "output": [{"type": "web_search_call", "id": "ws_up", "status": "completed"},
                       {"type": "message", "id": "msg_up", "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "found it",
                                     "annotations": []}]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": body.get("tools", []),
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}


def test_native_upstream_gets_the_expanded_conversation_and_store_false(
        tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def reply(path: str, body: dict[str, Any]) -> Reply:
        seen.append(body)
        assert path == "/v1/responses"
        answer = _native_answer(body)
        if not body.get("stream"):
            return Reply(json.dumps(answer).encode())
        shell = {**answer, "status": "in_progress", "output": []}
        events = [sse({"type": "response.created", "response": shell,
                       "sequence_number": 0}, "response.created"),
                  sse({"type": "response.output_item.added", "output_index": 0,
                       "item": answer["output"][0], "sequence_number": 1},
                      "response.output_item.added"),
                  sse({"type": "response.output_item.done", "output_index": 0,
                       "item": answer["output"][0], "sequence_number": 2},
                      "response.output_item.done"),
                  sse({"type": "response.completed", "response": answer,
                       "sequence_number": 3}, "response.completed")]
        return Reply(iter(events), content_type="text/event-stream")

    fake = FakeUpstream(reply)
    config = f"""
[[providers]]
name = "native"
kind = "openai"
base_url = "{fake.url}/v1"
models = ["*"]
responses_api = true
"""
    edge = EdgeProcess(tmp_path, config=config)
    try:
        with _client(edge, "any") as sdk:
            first = sdk.responses.create(model="gpt-5", input="search the web",
                                         tools=[{"type": "web_search"}], metadata={"m": "1"})
            assert [item.type for item in first.output] == ["web_search_call", "message"]
            assert first.output[0].id.startswith("ws_")
            assert first.output[1].id.startswith("msg_")
            assert first.id != "resp_upstream"
            assert first.metadata == {"m": "1"}
            assert first.store is True
            with sdk.responses.stream(model="gpt-5", input="and now?",
                                      previous_response_id=first.id) as stream:
                events = list(stream)
                final = stream.get_final_response()
            assert final.id == events[0].response.id  # type: ignore[union-attr]
            assert final.id != "resp_upstream"
            assert final.previous_response_id == first.id
    finally:
        edge.stop()
        fake.close()
    assert seen[0]["store"] is False
    assert seen[0]["tools"] == [{"type": "web_search"}]
    assert "metadata" not in seen[0]
    assert "previous_response_id" not in seen[0]
    follow = seen[1]
    assert follow["store"] is False
    assert "previous_response_id" not in follow
    assert follow["stream"] is True
    assert "stream_options" not in follow
    # the earlier turn's input and its replayable output, then this turn's input
    assert follow["input"] == [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "search the web"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "found it", "annotations": []}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "and now?"}]},
    ]


# -- replicas sharing a store -------------------------------------------------------------


def test_two_processes_share_conversations_through_sqlite(tmp_path: Path,
                                                          mock_upstream: MockUpstream) -> None:
    env = {"PK": PROVIDER_KEY, "KEY_A": KEY_A, "KEY_B": KEY_B,
           "EDGE_STORE_URL": f"sqlite:///{tmp_path / 'edge.db'}"}
    config = PROVIDERS.format(url=mock_upstream.url) + AUTH
    first = EdgeProcess(tmp_path, config=config, env=env)
    second = EdgeProcess(tmp_path, config=config, env=env)
    try:
        with _client(first) as one, _client(second) as two, _client(second, KEY_B) as stranger:
            made = one.responses.create(model=MODELS["claude"], input="remember the blue door")
            with two.responses.stream(model=MODELS["oai"], input="what did I say?",
                                      previous_response_id=made.id) as stream:
                follow = stream.get_final_response()
            assert follow.previous_response_id == made.id
            assert two.responses.retrieve(made.id).output_text == made.output_text
            assert one.responses.retrieve(follow.id).output_text == follow.output_text
            with pytest.raises(openai.NotFoundError):
                stranger.responses.retrieve(made.id)
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("kind", ["native", "claude"])
def test_a_cached_function_call_replays_as_the_sdk_rebuilds_it(client: openai.OpenAI,
                                                               kind: str) -> None:
    first = client.responses.create(model=MODELS[kind], input="Lisbon", tools=[TOOL])
    with client.responses.create(model=MODELS[kind], input="Lisbon", tools=[TOOL],
                                 stream=True) as raw:
        assert raw.response.headers["x-edge-cache"] == "hit-l1"
        assert [event.type for event in raw][-1] == "response.completed"
    with client.responses.stream(model=MODELS[kind], input="Lisbon", tools=[TOOL]) as stream:
        kinds = _collapse([event.type for event in stream])
        replayed = stream.get_final_response()
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.completed"]
    assert replayed.id != first.id
    assert _shape(replayed) == _shape(first)
    assert client.responses.retrieve(replayed.id).output[0].type == "function_call"


def test_concurrent_identical_requests_are_each_their_own_response(
        stack: tuple[EdgeProcess, MockUpstream], client: openai.OpenAI) -> None:
    """Coalesced followers are served the leader's answer, each as a new stored response."""
    _, mock = stack
    before = mock.stats()["by_path"].get("/v1/chat/completions", 0)
    question = "!mock delay_ms=400 six at once"
    with ThreadPoolExecutor(6) as pool:
        made = list(pool.map(lambda _: client.responses.create(
            model=MODELS["oai"], input=question), range(6)))
    assert len({r.id for r in made}) == 6
    assert len({r.output[0].id for r in made}) == 6
    assert len({r.output_text for r in made}) == 1
    assert mock.stats()["by_path"].get("/v1/chat/completions", 0) - before < 6
    for response in made:
        assert client.responses.retrieve(response.id).output_text == response.output_text


def test_a_conversation_past_the_body_limit_is_413(tmp_path: Path,
                                                   mock_upstream: MockUpstream) -> None:
    """What previous_response_id expands to counts against max_request_bytes, as the same
    conversation sent whole would."""
    config = "[server]\nmax_request_bytes = 3000\n" + PROVIDERS.format(url=mock_upstream.url)
    edge = EdgeProcess(tmp_path, config=config, env={"PK": PROVIDER_KEY})
    try:
        with _client(edge, "any") as sdk:
            first = sdk.responses.create(model=MODELS["oai"], input="a" * 1200)
            second = sdk.responses.create(model=MODELS["oai"], input="b" * 100,
                                          previous_response_id=first.id)
            with pytest.raises(openai.APIStatusError) as caught:
                sdk.responses.create(model=MODELS["oai"], input="c" * 1200,
                                     previous_response_id=second.id)
    finally:
        edge.stop()
    assert caught.value.status_code == 413
