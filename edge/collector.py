"""The cyclic garbage collector, set for a server that holds thousands of requests at once.

Every request in flight is a few hundred objects the collector tracks (Trio tasks and
cancel scopes, h11 state, headers, parsed events). With CPython's default thresholds
(700, 10, 10) a collection of the young generation runs every 700 allocations and walks
them again and again while they wait on the network, and each full collection walks all
of them plus everything start-up built (modules, config, compiled patterns). Measured
with `python -m benchmarks.streams`, 2,000 streams opened at once through one worker:
1.3 s of edge's 6.9 s of CPU went to about 930 collections, pauses up to 130 ms.

So the server process (never a test or a library user importing edge) raises the first
threshold, which lets most request garbage die by reference counting before any
collection sees it, and freezes what start-up built, so full collections skip it.
Cycles are still collected; memory held by garbage cycles waits a little longer.
"""

from __future__ import annotations

import gc

# Young collections every 20,000 net allocations (not 700); the older generations keep
# CPython's ratios.
THRESHOLDS = (20_000, 10, 10)

_tuned = False


def tune() -> None:
    """Set the server's thresholds; call once, in the process that will serve."""
    global _tuned
    gc.set_threshold(*THRESHOLDS)
    _tuned = True


def freeze_startup() -> None:
    """Once serving: move everything alive now out of the collector's sight for good.

    A no-op unless `tune` ran in this process, so in-process tests keep the defaults.
    """
    if _tuned:
        gc.collect()
        gc.freeze()
