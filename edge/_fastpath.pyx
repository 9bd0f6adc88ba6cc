# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled hot path: the request key (canonical form + xxh3-128), the L1 LRU, routing scores,
server-sent events (parse and frame).

Same API and byte-identical output as `edge._fastpath_py`, which is the oracle and the
fallback. Speed comes from three things: the canonical form is written into one C buffer
(on the stack for ordinary requests) with exact-type fast paths and no Python-level calls
per item; xxhash is called once per key; the LRU's recency ring is raw pointers between
nodes owned by a dict, so get/put are a dict probe plus pointer surgery and create no
reference cycles for the garbage collector to chase.

One module for four ideas, on purpose (docs/ARCHITECTURE.md, "The fast path"): one extension
to build and import, and `rank` and the helpers are cdef calls across the parts, which
separate modules would turn into shared .pxd declarations and C-API indirections. The parts
follow in order: key, LRU, routing scores, SSE.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.math cimport floor, isfinite
from libc.string cimport memcmp, memcpy, memset, strlen

from collections.abc import Mapping

import orjson
import xxhash

cdef extern from "Python.h":
    # Declared here rather than cimported so the exception specs say exactly what we rely on.
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size)  # NULL + error on surrogates
    object PyUnicode_AsEncodedString(object o, const char* encoding, const char* errors)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    object PyBytes_FromStringAndSize(const char* s, Py_ssize_t n)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    object PyLong_FromDouble(double d)
    double PyFloat_AS_DOUBLE(object o)
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype) except NULL
    int Py_DTSF_ADD_DOT_0
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    bint PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    Py_ssize_t PyDict_GET_SIZE(object d)
    int PyUnicode_KIND(PyObject* o)
    int PyUnicode_1BYTE_KIND
    void* _ucs_data "PyUnicode_DATA"(PyObject* o)
    Py_ssize_t _ucs_len "PyUnicode_GET_LENGTH"(PyObject* o)
    int _ucs_compare "PyUnicode_Compare"(PyObject* a, PyObject* b)
    void _incref "Py_INCREF"(PyObject* o)
    void _decref "Py_DECREF"(PyObject* o)
    int PyDict_DelItem(object d, object key) except -1
    object PyDict_Keys(object d)
    int PyList_Sort(object l) except -1
    Py_ssize_t PyList_GET_SIZE(object l)
    PyObject* PyList_GET_ITEM(object l, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object t)
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)
    void PyErr_Clear()
    object PyNumber_Index(object o)

__all__ = [
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "DONE",
    "EXCLUDED_FIELDS",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "PROBE_RETRY_S",
    "STRATEGY_COST",
    "STRATEGY_FAILOVER",
    "STRATEGY_LATENCY",
    "STRATEGY_LEAST_BUSY",
    "STRATEGY_MODEL",
    "Breaker",
    "DeploymentStats",
    "LRUCache",
    "SSEError",
    "SSEParser",
    "Entry",
    "cache_key",
    "canonical",
    "frame",
    "frame_event",
    "rank",
    "retry_after_all",
]

#: Top-level request fields that never change the answer, so they stay out of the key.
EXCLUDED_FIELDS = frozenset({"stream", "stream_options", "user"})

#: Deepest request nesting edge accepts (body = level 1); edge.schema reads it. See the twin.
MAX_DEPTH = 64

cdef int _MAX_DEPTH = MAX_DEPTH
cdef frozenset _EXCLUDED = EXCLUDED_FIELDS
cdef object _digest = xxhash.xxh3_128_intdigest
cdef object _int_repr = int.__repr__
cdef object _Mapping = Mapping


cdef inline long long _as_count(object n) except? -1:
    """An int argument, refusing floats as operator.index does in the twin."""
    if type(n) is int:
        return n
    return PyNumber_Index(n)

cdef enum:
    _STACK_BYTES = 4096  # ordinary requests (a few KB) are encoded without touching the heap
    _SMALL_DICT = 32  # dicts up to this size are sorted in C on the stack
    _FLOAT_SLOTS = 256  # direct-mapped memo of float reprs (see _put_float)
    _FLOAT_TEXT = 32  # longest float repr is 24 characters ("-2.2250738585072014e-308")

# repr() of a float runs the shortest-round-trip dtoa, the costliest step of a typical key
# (temperature, top_p). Requests repeat a handful of values, so keep the text of recent
# ones in a direct-mapped table keyed by the double's bit pattern: equal finite non-integral
# doubles have equal bits and equal reprs (only 0.0/-0.0 differ in bits while equal, and
# integral values never get here). The all-ones pattern is a NaN, which is never stored, so
# it marks an empty slot. A collision just overwrites the slot.
cdef unsigned long long _float_bits[_FLOAT_SLOTS]
cdef char _float_text[_FLOAT_SLOTS][_FLOAT_TEXT]
cdef unsigned char _float_len[_FLOAT_SLOTS]
memset(_float_bits, 0xFF, sizeof(_float_bits))


# ---------------------------------------------------------------------------------------
# The output buffer
# ---------------------------------------------------------------------------------------

cdef struct _Buf:
    char* data
    Py_ssize_t length
    Py_ssize_t capacity
    bint on_heap


