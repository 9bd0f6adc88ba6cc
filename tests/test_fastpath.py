"""The hot path: the cache key and the L1 LRU, on the compiled module and its pure twin.

The pure twin is the oracle: every property runs on both implementations, and the
compiled output is compared byte for byte with the twin's.
"""

from __future__ import annotations

import enum
import gc
import importlib
import math
import os
import random
import subprocess
import sys
import types
import weakref
from collections import OrderedDict, defaultdict, namedtuple
from decimal import Decimal
from typing import Any

import pytest
import xxhash
from _twins import NO_EXTENSIONS, both, compiled, pure
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import edge.fastpath as fastpath
from edge import schema
from edge.errors import BadRequest


def requires_compiled() -> None:
    if compiled is None:
        pytest.skip("edge._fastpath is not built")


# ------------------------------------------------------------------------------ selector


def test_compiled_module_loaded() -> None:
    if NO_EXTENSIONS:
        assert fastpath.COMPILED is False
        assert fastpath.LRUCache is pure.LRUCache
        assert fastpath.cache_key is pure.cache_key
        return
    ext = importlib.import_module("edge._fastpath")  # fails loudly when not built or broken

    assert fastpath.COMPILED is True, "edge.fastpath fell back to the pure twin"
    assert fastpath.LRUCache is ext.LRUCache
    assert fastpath.cache_key is ext.cache_key
    assert fastpath.canonical is ext.canonical
    assert fastpath.EXCLUDED_FIELDS == pure.EXCLUDED_FIELDS


def test_env_var_selects_the_twin() -> None:
    code = (
        "import edge.fastpath as f, edge._fastpath_py as p; "
        "print(f.COMPILED, f.LRUCache is p.LRUCache, f.canonical is p.canonical)"
    )
    env = dict(os.environ, EDGE_NO_EXTENSIONS="yes")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=60,
    )
    assert out.stdout.split() == ["False", "True", "True"]


# ------------------------------------------------------------------------ canonical form


def test_canonical_bytes_exact(impl: types.ModuleType) -> None:
    body = {
        "model": "m",
        "n": 1,
        "t": 0.5,
        "b": True,
        "x": None,
        "l": [1, "é"],
        "stream": True,
        "user": "u",
        "stream_options": {"include_usage": True},
    }
    assert impl.canonical(body) == b"{s1:bTs1:l[i1;s2:\xc3\xa9]s5:models1:ms1:ni1;s1:tf0.5;s1:xN}"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (True, b"T"),
        (False, b"F"),
        (None, b"N"),
        (0, b"i0;"),
        (-17, b"i-17;"),
        (2**70, b"i1180591620717411303424;"),
        (-(2**63), b"i-9223372036854775808;"),
        (1.0, b"i1;"),
        (-0.0, b"i0;"),
        (1e16, b"i10000000000000000;"),
        (1e300, b"i" + str(int(1e300)).encode() + b";"),
        (0.1, b"f0.1;"),
        (-2.5e-300, b"f-2.5e-300;"),
        (float("inf"), b"finf;"),
        (float("-inf"), b"f-inf;"),
        (float("nan"), b"fnan;"),
        ("", b"s0:"),
        ("\ud800", b"s3:\xed\xa0\x80"),
        ("€", b"s3:\xe2\x82\xac"),
        ([], b"[]"),
        ((1, [2]), b"[i1;[i2;]]"),
        ({}, b"{}"),
        ({"user": 1}, b"{s4:useri1;}"),  # only top-level fields are excluded
    ],
)
def test_canonical_scalars(impl: types.ModuleType, value: Any, encoded: bytes) -> None:
    assert impl.canonical({"v": value}) == b"{s1:v" + encoded + b"}"


class Colour(enum.IntEnum):
    RED = 3


class Mode(enum.StrEnum):
    FAST = "fast"


class Temp(float):
    def __repr__(self) -> str:
        return "not a float"


