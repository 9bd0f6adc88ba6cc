"""Micro-benchmarks of the hot path: compiled vs pure twin, the L1 vs other LRUs, rank, SSE.

Run: `python -m benchmarks.fastpath [--repeats N] [--target-ms MS] [--only sse]`

Every row is measured in this one run, beside its baseline (the pure twin; for the LRU
also `cachetools.LRUCache` and lru-dict's `LRU` when installed). Figures are ns per
operation, the median of several repeats of a `time.perf_counter_ns` loop; each figure
includes the Python loop's own cost (printed as "empty loop"), the same for every row.
Note the other LRUs do less work per call than edge's: no TTL check and no byte bound.
SSE rows are ns per event, beside the parser edge had before SSE moved into the hot path
("previous pure") and, for context, the orjson call that each event also needs.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from edge import _fastpath_py as pure


def _optional(name: str) -> Any:
    """The module, or None when it is not built / not installed (its rows are skipped)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


compiled = _optional("edge._fastpath")
cachetools = _optional("cachetools")
lru_dict = _optional("lru")  # the lru-dict distribution

NOW = 1_000.0
EXPIRES = 1_000_000.0
SCOPE = "tenant-7f3a"
L1_ENTRIES = 10_000
ENTRY_BYTES = 2_000
PROMPT_CHARS = 4_000  # what `rank` is told about the request: ~1000 prompt tokens
MAX_TOKENS = 256
COOLDOWN_S = 30.0


