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
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "PROBE_RETRY_S",
    "STRATEGY_COST",
    "STRATEGY_FAILOVER",
    "STRATEGY_LATENCY",
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
]

_NO_EXTENSIONS = os.environ.get("EDGE_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes")

if TYPE_CHECKING:
    from edge._fastpath_py import BREAKER_CLOSED as BREAKER_CLOSED
    from edge._fastpath_py import BREAKER_HALF_OPEN as BREAKER_HALF_OPEN
    from edge._fastpath_py import BREAKER_OPEN as BREAKER_OPEN
    from edge._fastpath_py import DONE as DONE
    from edge._fastpath_py import EXCLUDED_FIELDS as EXCLUDED_FIELDS
    from edge._fastpath_py import MAX_DEPTH as MAX_DEPTH
    from edge._fastpath_py import MAX_EVENT_BYTES as MAX_EVENT_BYTES
    from edge._fastpath_py import PROBE_RETRY_S as PROBE_RETRY_S
    from edge._fastpath_py import STRATEGY_COST as STRATEGY_COST
    from edge._fastpath_py import STRATEGY_FAILOVER as STRATEGY_FAILOVER
    from edge._fastpath_py import STRATEGY_LATENCY as STRATEGY_LATENCY
    from edge._fastpath_py import STRATEGY_MODEL as STRATEGY_MODEL
    from edge._fastpath_py import Breaker as Breaker
    from edge._fastpath_py import DeploymentStats as DeploymentStats
    from edge._fastpath_py import LRUCache as LRUCache
    from edge._fastpath_py import SSEError as SSEError
    from edge._fastpath_py import SSEParser as SSEParser
    from edge._fastpath_py import cache_key as cache_key
    from edge._fastpath_py import canonical as canonical
    from edge._fastpath_py import frame as frame
    from edge._fastpath_py import frame_event as frame_event
    from edge._fastpath_py import rank as rank
    from edge._fastpath_py import retry_after_all as retry_after_all

    COMPILED: bool
else:
    COMPILED = False
    if not _NO_EXTENSIONS:
        try:
            from edge._fastpath import (
                BREAKER_CLOSED,
                BREAKER_HALF_OPEN,
                BREAKER_OPEN,
                DONE,
                EXCLUDED_FIELDS,
                MAX_DEPTH,
                MAX_EVENT_BYTES,
                PROBE_RETRY_S,
                STRATEGY_COST,
                STRATEGY_FAILOVER,
                STRATEGY_LATENCY,
                STRATEGY_MODEL,
                Breaker,
                DeploymentStats,
                LRUCache,
                SSEError,
                SSEParser,
                cache_key,
                canonical,
                frame,
                frame_event,
                rank,
                retry_after_all,
            )
        except ImportError:  # not built, or built from an older source: all from the twin
            pass
        else:
            COMPILED = True
    if not COMPILED:
        from edge._fastpath_py import (
            BREAKER_CLOSED,
            BREAKER_HALF_OPEN,
            BREAKER_OPEN,
            DONE,
            EXCLUDED_FIELDS,
            MAX_DEPTH,
            MAX_EVENT_BYTES,
            PROBE_RETRY_S,
            STRATEGY_COST,
            STRATEGY_FAILOVER,
            STRATEGY_LATENCY,
            STRATEGY_MODEL,
            Breaker,
            DeploymentStats,
            LRUCache,
            SSEError,
            SSEParser,
            cache_key,
            canonical,
            frame,
            frame_event,
            rank,
            retry_after_all,
        )
