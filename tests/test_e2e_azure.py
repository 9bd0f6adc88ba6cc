"""kind = "azure" end to end: the openai and anthropic SDKs through a real `edge serve` to
the Azure OpenAI fake (tests/_fake_kinds.py), which is itself checked against AzureOpenAI."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from _fake_kinds import AzureFake
from _servers import EdgeProcess

KEY = "azure-provider-secret-0123456789abcdef"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def fake() -> Iterator[AzureFake]:
    server = AzureFake(KEY, ["prod-gpt4o", "embed-small", "gpt-35-turbo"])
    yield server
    server.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, fake: AzureFake) -> Iterator[EdgeProcess]:
    tmp = tmp_path_factory.mktemp("azure")
    config = f"""
[routing]
max_attempts = 1

[[providers]]
name = "az"
kind = "azure"
base_url = "{fake.url}"
api_key = "env:AZ_KEY"
deployments = {{ "gpt-4o" = "prod-gpt4o", "text-embedding-3-small" = "embed-small" }}
models = ["gpt-4o", "gpt-35-turbo", "text-embedding-3-small", "missing-*"]

[[providers]]
name = "azv1"
kind = "azure"
base_url = "{fake.url}"
api_key = "env:AZ_KEY"
api_version = "v1"
deployments = {{ "gpt-4o" = "prod-gpt4o" }}
models = ["v1-none"]
"""
    process = EdgeProcess(tmp, config=config, env={"AZ_KEY": KEY})
    yield process
    process.stop()


@pytest.fixture
def client(edge: EdgeProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{edge.url}/v1", api_key="k", max_retries=0) as c:
        yield c


def test_the_fake_answers_azure_openai_as_azure_does(fake: AzureFake) -> None:
    with openai.AzureOpenAI(azure_endpoint=fake.url, api_key=KEY, api_version="2024-10-21",
                            max_retries=0) as sdk:
        answer = sdk.chat.completions.create(model="prod-gpt4o",
                                             messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Azure reply to: hi"
        assert fake.last().path == ("/openai/deployments/prod-gpt4o/chat/completions"
                                    "?api-version=2024-10-21")
        chunks = list(sdk.chat.completions.create(
            model="prod-gpt4o", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "stream"}]))
        assert chunks[0].choices == []  # Azure's prompt-filter chunk, as the SDK sees it
        assert chunks[-1].usage.completion_tokens == 4
        assert len(sdk.embeddings.create(model="embed-small", input="x").data) == 1
    with openai.AzureOpenAI(azure_endpoint=fake.url, api_key="wrong", api_version="2024-10-21",
                            max_retries=0) as sdk, pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="prod-gpt4o", messages=[{"role": "user",
                                                                   "content": "x"}])


def test_chat_goes_to_the_deployment_untranslated(client: openai.OpenAI, fake: AzureFake) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", logit_bias={"50256": -100},
        messages=[{"role": "user", "content": "hello azure"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Azure reply to: hello azure"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
    assert raw.headers["x-edge-provider"] == "az"
    sent = fake.last()
    assert sent.path == "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    assert sent.json()["logit_bias"] == {"50256": -100}  # passed through, unknown to the hub


def test_a_model_without_a_mapping_is_its_own_deployment(client: openai.OpenAI,
                                                         fake: AzureFake) -> None:
    client.chat.completions.create(model="gpt-35-turbo",
                                   messages=[{"role": "user", "content": "x"}])
    assert fake.last().path.startswith("/openai/deployments/gpt-35-turbo/chat/completions?")


def test_the_v1_api_carries_the_deployment_in_the_body(client: openai.OpenAI,
                                                       fake: AzureFake) -> None:
    answer = client.chat.completions.create(model="azv1/gpt-4o",
                                            messages=[{"role": "user", "content": "v1"}])
    assert answer.choices[0].message.content == "Azure reply to: v1"
    sent = fake.last()
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.json()["model"] == "prod-gpt4o"


def test_the_prompt_filter_chunk_is_not_relayed(edge: EdgeProcess) -> None:
    for include_usage in (False, True):
        body = {"model": "gpt-4o", "stream": True,
                "messages": [{"role": "user", "content": "stream me"}]}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        with httpx.stream("POST", f"{edge.url}/v1/chat/completions", json=body,
                          timeout=30) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all("prompt_filter_results" not in c for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c["choices"])
        assert text == "Azure reply to: stream me"
        usage = [c for c in chunks if not c["choices"]]
        assert len(usage) == (1 if include_usage else 0)
        if include_usage:
            assert usage[0]["usage"]["completion_tokens"] == 5


def test_tools_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o", tools=TOOLS,
                                           messages=[{"role": "user", "content": "Paris"}])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(client.chat.completions.create(
        model="gpt-4o", tools=TOOLS, stream=True,
        messages=[{"role": "user", "content": "Paris"},
                  {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Tool said: sunny")


def test_messages_door_through_the_hub(edge: EdgeProcess, fake: AzureFake) -> None:
    tools = [{"name": "get_weather", "description": "Weather",
              "input_schema": TOOLS[0]["function"]["parameters"]}]
    with anthropic.Anthropic(base_url=edge.url, api_key="k", max_retries=0) as claude:
        message = claude.messages.create(model="gpt-4o", max_tokens=50,
                                         messages=[{"role": "user", "content": "hey"}])
        assert message.content[0].text == "Azure reply to: hey"
        assert message.stop_reason == "end_turn"
        assert message.usage.output_tokens == 4
        assert fake.last().json()["max_tokens"] == 50
        with claude.messages.stream(model="gpt-4o", max_tokens=50,
                                    messages=[{"role": "user", "content": "flow"}]) as s:
            assert "".join(s.text_stream) == "Azure reply to: flow"
            final = s.get_final_message()
        assert final.usage.output_tokens == 4
        with claude.messages.stream(model="gpt-4o", max_tokens=50, tools=tools,
                                    messages=[{"role": "user", "content": "Rome"}]) as s:
            streamed = s.get_final_message()
        use = next(b for b in streamed.content if b.type == "tool_use")
        assert use.input == {"city": "Rome"}
        assert streamed.stop_reason == "tool_use"


def test_embeddings_go_to_their_deployment(client: openai.OpenAI, fake: AzureFake) -> None:
    answer = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                      dimensions=3)
    assert [len(d.embedding) for d in answer.data] == [3, 3]
    assert fake.last().path == ("/openai/deployments/embed-small/embeddings"
                                "?api-version=2024-10-21")


def test_errors_pass_through_with_their_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o",
                                       messages=[{"role": "user", "content": "!status 429"}])
    assert caught.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="missing-deployment",
                                       messages=[{"role": "user", "content": "x"}])
    assert "does not exist" in missing.value.message


@pytest.mark.parametrize(("table", "message"), [
    ('kind = "azure"\nmodels = ["a"]', 'providers[0].base_url: missing (required with kind = '
     '"azure"'),
    ('kind = "azure"\nbase_url = "https://r.openai.azure.com"\napi_version = "latest"\n'
     'models = ["a"]', 'providers[0].api_version: expected "v1" or a dated api-version'),
    ('kind = "azure"\nbase_url = "https://r.openai.azure.com"\ndeployments = ["x"]\n'
     'models = ["a"]', "providers[0].deployments: expected a table"),
    ('kind = "azure"\nbase_url = "https://r.openai.azure.com"\n'
     'deployments = { "gpt-4o" = "../admin" }\nmodels = ["a"]',
     'providers[0].deployments."gpt-4o": expected a deployment name'),
    ('kind = "openai"\napi_version = "v1"\nmodels = ["a"]',
     'providers[0].api_version: only valid with kind = "azure"'),
    ('kind = "gemini"\nregion = "us-east-1"\nmodels = ["a"]',
     'providers[0].region: only valid with kind = "bedrock"'),
    ('kind = "bedrock"\nregion = "Mars"\nmodels = ["a"]',
     "providers[0].region: expected an AWS region"),
    ('kind = "bedrock"\nregion = "us-east-1"\napi_key = "env:K"\nmodels = ["a"]',
     'providers[0].api_key: not used with kind = "bedrock"'),
])
def test_each_bad_value_is_a_config_error_naming_its_key(tmp_path, table: str,
                                                         message: str) -> None:
    from edge.config import ConfigError, load_config

    path = tmp_path / "edge.toml"
    path.write_text(f'[[providers]]\nname = "p"\n{table}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"K": "secret"})
    assert message in str(caught.value)


def test_check_config_summarises_the_new_kinds(tmp_path) -> None:
    from edge.config import load_config, summary

    path = tmp_path / "edge.toml"
    path.write_text("""
