"""`python -m benchmarks.streams` at a tiny size, through the real processes: the mock,
edge, the bare streaming app and separate client processes; checks the outputs' shape."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def test_a_tiny_run_writes_the_table_csv_and_chart(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.streams", "--streams", "5", "--tokens", "4",
         "--token-ms", "5", "--ramp-s", "0.2", "--targets", "direct,edge,bare,litellm",
         "--litellm", str(tmp_path / "no-litellm"), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "streams.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["target"], r["mode"]) for r in rows] == [
        (t, m) for t in ("direct", "edge", "bare", "litellm") for m in ("burst", "ramp")]
    for row in rows[:6]:
        assert (row["streams"], row["completed"], row["errors"]) == ("5", "5", "0"), row
        assert float(row["first_p99_ms"]) >= float(row["first_p50_ms"]) > 0
        assert float(row["late_max_ms"]) >= float(row["late_p99_ms"]) >= 0
        assert float(row["peak_rss_mb"]) > 0
    assert all(r["note"].startswith("skipped: LiteLLM not installed") for r in rows[6:])
    assert "first_p50_ms" in done.stdout
    assert "edge     ramp" in done.stdout
    assert (tmp_path / "streams.txt").read_text().count("\n") >= 9
    assert (tmp_path / "streams.svg").read_text().startswith("<svg")


def test_bad_flags_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.streams", "--targets", "nginx"],
                          capture_output=True, text=True, timeout=60, cwd=_ROOT)
    assert done.returncode == 2
    assert "--targets" in done.stderr
