"""Anthropic Messages <-> OpenAI Chat Completions: the two codecs composed through the hub.

The golden tests of translation between the two formats call these named pairings; edge
itself composes codecs in one walk (`edge.dialects.Dialect.fetch` / `open`), and these
are that walk for one pair, IO-free (timestamps and message ids passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

from edge import hub
from edge.codecs import chat, messages
from edge.codecs.messages import DEFAULT_MAX_TOKENS

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamToOpenAI",
    "OpenAIStreamToAnthropic",
    "anthropic_request_to_openai",
    "anthropic_response_to_openai",
    "openai_request_to_anthropic",
    "openai_response_to_anthropic",
]

JSON = dict[str, Any]
Item = TypeVar("Item")


class _Encoder(Protocol[Item]):
    def feed(self, event: hub.Event) -> list[Item]: ...


def _encode(encoder: _Encoder[Item], events: Iterable[hub.Event]) -> list[Item]:
    return [item for event in events for item in encoder.feed(event)]


def openai_request_to_anthropic(body: Mapping[str, Any], model: str) -> JSON:
    """An OpenAI chat request as an Anthropic Messages request for `model`.

    Raises:
        BadRequest: a field is malformed or cannot be translated; the message names it.
    """
    return messages.encode_request(chat.decode_request(body), model)


def anthropic_request_to_openai(body: Mapping[str, Any], model: str) -> JSON:
    """An Anthropic Messages request as an OpenAI chat request for `model`.

    Raises:
        BadRequest: a field is missing, malformed or cannot be translated.
    """
    return chat.encode_request(messages.decode_request(body), model)


def anthropic_response_to_openai(msg: Mapping[str, Any], model: str, *, created: int) -> JSON:
    """An Anthropic message as an OpenAI ``chat.completion`` (`created`: Unix time).

    Raises:
        UpstreamError: the message does not have the documented shape.
    """
    return chat.encode_answer(messages.decode_answer(msg), model, created=created)


def openai_response_to_anthropic(body: Mapping[str, Any], model: str) -> JSON:
    """An OpenAI ``chat.completion`` as an Anthropic message.

    Raises:
        UpstreamError: the completion does not have the documented shape, or a tool
            call's arguments are not a JSON object (Anthropic's ``input`` must be one).
    """
    return messages.encode_answer(chat.decode_answer(body), model)


class AnthropicStreamToOpenAI:
    """Anthropic SSE events in, OpenAI ``chat.completion.chunk`` dicts out.

    `done` turns true at message_stop. Usage is reported once, in a final
    ``choices: []`` chunk, when `include_usage` asks for it.
    """

    def __init__(self, model: str, *, include_usage: bool, created: int) -> None:
        self._decode = messages.StreamDecoder()
        self._encode = chat.StreamEncoder(model, include_usage=include_usage, created=created)

    @property
    def done(self) -> bool:
        return self._decode.done

    def feed(self, event: str, data: Mapping[str, Any]) -> list[JSON]:
        """Return the chunks to emit for one upstream event (maybe none).

        Raises:
            UpstreamError: on an ``error`` event (with the upstream's message) or an
                event that breaks the documented order.
        """
        return _encode(self._encode, self._decode.feed(event, data))


class OpenAIStreamToAnthropic:
    """OpenAI chunks in, Anthropic ``(event, data)`` pairs out, in the official order.

    `finish` ends the message once the upstream stream has ended normally; `done`
    turns true then.
    """

    def __init__(self, model: str, *, message_id: str) -> None:
        self._decode = chat.StreamDecoder()
        self._encode = messages.StreamEncoder(model, message_id=message_id)

    @property
    def done(self) -> bool:
        return self._decode.done

    def feed(self, chunk: Mapping[str, Any]) -> list[tuple[str, JSON]]:
        """Return the events for one upstream chunk.

        Raises:
            UpstreamError: the chunk is an error object, or its deltas cannot be
                expressed as sequential Anthropic blocks.
        """
        return _encode(self._encode, self._decode.feed(chunk))

    def finish(self) -> list[tuple[str, JSON]]:
        """Close any open block and end the message; call once the upstream ended normally."""
        return _encode(self._encode, self._decode.finish())
