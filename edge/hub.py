"""The hub: one internal form of a request, an answer and a stream, shared by every codec.

Every front door (OpenAI chat, Anthropic messages, OpenAI responses) and every provider
kind (openai, anthropic, gemini, azure, bedrock) translates through these types, so N
doors and M kinds need N + M codecs instead of N x M translators. A codec is a module of
pure functions over plain decoded JSON (see `edge.codecs`); it never touches a socket.

Theory of operation
-------------------
A door *decodes* a client request into a `Request` and *encodes* an `Answer` (or a run of
`Event`s) into its own wire format. A provider kind *encodes* a `Request` into its upstream
body and *decodes* the upstream's answer (or its stream) back into an `Answer` (or
`Event`s). Translation door -> kind is therefore ``kind.encode_request(door.decode_request(body))``,
and back ``door.encode_answer(kind.decode_answer(upstream))``.

What the hub keeps is what changes an answer and has a counterpart in more than one
format: system text, turns of typed parts (text, image, tool call, tool result), tools and
tool choice, sampling, limits, stop sequences, the response format. Fields that only one
format knows are not carried (a door refuses those whose loss would change the answer's
shape; see each codec). Decoders keep what the client sent as faithfully as the types
allow (empty texts included); encoders apply their target's rules (Anthropic's role
alternation and non-empty blocks, say).

`where` fields name the client's own field (``messages[2].content[0].image_url.url``) so
that an encoder which cannot express a part can raise a `BadRequest` naming the field
the client wrote, in the client's vocabulary, although the encoder never saw that format.

Vocabulary: finish reasons are OpenAI's (``stop``, ``length``, ``tool_calls``,
``content_filter``), the one every door and kind maps to and from; tool call arguments
are JSON text, as OpenAI carries them, because that is what a stream delivers in pieces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Answer",
    "End",
    "Event",
    "Finish",
    "Image",
    "Part",
    "Request",
    "ResponseFormat",
    "Start",
    "Text",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStart",
    "ToolResult",
    "Turn",
    "Usage",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
ToolChoiceMode = Literal["auto", "none", "required", "tool"]


# --------------------------------------------------------------------------- content


@dataclass(frozen=True, slots=True)
class Text:
    """Plain text; may be empty where the client sent an empty string."""

    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image as the client referenced it: an ``https:``/``http:`` URL or a ``data:`` URL."""

    url: str
    where: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's call of a function tool; `arguments` is JSON text (an object, or "").

    `where` names the client's field holding the arguments, since they are what an
    encoder that needs them parsed (Anthropic's ``input``) may find invalid.
    """

    id: str
    name: str
    arguments: str
    where: str = ""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned for `call_id`: a string, or text and image parts."""

    call_id: str
    content: str | tuple[Text | Image, ...]
    is_error: bool = False
    where: str = ""


Part = Text | Image | ToolCall | ToolResult


@dataclass(frozen=True, slots=True)
class Turn:
    """One conversation turn. Tool results are parts of a user turn, as Anthropic has it."""

    role: Literal["user", "assistant"]
    parts: tuple[Part, ...]
    where: str = ""


# --------------------------------------------------------------------------- request


@dataclass(frozen=True, slots=True)
class Tool:
    """A function tool; `parameters` is its JSON Schema (None: takes no arguments)."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """``text``, ``json_object`` or ``json_schema`` (with `name`, `schema`, `strict`)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: Mapping[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A completion request in the hub's terms. None means "the client did not say"."""

    model: str
    turns: tuple[Turn, ...]
    system: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoiceMode | None = None
    tool_name: str | None = None  # with tool_choice "tool"
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    n: int | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    stream: bool | None = None
    # Passed to upstreams whose format has the same field (e.g. Responses `reasoning`).
    extras: Mapping[str, Any] = field(default_factory=dict)
    # The client's field holding the turns (``messages``; Responses says ``input``), for
    # an encoder that refuses the conversation as a whole (say, nothing left to send).
    where: str = "messages"


# --------------------------------------------------------------------------- answer


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer. `prompt` includes cached input; None: the upstream did not say."""

    prompt: int | None = None
    completion: int = 0

    @property
    def total(self) -> int:
        return (self.prompt or 0) + self.completion


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete answer: text and tool calls in order, why it stopped, what it used."""

    id: str
    model: str
    parts: tuple[Text | ToolCall, ...]
    finish: FinishReason
    usage: Usage
    created: int | None = None


# --------------------------------------------------------------------------- stream


@dataclass(frozen=True, slots=True)
class Start:
    """The upstream's stream began; `id` is its answer id (may be "")."""

    id: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """Tool call number `index` (0, 1, ... over this answer's calls) begins."""

    index: int
    id: str | None
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """More JSON text of tool call `index`'s arguments."""

    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The upstream said why it stopped (may come before the last usage)."""

    reason: FinishReason


@dataclass(frozen=True, slots=True)
class End:
    """The upstream's stream ended normally; `usage` as it reported it, if it did."""

    usage: Usage | None = None


Event = Start | TextDelta | ToolCallStart | ToolCallDelta | Finish | End
