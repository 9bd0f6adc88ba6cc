"""Conversation state (edge.responses_store) on a real store: what is written, for how
long, and what a follow-up reads back."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from edge.errors import BadRequest
from edge.responses_store import (
    RETENTION_S,
    input_items,
    load_conversation,
    output_items,
    save,
    sendable,
)
from edge.store import StoreService, open_store

DAY = 86400.0


def _response(rid: str) -> dict[str, Any]:
    return {"id": rid, "object": "response", "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "hello", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}",
         "status": "completed"}]}


def test_input_items_get_ids_and_list_form_and_send_without_them() -> None:
    items = input_items([{"role": "assistant", "content": "before"},
                         {"type": "function_call_output", "call_id": "c", "output": "x",
                          "id": "client-id"}], "tok")
    assert items[0] == {"role": "assistant", "type": "message", "status": "completed",
                        "id": "msg_tok_0",
                        "content": [{"type": "output_text", "text": "before"}]}
    assert items[1]["id"] == "item_tok_1"  # edge's own id, unique within the list
    assert sendable(items[1]) == {"type": "function_call_output", "call_id": "c", "output": "x"}
    assert input_items("hi", "t") == [{"type": "message", "role": "user", "id": "msg_t_0",
                                       "status": "completed",
                                       "content": [{"type": "input_text", "text": "hi"}]}]


def test_only_replayable_output_items_enter_the_conversation() -> None:
    assert [item["type"] for item in output_items(_response("r"))] == ["message", "function_call"]


async def test_kept_for_thirty_days_then_dropped_by_the_cleanup_pass(tmp_path: Any) -> None:
    now = [time.time()]
    service = StoreService(open_store(f"sqlite:///{tmp_path / 'edge.db'}"),
                           cleanup_interval=3600.0, clock=lambda: now[0])
    edge: Any = SimpleNamespace(store=service)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        own = input_items("question", "in")
        await save(edge, "team-a", _response("resp_1"), own, [{"type": "message", "id": "m0"}])
        stored = await service.get_response("resp_1", "team-a")
        assert stored is not None
        assert stored.expires_at == pytest.approx(stored.created_at + RETENTION_S)
        assert RETENTION_S == 30 * DAY
        assert orjson.loads(stored.input_items) == own
        conversation, size = await load_conversation(edge, "resp_1", "team-a")
        assert [item["id"] for item in conversation] == ["m0", "msg_in_0", "msg_1", "fc_1"]
        assert size == len(stored.conversation)
        with pytest.raises(BadRequest) as caught:
            await load_conversation(edge, "resp_1", "team-b")
        assert caught.value.param == "previous_response_id"

        now[0] += 29 * DAY
        assert await service.get_response("resp_1", "team-a") is not None
        now[0] += 2 * DAY
        # the pass the store's cleanup task runs (at start, then every cleanup_interval)
        await service.cleanup()
        assert service.backend.get_response("resp_1", "team-a", 0.0) is None
        with pytest.raises(BadRequest):
            await load_conversation(edge, "resp_1", "team-a")
        await service.aclose()


class _HeldBackend:
    """A real SQLite backend whose first batch write waits for the test's go-ahead."""

    def __init__(self, path: str) -> None:
        self.inner = open_store(path)
        self.batches: list[int] = []
        self.started = threading.Event()
        self.go = threading.Event()

    def put_responses(self, responses: Any) -> None:
        self.batches.append(len(responses))
        if len(self.batches) == 1:
            self.started.set()
            self.go.wait(10)
        self.inner.put_responses(responses)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_responses_queued_during_a_write_share_the_next_commit(tmp_path: Any) -> None:
    backend = _HeldBackend(f"sqlite:///{tmp_path / 'edge.db'}")
    service = StoreService(backend)  # type: ignore[arg-type]
    record = SimpleNamespace(store=service)

    async def put(i: int) -> None:
        await save(record, "k", {"id": f"resp_{i}", "output": []}, [], [])  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        async with trio.open_nursery() as puts:
            puts.start_soon(put, 0)
            await trio.to_thread.run_sync(backend.started.wait, 10)
            for i in range(1, 11):
                puts.start_soon(put, i)
            await wait_all_tasks_blocked()
            backend.go.set()
        assert backend.batches == [1, 10]
        for i in range(11):
            assert await service.get_response(f"resp_{i}", "k") is not None
        await service.aclose()
