"""The hot path's public face: the compiled module when available, else its pure-Python twin.

`EDGE_NO_EXTENSIONS=1` (or "true"/"yes") forces the twin, which is how the tests and users
compare the two; a missing or broken build falls back to the twin silently, and `COMPILED`
tells which one is in use (the test suite asserts it in CI so the twin cannot stand in
unnoticed).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__all__ = [
    "COMPILED",
    "EXCLUDED_FIELDS",
    "MAX_DEPTH",
    "LRUCache",
    "cache_key",
    "canonical",
]

_NO_EXTENSIONS = os.environ.get("EDGE_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes")

if TYPE_CHECKING:
    from edge._fastpath_py import EXCLUDED_FIELDS as EXCLUDED_FIELDS
    from edge._fastpath_py import MAX_DEPTH as MAX_DEPTH
    from edge._fastpath_py import LRUCache as LRUCache
    from edge._fastpath_py import cache_key as cache_key
    from edge._fastpath_py import canonical as canonical

    COMPILED: bool
else:
    COMPILED = False
    if not _NO_EXTENSIONS:
        try:
            from edge._fastpath import EXCLUDED_FIELDS, MAX_DEPTH, LRUCache, cache_key, canonical
        except ImportError:
            pass
        else:
            COMPILED = True
    if not COMPILED:
        from edge._fastpath_py import EXCLUDED_FIELDS, MAX_DEPTH, LRUCache, cache_key, canonical