[[providers]]
name = "az"
kind = "azure"
base_url = "https://r.openai.azure.com"
api_key = "env:K"
deployments = { "gpt-4o" = "prod" }
models = ["gpt-4o"]

[[providers]]
name = "br"
kind = "bedrock"
region = "us-west-2"
models = ["anthropic.*"]

[[providers]]
name = "gm"
kind = "gemini"
api_key = "env:K"
models = ["gemini-*"]
""")
    text = summary(load_config(path, env={"K": "secret"}))
    assert "az (azure) https://r.openai.azure.com" in text
    assert "api-version 2024-10-21, deployments: gpt-4o -> prod" in text
    assert ("br (bedrock) https://bedrock-runtime.us-west-2.amazonaws.com  models: anthropic.*  "
            "key: AWS credential chain  region us-west-2") in text
    assert "gm (gemini) https://generativelanguage.googleapis.com" in text
    assert "secret" not in text


# --------------------------------------------------------------------------- responses door


def test_responses_door_text_stream_and_a_tool_round_trip(client: openai.OpenAI) -> None:
    """/v1/responses reaches this kind through the hub: text, a stream, and a function
    call answered in the next turn by previous_response_id."""
    answer = client.responses.create(model="gpt-4o", input="hello there")
    assert answer.output_text == "Azure reply to: hello there"
    with client.responses.stream(model="gpt-4o", input="stream me") as stream:
        assert stream.get_final_response().output_text == "Azure reply to: stream me"
    tools = [{"type": "function", "name": "get_weather", "description": "Weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = client.responses.create(model="gpt-4o", input="Paris", tools=tools)
    call = next(item for item in first.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model="gpt-4o", previous_response_id=first.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == 'Tool said: sunny'
