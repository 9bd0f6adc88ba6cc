"""edge.collector: the server's collector settings, and never anyone else's.

Run in a fresh interpreter each, since the settings are process-wide and pytest's own
process must keep CPython's defaults.
"""

from __future__ import annotations

import json
import subprocess
import sys

from edge import collector

_PROBE = """
import gc, json
from edge import collector
before = (gc.get_threshold(), gc.get_freeze_count())
collector.freeze_startup()          # not tuned: must change nothing
untuned = (gc.get_threshold(), gc.get_freeze_count())
collector.tune()
collector.freeze_startup()
print(json.dumps([before, untuned, (gc.get_threshold(), gc.get_freeze_count())]))
"""


def test_only_a_tuned_process_changes_thresholds_and_freezes() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    before, untuned, tuned = json.loads(out)
    assert before == untuned
    assert before[1] == 0
    assert tuned[0] == list(collector.THRESHOLDS)
    assert tuned[1] > 1000  # start-up's objects (modules, functions) are frozen

