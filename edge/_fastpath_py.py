"""Pure-Python twin of `edge._fastpath`: the request key and the L1 LRU.

This module is the oracle. The Cython module must produce byte-identical `canonical()`
output and behave identically for every operation here; the tests run both and compare.
It is also what runs when the extension is not built or `EDGE_NO_EXTENSIONS=1`, so it
stays simple rather than clever.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import xxhash

__all__ = ["EXCLUDED_FIELDS", "MAX_DEPTH", "LRUCache", "cache_key", "canonical"]

#: Top-level request fields that never change the answer, so they stay out of the key.
EXCLUDED_FIELDS: frozenset[str] = frozenset({"stream", "stream_options", "user"})

#: Deepest container nesting `canonical` accepts; deeper input raises ValueError instead of
#: exhausting the interpreter (or C) stack. Real requests nest a few dozen levels at most.
MAX_DEPTH = 256

_hexdigest = xxhash.xxh3_128_hexdigest
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


def cache_key(body: Mapping[str, Any], scope: str) -> str:
    """Return the 32-hex-digit xxh3-128 key of `body` as seen by `scope` (tenant or "global")."""
    return _hexdigest(canonical(body) + b"|" + str.encode(scope, "utf-8", "surrogatepass"))


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

    Counters (`hits`, `misses`, `evictions`) are lifetime totals; `clear` keeps them.
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
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, key: str, now: float) -> object | None:
        """Return the live value for `key` and mark it most recently used, else None."""
        node = self._map.get(key)
        if node is None:
            self._misses += 1
            return None
        if node.expires_at <= now:
            self._remove(node)
            self._misses += 1
            return None
        self._unlink(node)
        self._append(node)
        self._hits += 1
        return node.value

    def put(self, key: str, value: object, size: int, expires_at: float) -> bool:
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
            self._evictions += 1
        # Only now, with the cache consistent, may the replaced value's finaliser run.
        del old_value
        return True

    def delete(self, key: str) -> bool:
        """Remove `key`; True if it was present (expired or not)."""
        node = self._map.get(key)
        if node is None:
            return False
        self._remove(node)
        return True

    def sweep(self, now: float, limit: int = 1000) -> int:
        """Examine at most `limit` entries from the cursor and delete the expired ones.

        Returns how many were deleted. Does not count hits or misses.
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
        """Drop every entry; the counters keep their lifetime totals."""
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
        """Presence regardless of TTL; not counted as a hit or a miss."""
        return key in self._map

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    @property
    def evictions(self) -> int:
        return self._evictions

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
