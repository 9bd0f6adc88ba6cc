"""Real Redis servers for tests: one redis-server per test, and a 3-master Redis Cluster.

`tests/conftest.py` pulls these in with `from _redis import *`. A test that uses
`redis_cluster` should carry `@pytest.mark.slow` (it spawns four processes).

With `REDIS_URL` set, `redis_server` uses that server instead of spawning one; the
process controls (`kill`, `stop`, `cont`, `restart`) then skip the test, since the
server is not ours to signal. Tests should use their own key prefix so they do not
collide on a shared server.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

__all__ = ["RedisClusterProcesses", "RedisServer", "free_port", "redis_cluster", "redis_server"]

#: How long a redis-server may take to answer PING (or a cluster to reach state ok).
_START_DEADLINE = 15.0
#: Fresh ports to try when a server cannot start (another process took the port).
_ATTEMPTS = 3
#: Pause between polls while waiting for a server; polls end at the deadline.
_POLL = 0.02


#: Ports handed to tests come from below the kernel's ephemeral range (32768-60999 here), so
#: an outgoing connection's local port can never take one between the pick and the bind.
_PORT_RANGE = (20000, 32000)
#: Every port handed out in this session: never handed out twice, so two picks in a row
#: (a proxy port and its metrics port) cannot collide even after the first was released.
_handed_out: set[int] = set()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pick(wanted: int, *, with_bus: bool = False) -> int:
    """A random free port not handed out before (and its cluster bus port p + `wanted`)."""
    for _ in range(2000):
        port = random.randrange(*_PORT_RANGE)
        ports = (port, port + wanted) if with_bus else (port,)
        if any(p in _handed_out for p in ports) or not all(_port_is_free(p) for p in ports):
            continue
        _handed_out.update(ports)
        return port
    raise RuntimeError("found no free port")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no other test was given."""
    return _pick(0)


def _free_cluster_port() -> int:
    """A port p with p and its cluster bus port p + 10000 both free and never handed out."""
    return _pick(10000, with_bus=True)


def _redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


def _server_command(port: int, workdir: Path, *extra: tuple[str, str]) -> list[str]:
    """redis-server on loopback with no persistence, plus `extra` (name, value) options."""
    options = [
        ("port", str(port)),
        ("bind", "127.0.0.1"),
        ("save", ""),
        ("appendonly", "no"),
        ("dir", str(workdir)),
        *extra,
    ]
    return [
        _redis_server_binary(),
        *(arg for name, value in options for arg in (f"--{name}", value)),
    ]


def _spawn(args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = (workdir / "redis.log").open("ab")
    try:
        return subprocess.Popen(
            args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    finally:
        log.close()  # the child has its own copy of the descriptor


def _wait_for_ping(port: int, process: subprocess.Popen[bytes] | None, workdir: Path) -> None:
    """Poll PING until it answers; fail with the server log if it exits or the deadline passes."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + _START_DEADLINE
    try:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"redis-server on port {port} exited:\n{_log_tail(workdir)}")
            try:
                # the pid check catches another server that already held the port
                if process is None or client.info("server")["process_id"] == process.pid:
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not answer PING in time")
            time.sleep(_POLL)
    finally:
        client.close()


def _log_tail(workdir: Path) -> str:
    try:
        return (workdir / "redis.log").read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def _reap(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a server whatever state it is in: resume it (if stopped), terminate, then kill."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RedisServer:
    """One redis-server on loopback, with the signals fault tests need."""

    def __init__(self, workdir: Path, port: int | None = None, url: str | None = None) -> None:
        self.workdir = workdir
        self.external = url is not None
        self.port = port if port is not None else 0
        self.url = url if url is not None else f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the server and return once it answers PING."""
        self.process = _spawn(_server_command(self.port, self.workdir), self.workdir)
        _wait_for_ping(self.port, self.process, self.workdir)

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone (its port then refuses connections)."""
        process = self._own_process()
        process.kill()
        process.wait()

    def stop(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (reads time out)."""
        self._own_process().send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT after `stop`."""
        self._own_process().send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start the server again on the same port (after `kill`), empty, and wait for PING."""
        _reap(self._own_process())
        self.start()

    def close(self) -> None:
        _reap(self.process)

    def _own_process(self) -> subprocess.Popen[bytes]:
        if self.external or self.process is None:
            pytest.skip("REDIS_URL is set: the external Redis cannot be signalled")
        return self.process


class RedisClusterProcesses:
    """Three cluster-enabled redis-servers joined into one cluster, no replicas."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """A startup node for `RedisCluster.from_url` (cluster URLs take no database)."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.skip("redis-cli is not installed (apt-get install redis-tools)")
        for _ in range(3):
            port = _free_cluster_port()
            workdir = self.root / f"node-{port}"
            workdir.mkdir()
            self.ports.append(port)
            command = _server_command(
                port,
                workdir,
                ("cluster-enabled", "yes"),
                ("cluster-config-file", f"nodes-{port}.conf"),
                ("cluster-node-timeout", "5000"),
            )
            self.processes.append(_spawn(command, workdir))
        for port, process in zip(self.ports, self.processes, strict=True):
            _wait_for_ping(port, process, self.root / f"node-{port}")
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=_START_DEADLINE,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{created.stdout.decode(errors='replace')}"
                f"{created.stderr.decode(errors='replace')}"
            )
        self._wait_until_ok()

    def _wait_until_ok(self) -> None:
        """Poll CLUSTER INFO on every node until all say cluster_state:ok."""
        clients = [
            redis.Redis(host="127.0.0.1", port=p, socket_timeout=1, socket_connect_timeout=1)
            for p in self.ports
        ]
        deadline = time.monotonic() + _START_DEADLINE
        try:
            while True:
                states = []
                for client in clients:
                    try:
                        states.append(client.cluster("INFO").get("cluster_state"))
                    except redis.RedisError:
                        states.append(None)
                if all(state == "ok" for state in states):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis Cluster did not reach state ok: {states}")
                time.sleep(_POLL)
        finally:
            for client in clients:
                client.close()

    def close(self) -> None:
        for process in self.processes:
            _reap(process)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a free loopback port (or the one at REDIS_URL)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield RedisServer(tmp_path, url=url)
        return
    for attempt in range(_ATTEMPTS):
        server = RedisServer(tmp_path, port=free_port())
        try:
            server.start()
        except RuntimeError:
            server.close()
            if attempt == _ATTEMPTS - 1:
                raise
            continue  # most likely another process took the port first
        try:
            yield server
        finally:
            server.close()
        return


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """A 3-master Redis Cluster on loopback, shared by the tests of one module."""
    for attempt in range(_ATTEMPTS):
        cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
        try:
            cluster.start()
        except RuntimeError:
            cluster.close()
            if attempt == _ATTEMPTS - 1:
                raise
            continue  # most likely another process took one of the ports first
        try:
            yield cluster
        finally:
            cluster.close()
        return
