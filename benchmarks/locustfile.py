"""Locust scenarios for edge (or anything that speaks the OpenAI chat API).

Pick scenarios with Locust's ``--tags`` or with ``EDGE_SCENARIO`` (comma-separated);
with neither, all four run side by side with equal weight.

- ``cache_heavy``: ~70 % of requests draw a prompt Zipf-style from a fixed generated
  corpus of ~1,000 prompts (after warm-up those are cache hits), the rest are unique.
- ``miss_heavy``: every prompt is unique, so every request goes upstream.
- ``streaming``: a share (``EDGE_STREAM_SHARE``, default 0.5) of corpus requests are
  ``stream: true``; the SSE answer is read to ``data: [DONE]`` and the time to the first
  chunk is reported as its own row, type ``SSE``, name ``time to first chunk``.
- ``mixed_models``: corpus prompts spread over the models in ``EDGE_MODELS``.

Requests are reported as ``chat <scenario> [<model>] (<x-edge-cache>)``, so hits and
misses get separate latency rows; ``(-)`` means the server sent no ``x-edge-cache``
header (the mock upstream, for instance). Environment knobs: ``EDGE_API_KEY`` (default
"x"), ``EDGE_MODELS`` (default "gpt-4o-mini,gpt-4o"), ``EDGE_REPEAT_SHARE`` (0.7),
``EDGE_STREAM_SHARE`` (0.5), ``EDGE_CORPUS_SIZE`` (1000), ``EDGE_ZIPF_S`` (1.1),
``EDGE_MAX_TOKENS`` (64), ``EDGE_THINK_S`` (0: no pause between a user's requests).
See benchmarks/README.md for the headless commands.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from typing import Any

from locust import FastHttpUser, between, constant, tag, task

SCENARIOS = ("cache_heavy", "miss_heavy", "streaming", "mixed_models")
CHAT_PATH = "/v1/chat/completions"


def _env_float(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name)
    value = default if raw is None or raw == "" else float(raw)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


API_KEY = os.environ.get("EDGE_API_KEY", "x")
MODELS = [m.strip() for m in os.environ.get("EDGE_MODELS", "gpt-4o-mini,gpt-4o").split(",")
          if m.strip()]
if not MODELS:
    raise ValueError("EDGE_MODELS names no model")
REPEAT_SHARE = _env_float("EDGE_REPEAT_SHARE", 0.7, 0.0, 1.0)
STREAM_SHARE = _env_float("EDGE_STREAM_SHARE", 0.5, 0.0, 1.0)
CORPUS_SIZE = int(_env_float("EDGE_CORPUS_SIZE", 1000, 1, 1_000_000))
ZIPF_S = _env_float("EDGE_ZIPF_S", 1.1, 0.0, 10.0)
MAX_TOKENS = int(_env_float("EDGE_MAX_TOKENS", 64, 1, 100_000))
THINK_S = _env_float("EDGE_THINK_S", 0.0, 0.0, 3600.0)

_TOPICS = (
    "HTTP caching", "TCP slow start", "consistent hashing", "bloom filters", "B-trees",
    "garbage collection", "Raft consensus", "vector clocks", "TLS handshakes", "DNS",
    "load balancing", "circuit breakers", "rate limiting", "backpressure", "LRU eviction",
    "Python generators", "async IO", "structured concurrency", "memory allocators",
    "CPU caches", "branch prediction", "SIMD", "hash maps", "skip lists", "tries",
    "regular expressions", "unicode normalisation", "floating point", "JSON parsing",
    "HTTP/2 streams", "server-sent events", "WebSockets", "OAuth", "password hashing",
    "public key crypto", "content delivery networks", "database indexes", "MVCC",
    "write-ahead logs", "event sourcing",
)
_TASKS = (
    "Explain {topic} to {audience} in {n} sentences.",
    "Give {n} common mistakes people make with {topic}, for {audience}.",
    "Write a short analogy that explains {topic} to {audience}.",
    "List {n} questions {audience} should ask about {topic}.",
    "Summarise the trade-offs of {topic} for {audience} in {n} bullet points.",
)
_AUDIENCES = ("a new engineer", "a product manager", "a student", "an SRE", "a child")


def build_corpus(size: int, seed: int = 20240611) -> list[str]:
    """Deterministic prompts, identical in every Locust process so repeats are shared."""
    combos = [
        template.format(topic=topic, audience=audience, n=n)
        for template, topic, audience, n in itertools.product(
            _TASKS, _TOPICS, _AUDIENCES, (2, 3, 5)
        )
    ]
    random.Random(seed).shuffle(combos)
    # More prompts than combinations: number the extra rounds so each stays distinct.
    return [
        combos[i % len(combos)] + (f" (variant {i // len(combos)})" if i >= len(combos) else "")
        for i in range(size)
    ]


CORPUS = build_corpus(CORPUS_SIZE)
# Rank k is drawn with weight 1 / k**s; cumulative weights make each draw a bisection.
_CUM_WEIGHTS = list(itertools.accumulate(1.0 / (k**ZIPF_S) for k in range(1, CORPUS_SIZE + 1)))


def zipf_prompt(rng: random.Random) -> str:
    """A corpus prompt, popular ones far more often than rare ones."""
    return rng.choices(CORPUS, cum_weights=_CUM_WEIGHTS)[0]


def unique_prompt(rng: random.Random) -> str:
    """A prompt no one has sent before: a corpus prompt plus a random tag."""
    return f"{rng.choice(CORPUS)} [req {uuid.uuid4().hex}]"


def chat_body(prompt: str, model: str, stream: bool = False) -> dict[str, Any]:
    """The chat-completion request every scenario sends."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    return body