class Text(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"wrong"


Point = namedtuple("Point", "x y")


def test_subclasses_are_encoded_as_their_base(impl: types.ModuleType) -> None:
    plain = {"a": 3, "b": "fast", "c": 0.25, "d": [1, 2], "e": {"k": "v"}, "f": Text("t")}
    fancy = {
        "a": Colour.RED,
        "b": Mode.FAST,
        "c": Temp(0.25),
        "d": Point(1, 2),
        "e": OrderedDict(k="v"),
        "f": Text("t"),
    }
    dd: defaultdict[str, Any] = defaultdict(list, plain)
    assert impl.canonical(fancy) == impl.canonical(plain) == pure.canonical(plain)
    assert impl.canonical(dd) == impl.canonical(plain)
    assert impl.canonical({Text("key"): 1}) == impl.canonical({"key": 1})
    assert b"wrong" not in impl.canonical(plain)


def test_top_level_accepts_any_mapping(impl: types.ModuleType) -> None:
    body = {"model": "m", "user": "u"}
    assert impl.canonical(types.MappingProxyType(body)) == impl.canonical(body)


@pytest.mark.parametrize(
    "body",
    [
        {"a": {1, 2}},
        {"a": b"bytes"},
        {"a": object()},
        {"a": 1j},
        {"a": Decimal("1.5")},
        {"a": [1, {"b": bytearray(b"x")}]},
        {"a": types.MappingProxyType({"b": 1})},  # nested mappings must be dicts
        {1: "non-str key"},
        {"a": {("t",): 1}},
        {f"k{i}": i for i in range(40)} | {None: 1},  # the large-dict path too
    ],
)
def test_unsupported_types_raise(impl: types.ModuleType, body: dict[Any, Any]) -> None:
    with pytest.raises(TypeError):
        impl.canonical(body)
    with pytest.raises(TypeError):
        impl.cache_key(body, "s")


def test_type_error_names_the_type(impl: types.ModuleType) -> None:
    with pytest.raises(TypeError, match="set"):
        impl.canonical({"a": {1}})
    with pytest.raises(TypeError, match="list"):
        impl.canonical([("a", 1)])
    with pytest.raises(TypeError, match="int"):
        impl.canonical({"a": {2: "x"}})


def test_depth_limit(impl: types.ModuleType) -> None:
    def dicts(levels: int) -> dict[str, Any]:
        value: Any = 1
        for _ in range(levels):
            value = {"a": value}
        return value  # type: ignore[no-any-return]

    def lists(levels: int) -> dict[str, Any]:
        value: Any = 1
        for _ in range(levels - 1):  # the body dict is the first level
            value = [value]
        return {"a": value}

    for build in (dicts, lists):
        assert impl.canonical(build(impl.MAX_DEPTH)).count(b"i1;") == 1
        with pytest.raises(ValueError, match="deeper"):
            impl.canonical(build(impl.MAX_DEPTH + 1))



def test_depth_limit_is_the_schemas(impl: types.ModuleType) -> None:
    """One limit: a body the schema accepts is never too deep to key, and the next level is
    refused by both, in either implementation (the body object counts as level 1)."""
    assert impl.MAX_DEPTH == schema.MAX_DEPTH

    def raw(levels: int) -> bytes:
        return b'{"model": "m", "a": ' + b"[" * (levels - 1) + b"1" + b"]" * (levels - 1) + b"}"

    body = schema.parse_object(raw(impl.MAX_DEPTH))
    assert impl.canonical(body).count(b"i1;") == 1
    with pytest.raises(BadRequest, match=f"deeper than {impl.MAX_DEPTH} levels"):
        schema.parse_object(raw(impl.MAX_DEPTH + 1))

def test_large_dicts_and_mixed_width_keys_sort_like_python(impl: types.ModuleType) -> None:
    keys = [f"k{i}" for i in range(100)] + ["é", "ĕ", "\U0001f600", "a", "", "\ud800", "Z"]
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    body = {key: i for i, key in enumerate(shuffled)}
    small = {key: i for i, key in enumerate(shuffled[-8:])}
    assert impl.canonical(body) == pure.canonical(dict(sorted(body.items())))
    assert impl.canonical(small) == pure.canonical(dict(sorted(small.items())))


def test_cache_key_definition(impl: types.ModuleType) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    for scope in ("global", "tenant-1", "é\ud800", "a|b"):
        key = impl.cache_key(body, scope)
        assert type(key) is int
        assert 0 <= key < 2**128
        expected = xxhash.xxh3_128_intdigest(
            pure.canonical(body) + b"|" + scope.encode("utf-8", "surrogatepass")
        )
        assert key == expected


# ------------------------------------------------------------------------- properties

_TEXT = st.text(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=12)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.sampled_from([0.0, -0.0, 1.0, 0.7, 1e16, 1e300, 2.0**63, -(2.0**63)])
    | _TEXT
)
JSON = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(_TEXT, children, max_size=5)
    ),
    max_leaves=12,
)
BODIES = st.dictionaries(_TEXT, JSON, max_size=6)
SMALL_JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_TEXT, children, max_size=3),
    max_leaves=6,
)
SMALL_BODIES = st.dictionaries(_TEXT, SMALL_JSON, max_size=4)

