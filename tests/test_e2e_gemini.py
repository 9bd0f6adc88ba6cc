"""kind = "gemini" end to end: the openai and anthropic SDKs through a real `edge serve` to
the Gemini fake (tests/_fake_kinds.py), which is itself checked against google-genai."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from _fake_kinds import GeminiFake
from _redis import free_port
from _servers import EdgeProcess, MockUpstream

KEY = "AIza-gemini-provider-secret-0123456789"
MODEL = "gemini-2.5-flash"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


@pytest.fixture(scope="module")
def fake() -> Iterator[GeminiFake]:
    server = GeminiFake(KEY)
    yield server
    server.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, fake: GeminiFake) -> Iterator[EdgeProcess]:
    tmp = tmp_path_factory.mktemp("gemini")
    config = f"""
[routing]
max_attempts = 1

[[providers]]
name = "gem"
kind = "gemini"
base_url = "{fake.url}"
api_key = "env:GEMINI_KEY"
models = ["gemini-*"]

[[providers]]
name = "gembad"
kind = "gemini"
base_url = "{fake.url}"
api_key = "env:WRONG_KEY"
models = ["wrongkey-*"]
"""
    process = EdgeProcess(tmp, config=config, env={"GEMINI_KEY": KEY, "WRONG_KEY": "AIza-wrong"})
    yield process
    process.stop()


@pytest.fixture
def client(edge: EdgeProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(edge: EdgeProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=edge.url, api_key="k", max_retries=0) as c:
        yield c


# --------------------------------------------------------------------------- the fake


def test_the_fake_answers_google_genai_as_gemini_does(fake: GeminiFake) -> None:
    genai = pytest.importorskip("google.genai")
    types = genai.types
    options = types.HttpOptions(base_url=fake.url, api_version="v1beta",
                                retry_options=types.HttpRetryOptions(attempts=1))
    sdk = genai.Client(api_key=KEY, http_options=options)
    answer = sdk.models.generate_content(
        model=MODEL, contents="hello",
        config=types.GenerateContentConfig(system_instruction="Be brief."))
    assert answer.text == "Gemini reply to: hello [system: Be brief.]"
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    assert answer.usage_metadata.prompt_token_count == 3
    streamed = "".join(c.text or "" for c in sdk.models.generate_content_stream(
        model=MODEL, contents="stream this"))
    assert streamed == "Gemini reply to: stream this"
    assert fake.last().path == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    vectors = sdk.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert [len(e.values) for e in vectors.embeddings] == [8, 8]

    def get_weather(city: str) -> str:
        """Weather for a city."""
        return f"sunny in {city}"

    called = sdk.models.generate_content(
        model=MODEL, contents="Paris", config=types.GenerateContentConfig(tools=[get_weather]))
    # the SDK ran the function and sent its call back with the signature the fake checks
    assert called.text == 'Tool said: get_weather={"result": "sunny in Paris"}'
    with pytest.raises(genai.errors.ClientError) as caught:
        sdk.models.generate_content(model=MODEL, contents="!status 429")
    assert caught.value.code == 429
    sdk.close()


# --------------------------------------------------------------------------- chat door


def test_chat_text_usage_and_system(client: openai.OpenAI, fake: GeminiFake) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0.5, top_p=0.9, seed=7, stop=["zzz"],
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "hello gemini"}])
    completion = raw.parse()
    assert (completion.choices[0].message.content
            == "Gemini reply to: hello gemini [system: Be brief.]")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 4
    assert completion.usage.completion_tokens == 8
    assert raw.headers["x-edge-provider"] == "gem"
    sent = fake.last(lambda s: "hello gemini" in s.body.decode())
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY
    body = sent.json()
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["generationConfig"] == {"temperature": 0.5, "topP": 0.9, "seed": 7,
                                        "stopSequences": ["zzz"]}


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream please"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Gemini reply to: stream please"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == 2


def test_finish_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "a long answer"}])
    assert completion.choices[0].message.content == "Gemini reply"
    assert completion.choices[0].finish_reason == "length"


def test_tools_round_trip_keeps_the_thought_signature(client: openai.OpenAI,
                                                       fake: GeminiFake) -> None:
    first = client.chat.completions.create(
        model=MODEL, tools=TOOLS, messages=[{"role": "user", "content": "Paris"}])
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake.last().json()["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"][
        "required"] == ["city"]
    history = [{"role": "user", "content": "Paris"},
               {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    second = client.chat.completions.create(model=MODEL, tools=TOOLS, messages=history)
    # the fake refuses a returned call without the signature it gave (Gemini 3 does)
    assert second.choices[0].message.content == 'Tool said: get_weather={"temp": 21}'
    sent = fake.last().json()["contents"]
    assert sent[1]["parts"][0]["thoughtSignature"] == fake.signatures[
        ("get_weather", '{"city": "Paris"}')]
    assert sent[2]["parts"][0]["functionResponse"] == {"name": "get_weather",
                                                       "response": {"temp": 21}}
    # a second turn of tool use: the next call's signature makes the same trip
    third = client.chat.completions.create(model=MODEL, tools=TOOLS, messages=[
        *history, {"role": "assistant", "content": second.choices[0].message.content},
        {"role": "user", "content": "Rome"}])
    again = third.choices[0].message.tool_calls[0]
    fourth = client.chat.completions.create(model=MODEL, tools=TOOLS, messages=[
        *history, {"role": "assistant", "content": second.choices[0].message.content},
        {"role": "user", "content": "Rome"},
        {"role": "assistant", "content": None, "tool_calls": [again.model_dump()]},
        {"role": "tool", "tool_call_id": again.id, "content": "cloudy"}])
    assert fourth.choices[0].message.content == 'Tool said: get_weather={"content": "cloudy"}'


def test_parallel_calls_and_their_results_make_one_turn_each(client: openai.OpenAI,
                                                              fake: GeminiFake) -> None:
    for stream in (False, True):
        if stream:
            chunks = list(client.chat.completions.create(
                model=MODEL, tools=TOOLS, stream=True,
                messages=[{"role": "user", "content": "!parallel Rome,Oslo"}]))
            deltas = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
            ids = [t.id for t in deltas if t.id]
            arguments = ["".join(t.function.arguments or "" for t in deltas if t.index == i)
                         for i in range(2)]
        else:
            message = client.chat.completions.create(
                model=MODEL, tools=TOOLS,
                messages=[{"role": "user", "content": "!parallel Rome,Oslo"}]).choices[0].message
            ids = [c.id for c in message.tool_calls]
            arguments = [c.function.arguments for c in message.tool_calls]
        assert len(set(ids)) == 2
        assert [json.loads(a) for a in arguments] == [{"city": "Rome"}, {"city": "Oslo"}]
        calls = [{"id": i, "type": "function", "function": {"name": "get_weather",
                                                            "arguments": a}}
                 for i, a in zip(ids, arguments, strict=True)]
        answer = client.chat.completions.create(model=MODEL, tools=TOOLS, messages=[
            {"role": "user", "content": "!parallel Rome,Oslo"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": ids[0], "content": "hot"},
            {"role": "tool", "tool_call_id": ids[1], "content": "cold"}])
        assert answer.choices[0].message.content == (
            'Tool said: get_weather={"content": "hot"}, get_weather={"content": "cold"}')
        model_turn, results = fake.last().json()["contents"][1:]
        assert "thoughtSignature" in model_turn["parts"][0]
        assert "thoughtSignature" not in model_turn["parts"][1]
        assert len(results["parts"]) == 2


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, tools=TOOLS, stream=True, messages=[{"role": "user", "content": "Oslo"}]))
    calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather"
    assert json.loads("".join(t.function.arguments or "" for t in calls)) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_image_as_inline_data(client: openai.OpenAI, fake: GeminiFake) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert completion.choices[0].message.content.endswith("[images: image/png 24 bytes]")
    parts = fake.last().json()["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}


def test_json_mode_and_schema(client: openai.OpenAI, fake: GeminiFake) -> None:
    completion = client.chat.completions.create(
        model=MODEL, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "as json"}])
    assert json.loads(completion.choices[0].message.content) == {"reply": "as json", "images": 0}
    schema = {"type": "object", "properties": {"reply": {"type": "string"}},
              "additionalProperties": False}
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "schema"}],
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    config = fake.last().json()["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema


def test_embeddings(client: openai.OpenAI, fake: GeminiFake) -> None:
    answer = client.embeddings.create(model="gemini-embedding-001", input=["one", "two"],
                                      dimensions=4)
    assert [len(d.embedding) for d in answer.data] == [4, 4]
    assert answer.data[0].embedding != answer.data[1].embedding
    sent = fake.last()
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.json()["requests"][1] == {"model": "models/gemini-embedding-001",
                                         "content": {"parts": [{"text": "two"}]},
                                         "outputDimensionality": 4}


def test_token_arrays_are_refused_naming_input(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="gemini-embedding-001", input=[[1, 2, 3]])
    assert "input" in caught.value.message


# --------------------------------------------------------------------------- errors


def test_429_retry_info_becomes_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                               "content": "!status 429"}])
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"


def test_a_wrong_key_is_401_and_never_shown(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="wrongkey-1", messages=[{"role": "user",
                                                                      "content": "hi"}])
    assert "API key not valid" in caught.value.message
    assert "AIza-wrong" not in caught.value.response.text


def test_an_error_chunk_mid_stream_ends_with_an_error_event(edge: EdgeProcess) -> None:
    body = {"model": MODEL, "stream": True,
            "messages": [{"role": "user", "content": "!errorchunk now"}]}
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body, timeout=30) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])
    assert text == "Gemini"  # what came before the error reached the client
    assert json.loads(events[-1])["error"]["message"] == "The model is overloaded."
    assert "[DONE]" not in events


def test_a_stream_cut_before_its_finish_is_an_error(edge: EdgeProcess) -> None:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "!cut x"}]}
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body, timeout=30) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert "ended the stream early" in json.loads(events[-1])["error"]["message"]


def test_a_body_that_lingers_after_the_last_chunk_does_not_hold_the_finish(
        client: openai.OpenAI) -> None:
    """The fake keeps the body open 30 s after its finish chunk; the client's read timeout
    of 20 s fails the test unless edge ends the stream once the answer is whole."""
    with client.with_options(timeout=20.0) as quick:
        chunks = list(quick.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "!linger a"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Gemini reply to: !linger a")
    assert chunks[-1].choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------- messages door


def test_messages_door_text_stream_and_tools(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=MODEL, max_tokens=100, system="Be brief.",
                                     messages=[{"role": "user", "content": "hi there"}])
    assert message.content[0].text == "Gemini reply to: hi there [system: Be brief.]"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 8)
    with claude.messages.stream(model=MODEL, max_tokens=100,
                                messages=[{"role": "user", "content": "stream it"}]) as s:
        assert "".join(s.text_stream) == "Gemini reply to: stream it"
        assert s.get_final_message().stop_reason == "end_turn"
    tools = [{"name": "get_weather", "description": "Weather",
              "input_schema": TOOLS[0]["function"]["parameters"]}]
    first = claude.messages.create(model=MODEL, max_tokens=100, tools=tools,
                                   messages=[{"role": "user", "content": "Lima"}])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.input == {"city": "Lima"}
    follow = claude.messages.create(model=MODEL, max_tokens=100, tools=tools, messages=[
        {"role": "user", "content": "Lima"},
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "warm"}]}])
    assert follow.content[0].text == 'Tool said: get_weather={"content": "warm"}'


def test_messages_door_error_is_anthropic_shaped(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model=MODEL, max_tokens=10,
                               messages=[{"role": "user", "content": "!status 429"}])
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["type"] == "error"


# --------------------------------------------------------------------------- env and failover


def test_a_pool_key_over_quota_rests_for_its_retry_info(tmp_path) -> None:
    """The 429's RetryInfo (7 s) is the Retry-After the pool rests that key for: the other
    key serves this request and the next ones, and /health counts one key available."""
    fake = GeminiFake("AIza-key-one", "AIza-key-two", exhausted=["AIza-key-one"])
    config = f"""