def chat_request(turns: int, words_per_turn: int) -> dict[str, Any]:
    """A plausible chat-completions body; `turns` messages after the system prompt."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a concise assistant. Answer in plain English."}
    ]
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        text = " ".join(f"word{(i * 31 + j) % 97}" for j in range(words_per_turn))
        messages.append({"role": role, "content": f"Turn {i}: {text}"})
    return {
        "model": "gpt-4o-mini",
        "messages": messages,
        "temperature": 0.7,
        "max_tokens": 256,
        "stream": False,
        "user": "bench",
    }


def big_request() -> dict[str, Any]:
    """About 10 KB: a longer conversation plus two tool definitions."""
    body = chat_request(turns=12, words_per_turn=90)
    body["tools"] = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{n}",
                "description": "Looks something up in a catalogue and returns the matches.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "What to look for."},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                        "exact": {"type": "boolean"},
                    },
                    "required": ["query"],
                },
            },
        }
        for n in range(2)
    ]
    body["tool_choice"] = "auto"
    body["top_p"] = 0.95
    body["seed"] = 42
    return body


# --- timing loops: one per call shape, so no *args or lambda layer sits between the
# --- loop and the call being measured.


def _loop_empty(n: int) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, n):
        pass
    return time.perf_counter_ns() - start


def _loop_call2(fn: Callable[[Any, Any], object], a: Any, b: Any, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, n):
        fn(a, b)
    return time.perf_counter_ns() - start


def _loop_getitem(mapping: Any, key: Any, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, n):
        mapping[key]
    return time.perf_counter_ns() - start


def _loop_key_then_get(
    key_fn: Callable[[Any, str], str], get: Callable[[str, float], object], body: Any, n: int
) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, n):
        get(key_fn(body, SCOPE), NOW)
    return time.perf_counter_ns() - start


def _loop_put(
    put: Callable[[str, object, int, float], bool], keys: list[str], value: object
) -> int:
    start = time.perf_counter_ns()
    for key in keys:
        put(key, value, ENTRY_BYTES, EXPIRES)
    return time.perf_counter_ns() - start


def _loop_setitem(mapping: Any, keys: list[str], value: object) -> int:
    start = time.perf_counter_ns()
    for key in keys:
        mapping[key] = value
    return time.perf_counter_ns() - start


def _loop_rank(
    rank: Callable[..., list[int]], strategy: int, stats: Any, breakers: Any, n: int
) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, n):
        rank(strategy, stats, breakers, NOW, PROMPT_CHARS, MAX_TOKENS, COOLDOWN_S)
    return time.perf_counter_ns() - start


def routing_candidates(mod: Any, n: int) -> tuple[list[Any], list[Any]]:
    """`n` (2 or 6) deployments as a request sees them, so every ordering has work to do.

    Config order is not price or latency order; with 6, one price is unknown, two
    deployments share a provider whose last attempt failed a moment ago, and one provider's
    circuit is open (skipped).
    """
    prices = [(2.5, 10.0), (0.15, 0.6), (3.0, 15.0), (math.nan, math.nan), (0.8, 4.0), (0.25, 1.25)]
    ttfbs = [0.9, 0.35, 1.4, 0.6, 0.5, 0.2]
    stats = []
    for (input_price, output_price), ttfb in zip(prices[:n], ttfbs[:n], strict=True):
        stat = mod.DeploymentStats(input_price, output_price)
        for scale in (1.2, 0.9, 1.0):
            stat.observe(ttfb * scale)
        stats.append(stat)
    healthy, flaky, down = (mod.Breaker(5, COOLDOWN_S) for _ in range(3))
    flaky.failure(NOW - 1.0)
    for _ in range(5):
        down.failure(NOW - 1.0)
    breakers = [healthy, healthy] if n == 2 else [healthy, flaky, down, healthy, flaky, healthy]
    return stats, breakers


@dataclass
class Case:
    """One row: `run(n)` performs n operations and returns the ns they took."""

    group: str
    impl: str
    run: Callable[[int], int] | None
    note: str = ""
    ns: float | None = None


def calibrate(run: Callable[[int], int], target_ms: float) -> int:
    """A loop count whose run takes about `target_ms`."""
    n = 1
    while True:
        elapsed = run(n)
        if elapsed >= target_ms * 1e6 / 4 or n >= 1 << 24:
            break
        n *= 4
    return max(1, int(n * target_ms * 1e6 / max(elapsed, 1)))


def measure(cases: list[Case], repeats: int, target_ms: float) -> None:
    """Fill in each case's median ns/op.

    The cases of a group are interleaved repeat by repeat, so a burst of load from other
    processes hits every implementation alike and the ratios stay meaningful.
    """
    live = [case for case in cases if case.run is not None]
    counts = [calibrate(case.run, target_ms) for case in live]  # type: ignore[arg-type]
    samples: list[list[float]] = [[] for _ in live]
    for _ in range(repeats):
        for i, case in enumerate(live):
            samples[i].append(case.run(counts[i]) / counts[i])  # type: ignore[misc]
    for case, taken in zip(live, samples, strict=True):
        case.ns = statistics.median(taken)


def render(cases: list[Case]) -> str:
    """The table, with speed-ups against the pure twin and slow-downs against compiled."""
    pure_ns = {c.group: c.ns for c in cases if c.impl == "pure" and c.ns is not None}
    comp_ns = {c.group: c.ns for c in cases if c.impl == "compiled" and c.ns is not None}
    lines = [
        f"{'operation':<24} {'implementation':<20} {'ns/op':>8} {'vs pure':>8} "
        f"{'vs compiled':>11}  note",
        "-" * 100,
    ]
    for c in cases:
        if c.ns is None:
            lines.append(f"{c.group:<24} {c.impl:<20} {'skipped':>8} {'':>8} {'':>11}  {c.note}")
            continue
        vs_pure = f"{pure_ns[c.group] / c.ns:.1f}x" if c.group in pure_ns else ""
        vs_comp = f"{c.ns / comp_ns[c.group]:.1f}x" if c.group in comp_ns else ""
        lines.append(f"{c.group:<24} {c.impl:<20} {c.ns:8.0f} {vs_pure:>8} {vs_comp:>11}  {c.note}")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------------------------------
# SSE: parsing upstream streams and framing our own events
# ---------------------------------------------------------------------------------------


class PreviousSSEParser:
    """The pure parser `edge.sse` had before SSE moved into the hot path, kept as a baseline.

    Verbatim but for the names: it re-joins and re-splits its whole buffer on every read,
    and normalises line endings over the buffer each time.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        parts = buffer.split(b"\n\n")
        self._buffer = parts.pop()
        if len(self._buffer) > pure.MAX_EVENT_BYTES:
            raise pure.SSEError("an upstream event exceeded the size limit")
        events = []
        for block in parts:
            if not block:
                continue
            name: str | None = None
            data: list[bytes] = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode("utf-8", "replace")
            if data or name is not None:
                events.append((name, b"\n".join(data)))
        return events


def openai_chunk(i: int) -> dict[str, Any]:
    """One chat.completion.chunk as OpenAI streams it: ~200 bytes as an SSE event."""
    return {
        "id": "chatcmpl-AbCdEf0123456789",
        "object": "chat.completion.chunk",
        "created": 1_726_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": f" word{i % 97}"}, "finish_reason": None}],
    }


def anthropic_stream(deltas: int) -> list[bytes]:
    """A whole Messages stream, one SSE event per item, as Anthropic frames it."""
    message: dict[str, Any] = {
        "id": "msg_01AbCdEf0123456789",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 412, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]  # fmt: skip
    for i in range(deltas):
        delta = {"type": "text_delta", "text": f" word{i % 97}"}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": deltas}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return [pure.frame_event(name, data) for name, data in events]


def _loop_feed(make: Callable[[], Any], reads: list[bytes], events_per_pass: int, n: int) -> int:
    """Feed `reads` to one parser, over and over, for about n events; ns per n events.

    The parser is made before the clock starts; each pass ends on an event boundary, so
    passes are independent and the stream may be replayed.
    """
    passes = max(1, n // events_per_pass)
    feed = make().feed
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, passes):
        for read in reads:
            feed(read)
    elapsed = time.perf_counter_ns() - start
    return elapsed * n // (passes * events_per_pass)