ANSWER_FIELDS = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "tools",
    "tool_choice",
    "response_format",
    "seed",
    "stop",
    "n",
]
BASE_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "temperature": 0.7,
    "max_tokens": 64,
}


def shuffled(value: Any, rnd: random.Random) -> Any:
    """The same value with every dict's insertion order shuffled."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


def normal(value: Any, top: bool = False) -> Any:
    """What the canonical form is meant to preserve: the value up to the documented equalities."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return ("float", repr(value))
    if isinstance(value, list | tuple):
        return [normal(v) for v in value]
    return {k: normal(v) for k, v in value.items() if not (top and k in pure.EXCLUDED_FIELDS)}


def decode(data: bytes) -> Any:
    """Parse canonical bytes back; succeeding on exactly the whole input proves injectivity."""

    def value(i: int) -> tuple[Any, int]:
        tag = data[i : i + 1]
        if tag in (b"T", b"F", b"N"):
            return {b"T": True, b"F": False, b"N": None}[tag], i + 1
        if tag in (b"i", b"f"):
            end = data.index(b";", i)
            text = data[i + 1 : end].decode("ascii")
            return (int(text) if tag == b"i" else ("float", text)), end + 1
        if tag == b"s":
            colon = data.index(b":", i)
            length = int(data[i + 1 : colon])
            start = colon + 1
            return data[start : start + length].decode("utf-8", "surrogatepass"), start + length
        if tag == b"[":
            items, i = [], i + 1
            while data[i : i + 1] != b"]":
                item, i = value(i)
                items.append(item)
            return items, i + 1
        if tag == b"{":
            obj, i = {}, i + 1
            last = None
            while data[i : i + 1] != b"}":
                key, i = value(i)
                assert isinstance(key, str)
                assert last is None or key > last, "keys not sorted"
                obj[key], i = value(i)
                last = key
            return obj, i + 1
        raise AssertionError(f"bad tag {tag!r} at {i}")

    result, end = value(0)
    assert end == len(data), "trailing bytes"
    return result


@settings(max_examples=100, deadline=None)
@given(body=BODIES)
def test_twins_agree_and_canonical_decodes(body: dict[str, Any]) -> None:
    expected = pure.canonical(body)
    assert decode(expected) == normal(body, top=True)
    for impl in both():
        assert impl.canonical(body) == expected
        assert impl.cache_key(body, "scope") == pure.cache_key(body, "scope")


@settings(max_examples=60, deadline=None)
@given(body=BODIES, seed=st.integers(0, 2**32 - 1))
def test_key_order_never_changes_the_key(body: dict[str, Any], seed: int) -> None:
    other = shuffled(body, random.Random(seed))
    for impl in both():
        assert impl.canonical(other) == impl.canonical(body)
        assert impl.cache_key(other, "s") == impl.cache_key(body, "s")


@settings(max_examples=100, deadline=None)
@given(number=st.integers(-(2**53), 2**53), where=st.sampled_from(["top", "list", "dict"]))
def test_int_and_integral_float_give_the_same_key(number: int, where: str) -> None:
    def place(v: Any) -> dict[str, Any]:
        return {"top": {"n": v}, "list": {"stop": [v]}, "dict": {"tools": {"x": v}}}[where]

    for impl in both():
        assert impl.cache_key(place(number), "s") == impl.cache_key(place(float(number)), "s")