[routing]
max_attempts = 2

[[providers]]
name = "gem"
kind = "gemini"
base_url = "{fake.url}"
api_keys = ["env:K1", "env:K2"]
models = ["gemini-*"]
"""
    edge = EdgeProcess(tmp_path, config=config, env={"K1": "AIza-key-one", "K2": "AIza-key-two"})
    try:
        with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
            for i in range(4):
                answer = c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"pooled {i}"}])
                assert answer.choices[0].message.content == f"Gemini reply to: pooled {i}"
        assert fake.used == {"AIza-key-one": 1, "AIza-key-two": 4}
        keys = httpx.get(f"{edge.url}/health").json()["providers"]["gem"]["keys"]
        assert keys == {"total": 2, "available": 1}
    finally:
        edge.stop()
        fake.close()


def test_gemini_api_key_adds_the_builtin_provider(tmp_path, fake: GeminiFake) -> None:
    edge = EdgeProcess(tmp_path, env={"GEMINI_API_KEY": KEY, "GEMINI_BASE_URL": fake.url})
    try:
        with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
            raw = c.chat.completions.with_raw_response.create(
                model="gemini-2.0-flash", messages=[{"role": "user", "content": "built in"}])
        assert raw.parse().choices[0].message.content == "Gemini reply to: built in"
        assert raw.headers["x-edge-provider"] == "gemini"
    finally:
        edge.stop()


def test_failover_from_a_gemini_that_is_down_to_openai(tmp_path) -> None:
    mock = MockUpstream(tmp_path)
    config = f"""
