"""JSON logs: one object per line on stderr, filtered by LOG_LEVEL.

A deliberately small logger, because at info every request writes a line:

- the request path calls `enabled()` first, so a filtered-out line costs one comparison;
- every line goes through `redact`, so no configured secret can reach the log;
- the timestamp's date and time are formatted once per second, the milliseconds appended;
- lines are queued and written by a background thread (one write and one flush per batch,
  at most FLUSH_INTERVAL_S after the first line of the batch), so the event loop never
  waits on stderr. The queue is bounded: past MAX_PENDING lines the caller writes them
  itself, as every line used to be written. Whatever is queued is written at exit
  (`atexit`, which a SIGTERM drain reaches too) and by `flush()`.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# How long the first line of a batch may wait: well under what a person or a test
# reading the log notices, long enough to batch a busy second's lines into a few writes.
FLUSH_INTERVAL_S = 0.02
# Queued lines past which the caller writes the batch itself (stderr is not keeping up).
MAX_PENDING = 4096
REDACTED = "[redacted]"
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # indexing beats formatting per line


class JsonLogger:
    def __init__(self, level: str = "info", stream: TextIO | None = None) -> None:
        self.threshold = LEVELS.get(level, 20)
        self.stream = stream if stream is not None else sys.stderr
        self._secrets: tuple[str, ...] = ()
        self._second: tuple[int, str] = (-1, "")  # a second and its formatted date-time
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()  # guards _pending
        self._write_lock = threading.Lock()  # one batch written at a time, in order
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None

    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        # Longest first, so a secret that contains another is redacted whole.
        self._secrets = tuple(sorted({s for s in (*self._secrets, *secrets) if s}, key=len,
                                     reverse=True))

    def redact(self, text: str) -> str:
        # One `in` per secret (a C substring search) beats one regex alternation of them
        # all on CPython 3.11, by 2-5x; benchmarks/logs.py measures both.
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def set_level(self, level: str) -> None:
        """Log `level` and above; `level` is a key of LEVELS (config validates it)."""
        self.threshold = LEVELS[level]

    def timestamp(self) -> str:
        """UTC, ISO 8601 with milliseconds: `2026-11-26T14:40:00.123Z`."""
        now = time.time()
        second = int(now)
        cached, stamp = self._second  # one tuple, so threads never pair a second and a stamp
        if second != cached:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, stamp)
        return stamp + _MILLIS[int((now - second) * 1000)]

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        record = {"ts": self.timestamp(), "level": level, "msg": msg, **fields}
        line = self.redact(orjson.dumps(record, default=str,
                                        option=orjson.OPT_APPEND_NEWLINE).decode())
        with self._pending_lock:
            pending = self._pending
            pending.append(line)
            queued = len(pending)
        if queued == 1:
            self._kick()
        elif queued >= MAX_PENDING:
            self.flush()

    def _kick(self) -> None:
        """Wake the writer thread for a new batch (starting it on the first line)."""
        if self._writer is None:
            with self._write_lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_forever,
                                                    name="edge-log-writer", daemon=True)
                    self._writer.start()
                    atexit.register(self.flush)
        self._wake.set()

    def _write_forever(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(FLUSH_INTERVAL_S)  # let the rest of the batch arrive
            self.flush()

    def flush(self) -> None:
        """Write every queued line now (from any thread)."""
        with self._write_lock:
            with self._pending_lock:
                lines, self._pending = self._pending, []
            if not lines:
                return
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                return  # stderr gone (closed pipe): logging must never take the proxy down

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log("warning", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)


log = JsonLogger()