@settings(max_examples=60, deadline=None)
@given(
    body=SMALL_BODIES,
    stream=SMALL_JSON,
    stream_options=SMALL_JSON,
    user=SMALL_JSON,
    present=st.sets(st.sampled_from(sorted(pure.EXCLUDED_FIELDS))),
)
def test_excluded_fields_do_not_change_the_key(
    body: dict[str, Any], stream: Any, stream_options: Any, user: Any, present: set[str]
) -> None:
    base = {k: v for k, v in body.items() if k not in pure.EXCLUDED_FIELDS}
    extra = {"stream": stream, "stream_options": stream_options, "user": user}
    with_extra = base | {k: extra[k] for k in present}
    for impl in both():
        assert impl.cache_key(with_extra, "s") == impl.cache_key(base, "s")


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(sorted(pure.EXCLUDED_FIELDS)), value=SMALL_JSON)
def test_nested_excluded_names_do_change_the_key(field: str, value: Any) -> None:
    with_field = {"metadata": {field: value}, "messages": [{"role": "user", field: value}]}
    without = {"metadata": {}, "messages": [{"role": "user"}]}
    for impl in both():
        assert impl.cache_key(with_field, "s") != impl.cache_key(without, "s")


@settings(max_examples=100, deadline=None)
@given(
    field=st.sampled_from(ANSWER_FIELDS) | _TEXT.filter(lambda k: k not in pure.EXCLUDED_FIELDS),
    value=SMALL_JSON,
    other=SMALL_JSON,
)
def test_answer_changing_fields_change_the_key(field: str, value: Any, other: Any) -> None:
    with_value = BASE_REQUEST | {field: value}
    with_other = BASE_REQUEST | {field: other}
    without = {k: v for k, v in BASE_REQUEST.items() if k != field}
    for impl in both():
        assert impl.cache_key(with_value, "s") != impl.cache_key(without, "s")
        if normal(value) != normal(other):
            assert impl.cache_key(with_value, "s") != impl.cache_key(with_other, "s")


@settings(max_examples=50, deadline=None)
@given(body=SMALL_BODIES, scope=_TEXT, other=_TEXT)
def test_scope_changes_the_key(body: dict[str, Any], scope: str, other: str) -> None:
    assume(scope != other)
    for impl in both():
        assert impl.cache_key(body, scope) != impl.cache_key(body, other)


# ---------------------------------------------------------------------------- LRUCache


class LRUModel(RuleBasedStateMachine):
    """Drives one implementation's LRUCache beside a dict-plus-list reference model."""

    KEYS = st.sampled_from([f"k{i}" for i in range(8)])

    module: types.ModuleType  # set by machine_for

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.entries: dict[str, tuple[int, int, float]] = {}  # key -> (value, size, expires_at)
        self.order: list[str] = []  # least recently used first
        self.next_value = 0

    @initialize(max_entries=st.integers(1, 5), max_bytes=st.integers(0, 40))
    def make(self, max_entries: int, max_bytes: int) -> None:
        self.cache = self.module.LRUCache(max_entries, max_bytes)
        self.max_entries, self.max_bytes = max_entries, max_bytes

    def _drop(self, key: str) -> None:
        del self.entries[key]
        self.order.remove(key)

    @rule(key=KEYS, size=st.integers(0, 50), ttl=st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]))
    def put(self, key: str, size: int, ttl: float) -> None:
        self.next_value += 1
        stored = self.cache.put(key, self.next_value, size, self.now + ttl)
        if key in self.entries:
            self._drop(key)
        assert stored == (size <= self.max_bytes)
        if not stored:
            return
        self.entries[key] = (self.next_value, size, self.now + ttl)
        self.order.append(key)
        while len(self.order) > self.max_entries or self._bytes() > self.max_bytes:
            self._drop(self.order[0])

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        got = self.cache.get(key, self.now)
        entry = self.entries.get(key)
        if entry is None or entry[2] <= self.now:
            if entry is not None:
                self._drop(key)
            assert got is None
        else:
            self.order.remove(key)
            self.order.append(key)
            assert got == entry[0]

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert self.cache.delete(key) == (key in self.entries)
        if key in self.entries:
            self._drop(key)

    @rule(limit=st.integers(0, 10))
    def sweep(self, limit: int) -> None:
        expired = {k for k, (_, _, expires_at) in self.entries.items() if expires_at <= self.now}
        removed = self.cache.sweep(self.now, limit)
        gone = {k for k in self.entries if k not in self.cache}
        assert gone <= expired, "sweep removed a live entry"
        assert removed == len(gone) <= limit
        if limit >= len(self.entries):
            assert gone == expired, "a full sweep left expired entries"
        for key in gone:
            self._drop(key)

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.entries.clear()
        self.order.clear()

    def _bytes(self) -> int:
        return sum(size for _, size, _ in self.entries.values())

    @invariant()
    def matches_model(self) -> None:
        assert len(self.cache) == len(self.entries) <= self.max_entries
        assert self.cache.bytes == self._bytes() <= self.max_bytes
        for i in range(8):
            assert (f"k{i}" in self.cache) == (f"k{i}" in self.entries)


