"""Closed-loop load drivers the harnesses share: wrk (with a Lua script) or loadgen.

A ``Request`` says what every request of a run looks like: the port, path, body and
headers, and whether each request must be distinct (``unique``: a fresh token replaces
``SEQ_MARKER`` in the body, so a cache never sees the same request twice). ``run_closed``
drives it with wrk when asked (the faster client, installed from Debian's package) and
with ``benchmarks.loadgen`` otherwise; both give a ``LoadResult``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import SEQ_MARKER, LoadResult, LoadSpec, run_load
from benchmarks.services import BenchError

CHAT_PATH = "/v1/chat/completions"
CLIENT_KEY = "x"
USER_PROMPT = "In one sentence, why do proxies cache responses?"


def chat_body(model: str = "gpt-4o-mini", *, stream: bool = False, unique: bool = False,
              prompt: str = USER_PROMPT) -> bytes:
    """A small, ordinary chat completion request; the same bytes go to every target.

    ``unique`` puts ``SEQ_MARKER`` at the end of the user message, for per-request tokens.
    """
    content = f"{prompt} {SEQ_MARKER.decode()}" if unique else prompt
    body: dict[str, object] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": content},
        ],
        "max_tokens": 64,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


CHAT_BODY: bytes = chat_body()

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
{unique}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "EDGE-BENCH %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

# Per-request bodies: the token is nonce-thread-counter, so no two requests of a run,
# in any thread, and no two runs share one.
_WRK_UNIQUE = """\
local prefix = [==[{prefix}]==]
local suffix = [==[{suffix}]==]
local threads_made = 0
local counter = 0
setup = function(thread)
  thread:set("tid", threads_made)
  threads_made = threads_made + 1
end
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, prefix .. "{nonce}-" .. tid .. "-" .. counter .. suffix)
end
"""


@dataclass(frozen=True, slots=True)
class Request:
    """What one run sends, to which local port."""

    port: int
    body: bytes = CHAT_BODY
    headers: tuple[tuple[str, str], ...] = ()
    path: str = CHAT_PATH
    unique: bool = False

    def sample(self) -> bytes:
        """One concrete body, as the load would send it (a fresh token when unique)."""
        if not self.unique:
            return self.body
        return self.body.replace(SEQ_MARKER, f"probe-{secrets.token_hex(6)}".encode())


def wrk_version() -> str | None:
    """``wrk 4.1.0`` or None when wrk is not on PATH."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    done = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10)
    first = (done.stdout or done.stderr).strip().splitlines()
    return " ".join(first[0].split()[:2]) if first else "wrk"


def pick_tool(tool: str, threads: int, processes: int) -> tuple[str | None, str] | None:
    """(wrk's version, or None to use loadgen; a description for the report).

    None when `--tool wrk` was asked for and wrk is not on PATH.
    """
    wrk = wrk_version() if tool != "loadgen" else None
    if tool == "wrk" and wrk is None:
        return None
    described = (f"{wrk}, {threads} thread(s)" if wrk is not None
                 else f"benchmarks.loadgen, {processes} process(es)")
    return wrk, described


def _lua_string_ok(text: str) -> bool:
    return "]==]" not in text and "\n" not in text


def wrk_script(request: Request) -> str:
    """The Lua script that makes wrk send ``request`` and print one summary line."""
    body = request.body.decode()
    if not _lua_string_ok(body):
        raise BenchError("request body cannot be embedded in the wrk script")
    headers = "\n".join(
        f'wrk.headers["{name}"] = "{value}"'
        for name, value in (("Content-Type", "application/json"), *request.headers)
    )
    unique = ""
    if request.unique:
        prefix, marker, suffix = body.partition(SEQ_MARKER.decode())
        if not marker:
            raise BenchError("a unique request needs the marker in its body")
        unique = _WRK_UNIQUE.format(prefix=prefix, suffix=suffix, nonce=secrets.token_hex(4))
    return _WRK_SCRIPT.format(body=body, headers=headers, unique=unique)


def run_wrk(request: Request, duration: float, connections: int, threads: int,
            workdir: Path, name: str = "load") -> LoadResult:
    """Drive ``request`` with wrk and read the summary our Lua ``done`` hook prints."""
    script = workdir / f"wrk_{name}.lua"
    script.write_text(wrk_script(request))
    argv = [
        "wrk", "-t", str(min(threads, connections)), "-c", str(connections),
        "-d", f"{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script),
        f"http://127.0.0.1:{request.port}{request.path}",
    ]
    cpu_before = os.times()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    cpu_after = os.times()
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("EDGE-BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    requests, duration_us, connect, read, write, status, timeout, p50, p99 = (
        int(v) for v in line.split()[1:]
    )
    seconds = duration_us / 1e6
    ok = requests - status
    return LoadResult(
        requests_per_s=ok / seconds if seconds else 0.0,
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
        ok=ok,
        errors=connect + read + write + status + timeout,
        duration_s=seconds,
        client_cpu_s=(cpu_after.children_user + cpu_after.children_system)
        - (cpu_before.children_user + cpu_before.children_system),
        statuses={},
        error_kinds={k: v for k, v in (("connect", connect), ("read", read), ("write", write),
                                       ("status", status), ("timeout", timeout)) if v},
    )


def run_closed(request: Request, duration: float, connections: int, *, use_wrk: bool,
               threads: int = 1, processes: int = 1, workdir: Path, name: str = "load"
               ) -> LoadResult:
    """One closed-loop measurement of ``request`` with wrk or loadgen."""
    if use_wrk:
        return run_wrk(request, duration, connections, threads, workdir, name)
    return run_load(LoadSpec(
        host="127.0.0.1", port=request.port, path=request.path, body=request.body,
        headers=request.headers, connections=connections, duration_s=duration,
        processes=processes,
    ))
