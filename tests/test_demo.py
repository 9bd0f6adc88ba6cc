"""`edge demo`: spawned through the console script as a user would, then driven with the
official SDKs and the admin API using the admin key it printed."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from _redis import free_port
from _servers import wait_until

# The console script beside the interpreter running the tests, else the one on PATH.
_EDGE = (shutil.which("edge", path=str(Path(sys.executable).parent)) or shutil.which("edge")
         or "edge")


class _Demo:
    def __init__(self, tmp: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.out = tmp / f"demo-{port}.out"
        self.err = tmp / f"demo-{port}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([_EDGE, "demo", "--port", str(port)], stdout=out,
                                         stderr=err, cwd=tmp)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[_Demo]:
    running = _Demo(tmp_path, free_port())
    yield running
    running.stop()


def _admin_key(demo: _Demo) -> str:
    wait_until(lambda: "Ctrl-C" in demo.stdout() or demo.proc.poll() is not None,
               what="the demo's banner")
    assert demo.proc.poll() is None, demo.err.read_text()
    found = re.search(r"^admin key: (\S+)$", demo.stdout(), re.MULTILINE)
    assert found is not None, demo.stdout()
    return found.group(1)


def test_the_demo_serves_both_sdks_and_the_admin_api(demo: _Demo) -> None:
    key = _admin_key(demo)
    banner = demo.stdout()
    assert f"{demo.url}/ui" in banner
    assert f"curl -s {demo.url}/v1/chat/completions" in banner
    assert f'OpenAI(base_url="{demo.url}/v1"' in banner

    client = openai.OpenAI(base_url=f"{demo.url}/v1", api_key="demo", max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello demo"}])
    assert answer.choices[0].message.content == "Mock reply to: hello demo"
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "stream me"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Mock reply to: stream me"

    claude = anthropic.Anthropic(base_url=demo.url, api_key="demo", max_retries=0)
    message = claude.messages.create(model="claude-3-5-haiku-latest", max_tokens=100,
                                     messages=[{"role": "user", "content": "hi claude"}])
    assert message.content[0].text == "Mock reply to: hi claude"

    keys = httpx.get(f"{demo.url}/admin/keys", headers={"authorization": f"Bearer {key}"})
    assert keys.status_code == 200
    assert isinstance(keys.json()["data"], list)
    wrong = httpx.get(f"{demo.url}/admin/keys", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401

    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(timeout=30) == 0


def test_each_run_makes_its_own_admin_key(tmp_path: Path) -> None:
    first, second = _Demo(tmp_path, free_port()), _Demo(tmp_path, free_port())
    try:
        assert _admin_key(first) != _admin_key(second)
        first.proc.send_signal(signal.SIGINT)
        assert first.proc.wait(timeout=30) == 0
    finally:
        first.stop()
        second.stop()


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([_EDGE, "demo", "--port", str(port)], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