def machine_for(module: types.ModuleType) -> type[LRUModel]:
    return type(f"LRUModelOf_{module.__name__}", (LRUModel,), {"module": module})


def test_lru_state_machine(impl: types.ModuleType) -> None:
    run_state_machine_as_test(
        machine_for(impl),
        settings=settings(max_examples=200, stateful_step_count=30, deadline=None),
    )


def test_lru_properties(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(10, 100)
    assert (cache.max_entries, cache.max_bytes) == (10, 100)
    assert (cache.bytes, len(cache)) == (0, 0)


def test_oversized_entry_rejected(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(4, 100)
    assert cache.put("a", "A", 60, 10.0) is True
    assert cache.put("big", "B", 101, 10.0) is False
    assert "big" not in cache
    assert cache.bytes == 60
    # Replacing an entry with one that cannot fit drops the stale one.
    assert cache.put("a", "A2", 101, 10.0) is False
    assert "a" not in cache
    assert cache.bytes == 0
    assert cache.put("edge", "E", 100, 10.0) is True  # exactly max_bytes fits


def test_replace_adjusts_bytes(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(4, 100)
    cache.put("a", "A", 10, 10.0)
    cache.put("b", "B", 20, 10.0)
    assert cache.put("a", "A2", 4, 10.0) is True
    assert (len(cache), cache.bytes) == (2, 24)
    assert cache.get("a", 0.0) == "A2"
    cache.put("b", "B2", 96, 10.0)  # exactly at the bound: nothing to evict
    assert (len(cache), cache.bytes) == (2, 100)
    cache.put("b", "B3", 97, 10.0)  # past the bound: evicts the LRU "a"
    assert (len(cache), cache.bytes, "a" in cache) == (1, 97, False)
    assert cache.get("b", 0.0) == "B3"


def test_entry_fields_equality_and_answer(impl: types.ModuleType) -> None:
    entry = impl.Entry(b'{"id":"x","n":[1]}', "mock", "gpt-4o", 0.25)
    assert (entry.body, entry.provider, entry.model, entry.cost_usd) == (
        b'{"id":"x","n":[1]}', "mock", "gpt-4o", 0.25)
    assert entry == impl.Entry(b'{"id":"x","n":[1]}', "mock", "gpt-4o", 0.25)
    assert entry != impl.Entry(b'{"id":"x","n":[1]}', "mock", "gpt-4o", 0.5)
    assert entry != impl.Entry(b'{"id":"y"}', "mock", "gpt-4o", 0.25)
    assert hash(entry) == hash(impl.Entry(b'{"id":"x","n":[1]}', "mock", "gpt-4o", 0.25))
    answer = entry.answer()
    answer["n"].append(2)  # a fresh dict each time: changing one leaves the entry alone
    assert entry.answer() == {"id": "x", "n": [1]}
    with pytest.raises(AttributeError):
        entry.body = b"{}"
    assert "gpt-4o" in repr(entry)


def test_compiled_entry_is_small_and_untracked() -> None:
    """What it is compiled for: 48 bytes, no GC header, the cost as a C double."""
    requires_compiled()
    entry = compiled.Entry(b"{}", "mock", "gpt-4o", 0.25)
    assert sys.getsizeof(entry) == 48
    assert not gc.is_tracked(entry)
    with pytest.raises(TypeError):
        compiled.Entry(bytearray(b"{}"), "mock", "gpt-4o", 0.25)


def test_lru_order_on_eviction(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(3, 1000)
    for key in "abc":
        cache.put(key, key.upper(), 1, 10.0)
    assert cache.get("a", 0.0) == "A"  # b is now the least recently used
    cache.put("d", "D", 1, 10.0)
    assert [k for k in "abcd" if k in cache] == ["a", "c", "d"]
    cache.put("c", "C2", 1, 10.0)  # replacing makes c the most recent: a goes next
    cache.put("e", "E", 1, 10.0)
    assert [k for k in "abcde" if k in cache] == ["c", "d", "e"]


def test_byte_bound_evicts_several(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(100, 10)
    for key in "abcde":
        cache.put(key, key, 2, 10.0)
    assert cache.put("big", "X", 9, 10.0) is True
    assert [k for k in "abcde" if k in cache] == []
    assert (len(cache), cache.bytes) == (1, 9)


def test_expired_get_is_a_miss_and_deletes(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(10, 100)
    cache.put("a", "A", 5, 2.0)
    assert "a" in cache
    assert cache.get("a", 1.999) == "A"
    assert cache.get("a", 2.0) is None  # expires_at <= now is expired
    assert "a" not in cache
    assert cache.bytes == 0
    assert cache.get("missing", 0.0) is None


def test_sweep_is_bounded_and_reaches_every_entry(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(1000, 10**6)
    for i in range(50):
        cache.put(f"live{i}", i, 1, 100.0)
    for i in range(5):  # the short-lived entries sit at the MRU end, far from the LRU end
        cache.put(f"short{i}", i, 1, 1.0)
    removed = []
    for _ in range(-(-55 // 10)):  # ceil(len / limit) calls cover the whole cache
        n = cache.sweep(5.0, 10)
        assert 0 <= n <= 10
        removed.append(n)
    assert sum(removed) == 5
    assert (len(cache), cache.bytes) == (50, 50)
    assert not any(f"short{i}" in cache for i in range(5))
    assert cache.sweep(5.0, 0) == 0


def test_sweep_cursor_survives_deletes_and_moves(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(100, 1000)
    for i in range(20):
        cache.put(f"k{i}", i, 1, 1.0 if i % 2 else 100.0)
    assert cache.sweep(5.0, 3) == 1  # examined k0..k2: k1 expired
    cache.delete("k3")  # the entry under the cursor goes away
    cache.get("k4", 0.0)  # the next one moves to the MRU end
    cache.put("k5", 5, 1, 1.0)  # and the one after is replaced
    assert cache.sweep(5.0, 1000) == 8  # k5 (replaced), k7, k9, ..., k19
    assert len(cache) == 10
    assert all((f"k{i}" in cache) == (i % 2 == 0 and i != 3) for i in range(20))


def test_sweep_cursor_steps_off_an_entry_moved_to_mru(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(10, 100)
    cache.put("a", "A", 1, 1.0)
    cache.put("b", "B", 1, 100.0)
    cache.put("c", "C", 1, 100.0)
    assert cache.sweep(0.0, 2) == 0  # examined a and b: the cursor is on c, the MRU entry
    assert cache.get("c", 0.0) == "C"  # c moves (to where it was): the cursor wraps round
    assert cache.sweep(5.0, 1) == 1  # so the next sweep starts at the LRU end, with a
    assert "a" not in cache


def test_clear_then_reuse(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(2, 100)
    for key in "abc":
        cache.put(key, key, 1, 10.0)
    cache.get("c", 0.0)
    cache.clear()
    assert (len(cache), cache.bytes) == (0, 0)
    assert cache.get("c", 0.0) is None
    cache.put("d", "D", 1, 10.0)
    assert cache.get("d", 0.0) == "D"
    assert cache.sweep(100.0) == 1


def test_bad_arguments(impl: types.ModuleType) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        impl.LRUCache(0, 10)
    with pytest.raises(ValueError, match="max_bytes"):
        impl.LRUCache(1, -1)
    cache = impl.LRUCache(1, 10)
    with pytest.raises(ValueError, match="size"):
        cache.put("a", 1, -1, 1.0)
    with pytest.raises(TypeError):
        cache.put("a", 1, 1.5, 1.0)
    with pytest.raises(TypeError):
        impl.LRUCache(1.0, 10)
    with pytest.raises(TypeError):
        cache.get(["unhashable"], 0.0)
    assert (len(cache), cache.bytes) == (0, 0)


class Value:
    """A cached value whose lifetime the tests can observe."""

    def __init__(self, on_free: Any = None) -> None:
        self.on_free = on_free

    def __del__(self) -> None:
        if self.on_free is not None:
            self.on_free()


def test_values_are_released(impl: types.ModuleType) -> None:
    cache = impl.LRUCache(2, 100)
    refs = []

    def tracked() -> Value:
        value = Value()
        refs.append(weakref.ref(value))
        return value

    for key in ("a", "b", "c", "d"):
        cache.put(key, tracked(), 1, 10.0 if key != "d" else 1.0)
    assert refs[0]() is None  # evicted
    assert refs[1]() is None  # evicted
    assert refs[2]() is not None
    cache.put("c", "replaced", 1, 10.0)
    assert refs[2]() is None
    assert cache.sweep(5.0) == 1
    assert refs[3]() is None
    cache.put("e", tracked(), 1, 10.0)
    cache.delete("e")
    assert refs[4]() is None
    cache.put("f", tracked(), 1, 10.0)
    cache.get("f", 20.0)  # expired on lookup
    assert refs[5]() is None
    cache.put("g", tracked(), 1, 10.0)
    cache.clear()
    assert refs[6]() is None
    cache.put("h", tracked(), 1, 10.0)
    del cache
    gc.collect()
    assert refs[7]() is None


def test_values_freed_during_operations_may_reenter(impl: types.ModuleType) -> None:
    """A value's finaliser that uses the cache must find it consistent, never crash it."""
    cache = impl.LRUCache(3, 10)

    def reenter() -> None:
        cache.put("side", "S", 1, 10.0)
        cache.get("k0", 0.0)
        cache.sweep(0.5)

    for i in range(12):
        cache.put(f"k{i}", Value(reenter), 3, 1.0 if i % 3 == 0 else 10.0)
        if i % 4 == 0:
            cache.delete(f"k{i - 1}")
        cache.sweep(2.0, 2)
    cache.clear()
    assert len(cache) <= 3
    assert cache.bytes <= 10
    for key in ("side", "k11"):
        cache.put(key, "x", 1, 10.0)
    assert cache.get("k11", 0.0) == "x"


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 6), st.integers(0, 12), st.integers(0, 4)),
        st.tuples(st.just("get"), st.integers(0, 6)),
        st.tuples(st.just("delete"), st.integers(0, 6)),
        st.tuples(st.just("sweep"), st.integers(0, 4)),
        st.tuples(st.just("advance"), st.integers(1, 3)),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(max_entries=st.integers(1, 6), max_bytes=st.integers(0, 30), ops=OPS)
def test_lru_twins_agree_step_by_step(max_entries: int, max_bytes: int, ops: list[Any]) -> None:
    """Including what the model cannot pin down: which expired entries a bounded sweep takes."""
    requires_compiled()
    caches = [module.LRUCache(max_entries, max_bytes) for module in both()]
    now = 0.0
    for op in ops:
        results = []
        for cache in caches:
            if op[0] == "put":
                results.append(cache.put(f"k{op[1]}", op[1], op[2], now + op[3]))
            elif op[0] == "get":
                results.append(cache.get(f"k{op[1]}", now))
            elif op[0] == "delete":
                results.append(cache.delete(f"k{op[1]}"))
            elif op[0] == "sweep":
                results.append(cache.sweep(now, op[1]))
            elif op[0] == "clear":
                results.append(cache.clear())
            results.append(
                (
                    len(cache),
                    cache.bytes,
                    [i for i in range(7) if f"k{i}" in cache],
                )
            )
        if op[0] == "advance":
            now += op[1]
        half = len(results) // 2
        assert results[:half] == results[half:], op


def test_head_check_counts_the_head_and_refuses_ambiguous_framing(impl: types.ModuleType) -> None:
    triples = [(b"Host", b"host", b"x"), (b"Content-Length", b"content-length", b"5")]
    # request line + each header with ": " and CRLF: 2 + (4 + 1 + 4) + (14 + 1 + 4)
    assert impl.head_check(b"/v", triples, 30) == impl.HEAD_OK
    assert impl.head_check(b"/v", triples, 29) == impl.HEAD_TOO_LARGE
    both = [*triples, (b"Transfer-Encoding", b"transfer-encoding", b"chunked")]
    assert impl.head_check(b"/v", both, 1000) == impl.HEAD_AMBIGUOUS_FRAMING
    pairs = [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")]
    assert impl.head_check(b"/v", pairs, 1000) == impl.HEAD_AMBIGUOUS_FRAMING
    assert impl.head_check(b"/v", [], 1) == impl.HEAD_TOO_LARGE
    assert impl.head_check(b"/v", [], 2) == impl.HEAD_OK
