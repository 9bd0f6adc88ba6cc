"""The mock upstream's native ``/v1/responses``, driven by the official openai SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import trio

from edge.mock_upstream import MockOptions, serve_mock

TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
async def base_url(nursery: trio.Nursery) -> str:
    port = await nursery.start(serve_mock, MockOptions())
    return f"http://127.0.0.1:{port}/v1"


async def test_json_and_stream_give_the_same_response(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as sdk:
        plain = await sdk.responses.create(model="m", input="hello there")
        async with sdk.responses.stream(model="m", input="hello there") as stream:
            async for _ in stream:
                pass  # read every event: the SDK's accumulator builds the final response
            streamed = await stream.get_final_response()
    assert plain.output_text.startswith("Mock reply to: hello there")
    assert streamed.output_text == plain.output_text
    assert streamed.usage == plain.usage
    assert plain.status == "completed"


async def test_function_call_round_trip(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as sdk:
        first = await sdk.responses.create(model="m", input="weather in Paris", tools=[TOOL])
        call = first.output[0]
        assert call.type == "function_call"
        assert call.name == "get_weather"
        second = await sdk.responses.create(
            model="m",
            tools=[TOOL],
            input=[
                {"role": "user", "content": "weather in Paris"},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                },
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
            ],
        )
    assert second.output_text.startswith("Tool said: sunny")


async def test_limit_is_incomplete_and_bad_fields_are_400(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as sdk:
        cut = await sdk.responses.create(model="m", input="one two three four", max_output_tokens=2)
        assert cut.status == "incomplete"
        assert cut.incomplete_details is not None
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.responses.create(model="m", input=[])
    assert "input" in str(caught.value)