cdef int _grow(_Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t needed = b.length + extra
    cdef Py_ssize_t capacity = b.capacity * 2
    cdef char* data
    if capacity < needed:
        capacity = needed
    if b.on_heap:
        data = <char*>PyMem_Realloc(b.data, <size_t>capacity)
        if data == NULL:
            raise MemoryError()
    else:
        data = <char*>PyMem_Malloc(<size_t>capacity)
        if data == NULL:
            raise MemoryError()
        memcpy(data, b.data, <size_t>b.length)
        b.on_heap = True
    b.data = data
    b.capacity = capacity
    return 0


cdef inline int _put(_Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.length + n > b.capacity:
        _grow(b, n)
    memcpy(b.data + b.length, s, <size_t>n)
    b.length += n
    return 0


cdef inline int _put_char(_Buf* b, char c) except -1:
    if b.length + 1 > b.capacity:
        _grow(b, 1)
    b.data[b.length] = c
    b.length += 1
    return 0


cdef inline int _put_decimal(_Buf* b, long long v) except -1:
    """Append `v` in decimal, as str(int) would write it."""
    cdef char digits[24]
    cdef int i = 24
    cdef unsigned long long u
    if v < 0:
        u = <unsigned long long>0 - <unsigned long long>v  # also right for LLONG_MIN
    else:
        u = <unsigned long long>v
    while True:
        i -= 1
        digits[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        digits[i] = b'-'
    return _put(b, &digits[i], 24 - i)


cdef inline int _put_ascii_str(_Buf* b, str s) except -1:
    """Append an ASCII-only str produced by int/float repr."""
    return _put(b, <const char*>PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s))


# ---------------------------------------------------------------------------------------
# Canonical form
# ---------------------------------------------------------------------------------------

cdef int _put_str(_Buf* b, object s) except -1:
    """Append s<utf-8 length>:<utf-8 bytes>; `s` is a str or str subclass."""
    cdef const char* data
    cdef Py_ssize_t n
    cdef object encoded
    if type(s) is str:
        if PyUnicode_IS_ASCII(s):
            data = <const char*>PyUnicode_DATA(s)
            n = PyUnicode_GET_LENGTH(s)
        else:
            data = PyUnicode_AsUTF8AndSize(s, &n)
            if data == NULL:
                # Lone surrogates: strict UTF-8 refuses them, surrogatepass keeps them.
                PyErr_Clear()
                encoded = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass")
                data = PyBytes_AS_STRING(encoded)
                n = PyBytes_GET_SIZE(encoded)
                return _put_str_bytes(b, data, n)
    else:
        # A subclass is encoded as its base value, as str.encode(s, ...) does in the twin.
        encoded = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass")
        data = PyBytes_AS_STRING(encoded)
        n = PyBytes_GET_SIZE(encoded)
    return _put_str_bytes(b, data, n)


cdef inline int _put_str_bytes(_Buf* b, const char* data, Py_ssize_t n) except -1:
    if b.length + n + 24 > b.capacity:
        _grow(b, n + 24)
    b.data[b.length] = b's'
    b.length += 1
    _put_decimal(b, n)
    b.data[b.length] = b':'
    b.length += 1
    memcpy(b.data + b.length, data, <size_t>n)
    b.length += n
    return 0


cdef int _put_int(_Buf* b, object x) except -1:
    """Append i<decimal>; for an int or int subclass (never bool)."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(x, &overflow)
    _put_char(b, b'i')
    if overflow:
        _put_ascii_str(b, _int_repr(x))
    else:
        _put_decimal(b, v)
    return _put_char(b, b';')


cdef int _put_float(_Buf* b, object x) except -1:
    """Append a float: integral values exactly as the equal int, others as f<repr>;."""
    cdef double d = PyFloat_AS_DOUBLE(x)
    cdef unsigned long long bits
    cdef unsigned int slot
    cdef char* text
    cdef Py_ssize_t n
    if not isfinite(d):
        text = PyOS_double_to_string(d, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            _put_char(b, b'f')
            _put(b, text, <Py_ssize_t>strlen(text))
        finally:
            PyMem_Free(text)
        return _put_char(b, b';')
    if floor(d) == d:
        _put_char(b, b'i')
        if -9.2e18 < d < 9.2e18:
            _put_decimal(b, <long long>d)
        else:
            _put_ascii_str(b, _int_repr(PyLong_FromDouble(d)))
        return _put_char(b, b';')
    memcpy(&bits, &d, sizeof(bits))
    slot = <unsigned int>((bits * 0x9E3779B97F4A7C15ULL) >> 56)  # Fibonacci hash to 8 bits
    _put_char(b, b'f')
    if _float_bits[slot] == bits:
        _put(b, _float_text[slot], _float_len[slot])
        return _put_char(b, b';')
    # The same call float.__repr__ makes, so the text is identical to repr(x).
    text = PyOS_double_to_string(d, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        n = <Py_ssize_t>strlen(text)
        _put(b, text, n)
        if n < _FLOAT_TEXT:
            memcpy(_float_text[slot], text, <size_t>n)
            _float_len[slot] = <unsigned char>n
            _float_bits[slot] = bits
    finally:
        PyMem_Free(text)
    return _put_char(b, b';')


cdef int _too_deep() except -1:
    raise ValueError(f"request nests deeper than {_MAX_DEPTH} levels")


cdef int _check_keys(list keys) except -1:
    cdef Py_ssize_t i
    cdef object key
    for i in range(PyList_GET_SIZE(keys)):
        key = <object>PyList_GET_ITEM(keys, i)
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"object keys must be str, not {type(key).__name__}")
    return 0


cdef inline int _compare_exact_str(PyObject* a, PyObject* b) noexcept:
    """Python's str order (code points) for two exact strs; never raises for exact strs."""
    cdef Py_ssize_t la, lb
    cdef int r
    if PyUnicode_KIND(a) == PyUnicode_1BYTE_KIND and PyUnicode_KIND(b) == PyUnicode_1BYTE_KIND:
        la = _ucs_len(a)
        lb = _ucs_len(b)
        r = memcmp(_ucs_data(a), _ucs_data(b), <size_t>(la if la < lb else lb))
        if r != 0:
            return r
        return (la > lb) - (la < lb)
    return _ucs_compare(a, b)


cdef int _put_small_dict(_Buf* b, bint top, int depth, PyObject** keys, PyObject** values,
                         Py_ssize_t n) except -1:
    """Sort (key, value) pairs with an insertion sort and encode them.

    The caller has collected borrowed pointers from the dict; they are owned here for the
    duration, as encoding a subclass value may run user code that mutates the dict.
    """
    cdef Py_ssize_t i, j
    cdef PyObject* key
    cdef PyObject* value
    for i in range(n):
        _incref(keys[i])
        _incref(values[i])
    try:
        for i in range(1, n):
            key = keys[i]
            value = values[i]
            j = i - 1
            while j >= 0 and _compare_exact_str(keys[j], key) > 0:
                keys[j + 1] = keys[j]
                values[j + 1] = values[j]
                j -= 1
            keys[j + 1] = key
            values[j + 1] = value
        _put_char(b, b'{')
        for i in range(n):
            if top and <object>keys[i] in _EXCLUDED:
                continue
            _put_str(b, <object>keys[i])
            _put_value(b, <object>values[i], depth)
        return _put_char(b, b'}')
    finally:
        for i in range(n):
            _decref(keys[i])
            _decref(values[i])


cdef int _put_dict(_Buf* b, dict d, bint top, int depth) except -1:
    cdef PyObject* small_keys[_SMALL_DICT]
    cdef PyObject* small_values[_SMALL_DICT]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t n = 0
    cdef PyObject* k
    cdef PyObject* v
    cdef list keys
    cdef Py_ssize_t i
    cdef object key
    cdef object value
    cdef PyObject* item
    if depth > _MAX_DEPTH:
        _too_deep()
    if PyDict_GET_SIZE(d) <= _SMALL_DICT:
        # The usual case: a handful of exact-str keys, sorted without building a list.
        while PyDict_Next(d, &pos, &k, &v):
            if type(<object>k) is not str:
                break
            small_keys[n] = k
            small_values[n] = v
            n += 1
        else:
            return _put_small_dict(b, top, depth, small_keys, small_values, n)
    keys = <list>PyDict_Keys(d)
    _check_keys(keys)
    PyList_Sort(keys)
    _put_char(b, b'{')
    for i in range(PyList_GET_SIZE(keys)):
        key = <object>PyList_GET_ITEM(keys, i)
        if top and key in _EXCLUDED:
            continue
        item = PyDict_GetItemWithError(d, key)
        if item == NULL:
            raise RuntimeError("dictionary changed size during canonicalisation")
        value = <object>item  # a strong reference: encoding a subclass may run user code
        _put_str(b, key)
        _put_value(b, value, depth)
    return _put_char(b, b'}')


cdef int _put_mapping(_Buf* b, object m, bint top, int depth) except -1:
    """Dict subclasses and other Mappings: the same Python-level steps as the twin."""
    cdef object key
    if depth > _MAX_DEPTH:
        _too_deep()
    for key in m:
        if not isinstance(key, str):
            raise TypeError(f"object keys must be str, not {type(key).__name__}")
    _put_char(b, b'{')
    for key in sorted(m):
        if top and key in _EXCLUDED:
            continue
        _put_str(b, key)
        _put_value(b, m[key], depth)
    return _put_char(b, b'}')


cdef int _put_list(_Buf* b, list items, int depth) except -1:
    cdef Py_ssize_t i = 0
    cdef object item
    if depth + 1 > _MAX_DEPTH:
        _too_deep()
    _put_char(b, b'[')
    while i < PyList_GET_SIZE(items):  # re-read: encoding a subclass item may run user code
        item = <object>PyList_GET_ITEM(items, i)
        _put_value(b, item, depth + 1)
        i += 1
    return _put_char(b, b']')


cdef int _put_tuple(_Buf* b, tuple items, int depth) except -1:
    cdef Py_ssize_t i
    if depth + 1 > _MAX_DEPTH:
        _too_deep()
    _put_char(b, b'[')
    for i in range(PyTuple_GET_SIZE(items)):
        _put_value(b, <object>PyTuple_GET_ITEM(items, i), depth + 1)
    return _put_char(b, b']')


cdef int _put_value(_Buf* b, object x, int depth) except -1:
    cdef type t = type(x)
    cdef object item
    # Exact types first (what a parsed JSON body contains), most frequent first.
    if t is str:
        return _put_str(b, x)
    if t is dict:
        return _put_dict(b, <dict>x, False, depth + 1)
    if t is list:
        return _put_list(b, <list>x, depth)
    if t is int:
        return _put_int(b, x)
    if t is float:
        return _put_float(b, x)
    if x is None:
        return _put_char(b, b'N')
    if t is bool:
        return _put_char(b, b'T' if x is True else b'F')
    if t is tuple:
        return _put_tuple(b, <tuple>x, depth)
    # Subclasses, in the twin's order.
    if isinstance(x, str):
        return _put_str(b, x)
    if isinstance(x, int):  # bool cannot be subclassed, so this is never a bool
        return _put_int(b, x)
    if isinstance(x, float):
        return _put_float(b, x)
    if isinstance(x, dict):
        return _put_mapping(b, x, False, depth + 1)
    if isinstance(x, (list, tuple)):
        if depth + 1 > _MAX_DEPTH:
            _too_deep()
        _put_char(b, b'[')
        for item in x:
            _put_value(b, item, depth + 1)
        return _put_char(b, b']')
    raise TypeError(f"cannot use a value of type {t.__name__} in a cache key")


cdef int _put_body(_Buf* b, object body) except -1:
    if type(body) is dict:
        return _put_dict(b, <dict>body, True, 1)
    if isinstance(body, _Mapping):
        return _put_mapping(b, body, True, 1)
    raise TypeError(f"request body must be a mapping, not {type(body).__name__}")


def canonical(body):
    """canonical(body: Mapping[str, Any]) -> bytes

    Encode a request as a self-delimiting byte string that ignores key order.
    """
    cdef char stack[_STACK_BYTES]
    cdef _Buf b
    b.data = stack
    b.length = 0
    b.capacity = _STACK_BYTES
    b.on_heap = False
    try:
        _put_body(&b, body)
        return PyBytes_FromStringAndSize(b.data, b.length)
    finally:
        if b.on_heap:
            PyMem_Free(b.data)


def cache_key(body, scope):
    """cache_key(body: Mapping[str, Any], scope: str) -> int

    The xxh3-128 of canonical(body) + b"|" + scope as UTF-8, as an int (the twin says why).
    """
    cdef char stack[_STACK_BYTES]
    cdef _Buf b
    cdef object data
    cdef object encoded
    if not isinstance(scope, str):
        raise TypeError(f"scope must be str, not {type(scope).__name__}")
    b.data = stack
    b.length = 0
    b.capacity = _STACK_BYTES
    b.on_heap = False
    try:
        _put_body(&b, body)
        _put_char(&b, b'|')
        if type(scope) is str and PyUnicode_IS_ASCII(scope):
            _put(&b, <const char*>PyUnicode_DATA(scope), PyUnicode_GET_LENGTH(scope))
        else:
            encoded = PyUnicode_AsEncodedString(scope, "utf-8", "surrogatepass")
            _put(&b, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded))
        data = PyBytes_FromStringAndSize(b.data, b.length)
    finally:
        if b.on_heap:
            PyMem_Free(b.data)
    return _digest(data)


# ---------------------------------------------------------------------------------------
# L1 LRU
# ---------------------------------------------------------------------------------------

@cython.final
@cython.no_gc
cdef class Entry:
    """Entry(body: bytes, provider: str, model: str, cost_usd: float)

    A cached answer; the twin documents it. Untracked by the cyclic GC: its fields are a
    bytes, two str and a C double, which refer to nothing. Read-only, compared by value.
    """

    cdef readonly bytes body
    cdef readonly str provider
    cdef readonly str model
    cdef readonly double cost_usd

    def __init__(self, bytes body not None, str provider not None, str model not None,
                 double cost_usd):
        self.body = body
        self.provider = provider
        self.model = model
        self.cost_usd = cost_usd

    def answer(self):
        """The body parsed: a fresh dict each call (callers change it)."""
        return orjson.loads(self.body)

    def __eq__(self, other):
        cdef Entry o
        if type(other) is not Entry:
            return NotImplemented
        o = <Entry>other
        return (self.body == o.body and self.provider == o.provider
                and self.model == o.model and self.cost_usd == o.cost_usd)

    def __hash__(self):
        return hash((self.body, self.provider, self.model, self.cost_usd))

    def __repr__(self):
        return (f"Entry(body={self.body!r}, provider={self.provider!r}, "
                f"model={self.model!r}, cost_usd={self.cost_usd!r})")

    def __reduce__(self):
        return (Entry, (self.body, self.provider, self.model, self.cost_usd))


@cython.final
@cython.freelist(256)
@cython.no_gc
cdef class _Node:
    """One entry. `prev`/`next` are borrowed: the cache's dict owns every node.

    Not tracked by the cyclic GC, which saves its 16-byte header on each of up to 100k
    nodes: a node refers to its key and value only, and edge's values (cache entries:
    bytes, str, float) refer to nothing, so no cycle can run through one. A value that
    referred back to its cache would be a cycle the GC cannot see (a leak, never a crash).
    """
    cdef PyObject* prev
    cdef PyObject* next
    cdef object key
    cdef object value
    cdef long long size
    cdef double expires_at


@cython.final
cdef class LRUCache:
    """LRUCache(max_entries: int, max_bytes: int)

    The L1 cache: least-recently-used eviction under an entry bound and a byte bound,
    plus TTL. Entries live in a dict (key -> node) and in a circular doubly linked ring
    through a sentinel: root.next is the least recently used entry, root.prev the most
    recent. Every operation except sweep and clear is O(1).

    Sweep invariant: a cursor marks the next entry to examine and only moves towards the
    MRU end, wrapping round to the LRU end. sweep(now, limit) examines at most `limit`
    entries from the cursor, deletes the expired ones and leaves the cursor after the last
    one examined. An entry that leaves its place while under the cursor (deleted, evicted,
    moved to MRU even if it already was the MRU) first steps the cursor to the entry after
    it. So one call with
    limit >= len(cache) removes every expired entry, ceil(len / limit) calls without other
    traffic examine every entry, and each call costs O(limit).
    """

    cdef dict _map
    cdef _Node _root
    cdef PyObject* _cursor
    cdef long long _max_entries
    cdef long long _max_bytes
    cdef long long _bytes

    def __cinit__(self, max_entries, max_bytes):
        self._max_entries = _as_count(max_entries)
        self._max_bytes = _as_count(max_bytes)
        if self._max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {self._max_entries}")
        if self._max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {self._max_bytes}")
        self._map = {}
        self._root = _Node.__new__(_Node)
        self._root.prev = <PyObject*>self._root
        self._root.next = <PyObject*>self._root
        self._cursor = <PyObject*>self._root  # the root means "start at the LRU end"

    def get(self, key, double now):
        """get(key: str, now: float) -> object | None

        The live value for key, now the most recently used; None if missing or expired.
        """
        cdef PyObject* found = PyDict_GetItemWithError(self._map, key)
        cdef _Node node
        if found == NULL:
            return None
        node = <_Node>found
        if node.expires_at <= now:
            self._remove(node)
            return None
        self._unlink(node)  # even when already MRU: the cursor must step off it as in the twin
        self._append(node)
        return node.value

    def put(self, key, value, object size, double expires_at):
        """put(key: str, value: object, size: int, expires_at: float) -> bool

        Store value as the most recent entry, evicting LRU entries to fit the bounds. An
        entry bigger than max_bytes is not stored, any older entry for the key is removed
        (it would be stale), and the result is False.
        """
        cdef PyObject* found
        cdef _Node node
        cdef object old_value = None  # released last, once the cache is consistent again
        cdef long long nbytes = _as_count(size)
        if nbytes < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        found = PyDict_GetItemWithError(self._map, key)
        if found != NULL:
            node = <_Node>found
            if nbytes > self._max_bytes:
                self._remove(node)
                return False
            self._unlink(node)
            self._append(node)
            self._bytes += nbytes - node.size
            node.size = nbytes
            node.expires_at = expires_at
            old_value = node.value
            node.value = value
        else:
            if nbytes > self._max_bytes:
                return False
            node = _Node.__new__(_Node)
            node.key = key
            node.value = value
            node.size = nbytes
            node.expires_at = expires_at
            self._map[key] = node
            self._append(node)
            self._bytes += nbytes
        while len(self._map) > self._max_entries or self._bytes > self._max_bytes:
            self._remove(<_Node>self._root.next)
        return True

    def delete(self, key):
        """delete(key: str) -> bool

        Remove key; True if it was present (expired or not).
        """
        cdef PyObject* found = PyDict_GetItemWithError(self._map, key)
        if found == NULL:
            return False
        self._remove(<_Node>found)
        return True

    def sweep(self, double now, Py_ssize_t limit=1000):
        """sweep(now: float, limit: int = 1000) -> int

        Examine at most limit entries from the cursor and delete the expired ones; returns
        how many were deleted.
        """
        cdef Py_ssize_t examined
        cdef Py_ssize_t todo = min(limit, len(self._map))
        cdef Py_ssize_t removed = 0
        cdef PyObject* at
        cdef _Node node
        for examined in range(todo):
            at = self._cursor
            if at == <PyObject*>self._root:
                at = self._root.next
                if at == <PyObject*>self._root:
                    break  # emptied meanwhile by code run from a freed value
            node = <_Node>at
            self._cursor = node.next
            if node.expires_at <= now:
                self._remove(node)
                removed += 1
            # Let go of it before the cursor is read again: freeing its value may run code
            # that changes the cache, and must find the cursor already past this node.
            node = None
        return removed

    def clear(self):
        """clear() -> None

        Drop every entry.
        """
        cdef dict old = self._map
        self._map = {}
        self._root.prev = <PyObject*>self._root
        self._root.next = <PyObject*>self._root
        self._cursor = <PyObject*>self._root
        self._bytes = 0
        old.clear()  # values are released only now, with the cache already consistent

    def __len__(self):
        return len(self._map)

    def __contains__(self, key):
        """Presence regardless of TTL; unlike get(), not a use."""
        return key in self._map

    cdef inline void _append(self, _Node node) noexcept:
        cdef _Node last = <_Node>self._root.prev
        node.prev = <PyObject*>last
        node.next = <PyObject*>self._root
        last.next = <PyObject*>node
        self._root.prev = <PyObject*>node

    cdef inline void _unlink(self, _Node node) noexcept:
        if self._cursor == <PyObject*>node:
            self._cursor = node.next
        (<_Node>node.prev).next = node.next
        (<_Node>node.next).prev = node.prev
        node.prev = NULL
        node.next = NULL

    cdef int _remove(self, _Node node) except -1:
        # The caller's reference keeps node alive past the dict deletion, and the ring and
        # the byte count are already consistent if freeing the value runs arbitrary code.
        self._unlink(node)
        self._bytes -= node.size
        PyDict_DelItem(self._map, node.key)
        return 0

    @property
    def max_entries(self):
        return self._max_entries

    @property
    def max_bytes(self):
        return self._max_bytes

    @property
    def bytes(self):
        """Sum of the sizes of the stored entries."""
        return self._bytes


# ---------------------------------------------------------------------------------------
# Routing scores: circuit breakers, per-deployment stats, and the candidate order
# ---------------------------------------------------------------------------------------
#
# The same state machines and arithmetic as the twin, operation for operation, so the two
# agree to the last bit (see the twin for the theory of operation). `rank` runs once per
# request over a short list (a model's deployments plus fallbacks, rarely over ~16): it
# reads C fields of the final classes directly and insertion-sorts C structs on the stack.

from cpython.sequence cimport (
    PySequence_Fast,
    PySequence_Fast_GET_SIZE,
    PySequence_Fast_ITEMS,
)
from libc.math cimport INFINITY, NAN, isnan

STRATEGY_MODEL = 0
STRATEGY_FAILOVER = 1
STRATEGY_COST = 2
STRATEGY_LATENCY = 3
STRATEGY_LEAST_BUSY = 4

BREAKER_CLOSED = 0
BREAKER_OPEN = 1
BREAKER_HALF_OPEN = 2

#: Retry-After when the only thing in the way is a half-open probe still out.
PROBE_RETRY_S = 1.0

cdef enum:
    _MODEL = 0
    _FAILOVER = 1
    _COST = 2
    _LATENCY = 3
    _LEAST_BUSY = 4
    _CLOSED = 0
    _OPEN = 1
    _HALF_OPEN = 2
    _STACK_SLOTS = 32  # candidate lists longer than this sort on the heap

cdef double _PROBE_RETRY_S = PROBE_RETRY_S


@cython.final
cdef class Breaker:
    """Breaker(failures: int, cooldown_s: float)

    One provider's circuit breaker: CLOSED until `failures` consecutive failures open it;
    OPEN while now < opened_at + cooldown_s, then HALF_OPEN (by the clock alone), where one
    probe attempt may go through. Probe success closes it, probe failure re-opens it.

    Read-only attributes (C fields, so rank() reads them without a call): failures,
    cooldown_s, consecutive (failures since the last success), last_failure_at and
    opened_at (-inf until the first), probing (the half-open probe is out).
    """

    cdef readonly long long failures
    cdef readonly double cooldown_s
    cdef readonly long long consecutive
    cdef readonly double last_failure_at
    cdef readonly double opened_at
    cdef bint _open
    cdef readonly bint probing

    def __cinit__(self, failures, double cooldown_s):
        cdef long long n = _as_count(failures)
        if n < 1:
            raise ValueError(f"failures must be >= 1, got {n}")
        if not (isfinite(cooldown_s) and cooldown_s >= 0.0):
            raise ValueError(f"cooldown_s must be finite and >= 0, got {cooldown_s}")
        self.failures = n
        self.cooldown_s = cooldown_s
        self.consecutive = 0
        self.last_failure_at = -INFINITY
        self.opened_at = -INFINITY
        self._open = False
        self.probing = False

    cdef inline int _state(self, double now) noexcept:
        if not self._open:
            return _CLOSED
        if now < self.opened_at + self.cooldown_s:
            return _OPEN
        return _HALF_OPEN

    cdef inline bint _blocked(self, double now) noexcept:
        cdef int state = self._state(now)
        return state == _OPEN or (state == _HALF_OPEN and self.probing)

    def state(self, double now):
        """state(now: float) -> int

        BREAKER_CLOSED, BREAKER_OPEN or BREAKER_HALF_OPEN at time now.
        """
        return self._state(now)

    def blocked(self, double now):
        """blocked(now: float) -> bool

        True when no request may use the provider now: open, or its one probe is out.
        """
        return self._blocked(now)

    def acquire(self, double now):
        """acquire(now: float) -> bool

        Ask to make an attempt right now (closed, or take the half-open probe); False
        means skip this provider.
        """
        cdef int state = self._state(now)
        if state == _CLOSED:
            return True
        if state == _HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def success(self, double now):
        """success(now: float) -> None

        An attempt succeeded: close the circuit and forget the failures.
        """
        self._open = False
        self.consecutive = 0
        self.probing = False

    def failure(self, double now):
        """failure(now: float) -> None

        An attempt failed: count it; a failed probe, or the last straw, opens the circuit.
        """
        cdef int state = self._state(now)
        self.consecutive += 1
        self.last_failure_at = now
        self.probing = False
        if state == _HALF_OPEN or (state == _CLOSED and self.consecutive >= self.failures):
            self._open = True
            self.opened_at = now

    def release(self, double now):
        """release(now: float) -> None

        The probe was cancelled without an outcome: let another request probe.
        """
        self.probing = False

    def retry_after(self, double now):
        """retry_after(now: float) -> float

        Seconds until the circuit half-opens; 0.0 unless it is open.
        """
        if self._state(now) != _OPEN:
            return 0.0
        return self.opened_at + self.cooldown_s - now


cdef inline bint _valid_price(double price) noexcept:
    return isnan(price) or (isfinite(price) and price >= 0.0)


@cython.final
cdef class DeploymentStats:
    """DeploymentStats(input_per_mtok: float, output_per_mtok: float, alpha: float = 0.3)

    One deployment's prices (USD per million tokens, NaN if unknown), the exponentially
    weighted average of its time to first byte, and its attempts in flight (`begin` and
    `end` bracket each; `end` never goes below zero).

    Read-only attributes: input_per_mtok, output_per_mtok, alpha, ewma (seconds to first
    byte; NaN until the first sample), samples, inflight.
    """

    cdef readonly double input_per_mtok
    cdef readonly double output_per_mtok
    cdef readonly double alpha
    cdef readonly double ewma
    cdef readonly long long samples
    cdef readonly long long inflight

    def __cinit__(self, double input_per_mtok, double output_per_mtok, double alpha=0.3):
        if not _valid_price(input_per_mtok):
            raise ValueError(
                f"input_per_mtok must be finite and >= 0, or NaN if unknown; got {input_per_mtok}"
            )
        if not _valid_price(output_per_mtok):
            raise ValueError(
                f"output_per_mtok must be finite and >= 0, or NaN if unknown; got {output_per_mtok}"
            )
        if not (0.0 < alpha <= 1.0):
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.input_per_mtok = input_per_mtok
        self.output_per_mtok = output_per_mtok
        self.alpha = alpha
        self.ewma = NAN
        self.samples = 0
        self.inflight = 0

    def begin(self):
        """begin() -> None

        An attempt on this deployment started.
        """
        self.inflight += 1

    def end(self):
        """end() -> None

        An attempt that `begin` counted ended (answered, failed, cancelled, stream over).
        """
        if self.inflight > 0:
            self.inflight -= 1

    def observe(self, double ttfb_s):
        """observe(ttfb_s: float) -> None

        Fold one time-to-first-byte sample (seconds) into the average.
        """
        if not (isfinite(ttfb_s) and ttfb_s >= 0.0):
            raise ValueError(f"ttfb_s must be finite and >= 0, got {ttfb_s}")
        if self.samples == 0:
            self.ewma = ttfb_s
        else:
            self.ewma = self.alpha * ttfb_s + (1.0 - self.alpha) * self.ewma
        self.samples += 1

    cdef inline double _estimate(self, long long prompt_chars, long long max_tokens) noexcept:
        cdef double prompt = <double>prompt_chars / 4.0 * self.input_per_mtok
        return (prompt + <double>max_tokens * self.output_per_mtok) / 1e6

    def estimate(self, prompt_chars, max_tokens):
        """estimate(prompt_chars: int, max_tokens: int) -> float

        Worst-case USD for a request (prompt at ~4 characters a token, plus max_tokens);
        NaN when either price is unknown.
        """
        cdef long long chars = _as_count(prompt_chars)
        cdef long long tokens = _as_count(max_tokens)
        if chars < 0 or tokens < 0:
            raise ValueError("prompt_chars and max_tokens must be >= 0")
        return self._estimate(chars, tokens)


cdef struct _Slot:
    Py_ssize_t index
    int group
    double value


def rank(strategy, stats, breakers, double now, prompt_chars, max_tokens, double cooldown_s):
    """rank(strategy: int, stats: Sequence[DeploymentStats], breakers: Sequence[Breaker],
            now: float, prompt_chars: int, max_tokens: int, cooldown_s: float) -> list[int]

    The candidates to try, as indexes, best first; blocked ones left out. Ordered by a
    (group, value) pair per strategy, ties in index order (see the twin).
    """
    cdef object stat_seq
    cdef object breaker_seq
    cdef PyObject** stat_items
    cdef PyObject** breaker_items
    cdef Py_ssize_t n, i, j, count = 0
    cdef _Slot small[_STACK_SLOTS]
    cdef _Slot* slots = small
    cdef _Slot slot
    cdef Breaker breaker
    cdef DeploymentStats stat
    cdef double estimate
    # Integer arguments go through __index__, as in the twin: a float is a TypeError here,
    # not silently truncated.
    cdef long long how = _as_count(strategy)
    cdef long long chars = _as_count(prompt_chars)
    cdef long long tokens = _as_count(max_tokens)
    if how < _MODEL or how > _LEAST_BUSY:
        raise ValueError(f"unknown strategy {how}")
    stat_seq = PySequence_Fast(stats, "stats must be a sequence")
    breaker_seq = PySequence_Fast(breakers, "breakers must be a sequence")
    n = PySequence_Fast_GET_SIZE(stat_seq)
    if PySequence_Fast_GET_SIZE(breaker_seq) != n:
        raise ValueError(f"{n} stats but {PySequence_Fast_GET_SIZE(breaker_seq)} breakers")
    if chars < 0 or tokens < 0:
        raise ValueError("prompt_chars and max_tokens must be >= 0")
    stat_items = PySequence_Fast_ITEMS(stat_seq)
    breaker_items = PySequence_Fast_ITEMS(breaker_seq)
    for i in range(n):  # check every item first: the loop below then runs no Python code
        if type(<object>stat_items[i]) is not DeploymentStats:
            raise TypeError(
                f"stats must hold DeploymentStats, not {type(<object>stat_items[i]).__name__}"
            )
        if type(<object>breaker_items[i]) is not Breaker:
            raise TypeError(
                f"breakers must hold Breaker, not {type(<object>breaker_items[i]).__name__}"
            )
    if n > _STACK_SLOTS:
        slots = <_Slot*>PyMem_Malloc(<size_t>n * sizeof(_Slot))
        if slots == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            breaker = <Breaker>breaker_items[i]
            if breaker._blocked(now):
                continue
            slot.index = i
            slot.group = 0
            slot.value = 0.0
            if how == _FAILOVER:
                if (breaker._state(now) != _CLOSED
                        or now - breaker.last_failure_at < cooldown_s):
                    slot.group = 1
            elif how == _COST:
                stat = <DeploymentStats>stat_items[i]
                estimate = stat._estimate(chars, tokens)
                if isnan(estimate):
                    slot.group = 1
                else:
                    slot.value = estimate
            elif how == _LATENCY:
                stat = <DeploymentStats>stat_items[i]
                if stat.samples != 0:
                    slot.group = 1
                    slot.value = stat.ewma
            elif how == _LEAST_BUSY:
                stat = <DeploymentStats>stat_items[i]
                slot.value = <double>stat.inflight
            # Insertion in index order, shifting only strictly greater keys: stable.
            j = count - 1
            while j >= 0 and (slots[j].group > slot.group
                              or (slots[j].group == slot.group and slots[j].value > slot.value)):
                slots[j + 1] = slots[j]
                j -= 1
            slots[j + 1] = slot
            count += 1
        return [slots[i].index for i in range(count)]
    finally:
        if slots != small:
            PyMem_Free(slots)


def retry_after_all(breakers, double now):
    """retry_after_all(breakers: Sequence[Breaker], now: float) -> float

    Seconds until some candidate may be tried again (a 503's Retry-After): 0.0 if one is
    usable now or there are none; else the soonest an open breaker half-opens, or
    PROBE_RETRY_S if that is sooner and a half-open probe is out.
    """
    cdef object seq = PySequence_Fast(breakers, "breakers must be a sequence")
    cdef PyObject** items = PySequence_Fast_ITEMS(seq)
    cdef Py_ssize_t i
    cdef Breaker breaker
    cdef int state
    cdef double wait = INFINITY
    cdef double here
    for i in range(PySequence_Fast_GET_SIZE(seq)):
        if type(<object>items[i]) is not Breaker:
            raise TypeError(f"breakers must hold Breaker, not {type(<object>items[i]).__name__}")
        breaker = <Breaker>items[i]
        state = breaker._state(now)
        if state == _OPEN:
            here = breaker.opened_at + breaker.cooldown_s - now
        elif breaker._blocked(now):
            here = _PROBE_RETRY_S
        else:
            return 0.0
        if here < wait:
            wait = here
    return 0.0 if wait == INFINITY else wait


# ---------------------------------------------------------------------------------------
# Server-sent events: parse what an upstream sends, frame what we send
# ---------------------------------------------------------------------------------------
#
# The same parse as the twin (see its theory of operation), done in one pass over C
# memory: line endings are normalised only when a CR is present, a read that completes
# its events without leftovers (the usual case) is parsed in place without copying, and
# an event's data is sliced straight out of the read (one data line) or gathered in a
# stack buffer (several). The pending start of an unfinished event lives in a malloc'd
# buffer that grows geometrically, so an event trickling in costs linear time.

from libc.string cimport memchr

from edge._fastpath_py import SSEError  # one class for both twins: `except SSEError` catches either

cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)

