"""kind = "bedrock" end to end: the openai and anthropic SDKs through a real `edge serve` to
the Bedrock fake (tests/_fake_kinds.py), which verifies every SigV4 signature with botocore
and is itself checked against boto3's bedrock-runtime client."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from _fake_kinds import BedrockFake

from edge.config import ConfigError, load_config

pytest.importorskip("botocore")

ACCESS_KEY = "AKIDEDGETESTKEY00001"
SECRET_KEY = "edge/test+secret+key/0123456789abcdefghij"
REGION = "eu-west-3"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ARN = ("arn:aws:bedrock:eu-west-3:123456789012:inference-profile/"
       "eu.anthropic.claude-3-5-sonnet-20240620-v1:0")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x01" * 8).decode()


def aws_env(secret: str = SECRET_KEY) -> dict[str, str]:
    """Credentials from the environment only: no shared files, no instance metadata."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials"}


def config_for(url: str, retry_on: str = "[429]") -> str:
    return f"""
[routing]
max_attempts = 1
retry_on = {retry_on}

[[providers]]
name = "br"
kind = "bedrock"
region = "{REGION}"
base_url = "{url}"
models = ["anthropic.*", "arn:aws:bedrock:*"]
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[BedrockFake]:
    server = BedrockFake(ACCESS_KEY, SECRET_KEY, REGION)
    yield server
    server.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, fake: BedrockFake):
    from _servers import EdgeProcess

    process = EdgeProcess(tmp_path_factory.mktemp("bedrock"), config=config_for(fake.url),
                          env=aws_env())
    yield process
    process.stop()


@pytest.fixture
def client(edge) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(edge) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=edge.url, api_key="k", max_retries=0) as c:
        yield c


def sse_data(edge, body: dict) -> list[str]:
    with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body, timeout=30) as r:
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


# --------------------------------------------------------------------------- the fake


def test_the_fake_answers_boto3_as_bedrock_does(fake: BedrockFake) -> None:
    boto3 = pytest.importorskip("boto3")
    session = boto3.session.Session(aws_access_key_id=ACCESS_KEY,
                                    aws_secret_access_key=SECRET_KEY, region_name=REGION)
    config = pytest.importorskip("botocore.config").Config(retries={"max_attempts": 1})
    sdk = session.client("bedrock-runtime", endpoint_url=fake.url, config=config)
    answer = sdk.converse(modelId=ARN, system=[{"text": "Be brief."}],
                          messages=[{"role": "user", "content": [{"text": "hello"}]}])
    assert answer["output"]["message"]["content"] == [
        {"text": "Bedrock reply to: hello [system: Be brief.]"}]
    assert answer["stopReason"] == "end_turn"
    boto3_path = fake.last().path  # what the AWS SDK sends for an ARN: the reference
    stream = sdk.converse_stream(modelId=MODEL,
                                 messages=[{"role": "user", "content": [{"text": "go on"}]}])
    events = list(stream["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                   if "contentBlockDelta" in e)
    assert text == "Bedrock reply to: go on"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 5
    broken = sdk.converse_stream(modelId=MODEL, messages=[
        {"role": "user", "content": [{"text": "!exception modelStreamErrorException"}]}])
    with pytest.raises(Exception, match="modelStreamErrorException"):
        list(broken["stream"])
    broken["stream"].close()  # an error mid-stream leaves the connection to the caller
    wrong = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key="nope",
                                  region_name=REGION).client(
        "bedrock-runtime", endpoint_url=fake.url, config=config)
    with pytest.raises(Exception, match="InvalidSignatureException"):
        wrong.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])
    sdk.close()
    wrong.close()
    assert boto3_path == ("/model/arn%3Aaws%3Abedrock%3Aeu-west-3%3A123456789012%3A"
                          "inference-profile%2Feu.anthropic.claude-3-5-sonnet-20240620-v1%3A0"
                          "/converse")


# --------------------------------------------------------------------------- chat door


def test_text_usage_and_the_signed_request(client: openai.OpenAI, fake: BedrockFake) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0.2, top_p=0.8, max_tokens=100, stop=["zzz"],
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "hello bedrock"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == (
        "Bedrock reply to: hello bedrock [system: Be brief.]")
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 8)
    assert raw.headers["x-edge-provider"] == "br"
    sent = fake.last()
    assert sent.path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert fake.verify(sent) is None  # the fake answered, so it matched; say so anyway
    assert sent.headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert f"/{REGION}/bedrock/aws4_request" in sent.headers["authorization"]
    assert sent.json()["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.2,
                                              "topP": 0.8, "stopSequences": ["zzz"]}


def test_an_arn_model_id_is_encoded_and_signed_as_aws_does(client: openai.OpenAI,
                                                           fake: BedrockFake) -> None:
    completion = client.chat.completions.create(
        model=ARN, messages=[{"role": "user", "content": "via a profile"}])
    assert completion.choices[0].message.content == "Bedrock reply to: via a profile"
    assert fake.last().path == ("/model/arn%3Aaws%3Abedrock%3Aeu-west-3%3A123456789012%3A"
                                "inference-profile%2Feu.anthropic.claude-3-5-sonnet-20240620-"
                                "v1%3A0/converse")


def test_stream_with_usage(client: openai.OpenAI, fake: BedrockFake) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "a streamed answer"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Bedrock reply to: a streamed answer")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 6
    assert fake.last().path.endswith("/converse-stream")


def test_finish_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "long"}])
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Bedrock reply"


def test_tools_round_trip_plain_and_streamed(client: openai.OpenAI, fake: BedrockFake) -> None:
    first = client.chat.completions.create(model=MODEL, tools=TOOLS,
                                           messages=[{"role": "user", "content": "Paris"}])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.id == "tooluse_fake01"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(client.chat.completions.create(model=MODEL, tools=TOOLS, stream=True,
                                                 messages=[{"role": "user", "content": "Oslo"}]))
    calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert json.loads("".join(t.function.arguments or "" for t in calls)) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # the fake refuses a toolResult whose id answers no toolUse, as Bedrock does
    second = client.chat.completions.create(model=MODEL, tools=TOOLS, messages=[
        {"role": "user", "content": "Paris"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert second.choices[0].message.content == "Tool said: sunny"
    assert fake.last().json()["messages"][2]["content"][0]["toolResult"]["toolUseId"] == call.id


def test_a_call_without_arguments_streams_an_empty_object(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]
    chunks = list(client.chat.completions.create(model=MODEL, tools=tools, stream=True,
                                                 messages=[{"role": "user", "content": "time"}]))
    deltas = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "now"
    assert json.loads("".join(t.function.arguments or "" for t in deltas)) == {}
    plain = client.chat.completions.create(model=MODEL, tools=tools,
                                           messages=[{"role": "user", "content": "time"}])
    assert json.loads(plain.choices[0].message.tool_calls[0].function.arguments) == {}


def test_images_go_as_bytes(client: openai.OpenAI, fake: BedrockFake) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert completion.choices[0].message.content == (
        "Bedrock reply to: look [images: png 16 bytes]")
    block = fake.last().json()["messages"][0]["content"][1]
    assert block == {"image": {"format": "png", "source": {"bytes": PNG}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "messages[0].content[0]" in caught.value.message


def test_json_schema_maps_to_structured_output_and_json_object_is_refused(
        client: openai.OpenAI, fake: BedrockFake) -> None:
    schema = {"type": "object", "properties": {"reply": {"type": "string"}}}
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "as json"}],
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert json.loads(completion.choices[0].message.content) == {"reply": "as json"}
    text_format = fake.last().json()["outputConfig"]["textFormat"]
    assert text_format["type"] == "json_schema"
    assert json.loads(text_format["structure"]["jsonSchema"]["schema"]) == schema
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "x"}])
    assert "bedrock" in caught.value.message


def test_embeddings_are_refused_with_a_clear_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="x")
    assert "does not serve embeddings" in caught.value.message


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("error_type", "status"), [
    ("ThrottlingException", 429), ("ValidationException", 400),
    ("AccessDeniedException", 403), ("ModelNotReadyException", 503),
    ("ServiceUnavailableException", 503), ("ModelTimeoutException", 504)])
def test_errors_are_mapped_by_their_type(client: openai.OpenAI, error_type: str,
                                         status: int) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": f"!error {error_type}"}])
    assert caught.value.status_code == status
    assert caught.value.response.json()["error"]["code"] == error_type
    assert caught.value.response.json()["error"]["message"] == f"fake {error_type}"


@pytest.mark.parametrize(("directive", "message"), [
    ("!exception throttlingException", "fake throttlingException"),
    ("!badcrc", "message CRC mismatch"),
    ("!cut", "ended the stream early")])
def test_a_broken_stream_ends_with_an_error_event_after_its_text(edge, directive: str,
                                                                 message: str) -> None:
    events = sse_data(edge, {"model": MODEL, "stream": True,
                             "messages": [{"role": "user", "content": f"{directive} text"}]})
    error = json.loads(events[-1])["error"]
    assert message in error["message"]
    assert "[DONE]" not in events
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])
    assert text == "Bedrock reply"  # the two deltas before the fault reached the client


def test_a_bad_first_frame_is_a_502_before_anything_is_sent(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        list(client.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "!badcrcfirst x"}]))
    assert caught.value.status_code == 502
    assert "CRC mismatch" in caught.value.message


def test_wrong_credentials_are_refused_by_the_signature_check(tmp_path: Path,
                                                              fake: BedrockFake) -> None:
    from _servers import EdgeProcess

    edge = EdgeProcess(tmp_path, config=config_for(fake.url), env=aws_env("not-the-secret"))
    try:
        with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
            with pytest.raises(openai.PermissionDeniedError) as caught:
                c.chat.completions.create(model=MODEL,
                                          messages=[{"role": "user", "content": "x"}])
        assert "signature" in caught.value.message
    finally:
        edge.stop()


# --------------------------------------------------------------------------- messages door


def test_messages_door(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=MODEL, max_tokens=50,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "Bedrock reply to: hi"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 4
    with claude.messages.stream(model=MODEL, max_tokens=50,
                                messages=[{"role": "user", "content": "flow"}]) as s:
        assert "".join(s.text_stream) == "Bedrock reply to: flow"
    tools = [{"name": "get_weather", "description": "Weather",
              "input_schema": TOOLS[0]["function"]["parameters"]}]
    with claude.messages.stream(model=MODEL, max_tokens=50, tools=tools,
                                messages=[{"role": "user", "content": "Rome"}]) as s:
        final = s.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert (use.id, use.input, final.stop_reason) == ("tooluse_fake01", {"city": "Rome"},
                                                      "tool_use")
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model=MODEL, max_tokens=50, messages=[
            {"role": "user", "content": "!error ThrottlingException"}])


# --------------------------------------------------------------------------- config


def test_config_needs_region_and_botocore(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[[providers]]\nname = "br"\nkind = "bedrock"\nmodels = ["a*"]\n')
    with pytest.raises(ConfigError, match=r"providers\[0\]\.region: missing"):
        load_config(path, env={})
    path.write_text('[[providers]]\nname = "br"\nkind = "bedrock"\nregion = "us-east-1"\n'
                    'models = ["a*"]\n')
    assert load_config(path, env={}).providers[0].base_url == (
        "https://bedrock-runtime.us-east-1.amazonaws.com")
    monkeypatch.setitem(sys.modules, "botocore", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"providers\[0\]\.kind: .*edge\[bedrock\]"):
        load_config(path, env={})


def test_credentials_from_a_shared_file_profile_under_concurrent_first_use(
        tmp_path: Path, fake: BedrockFake) -> None:
    """The chain beyond the environment: AWS_PROFILE in a shared credentials file, resolved
    once (in a worker thread) while eight requests arrive together."""
    from concurrent.futures import ThreadPoolExecutor

    from _servers import EdgeProcess

    credentials = tmp_path / "credentials"
    credentials.write_text(f"[edge-test]\naws_access_key_id = {ACCESS_KEY}\n"
                           f"aws_secret_access_key = {SECRET_KEY}\n")
    env = {"AWS_PROFILE": "edge-test", "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
           "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_EC2_METADATA_DISABLED": "true"}
    edge = EdgeProcess(tmp_path, config=config_for(fake.url), env=env)
    try:
        with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
            def ask(i: int) -> str:
                return c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"profile {i}"}],
                ).choices[0].message.content

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(ask, range(8)))
        assert answers == [f"Bedrock reply to: profile {i}" for i in range(8)]
    finally:
        edge.stop()


def test_no_credentials_anywhere_is_a_clear_502(tmp_path: Path, fake: BedrockFake) -> None:
    from _servers import EdgeProcess

    env = {"AWS_CONFIG_FILE": "/nonexistent/config", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
           "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    edge = EdgeProcess(tmp_path, config=config_for(fake.url), env=env)
    try:
        with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
            with pytest.raises(openai.APIStatusError) as caught:
                c.chat.completions.create(model=MODEL,
                                          messages=[{"role": "user", "content": "x"}])
        assert caught.value.status_code == 502
        assert "found no AWS credentials" in caught.value.message
    finally:
        edge.stop()


# --------------------------------------------------------------------------- responses door


def test_responses_door_text_stream_and_a_tool_round_trip(client: openai.OpenAI) -> None:
    """/v1/responses reaches this kind through the hub: text, a stream, and a function
    call answered in the next turn by previous_response_id."""
    answer = client.responses.create(model=MODEL, input="hello there")
    assert answer.output_text == "Bedrock reply to: hello there"
    with client.responses.stream(model=MODEL, input="stream me") as stream:
        assert stream.get_final_response().output_text == "Bedrock reply to: stream me"
    tools = [{"type": "function", "name": "get_weather", "description": "Weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = client.responses.create(model=MODEL, input="Paris", tools=tools)
    call = next(item for item in first.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == 'Tool said: sunny'
