"""JSON logs: one object per line on stderr, filtered by LOG_LEVEL.

A deliberately small logger: the request path calls `enabled()` first so a filtered-out
line costs one comparison, and every line goes through `redact` so no configured secret
can reach the log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLogger:
    def __init__(self, level: str = "info", stream: TextIO | None = None) -> None:
        self.threshold = LEVELS.get(level, 20)
        self.stream = stream if stream is not None else sys.stderr
        self._secrets: tuple[str, ...] = ()

    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        self._secrets = tuple(sorted({s for s in (*self._secrets, *secrets) if s}, key=len,
                                     reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

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