[routing]
max_attempts = 2

[[providers]]
name = "gem"
kind = "gemini"
base_url = "http://127.0.0.1:{free_port()}"
api_key = "env:GEMINI_KEY"
models = ["gemini-*"]
timeout_s = 5

[[providers]]
name = "oai"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:GEMINI_KEY"
models = ["gpt-*"]

[models."smart"]
deployments = ["gem/gemini-2.5-flash", "oai/gpt-4o-mini"]
"""
    edge = EdgeProcess(tmp_path, config=config, env={"GEMINI_KEY": KEY})
    try:
        with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
            raw = c.chat.completions.with_raw_response.create(
                model="smart", messages=[{"role": "user", "content": "fail over"}])
        assert raw.headers["x-edge-provider"] == "oai"
        assert raw.parse().choices[0].message.content == "Mock reply to: fail over"
        with anthropic.Anthropic(base_url=edge.url, api_key="k", max_retries=0) as c:
            with c.messages.stream(model="smart", max_tokens=50,
                                   messages=[{"role": "user", "content": "again"}]) as s:
                assert "".join(s.text_stream) == "Mock reply to: again"
    finally:
        edge.stop()
        mock.stop()


# --------------------------------------------------------------------------- responses door


def test_responses_door_text_stream_and_a_tool_round_trip(client: openai.OpenAI) -> None:
    """/v1/responses reaches this kind through the hub: text, a stream, and a function
    call answered in the next turn by previous_response_id."""
    answer = client.responses.create(model=MODEL, input="hello there")
    assert answer.output_text == "Gemini reply to: hello there"
    with client.responses.stream(model=MODEL, input="stream me") as stream:
        assert stream.get_final_response().output_text == "Gemini reply to: stream me"
    tools = [{"type": "function", "name": "get_weather", "description": "Weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = client.responses.create(model=MODEL, input="Paris", tools=tools)
    call = next(item for item in first.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == 'Tool said: get_weather={"content": "sunny"}'
