"""Child processes for the benchmarks: start on free loopback ports, wait, measure, stop.

Every benchmark here (the yardstick, the harness, the memory probe, the soak) runs the
things it measures as child processes of its own: the mock upstream, edge, the bare app,
LiteLLM's proxy, Portkey's gateway. This module is the one place that knows how to start
them (each in its own session, output to a log file), tell when they are ready, read
their memory from /proc, and stop them and every process they spawned, whatever happens
to the caller (an error, Ctrl-C, SIGTERM). It uses only the standard library, so the
harness runs under any interpreter.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

# Settings of the caller's shell that would change what edge does in a run.
_SCRUBBED_ENV = frozenset({
    "EDGE_CONFIG", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "EDGE_API_KEYS",
    "ENABLE_L2_CACHE", "REDIS_URL", "ENABLE_TRACING", "PORT", "HOST",
})


class BenchError(RuntimeError):
    """A part of a benchmark could not start or answer; the message says which."""


def run_script(main: Callable[[], int]) -> NoReturn:
    """A benchmark's `__main__`: its exit code; 2 with the reason when a part failed."""
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; services stopped", file=sys.stderr)
        sys.exit(130)


@dataclass(slots=True)
class Interpreter:
    """What a Python interpreter can run, found by asking it rather than assuming."""

    path: str
    version: str = "unknown"
    can_run_bare: bool = False
    can_run_mock: bool = False
    can_run_edge: bool = False
    fastpath: str = "n/a"
    problem: str | None = None


@dataclass(slots=True)
class Service:
    """A child process we started, its port and where its output goes."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> None:
        """Start in its own session so stopping it reaches its worker processes too.

        A restarted service appends to the same log, so its whole history stays readable.
        """
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.cwd, start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        """The process id of the process we started (the master, with workers)."""
        return None if self.process is None else self.process.pid

    def exited(self) -> int | None:
        """The exit code if the process has already ended."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        """The end of its output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to its process group, wait, SIGKILL on timeout; safe to call twice."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None:
            # Workers a master left behind share its process group (our new session).
            _signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL the whole group at once: an upstream that dies without goodbye."""
        proc = self.process
        if proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


#: Ports already handed out: the kernel may offer a just-released port again, and a
#: proxy port equal to its metrics port makes `edge serve` refuse to start.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that was free a moment ago and was not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def http_call(
    port: int, method: str, path: str, body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (), timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns status, lower-cased headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        all_headers = dict(headers)
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def wait_ready(
    service: Service, path: str, headers: Sequence[tuple[str, str]] = (),
    timeout: float = READY_TIMEOUT_S,
) -> None:
    """Poll ``GET path`` until 200, the deadline passes, or the process dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        code = service.exited()
        if code is not None:
            raise BenchError(
                f"{service.name} exited with code {code} before it was ready; its output:\n"
                f"{service.log_tail()}"
            )
        try:
            status, _, _ = http_call(service.port, "GET", path, headers=headers, timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(
        f"{service.name} not ready after {timeout:.0f}s on GET {path} ({last}); its output:\n"
        f"{service.log_tail()}"
    )


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """Our environment minus anything that would make a run depend on the caller's setup."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def probe_interpreter(python: str) -> Interpreter:
    """Ask ``python`` what it can import, from the repository root, without side effects."""
    info = Interpreter(path=python)
    code = (
        "import importlib.util as u, json, platform, sys\n"
        "def ok(*names):\n"
        "    try:\n"
        "        for n in names: __import__(n)\n"
        "        return None\n"
        "    except Exception as e:\n"
        "        return f'{type(e).__name__}: {e}'\n"
        "bare = ok('trio', 'hypercorn.trio')\n"
        "mock = bare or ok('edge.mock_upstream')\n"
        "edge = bare or ok('edge.cli')\n"
        "fast = 'n/a'\n"
        "if edge is None:\n"
        "    fast = 'compiled' if ok('edge._fastpath') is None else 'pure Python'\n"
        "print(json.dumps({'version': platform.python_implementation() + ' ' + "
        "sys.version.split()[0], 'bare': bare, 'mock': mock, 'edge': edge, 'fastpath': fast}))\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60,
            cwd=REPO_ROOT, env=child_env({}),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        info.problem = f"cannot run {python}: {exc}"
        return info
    if done.returncode != 0:
        info.problem = f"{python} failed: {done.stderr.strip()[-300:]}"
        return info
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    info.version = facts["version"]
    info.can_run_bare = facts["bare"] is None
    info.can_run_mock = facts["mock"] is None
    info.can_run_edge = facts["edge"] is None
    info.fastpath = facts["fastpath"]
    info.problem = facts["bare"] or facts["edge"] or facts["mock"]
    return info


def mock_command(python: str, port: int, delay_ms: float = 0, fail_rate: float = 0.0,
                 seed: int = 0) -> list[str]:
    """``edge mock-upstream`` when the CLI exists, else the module's own entry point."""
    probe = subprocess.run(
        [python, "-c", "import edge.cli"], capture_output=True, cwd=REPO_ROOT,
        env=child_env({}), timeout=60,
    )
    if probe.returncode == 0:
        argv = [python, "-m", "edge", "mock-upstream", "--host", "127.0.0.1",
                "--port", str(port), "--delay-ms", f"{delay_ms:g}"]
        if fail_rate:
            argv += ["--fail-rate", f"{fail_rate:g}", "--seed", str(seed)]
        return argv
    options = f"host='127.0.0.1', port={port}, delay_ms={delay_ms!r}, fail_rate={fail_rate!r}, " \
              f"seed={seed}"
    return [python, "-c",
            f"from edge.mock_upstream import MockOptions, run; run(MockOptions({options}))"]


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (every thread's list, joined)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are still alive (workers of a master, say)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if os.path.exists(f"/proc/{current}"):
            tree.append(current)
            todo += _children(current)
    return tree


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS in /proc/PID/status); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def tree_rss_bytes(pid: int) -> dict[int, int]:
    """RSS of ``pid`` and each of its descendants, by process id."""
    return {p: rss_bytes(p) for p in process_tree(pid)}


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def services_stopped(services: list[Service]) -> Iterator[None]:
    """Whatever happens inside (error, Ctrl-C, SIGTERM), stop every started service."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()
        signal.signal(signal.SIGTERM, previous)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that ran this benchmark, as RESULTS.md records it."""
    given = list(sys.argv[1:] if argv is None else argv)
    return " ".join([f"python -m {module}", *map(shlex.quote, given)])