#: The event that ends an OpenAI-style stream.
DONE = b"data: [DONE]\n\n"

#: One SSE event larger than this is a broken (or hostile) upstream, not an answer.
MAX_EVENT_BYTES = 8 * 1024 * 1024

cdef object _dumps = orjson.dumps
cdef object _memoryview = memoryview
cdef object _str_encode = str.encode


cdef inline bint _is_space(char c) noexcept:
    """The ASCII whitespace bytes.strip() removes."""
    return c == b' ' or c == b'\t' or c == b'\n' or c == b'\r' or c == b'\x0b' or c == b'\x0c'


cdef Py_ssize_t _normalise(const char* src, Py_ssize_t n, char* dst) noexcept:
    """Copy src to dst with CRLF and lone CR turned into LF; returns the new length."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t out = 0
    cdef char c
    while i < n:
        c = src[i]
        i += 1
        if c == b'\r':
            c = b'\n'
            if i < n and src[i] == b'\n':
                i += 1
        dst[out] = c
        out += 1
    return out


cdef Py_ssize_t _last_blank(const char* p, Py_ssize_t n) noexcept:
    """Offset of the last "\\n\\n" in p[:n], or -1: where the complete events end."""
    cdef Py_ssize_t found = -1
    cdef Py_ssize_t i = 0
    cdef const char* hit
    while i < n - 1:
        hit = <const char*>memchr(p + i, b'\n', <size_t>(n - 1 - i))
        if hit == NULL:
            break
        i = hit - p
        if p[i + 1] == b'\n':
            found = i
            i += 2  # leftmost, non-overlapping matches, as bytes.split sees them
        else:
            i += 1
    return found


@cython.final
cdef class SSEParser:
    """SSEParser(max_event_bytes: int = MAX_EVENT_BYTES)

    Incremental parser: feed(bytes) returns the events completed by those bytes, each
    (name: str | None, data: bytes). Same semantics as the twin, which documents them.
    """

    cdef char* _data  # the LF-normalised start of the unfinished event
    cdef Py_ssize_t _length
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _max
    cdef bint _cr  # the last read ended with CR: an LF opening the next one is its partner
    cdef bint _broken

    def __cinit__(self, max_event_bytes=MAX_EVENT_BYTES):
        cdef long long limit = _as_count(max_event_bytes)
        if limit < 0:
            raise ValueError(f"max_event_bytes must be >= 0, got {limit}")
        self._max = <Py_ssize_t>limit
        self._data = NULL
        self._length = 0
        self._capacity = 0
        self._cr = False
        self._broken = False

    def __dealloc__(self):
        PyMem_Free(self._data)

    def feed(self, chunk):
        """feed(chunk: bytes) -> list[tuple[str | None, bytes]]

        The events that chunk completes, in order. chunk may be any bytes-like object.
        Raises SSEError when an event exceeds the size limit, or when the parser already
        raised one.
        """
        cdef object raw = chunk
        cdef object normal
        cdef const char* p
        cdef Py_ssize_t n
        cdef Py_ssize_t end
        cdef list events = []
        if self._broken:
            raise SSEError("the event stream already broke")
        if type(raw) is not bytes:
            raw = bytes(_memoryview(raw))
        p = PyBytes_AS_STRING(raw)
        n = PyBytes_GET_SIZE(raw)
        if self._cr and n:  # an empty read must not forget the CR
            self._cr = False
            if p[0] == b'\n':
                p += 1
                n -= 1
        if n and memchr(p, b'\r', <size_t>n) != NULL:
            self._cr = p[n - 1] == b'\r'
            normal = PyBytes_FromStringAndSize(NULL, n)  # filled before anyone sees it
            n = _normalise(p, n, PyBytes_AS_STRING(normal))
            p = PyBytes_AS_STRING(normal)
        end = _last_blank(p, n)
        if self._length:
            if end >= 0:
                # The unfinished event ends in this read: complete it in the buffer.
                self._append(p, end)
                self._parse_buffer(self._length, events)
                p += end + 2
                n -= end + 2
            elif n and p[0] == b'\n' and self._data[self._length - 1] == b'\n':
                # The blank line straddles the reads: LF at the end of the old, LF here.
                self._parse_buffer(self._length - 1, events)
                p += 1
                n -= 1
        elif end >= 0:
            self._parse(p, end, events)  # in place: no copy of the read
            p += end + 2
            n -= end + 2
        if self._length == 0:
            while n and p[0] == b'\n':  # blank lines between events are not kept
                p += 1
                n -= 1
        self._append(p, n)
        self._check_pending()
        return events

    @property
    def pending(self):
        """True when bytes of an unfinished event are buffered (a cut stream)."""
        cdef Py_ssize_t i
        for i in range(self._length):
            if not _is_space(self._data[i]):
                return True
        return False

    cdef int _append(self, const char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t capacity
        cdef char* data
        if n <= 0:
            return 0
        if self._length + n > self._capacity:
            capacity = self._capacity * 2
            if capacity < self._length + n:
                capacity = self._length + n
            if capacity < 256:
                capacity = 256
            data = <char*>PyMem_Realloc(self._data, <size_t>capacity)
            if data == NULL:
                raise MemoryError()
            self._data = data
            self._capacity = capacity
        memcpy(self._data + self._length, p, <size_t>n)
        self._length += n
        return 0

    cdef int _parse_buffer(self, Py_ssize_t length, list events) except -1:
        """Parse the buffer's first `length` bytes, then empty it (keeping the allocation).

        The buffer is detached while it is parsed: creating the events may run a finaliser,
        and a finaliser that fed this parser must not reallocate memory being read.
        """
        cdef char* held = self._data
        cdef Py_ssize_t capacity = self._capacity
        self._data = NULL
        self._length = 0
        self._capacity = 0
        try:
            self._parse(held, length, events)
        finally:
            if self._data == NULL and not self._broken:
                self._data = held
                self._capacity = capacity
            else:
                PyMem_Free(held)
        return 0

    cdef int _check_pending(self) except -1:
        cdef Py_ssize_t size = self._length
        if size > self._max:
            if self._data[size - 1] == b'\n':  # a final LF may be the event's end, not part
                size -= 1
            if size > self._max:
                self._fail()
        return 0

    cdef int _fail(self) except -1:
        PyMem_Free(self._data)
        self._data = NULL
        self._length = 0
        self._capacity = 0
        self._cr = False
        self._broken = True
        raise SSEError(f"an upstream event exceeded the size limit of {self._max} bytes")

    cdef int _parse(self, const char* s, Py_ssize_t n, list events) except -1:
        """Append the events of s[:n], which holds only complete events, to `events`."""
        cdef char stack[_STACK_BYTES]
        cdef _Buf joined
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t start, stop, length
        cdef const char* line
        cdef const char* hit
        cdef const char* value
        cdef Py_ssize_t size
        cdef const char* first = NULL
        cdef Py_ssize_t first_size = 0
        cdef Py_ssize_t count
        cdef object name
        cdef object data
        joined.data = stack
        joined.capacity = _STACK_BYTES
        joined.on_heap = False
        try:
            while i < n:
                while i < n and s[i] == b'\n':  # blank lines between events
                    i += 1
                if i >= n:
                    break
                start = i
                stop = i
                name = None
                count = 0
                joined.length = 0
                while True:  # one line per turn, up to the blank line or the end
                    line = s + i
                    hit = <const char*>memchr(line, b'\n', <size_t>(n - i))
                    length = (hit - line) if hit != NULL else (n - i)
                    stop = i + length
                    if length >= 5 and memcmp(line, b"data:", 5) == 0:
                        value = line + 5
                        size = length - 5
                        if size and value[0] == b' ':
                            value += 1
                            size -= 1
                        if count == 0:
                            first = value
                            first_size = size
                        else:
                            if count == 1:
                                _put(&joined, first, first_size)
                            _put_char(&joined, b'\n')
                            _put(&joined, value, size)
                        count += 1
                    elif length >= 6 and memcmp(line, b"event:", 6) == 0:
                        value = line + 6
                        size = length - 6
                        while size and _is_space(value[0]):
                            value += 1
                            size -= 1
                        while size and _is_space(value[size - 1]):
                            size -= 1
                        name = PyUnicode_DecodeUTF8(value, size, "replace")
                    i = stop + 1
                    if i >= n or s[i] == b'\n':
                        break
                if stop - start > self._max:
                    self._fail()
                if count == 0:
                    if name is None:
                        continue
                    data = b""
                elif count == 1:
                    data = PyBytes_FromStringAndSize(first, first_size)
                else:
                    data = PyBytes_FromStringAndSize(joined.data, joined.length)
                events.append((name, data))
            return 0
        finally:
            if joined.on_heap:
                PyMem_Free(joined.data)


def frame(obj):
    """frame(obj: Any) -> bytes

    One OpenAI-style event: data: {json} and the blank line.
    """
    cdef object body = _dumps(obj)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef object out = PyBytes_FromStringAndSize(NULL, n + 8)
    cdef char* w = PyBytes_AS_STRING(out)
    memcpy(w, b"data: ", 6)
    memcpy(w + 6, PyBytes_AS_STRING(body), <size_t>n)
    w[n + 6] = b'\n'
    w[n + 7] = b'\n'
    return out


def frame_event(name, obj):
    """frame_event(name: str, obj: Any) -> bytes

    One Anthropic-style event: event: name, then data: {json} and the blank line.
    """
    cdef const char* text
    cdef Py_ssize_t size
    cdef object body
    cdef Py_ssize_t n
    cdef object out
    cdef char* w
    cdef object encoded
    if type(name) is str and PyUnicode_IS_ASCII(name):
        text = <const char*>PyUnicode_DATA(name)
        size = PyUnicode_GET_LENGTH(name)
    else:
        encoded = _str_encode(name)  # the twin's call: the same result and the same errors
        text = PyBytes_AS_STRING(encoded)
        size = PyBytes_GET_SIZE(encoded)
    body = _dumps(obj)
    n = PyBytes_GET_SIZE(body)
    out = PyBytes_FromStringAndSize(NULL, size + n + 16)
    w = PyBytes_AS_STRING(out)
    memcpy(w, b"event: ", 7)
    memcpy(w + 7, text, <size_t>size)
    memcpy(w + 7 + size, b"\ndata: ", 7)
    memcpy(w + 14 + size, PyBytes_AS_STRING(body), <size_t>n)
    w[size + n + 14] = b'\n'
    w[size + n + 15] = b'\n'
    return out


# -- request heads ---------------------------------------------------------------------

HEAD_OK = 0
HEAD_TOO_LARGE = 1
HEAD_AMBIGUOUS_FRAMING = 2


def head_check(bytes target, items, Py_ssize_t limit):
    """head_check(target: bytes, items: list[tuple[bytes, ...]], limit: int) -> int

    Whether a request head parsed by h11 may be served: HEAD_OK, HEAD_TOO_LARGE (request
    line and headers over `limit` bytes, counting ": " and CRLF per header) or
    HEAD_AMBIGUOUS_FRAMING (both Content-Length and Transfer-Encoding). `items` holds
    tuples whose last two members are the lower-case name and the value: h11's
    (raw name, name, value) triples, or (name, value) pairs.
    """
    cdef Py_ssize_t size = PyBytes_GET_SIZE(target)
    cdef bint has_length = False
    cdef bint has_coding = False
    cdef Py_ssize_t n
    cdef bytes name  # typed: a non-bytes member is a TypeError, never a bad read
    cdef bytes value
    for item in items:
        n = len(<tuple>item)
        name = (<tuple>item)[n - 2]
        value = (<tuple>item)[n - 1]
        size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
        if PyBytes_GET_SIZE(name) == 14 and name == b"content-length":
            has_length = True
        elif PyBytes_GET_SIZE(name) == 17 and name == b"transfer-encoding":
            has_coding = True
    if size > limit:
        return HEAD_TOO_LARGE
    if has_length and has_coding:
        return HEAD_AMBIGUOUS_FRAMING
    return HEAD_OK
