"""The hot path's public face: the compiled module when available, else its pure-Python twin.

`EDGE_NO_EXTENSIONS=1` (or "true"/"yes") forces the twin, which is how the tests and users
compare the two. A missing or broken build also falls back to the twin, which is many
times slower, so that must not go unnoticed: `COMPILED` and `KIND` tell which one is in
use (the test suite asserts it in CI; /metrics shows it in `llm_edge_build_info`), and
`fallback_warning()` is what `edge serve` logs at start when the build is missing.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

__all__ = [
    "COMPILED",
    "KIND",
    "fallback_warning",
    "EXCLUDED_FIELDS",
    "MAX_DEPTH",
    "LRUCache",
    "Entry",
    "cache_key",
    "canonical",
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "PROBE_RETRY_S",
    "STRATEGY_COST",
    "STRATEGY_FAILOVER",
    "STRATEGY_LATENCY",
    "STRATEGY_LEAST_BUSY",
    "STRATEGY_MODEL",
    "Breaker",
    "DeploymentStats",
    "rank",
    "retry_after_all",
    "DONE",
    "MAX_EVENT_BYTES",
    "SSEError",
    "SSEParser",
    "frame",
    "frame_event",
    "HEAD_AMBIGUOUS_FRAMING",
    "HEAD_OK",
    "HEAD_TOO_LARGE",
    "head_check",
]

_NO_EXTENSIONS = os.environ.get("EDGE_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes")

if TYPE_CHECKING:
    from edge._fastpath_py import BREAKER_CLOSED as BREAKER_CLOSED
    from edge._fastpath_py import BREAKER_HALF_OPEN as BREAKER_HALF_OPEN
    from edge._fastpath_py import BREAKER_OPEN as BREAKER_OPEN
    from edge._fastpath_py import DONE as DONE
    from edge._fastpath_py import EXCLUDED_FIELDS as EXCLUDED_FIELDS
    from edge._fastpath_py import HEAD_AMBIGUOUS_FRAMING as HEAD_AMBIGUOUS_FRAMING
    from edge._fastpath_py import HEAD_OK as HEAD_OK
    from edge._fastpath_py import HEAD_TOO_LARGE as HEAD_TOO_LARGE
    from edge._fastpath_py import MAX_DEPTH as MAX_DEPTH
    from edge._fastpath_py import MAX_EVENT_BYTES as MAX_EVENT_BYTES
    from edge._fastpath_py import PROBE_RETRY_S as PROBE_RETRY_S
    from edge._fastpath_py import STRATEGY_COST as STRATEGY_COST
    from edge._fastpath_py import STRATEGY_FAILOVER as STRATEGY_FAILOVER
    from edge._fastpath_py import STRATEGY_LATENCY as STRATEGY_LATENCY
    from edge._fastpath_py import STRATEGY_LEAST_BUSY as STRATEGY_LEAST_BUSY
    from edge._fastpath_py import STRATEGY_MODEL as STRATEGY_MODEL
    from edge._fastpath_py import Breaker as Breaker
    from edge._fastpath_py import DeploymentStats as DeploymentStats
    from edge._fastpath_py import Entry as Entry
    from edge._fastpath_py import LRUCache as LRUCache
    from edge._fastpath_py import SSEError as SSEError
    from edge._fastpath_py import SSEParser as SSEParser
    from edge._fastpath_py import cache_key as cache_key
    from edge._fastpath_py import canonical as canonical
    from edge._fastpath_py import frame as frame
    from edge._fastpath_py import frame_event as frame_event
    from edge._fastpath_py import head_check as head_check
    from edge._fastpath_py import rank as rank
    from edge._fastpath_py import retry_after_all as retry_after_all

    COMPILED: bool
    _MISSING: str | None
else:
    # What both implementations export: one list, so the compiled and the fallback load
    # cannot drift apart (the TYPE_CHECKING imports above are for mypy only).
    _SHARED = [name for name in __all__ if name not in ("COMPILED", "KIND", "fallback_warning")]

    def _load(module_name: str) -> dict[str, object]:
        module = importlib.import_module(module_name)
        missing = [name for name in _SHARED if not hasattr(module, name)]
        if missing:  # built from an older source
            raise ImportError(f"cannot import name {missing[0]!r} from {module_name!r}")
        return {name: getattr(module, name) for name in _SHARED}

    COMPILED = False
    _MISSING = None  # why the compiled module could not be loaded, when it was wanted
    if not _NO_EXTENSIONS:
        try:
            globals().update(_load("edge._fastpath"))
        except ImportError as exc:  # not built, or built from an older source: the twin
            _MISSING = str(exc) or type(exc).__name__
        else:
            COMPILED = True
    if not COMPILED:
        globals().update(_load("edge._fastpath_py"))

KIND = "compiled" if COMPILED else "python"


def fallback_warning() -> str | None:
    """A warning for the log when the compiled module was wanted but could not be loaded."""
    if _MISSING is None:
        return None
    return (f"the compiled fast path (edge._fastpath) could not be loaded ({_MISSING}); "
            "running on its pure-Python twin, many times slower. Reinstall edge with a C "
            "compiler available, or set EDGE_NO_EXTENSIONS=1 to choose the twin.")
