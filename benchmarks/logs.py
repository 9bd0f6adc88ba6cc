"""Micro-benchmark of the per-request log line: edge's logger now vs the one it replaced.

Run: `python -m benchmarks.logs [--repeats N] [--target-ms MS]`

Each row is ns per info line, the median of interleaved repeats, for the line
`edge.app` writes after every request (the same fields, four configured secrets), into
a real file as stderr would be redirected to one. A timed run ends with `flush()`, so
the lines still queued for the writer thread are paid for inside it. The "previous"
logger is kept below verbatim as the baseline: strftime per line, and a write plus a
flush per line on the caller's thread (the event loop, in edge). The redaction and
timestamp rows time those parts alone, beside the alternatives that were measured
before choosing (one regex alternation of every secret, and strftime per line).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TextIO

import orjson

from benchmarks.fastpath import Case, measure
from benchmarks.services import run_script
from edge.logs import LEVELS, JsonLogger

SECRETS = ("sk-proj-bench-openai-7d1e4b9a0c5f2e81", "sk-ant-bench-anthropic-52f08c3e9d1a",
           "edge-client-bench-91b0d2aa", "edge-client-bench-3f7c6e01")
FIELDS: dict[str, Any] = {
    "request_id": "9f1c2ab7e0d34c5b8a6f1e2d", "method": "POST", "path": "/v1/chat/completions",
    "status": 200, "latency_ms": 12.345, "provider": "openai", "model": "gpt-4o-mini",
    "tenant": "team-a", "cache": "miss",
}


class PreviousJsonLogger(JsonLogger):
    """edge.logs.JsonLogger's `log` before this change, verbatim: the baseline.

    Secrets and redaction did not change, so they are inherited; nothing is queued, so
    `flush` has nothing to do.
    """

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z", "level": level,
                  "msg": msg}
        record.update(fields)
        line = orjson.dumps(record, default=str).decode()
        try:
            self.stream.write(self.redact(line) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            return

    def flush(self) -> None:
        return


def _loop_log(logger: Any, stream: TextIO, n: int) -> int:
    """n request lines, then whatever is still queued, into a truncated file."""
    stream.seek(0)
    stream.truncate()
    log = logger.log
    start = time.perf_counter_ns()
    for _ in range(n):
        log("info", "request", **FIELDS)
    logger.flush()
    return time.perf_counter_ns() - start


def _loop_call(fn: Callable[[str], object], arg: str, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn(arg)
    return time.perf_counter_ns() - start


def _loop_stamp(fn: Callable[[], object], n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return time.perf_counter_ns() - start


def _alternation(secrets: Iterable[str]) -> Callable[[str], str]:
    pattern = re.compile("|".join(map(re.escape, sorted(secrets, key=len, reverse=True))))
    return partial(pattern.sub, "[redacted]")


def _strftime_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=100.0)
    args = parser.parse_args(argv)

    line = orjson.dumps({"ts": _strftime_stamp(), "level": "info", "msg": "request",
                         **FIELDS}).decode()
    many = (*SECRETS, *(f"edge-client-bench-{i:08x}" for i in range(60)))
    with tempfile.TemporaryDirectory() as tmp:
        streams = [open(os.path.join(tmp, f"log-{i}.jsonl"), "w")  # noqa: SIM115
                   for i in range(2)]
        try:
            previous = PreviousJsonLogger(stream=streams[0])
            current = JsonLogger(stream=streams[1])
            previous.add_secrets(SECRETS)
            current.add_secrets(SECRETS)
            few_loop, many_loop = JsonLogger(), JsonLogger()
            few_loop.add_secrets(SECRETS)
            many_loop.add_secrets(many)
            groups = [
                [Case("info line, to a file", "previous", partial(_loop_log, previous,
                                                                  streams[0])),
                 Case("info line, to a file", "now", partial(_loop_log, current, streams[1]),
                      "incl. the final flush")],
                [Case("redact, 4 secrets", "loop of `in` (now)",
                      partial(_loop_call, few_loop.redact, line)),
                 Case("redact, 4 secrets", "regex alternation",
                      partial(_loop_call, _alternation(SECRETS), line))],
                [Case("redact, 64 secrets", "loop of `in` (now)",
                      partial(_loop_call, many_loop.redact, line)),
                 Case("redact, 64 secrets", "regex alternation",
                      partial(_loop_call, _alternation(many), line))],
                [Case("timestamp", "strftime per line", partial(_loop_stamp, _strftime_stamp)),
                 Case("timestamp", "cached second (now)", partial(_loop_stamp,
                                                                  current.timestamp))],
            ]
            for cases in groups:
                measure(cases, args.repeats, args.target_ms)
        finally:
            for stream in streams:
                stream.close()

    print(f"{'operation':<22} {'implementation':<22} {'ns/op':>8} {'vs first':>9}  note")
    print("-" * 80)
    for cases in groups:
        first = cases[0].ns
        for case in cases:
            ratio = f"{first / case.ns:.2f}x" if first and case.ns else ""
            print(f"{case.group:<22} {case.impl:<22} {case.ns or 0:8.0f} {ratio:>9}  {case.note}")
    print()
    print(f"ns/op: median of {args.repeats} interleaved repeats of ~{args.target_ms:.0f} ms; "
          f"vs first = the group's first row's ns / this row's ns. "
          f"{platform.python_implementation()} {platform.python_version()}")
    return 0


if __name__ == "__main__":
    run_script(main)
