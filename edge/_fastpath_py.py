"""Pure-Python twin of `edge._fastpath`: the request key, the L1 LRU, routing scores, SSE.

This module is the oracle. The Cython module must produce byte-identical `canonical()`
output and behave identically for every operation here; the tests run both and compare.
It is also what runs when the extension is not built or `EDGE_NO_EXTENSIONS=1`, so it
stays simple rather than clever.

One module, like its compiled twin (docs/ARCHITECTURE.md, "The fast path" says why), laid
out in the same order: key, LRU, routing scores, SSE.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

__all__ = [
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "Breaker",
    "DONE",
    "DeploymentStats",
    "EXCLUDED_FIELDS",
    "HEAD_AMBIGUOUS_FRAMING",
    "HEAD_OK",
    "HEAD_TOO_LARGE",
    "LRUCache",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "PROBE_RETRY_S",
    "SSEError",
    "SSEParser",
    "STRATEGY_COST",
    "STRATEGY_FAILOVER",
    "STRATEGY_LATENCY",
    "STRATEGY_LEAST_BUSY",
    "STRATEGY_MODEL",
    "Entry",
    "cache_key",
    "canonical",
    "frame",
    "frame_event",
    "head_check",
    "rank",
    "retry_after_all",
]

#: Top-level request fields that never change the answer, so they stay out of the key.
EXCLUDED_FIELDS: frozenset[str] = frozenset({"stream", "stream_options", "user"})

#: Deepest container nesting edge accepts in a request, the body object being level 1: the
#: schema refuses a deeper body with a 400 (edge.schema reads this constant), and `canonical`
#: raises ValueError rather than exhaust the interpreter (or C) stack. One limit, one meaning.
MAX_DEPTH = 64

_digest = xxhash.xxh3_128_intdigest
_NO_SKIP: frozenset[str] = frozenset()


def canonical(body: Mapping[str, Any]) -> bytes:
    """Encode a request as a self-delimiting byte string that ignores key order.

    Each value carries a type tag and strings carry their byte length, so two different
    requests can never encode to the same bytes; the key is a hash of these bytes. The body
    may be any Mapping; nested objects must be dicts. Unsupported types raise TypeError,
    nesting deeper than MAX_DEPTH raises ValueError.
    """
    if not isinstance(body, Mapping):
        raise TypeError(f"request body must be a mapping, not {type(body).__name__}")
    out: list[bytes] = []
    _encode_mapping(body, out, EXCLUDED_FIELDS, 1)
    return b"".join(out)


def cache_key(body: Mapping[str, Any], scope: str) -> int:
    """Return the xxh3-128 key of `body` as seen by `scope` (tenant or "global"), an int.

    An int, not its 32 hex digits: L1 holds one key per entry, and a 128-bit int takes 48
    bytes where the str takes 96, about 5 MB over 100k entries. L2 writes it as 32 lowercase
    hex digits (`f"{key:032x}"`), the text form keys have always had there.
    """
    return _digest(canonical(body) + b"|" + str.encode(scope, "utf-8", "surrogatepass"))


def _encode_mapping(
    value: Mapping[Any, Any], out: list[bytes], skip: frozenset[str], depth: int
) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"request nests deeper than {MAX_DEPTH} levels")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"object keys must be str, not {type(key).__name__}")
    out.append(b"{")
    for key in sorted(value):
        if key in skip:
            continue
        _encode_str(key, out)
        _encode(value[key], out, depth)
    out.append(b"}")


def _encode_str(value: str, out: list[bytes]) -> None:
    # surrogatepass: JSON may carry lone surrogates ("\ud800"); they must hash, not crash.
    data = str.encode(value, "utf-8", "surrogatepass")
    out.append(b"s%d:" % len(data))
    out.append(data)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    # Base-type methods (str.encode, int.__repr__, ...) are called unbound so that a
    # subclass that overrides them is still encoded as its base value.
    if isinstance(value, str):
        _encode_str(value, out)
    elif isinstance(value, bool):  # before int: bool is an int subclass
        out.append(b"T" if value else b"F")
    elif value is None:
        out.append(b"N")
    elif isinstance(value, int):
        out.append(b"i%s;" % int.__repr__(value).encode("ascii"))
    elif isinstance(value, float):
        if math.isfinite(value) and float.is_integer(value):
            # 1.0 and 1 must give the same key: JSON does not distinguish them.
            out.append(b"i%s;" % int.__repr__(float.__int__(value)).encode("ascii"))
        else:
            out.append(b"f%s;" % float.__repr__(value).encode("ascii"))
    elif isinstance(value, dict):
        _encode_mapping(value, out, _NO_SKIP, depth + 1)
    elif isinstance(value, list | tuple):
        if depth + 1 > MAX_DEPTH:
            raise ValueError(f"request nests deeper than {MAX_DEPTH} levels")
        out.append(b"[")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"]")
    else:
        raise TypeError(f"cannot use a value of type {type(value).__name__} in a cache key")


@dataclass(frozen=True, slots=True)
class Entry:
    """A cached answer: its JSON body (without edge's metadata), who produced it, its cost.

    Compiled, it is a 48-byte object outside the cyclic GC that holds the cost as a C
    double; as a dataclass with a float it took 96 bytes and a GC header, and L1 holds one
    per cached answer (100k by default). The twin is the dataclass, same fields, same
    equality.
    """

    body: bytes
    provider: str
    model: str
    cost_usd: float

    def answer(self) -> dict[str, Any]:
        """The body parsed: a fresh dict each call (callers change it)."""
        value: dict[str, Any] = orjson.loads(self.body)
        return value


class _Node:
    """One entry, linked into the cache's recency ring."""

    __slots__ = ("prev", "next", "key", "value", "size", "expires_at")

    def __init__(self, key: Any, value: object, size: int, expires_at: float) -> None:
        self.prev: _Node = self
        self.next: _Node = self
        self.key = key
        self.value = value
        self.size = size
        self.expires_at = expires_at


class LRUCache:
    """The L1 cache: least-recently-used eviction under an entry bound and a byte bound, plus TTL.

    Entries live in a dict (key -> node) and in a circular doubly linked list through a
    sentinel: `root.next` is the least recently used entry, `root.prev` the most recent.
    Every operation except `sweep` and `clear` is O(1).

    Sweep invariant: a cursor marks the next entry to examine and only ever moves towards the
    MRU end, wrapping round to the LRU end. Each `sweep(now, limit)` examines at most `limit`
    entries starting at the cursor, deletes the expired ones among them and leaves the cursor
    after the last one examined. When an entry under the cursor leaves its place (deleted,
    evicted, or moved to MRU by `get`/`put`, even if it already was the MRU), the cursor
    first steps to the entry after it, so it never points at a detached node. Consequences:
    one call with `limit >= len(cache)` removes every expired entry; with no other traffic,
    ceil(len / limit) calls examine every entry; each call does O(limit) work whatever the
    cache size.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        max_entries = operator.index(max_entries)
        max_bytes = operator.index(max_bytes)
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._map: dict[Any, _Node] = {}
        self._root = _Node(None, None, 0, 0.0)
        self._cursor = self._root  # the root means "start at the LRU end"
        self._bytes = 0

    def get(self, key: Hashable, now: float) -> object | None:
        """Return the live value for `key` and mark it most recently used, else None."""
        node = self._map.get(key)
        if node is None:
            return None
        if node.expires_at <= now:
            self._remove(node)
            return None
        self._unlink(node)
        self._append(node)
        return node.value

    def put(self, key: Hashable, value: object, size: int, expires_at: float) -> bool:
        """Store `value` as the most recent entry, evicting LRU entries to fit the bounds.

        An entry bigger than `max_bytes` can never fit: it is not stored, any older entry for
        the same key is removed (it would be stale), and the result is False.
        """
        size = operator.index(size)
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        old_value: object = None
        node = self._map.get(key)
        if node is not None:
            if size > self._max_bytes:
                self._remove(node)
                return False
            self._unlink(node)
            self._append(node)
            self._bytes += size - node.size
            old_value = node.value
            node.size, node.expires_at, node.value = size, expires_at, value
        else:
            if size > self._max_bytes:
                return False
            node = _Node(key, value, size, expires_at)
            self._map[key] = node
            self._append(node)
            self._bytes += size
        while len(self._map) > self._max_entries or self._bytes > self._max_bytes:
            self._remove(self._root.next)
        # Only now, with the cache consistent, may the replaced value's finaliser run.
        del old_value
        return True

    def delete(self, key: Hashable) -> bool:
        """Remove `key`; True if it was present (expired or not)."""
        node = self._map.get(key)
        if node is None:
            return False
        self._remove(node)
        return True

    def sweep(self, now: float, limit: int = 1000) -> int:
        """Examine at most `limit` entries from the cursor and delete the expired ones.

        Returns how many were deleted.
        """
        removed = 0
        for _ in range(min(limit, len(self._map))):
            if self._cursor is self._root:
                self._cursor = self._root.next
                if self._cursor is self._root:
                    break  # emptied meanwhile by code run from a freed value
            removed += self._sweep_one(now)
        return removed

    def _sweep_one(self, now: float) -> int:
        # A method of its own so that `node`, and maybe the last reference to its value, is
        # released before the loop reads the cursor again: a value's finaliser may use the cache.
        node = self._cursor
        self._cursor = node.next
        if node.expires_at <= now:
            self._remove(node)
            return 1
        return 0

    def clear(self) -> None:
        """Drop every entry."""
        old_map, node = self._map, self._root.next
        self._map = {}
        self._root.prev = self._root.next = self._root
        self._cursor = self._root
        self._bytes = 0
        while node is not self._root:  # break the old ring so its nodes are freed at once
            following = node.next
            node.prev = node.next = self._root
            node = following
        old_map.clear()  # values are released only now, with the cache already consistent

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        """Presence regardless of TTL; unlike `get`, not a use."""
        return key in self._map

    @property
    def bytes(self) -> int:
        """Sum of the sizes of the stored entries."""
        return self._bytes

    @property
    def max_entries(self) -> int:
        return self._max_entries

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def _append(self, node: _Node) -> None:
        last = self._root.prev
        node.prev = last
        node.next = self._root
        last.next = node
        self._root.prev = node

    def _unlink(self, node: _Node) -> None:
        if self._cursor is node:
            self._cursor = node.next
        node.prev.next = node.next
        node.next.prev = node.prev

    def _remove(self, node: _Node) -> None:
        # The caller's reference keeps `node` (and its value) alive until the ring, the byte
        # count and the dict are consistent again, so a value's finaliser may use the cache.
        self._unlink(node)
        self._bytes -= node.size
        del self._map[node.key]


# ---------------------------------------------------------------------------------------
# Routing scores: circuit breakers, per-deployment stats, and the candidate order
# ---------------------------------------------------------------------------------------

STRATEGY_MODEL = 0
STRATEGY_FAILOVER = 1
STRATEGY_COST = 2
STRATEGY_LATENCY = 3
STRATEGY_LEAST_BUSY = 4

BREAKER_CLOSED = 0
BREAKER_OPEN = 1
BREAKER_HALF_OPEN = 2

#: Retry-After when the only thing in the way is a half-open probe still out: the probe's
#: outcome, not a clock, decides when the provider is usable again, so ask for a short wait.
PROBE_RETRY_S = 1.0

_STRATEGIES = (STRATEGY_MODEL, STRATEGY_FAILOVER, STRATEGY_COST, STRATEGY_LATENCY,
               STRATEGY_LEAST_BUSY)


class Breaker:
    """One provider's circuit breaker.

    Theory of operation. The breaker is CLOSED until `failures` consecutive failures open
    it at `opened_at`. It is then OPEN while `now < opened_at + cooldown_s` and HALF_OPEN
    afterwards: nothing but the clock moves it there, so a breaker needs no timer task.
    HALF_OPEN lets exactly one attempt through (the probe, taken by `acquire`); while the
    probe is out the provider is blocked. The probe's success closes the circuit, its
    failure re-opens it with a fresh cooldown, and `release` (the attempt was cancelled,
    so it proved nothing) lets the next request probe instead.

    Invariants: `probing` implies HALF_OPEN (only `acquire` in HALF_OPEN sets it, and every
    outcome clears it); `opened_at` is the last time the circuit opened (-inf if never);
    `consecutive` counts failures since the last success, whatever the state.
    """

    __slots__ = (
        "_failures",
        "_cooldown_s",
        "_consecutive",
        "_last_failure_at",
        "_opened_at",
        "_open",
        "_probing",
    )

    def __init__(self, failures: int, cooldown_s: float) -> None:
        failures = operator.index(failures)
        cooldown_s = float(cooldown_s)
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0.0):
            raise ValueError(f"cooldown_s must be finite and >= 0, got {cooldown_s}")
        self._failures = failures
        self._cooldown_s = cooldown_s
        self._consecutive = 0
        self._last_failure_at = -math.inf
        self._opened_at = -math.inf
        self._open = False
        self._probing = False

    def state(self, now: float) -> int:
        """BREAKER_CLOSED, BREAKER_OPEN or BREAKER_HALF_OPEN at time `now`."""
        if not self._open:
            return BREAKER_CLOSED
        if now < self._opened_at + self._cooldown_s:
            return BREAKER_OPEN
        return BREAKER_HALF_OPEN

    def blocked(self, now: float) -> bool:
        """True when no request may use the provider now: open, or its one probe is out."""
        state = self.state(now)
        return state == BREAKER_OPEN or (state == BREAKER_HALF_OPEN and self._probing)

    def acquire(self, now: float) -> bool:
        """Ask to make an attempt right now; False means skip this provider.

        Called right before each attempt, because `rank` only reads the state: two requests
        may both see a half-open breaker, and only the first may take the probe.
        """
        state = self.state(now)
        if state == BREAKER_CLOSED:
            return True
        if state == BREAKER_HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self, now: float) -> None:
        """An attempt succeeded: close the circuit and forget the failures."""
        self._open = False
        self._consecutive = 0
        self._probing = False

    def failure(self, now: float) -> None:
        """An attempt failed: count it; a failed probe, or the last straw, opens the circuit."""
        state = self.state(now)
        self._consecutive += 1
        self._last_failure_at = now
        self._probing = False
        if state == BREAKER_HALF_OPEN or (
            state == BREAKER_CLOSED and self._consecutive >= self._failures
        ):
            self._open = True
            self._opened_at = now

    def release(self, now: float) -> None:
        """The probe was cancelled without an outcome: let another request probe."""
        self._probing = False

    def retry_after(self, now: float) -> float:
        """Seconds until the circuit half-opens; 0.0 unless it is open."""
        if self.state(now) != BREAKER_OPEN:
            return 0.0
        return self._opened_at + self._cooldown_s - now

    @property
    def failures(self) -> int:
        """Consecutive failures that open the circuit."""
        return self._failures

    @property
    def cooldown_s(self) -> float:
        return self._cooldown_s

    @property
    def consecutive(self) -> int:
        """Failures since the last success."""
        return self._consecutive

    @property
    def last_failure_at(self) -> float:
        """Time of the last failure; -inf if none yet."""
        return self._last_failure_at

    @property
    def opened_at(self) -> float:
        """Time the circuit last opened; -inf if never."""
        return self._opened_at

    @property
    def probing(self) -> bool:
        """Whether the half-open probe is out."""
        return self._probing


class DeploymentStats:
    """What the router knows about one deployment: its prices, recent time to first byte,
    and the requests in flight on it now.

    The latency is an exponentially weighted moving average, so a deployment that slows
    down (or recovers) moves in the order within a few requests, not after a window.
    `begin` and `end` bracket each attempt (a stream's until it ends); `end` never takes
    the count below zero, so one unmatched call cannot make a deployment look idler
    than idle for good.
    """

    __slots__ = ("_input_per_mtok", "_output_per_mtok", "_alpha", "_ewma", "_samples",
                 "_inflight")

    def __init__(self, input_per_mtok: float, output_per_mtok: float, alpha: float = 0.3) -> None:
        input_per_mtok = float(input_per_mtok)
        output_per_mtok = float(output_per_mtok)
        alpha = float(alpha)
        prices = (("input_per_mtok", input_per_mtok), ("output_per_mtok", output_per_mtok))
        for name, price in prices:
            if not (math.isnan(price) or (math.isfinite(price) and price >= 0.0)):
                raise ValueError(f"{name} must be finite and >= 0, or NaN if unknown; got {price}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self._input_per_mtok = input_per_mtok
        self._output_per_mtok = output_per_mtok
        self._alpha = alpha
        self._ewma = math.nan
        self._samples = 0
        self._inflight = 0

    def begin(self) -> None:
        """An attempt on this deployment started."""
        self._inflight += 1

    def end(self) -> None:
        """An attempt that `begin` counted ended (answered, failed, cancelled, stream over)."""
        if self._inflight > 0:
            self._inflight -= 1

    @property
    def inflight(self) -> int:
        """Attempts on this deployment now."""
        return self._inflight

    def observe(self, ttfb_s: float) -> None:
        """Fold one time-to-first-byte sample (seconds) into the average."""
        ttfb_s = float(ttfb_s)
        if not (math.isfinite(ttfb_s) and ttfb_s >= 0.0):
            # One NaN would stick in the average for good, so refuse it at the door.
            raise ValueError(f"ttfb_s must be finite and >= 0, got {ttfb_s}")
        if self._samples == 0:
            self._ewma = ttfb_s
        else:
            self._ewma = self._alpha * ttfb_s + (1.0 - self._alpha) * self._ewma
        self._samples += 1

    def estimate(self, prompt_chars: int, max_tokens: int) -> float:
        """Worst-case USD for a request: prompt at ~4 characters a token, plus max_tokens.

        NaN when either price is unknown. Only the order matters to `rank`, so a rough
        token count of the prompt is enough.
        """
        prompt_chars = operator.index(prompt_chars)
        max_tokens = operator.index(max_tokens)
        if prompt_chars < 0 or max_tokens < 0:
            raise ValueError("prompt_chars and max_tokens must be >= 0")
        prompt = float(prompt_chars) / 4.0 * self._input_per_mtok
        return (prompt + float(max_tokens) * self._output_per_mtok) / 1e6

    @property
    def ewma(self) -> float:
        """Average time to first byte in seconds; NaN until the first sample."""
        return self._ewma

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def alpha(self) -> float:
        return self._alpha

    @property
    def input_per_mtok(self) -> float:
        return self._input_per_mtok

    @property
    def output_per_mtok(self) -> float:
        return self._output_per_mtok


def rank(
    strategy: int,
    stats: Sequence[DeploymentStats],
    breakers: Sequence[Breaker],
    now: float,
    prompt_chars: int,
    max_tokens: int,
    cooldown_s: float,
) -> list[int]:
    """The candidates to try, as indexes into `stats`/`breakers`, best first.

    Candidate i is described by stats[i] and breakers[i] (candidates on one provider share
    a Breaker). Candidates whose breaker is blocked are left out, so [] means none may be
    tried now. The rest are ordered by a (group, value) pair per strategy, ties in config
    (index) order:
      MODEL     every candidate alike: config order.
      FAILOVER  group 1 for a breaker not closed or a failure less than cooldown_s ago.
      COST      the estimate; group 1 (last) when a price is unknown.
      LATENCY   group 0 (first) for a deployment never measured, so each gets measured;
                then the EWMA of time to first byte.
      LEAST_BUSY  the attempts in flight on the deployment now.
    Reading only: no breaker changes (see Breaker.acquire).
    """
    strategy = operator.index(strategy)
    prompt_chars = operator.index(prompt_chars)
    max_tokens = operator.index(max_tokens)
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown strategy {strategy}")
    if len(stats) != len(breakers):
        raise ValueError(f"{len(stats)} stats but {len(breakers)} breakers")
    if prompt_chars < 0 or max_tokens < 0:
        raise ValueError("prompt_chars and max_tokens must be >= 0")
    keyed: list[tuple[int, float, int]] = []
    for index, (stat, breaker) in enumerate(zip(stats, breakers, strict=True)):
        if breaker.blocked(now):
            continue
        group, value = 0, 0.0
        if strategy == STRATEGY_FAILOVER:
            recent = now - breaker.last_failure_at < cooldown_s
            group = int(breaker.state(now) != BREAKER_CLOSED or recent)
        elif strategy == STRATEGY_COST:
            value = stat.estimate(prompt_chars, max_tokens)
            if math.isnan(value):
                group, value = 1, 0.0
        elif strategy == STRATEGY_LATENCY:
            if stat.samples:
                group, value = 1, stat.ewma
        elif strategy == STRATEGY_LEAST_BUSY:
            value = float(stat.inflight)
        keyed.append((group, value, index))
    keyed.sort()
    return [index for _, _, index in keyed]


def retry_after_all(breakers: Sequence[Breaker], now: float) -> float:
    """Seconds until some candidate may be tried again: the Retry-After of a 503.

    0.0 if one is usable now (or there are none); else the soonest an open breaker
    half-opens, or PROBE_RETRY_S if that is sooner and a half-open probe is out.
    """
    wait = math.inf
    for breaker in breakers:
        state = breaker.state(now)
        if state == BREAKER_OPEN:
            wait = min(wait, breaker.retry_after(now))
        elif breaker.blocked(now):
            wait = min(wait, PROBE_RETRY_S)
        else:
            return 0.0
    return 0.0 if wait == math.inf else wait


# ---------------------------------------------------------------------------------------
# Server-sent events: parse what an upstream sends, frame what we send
# ---------------------------------------------------------------------------------------

#: The event that ends an OpenAI-style stream.
DONE = b"data: [DONE]\n\n"

#: One SSE event larger than this is a broken (or hostile) upstream, not an answer.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class SSEError(ValueError):
    """The byte stream is not valid server-sent events.

    Defined here, in the twin, so that the compiled module, this one and `edge.sse` all
    raise and catch the very same class.
    """


class SSEParser:
    """Incremental parser: `feed(bytes)` returns the events completed by those bytes.

    An event is `(name, data)`: `name` is the `event:` field (surrounding whitespace
    stripped, decoded as UTF-8 with replacement) or None; `data` is the `data:` lines, one
    optional leading space stripped from each, joined with LF. Comments and unknown fields
    are ignored, as the SSE standard says; a block with neither data nor name is no event.

    Theory of operation. Line endings (CRLF, CR, LF) become LF as the bytes arrive. A CR
    that ends one read is remembered, so that an LF opening the next read completes that
    CRLF instead of counting as a second line ending. After that, an event ends at the
    first empty line, i.e. at "\\n\\n". The pending buffer holds the LF-normalised start of
    the unfinished event: it never begins with LF (blank lines between events are
    dropped), and it ends in at most one LF. Each feed looks for "\\n\\n" only among the new
    bytes (and the one that may straddle the old buffer's last byte), so an event that
    trickles in over many reads costs linear, not quadratic, time.

    Size limit. An event's size is its lines joined with LF (blank lines around it not
    counted). Both complete events and the pending start of one are checked, so whether a
    stream raises does not depend on how the network cut it into reads, and memory stays
    bounded. After an SSEError the parser is broken: it drops what it buffered, and every
    later `feed` raises again.
    """

    __slots__ = ("_buffer", "_cr", "_broken", "_max")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        max_event_bytes = operator.index(max_event_bytes)
        if max_event_bytes < 0:
            raise ValueError(f"max_event_bytes must be >= 0, got {max_event_bytes}")
        self._buffer = bytearray()
        self._cr = False
        self._broken = False
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """The events that `chunk` completes, in order (often none, often one).

        `chunk` may be any bytes-like object. Raises SSEError when an event exceeds the
        size limit, or when the parser already raised one.
        """
        if self._broken:
            raise SSEError("the event stream already broke")
        if type(chunk) is not bytes:
            chunk = bytes(memoryview(chunk))
        if self._cr and chunk:  # an empty read must not forget the CR
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer
        if buffer:
            start = len(buffer) - 1  # a blank line may begin on the old buffer's last byte
            buffer += chunk
            end = buffer.rfind(b"\n\n", start)
            if end < 0:
                blocks = []
            else:
                blocks = bytes(buffer[:end]).split(b"\n\n")
                del buffer[: end + 2]  # what is left cannot begin with LF: `end` was the last
        else:
            blocks = chunk.split(b"\n\n")
            rest = blocks.pop()
            if rest:
                buffer += rest.lstrip(b"\n")
        limit = self._max
        size = len(buffer)
        if size > limit and size - (buffer[-1] == 10) > limit:  # a final LF may end the event
            self._fail()
        events: list[tuple[str | None, bytes]] = []
        for block in blocks:
            if not block:
                continue
            if len(block) > limit and len(block.strip(b"\n")) > limit:
                self._fail()
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

    def _fail(self) -> None:
        self._buffer = bytearray()
        self._cr = False
        self._broken = True
        raise SSEError(f"an upstream event exceeded the size limit of {self._max} bytes")

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered (a cut stream)."""
        return bool(self._buffer.strip())


def frame(obj: Any) -> bytes:
    """One OpenAI-style event: `data: {json}` and the blank line."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def frame_event(name: str, obj: Any) -> bytes:
    """One Anthropic-style event: `event: name` then `data: {json}`.

    `name` is encoded as its base str value (a subclass's own `encode` is not used).
    """
    return b"event: " + str.encode(name) + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


# -- request heads ---------------------------------------------------------------------

HEAD_OK = 0
HEAD_TOO_LARGE = 1
HEAD_AMBIGUOUS_FRAMING = 2


def head_check(target: bytes, items: Iterable[tuple[bytes, ...]], limit: int) -> int:
    """Whether a request head parsed by h11 may be served: HEAD_OK, HEAD_TOO_LARGE (request
    line and headers over `limit` bytes, counting ": " and CRLF per header) or
    HEAD_AMBIGUOUS_FRAMING (both Content-Length and Transfer-Encoding). `items` holds
    tuples whose last two members are the lower-case name and the value: h11's
    (raw name, name, value) triples, or (name, value) pairs.
    """
    size = len(target)
    has_length = has_coding = False
    for item in items:
        name, value = item[-2], item[-1]
        size += len(name) + len(value) + 4
        if name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_coding = True
    if size > limit:
        return HEAD_TOO_LARGE
    if has_length and has_coding:
        return HEAD_AMBIGUOUS_FRAMING
    return HEAD_OK