def _selected_scenarios() -> set[str]:
    raw = os.environ.get("EDGE_SCENARIO", "")
    chosen = {name.strip() for name in raw.split(",") if name.strip()}
    unknown = chosen - set(SCENARIOS)
    if unknown:
        raise ValueError(
            f"EDGE_SCENARIO names unknown scenario(s) {sorted(unknown)}; known: {SCENARIOS}"
        )
    return chosen


class EdgeUser(FastHttpUser):
    """One client of the proxy; each task is one request of its scenario."""

    wait_time = between(0, THINK_S) if THINK_S > 0 else constant(0)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/json",
        }

    def _post_json(self, scenario: str, body: dict[str, Any]) -> None:
        """POST a non-streaming request; fail it unless it is a 200 chat completion."""
        label = f"chat {scenario}" + (f" {body['model']}" if scenario == "mixed_models" else "")
        with self.client.post(CHAT_PATH, data=json.dumps(body), headers=self.headers,
                              name=label, catch_response=True) as response:
            cache = response.headers.get("x-edge-cache", "-") if response.headers else "-"
            response.request_meta["name"] = f"{label} ({cache})"
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                answer = json.loads(response.content)
            except ValueError:
                response.failure("answer is not JSON")
                return
            if not isinstance(answer, dict) or not answer.get("choices"):
                response.failure("answer has no choices")

    def _post_stream(self, scenario: str, body: dict[str, Any]) -> None:
        """POST a streaming request, read the SSE to the end, report time to first chunk."""
        headers = {**self.headers, "Accept": "text/event-stream", "Accept-Encoding": "identity"}
        started = time.perf_counter()
        with self.client.post(CHAT_PATH, data=json.dumps(body), headers=headers, stream=True,
                              name=f"chat {scenario} stream", catch_response=True) as response:
            cache = response.headers.get("x-edge-cache", "-") if response.headers else "-"
            response.request_meta["name"] = f"chat {scenario} stream ({cache})"
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            first = response.read(1)
            first_at = time.perf_counter()
            rest = response.read()
            finished = time.perf_counter()
            text = first + rest
            # The row's time is the whole stream, not just the headers.
            response.request_meta["response_time"] = (finished - started) * 1000
            response.request_meta["response_length"] = len(text)
            if not first:
                response.failure("empty stream")
                return
            if b"data: [DONE]" not in text:
                response.failure("stream ended without data: [DONE]")
                return
            self.environment.events.request.fire(
                request_type="SSE", name="time to first chunk",
                response_time=(first_at - started) * 1000, response_length=len(first),
                exception=None, context={},
            )

    @tag("cache_heavy")
    @task
    def cache_heavy(self) -> None:
        """Mostly repeated prompts: exercises the cache hit path."""
        if self.rng.random() < REPEAT_SHARE:
            prompt = zipf_prompt(self.rng)
        else:
            prompt = unique_prompt(self.rng)
        self._post_json("cache_heavy", chat_body(prompt, MODELS[0]))

    @tag("miss_heavy")
    @task
    def miss_heavy(self) -> None:
        """Unique prompts only: every request pays the upstream round trip."""
        self._post_json("miss_heavy", chat_body(unique_prompt(self.rng), MODELS[0]))

    @tag("streaming")
    @task
    def streaming(self) -> None:
        """A mix of SSE and JSON answers for corpus prompts (so streamed hits replay)."""
        prompt = zipf_prompt(self.rng)
        if self.rng.random() < STREAM_SHARE:
            self._post_stream("streaming", chat_body(prompt, MODELS[0], stream=True))
        else:
            self._post_json("streaming", chat_body(prompt, MODELS[0]))

    @tag("mixed_models")
    @task
    def mixed_models(self) -> None:
        """Corpus prompts spread over several models (and so several routes)."""
        model = self.rng.choice(MODELS)
        self._post_json("mixed_models", chat_body(zipf_prompt(self.rng), model))


_ONLY = _selected_scenarios()
if _ONLY:
    EdgeUser.tasks = [t for t in EdgeUser.tasks if getattr(t, "locust_tag_set", set()) & _ONLY]