def _loop_call1(fn: Callable[[Any], object], a: Any, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, n):
        fn(a)
    return time.perf_counter_ns() - start


def sse_groups(impls: list[tuple[str, Any]], missing: dict[str, str]) -> list[list[Case]]:
    """ns per event: feed() on OpenAI and Anthropic streams; frame() and frame_event()."""
    chunks = [pure.frame(openai_chunk(i)) for i in range(50)]
    tens = [b"".join(chunks[i : i + 10]) for i in range(0, 50, 10)]
    anthropic = anthropic_stream(deltas=40)
    bulk = b"".join(anthropic)
    anthropic_reads = [bulk[i : i + 1400] for i in range(0, len(bulk), 1400)]  # ~1 TCP segment
    big = pure.frame({"text": "word " * 200_000})  # e.g. a long answer sent as one event
    big_reads = [big[i : i + 4096] for i in range(0, len(big), 4096)]
    feeds = [
        ("SSE OpenAI 1 ev/read", chunks, len(chunks), f"{len(chunks[0])} B events"),
        ("SSE OpenAI 10 ev/read", tens, len(chunks), f"{len(tens[0])} B reads"),
        ("SSE Anthropic 1 ev/read", anthropic, len(anthropic), f"{len(anthropic)} events"),
        (
            "SSE Anthropic 1400 B rd",
            anthropic_reads,
            len(anthropic),
            "events cut across reads",
        ),
        ("SSE 1 MB event, 4 KB rd", big_reads, 1, "a large event trickling in"),
    ]
    makers: list[tuple[str, Any]] = [
        (name, None if mod is None else mod.SSEParser) for name, mod in impls
    ]
    makers.append(("previous pure", PreviousSSEParser))
    expected = PreviousSSEParser().feed(bulk)
    groups: list[list[Case]] = []
    for label, reads, events, note in feeds:
        cases = []
        for name, make in makers:
            if make is None:
                cases.append(Case(label, name, None, missing[name]))
                continue
            parser = make()
            got = [event for read in reads for event in parser.feed(read)]
            if "OpenAI" in label:
                assert got == [(None, c[6:-2]) for c in chunks]
            elif "MB" in label:
                assert got == [(None, big[6:-2])]
            else:
                assert got == expected
            cases.append(Case(label, name, partial(_loop_feed, make, reads, events), note))
        if "OpenAI 1 ev" in label:
            cases.append(
                Case(
                    label,
                    "orjson.loads",
                    partial(_loop_call1, orjson.loads, chunks[0][6:-2]),
                    "context: decoding that event's JSON",
                )
            )
        groups.append(cases)
    chunk = openai_chunk(7)
    text = {"type": "text_delta", "text": " word7"}
    delta = {"type": "content_block_delta", "index": 0, "delta": text}
    for label, name in (("frame OpenAI chunk", "frame"), ("frame_event Anthropic", "frame_event")):
        cases = []
        for impl, mod in impls:
            if mod is None:
                cases.append(Case(label, impl, None, missing[impl]))
            elif name == "frame":
                cases.append(Case(label, impl, partial(_loop_call1, mod.frame, chunk)))
            else:
                call = partial(_loop_call2, mod.frame_event, "content_block_delta", delta)
                cases.append(Case(label, impl, call))
        obj = chunk if name == "frame" else delta
        cases.append(
            Case(label, "orjson.dumps", partial(_loop_call1, orjson.dumps, obj), "context")
        )
        groups.append(cases)
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Micro-benchmarks of edge's hot path.")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per row (median)")
    parser.add_argument("--target-ms", type=float, default=30.0, help="length of one repeat")
    parser.add_argument(
        "--only", choices=["sse"], help="run one section only (sse: parsing and framing)"
    )
    args = parser.parse_args(argv)

    print(f"interpreter: {sys.executable}")
    print(f"version:     Python {platform.python_version()} ({platform.python_implementation()})")
    print(
        f"machine:     {platform.machine()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    if compiled is None:
        print(
            "notice: edge._fastpath is not built; compiled rows skipped "
            "(python setup.py build_ext --inplace)"
        )
    if cachetools is None:
        print("notice: cachetools not installed; its rows skipped (pip install cachetools)")
    if lru_dict is None:
        print("notice: lru-dict not installed; its rows skipped (pip install lru-dict)")

    small, large = chat_request(turns=3, words_per_turn=28), big_request()
    print(
        f"requests:    {len(orjson.dumps(small))} B JSON -> {len(pure.canonical(small))} B "
        f"canonical; {len(orjson.dumps(large))} B JSON -> {len(pure.canonical(large))} B "
        "canonical"
    )
    print(
        f"empty loop:  {statistics.median(_loop_empty(100_000) / 100_000 for _ in range(5)):.0f}"
        " ns/op (included in every figure below)"
    )
    print()

    impls: list[tuple[str, Any]] = [("compiled", compiled), ("pure", pure)]
    if compiled is not None:
        assert compiled.canonical(large) == pure.canonical(large), "the twins disagree"
    value = object()
    hot_key = pure.cache_key(small, SCOPE)
    warm_keys = [f"{i:032x}" for i in range(L1_ENTRIES - 1)] + [hot_key]
    fresh = itertools.count()

    def fresh_keys(n: int) -> list[str]:
        return [f"{next(fresh):032x}-new" for _ in range(n)]

    def time_put(put: Callable[[str, object, int, float], bool], n: int) -> int:
        return _loop_put(put, fresh_keys(n), value)  # keys are made before the clock starts

    def time_setitem(mapping: Any, n: int) -> int:
        return _loop_setitem(mapping, fresh_keys(n), value)

    def edge_cache(mod: Any) -> Any:
        cache = mod.LRUCache(L1_ENTRIES, L1_ENTRIES * ENTRY_BYTES)
        for key in warm_keys:
            cache.put(key, value, ENTRY_BYTES, EXPIRES)
        return cache

    def other_cache(make: Callable[[int], Any]) -> Any:
        cache = make(L1_ENTRIES)
        for key in warm_keys:
            cache[key] = value
        return cache

    others: list[tuple[str, Callable[[int], Any] | None]] = [
        ("cachetools.LRUCache", None if cachetools is None else cachetools.LRUCache),
        ("lru-dict LRU", None if lru_dict is None else lru_dict.LRU),
    ]
    missing = {"compiled": "not built"}

    groups: list[list[Case]] = []
    for label, body in (("cache_key ~1 KB", small), ("cache_key ~10 KB", large)):
        groups.append(
            [
                Case(label, name, partial(_loop_call2, mod.cache_key, body, SCOPE))
                if mod is not None
                else Case(label, name, None, missing[name])
                for name, mod in impls
            ]
        )

    get_cases: list[Case] = []
    put_cases: list[Case] = []
    both_cases: list[Case] = []
    get, put, both = "LRUCache.get hit", "LRUCache.put (evicts)", "cache_key + get ~1 KB"
    for name, mod in impls:
        if mod is None:
            for cases, label in ((get_cases, get), (put_cases, put), (both_cases, both)):
                cases.append(Case(label, name, None, missing[name]))
            continue
        cache = edge_cache(mod)
        get_cases.append(
            Case(get, name, partial(_loop_call2, cache.get, hot_key, NOW), f"{L1_ENTRIES} entries")
        )
        put_cases.append(
            Case(put, name, partial(time_put, edge_cache(mod).put), "a new key into a full cache")
        )
        both_cases.append(
            Case(
                both,
                name,
                partial(_loop_key_then_get, mod.cache_key, cache.get, small),
                "a hit: the per-request L1 path",
            )
        )
    for name, make in others:
        if make is None:
            get_cases.append(Case(get, name, None, "not installed"))
            put_cases.append(Case(put, name, None, "not installed"))
            continue
        get_cases.append(
            Case(
                get,
                name,
                partial(_loop_getitem, other_cache(make), hot_key),
                "c[key]; no TTL, no byte bound",
            )
        )
        put_cases.append(
            Case(
                put,
                name,
                partial(time_setitem, other_cache(make)),
                "c[key] = v; no TTL, no byte bound",
            )
        )
    groups += [get_cases, put_cases, both_cases]

    for strategy_name, strategy in (
        ("cost", pure.STRATEGY_COST),
        ("latency", pure.STRATEGY_LATENCY),
    ):
        for n in (2, 6):
            label = f"rank {strategy_name}, {n} cands"
            rank_cases = []
            for name, mod in impls:
                if mod is None:
                    rank_cases.append(Case(label, name, None, missing[name]))
                    continue
                stats, breakers = routing_candidates(mod, n)
                order = mod.rank(
                    strategy, stats, breakers, NOW, PROMPT_CHARS, MAX_TOKENS, COOLDOWN_S
                )
                rank_cases.append(
                    Case(
                        label,
                        name,
                        partial(_loop_rank, mod.rank, strategy, stats, breakers),
                        f"order {order}",
                    )
                )
            groups.append(rank_cases)

    if args.only == "sse":
        groups = []
    groups += sse_groups(impls, missing)

    for cases in groups:
        measure(cases, args.repeats, args.target_ms)
    print(render([case for cases in groups for case in cases]))
    print()
    print(
        f"ns/op: median of {args.repeats} interleaved repeats of ~{args.target_ms:.0f} ms each. "
        "vs pure = pure ns / row ns (speed-up); vs compiled = row ns / compiled ns."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
