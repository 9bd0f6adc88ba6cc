"""ChatAssembler: usage as reported, and the memory cap that lets any stream be relayed."""

from __future__ import annotations

from typing import Any

from edge.chat_stream import ChatAssembler, replay_chunks


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, index: int = 0,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o"}
    if usage is not None:
        return {**head, "choices": [], "usage": usage}
    return {**head, "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish}]}


def stream(pieces: int, piece: str) -> list[dict[str, Any]]:
    tool = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
    return [chunk({"role": "assistant", "content": ""}),
            *[chunk({"content": piece})] * pieces,
            chunk({"tool_calls": [tool]}),
            chunk(finish="stop"),
            chunk(usage={"prompt_tokens": 30, "completion_tokens": 700, "total_tokens": 730})]


def test_uncapped_stream_assembles_with_reported_usage() -> None:
    assembler = ChatAssembler()
    for c in stream(10, "abc ")[:-1]:
        assembler.feed(c)
    assert assembler.finished
    assert assembler.reported_usage() == (None, None)  # no usage chunk yet
    assembler.feed(stream(10, "abc ")[-1])
    answer = assembler.result()
    assert answer["choices"][0]["message"]["content"] == "abc " * 10
    assert answer["usage"]["completion_tokens"] == 700
    assert assembler.reported_usage() == (30, 700)
    assert assembler.text_bytes == 40 + len("lookup") + len('{"q":"x"}')
    assert not assembler.overflowed


def test_past_max_bytes_nothing_is_kept_but_everything_is_counted() -> None:
    piece = "naïve text "  # 12 bytes of UTF-8 in 11 characters
    assembler = ChatAssembler(max_bytes=2000)
    for c in stream(5000, piece):
        assembler.feed(c)
        assert assembler.kept <= 2000 or not assembler._choices  # dropped, never held
    assert assembler.overflowed
    assert not assembler.finished  # even though every choice got a finish_reason
    assert assembler.result()["choices"] == []
    assert assembler.text_bytes == 5000 * 12 + len("lookup") + len('{"q":"x"}')
    assert assembler.reported_usage() == (30, 700)


def test_many_tiny_choices_count_against_the_cap() -> None:
    assembler = ChatAssembler(max_bytes=10_000)
    for index in range(1000):
        assembler.feed(chunk({"content": ""}, index=index))
    assert assembler.overflowed
    assert len(assembler._choices) == 0


def test_zero_cap_keeps_nothing_from_the_start() -> None:
    assembler = ChatAssembler(max_bytes=0)
    for c in stream(3, "hi"):
        assembler.feed(c)
    assert assembler.overflowed
    assert not assembler.finished
    assert assembler.text_bytes == 6 + len("lookup") + len('{"q":"x"}')


def test_replay_of_assembled_answer_round_trips() -> None:
    assembler = ChatAssembler()
    for c in stream(4, "word "):
        assembler.feed(c)
    again = ChatAssembler()
    for c in replay_chunks(assembler.result(), include_usage=True):
        again.feed(c)
    assert again.result() == assembler.result()
