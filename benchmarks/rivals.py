"""Other LLM proxies to measure beside edge: LiteLLM's proxy and Portkey's gateway.

Neither is a dependency of edge, and neither is vendored here: the harness starts what
is installed on the machine and reports the rest as skipped.

- LiteLLM: ``pip install 'litellm[proxy]'`` into a virtualenv of its own (for instance
  /work/litellm-venv); the harness runs its ``litellm`` command with a generated config
  that maps each model name to ``openai/<model>`` at one mock upstream, one worker, a
  generated master key (it refuses to start without one), no database, the model cost
  map read from the package (not fetched) and uvicorn's access log off (edge runs at
  ``--log-level warning``, so neither writes a line per request).
- Portkey: ``npm install @portkey-ai/gateway`` into a directory (for instance
  /work/portkey); the harness runs ``node .../build/start-server.js --port=P --headless``
  and routes each request with Portkey's headers ``x-portkey-provider: openai`` and
  ``x-portkey-custom-host: http://127.0.0.1:<mock>/v1`` (127.0.0.1 is on its list of
  trusted custom hosts by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LITELLM = "/work/litellm-venv/bin/litellm"
DEFAULT_PORTKEY_DIR = "/work/portkey"
_PORTKEY_SCRIPT = Path("node_modules/@portkey-ai/gateway/build/start-server.js")
PORTKEY_PROVIDER_KEY = "sk-bench"

# uvicorn's dictConfig: warnings and errors only, no access line per request.
_QUIET_UVICORN = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                            "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}


@dataclass(frozen=True, slots=True)
class Found:
    """An installed rival: what to run, its version, or why it cannot run."""

    path: str | None
    version: str = "unknown"
    missing: str | None = None


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start a rival and how to talk to it."""

    argv: list[str]
    env: dict[str, str]
    ready_path: str
    api_key: str


def find_litellm(explicit: str | None) -> Found:
    """``--litellm PATH``, else /work/litellm-venv/bin/litellm, else ``litellm`` on PATH."""
    candidates = [explicit] if explicit else [DEFAULT_LITELLM, shutil.which("litellm")]
    for candidate in filter(None, candidates):
        if os.access(candidate, os.X_OK):
            return Found(candidate, _litellm_version(candidate))
    where = explicit or f"{DEFAULT_LITELLM} or on PATH"
    return Found(None, missing=f"LiteLLM not installed (no litellm at {where}; "
                               "pip install 'litellm[proxy]' into a virtualenv)")


def _litellm_version(exe: str) -> str:
    """Asked of the interpreter beside the command, which is the one that runs it."""
    python = Path(exe).with_name("python")
    if not python.exists():
        return "unknown"
    try:
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def litellm_launch(exe: str, port: int, models: dict[str, int], workdir: Path) -> Launch:
    """Write LiteLLM's config (model name -> mock port) and say how to start it."""
    master_key = "sk-" + secrets.token_hex(32)
    lines = ["model_list:"]
    for model, mock_port in models.items():
        lines += [
            f"  - model_name: {model}",
            "    litellm_params:",
            f"      model: openai/{model}",
            f"      api_base: http://127.0.0.1:{mock_port}/v1",
            "      api_key: sk-bench",
        ]
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        "  set_verbose: false",
        "general_settings:",
        f"  master_key: {master_key}",
    ]
    config = workdir / "litellm.yaml"
    config.write_text("\n".join(lines) + "\n")
    log_config = workdir / "litellm-logging.json"
    log_config.write_text(json.dumps(_QUIET_UVICORN))
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start-up
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "NO_DOCKER": "True",
    }
    argv = [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1", "--log_config", str(log_config)]
    return Launch(argv, env, "/health/liveliness", master_key)


def find_portkey(explicit: str | None) -> Found:
    """``--portkey DIR_OR_SCRIPT``, else /work/portkey; needs ``node`` on PATH."""
    node = shutil.which("node")
    if node is None:
        return Found(None, missing="Portkey needs node, which is not on PATH")
    base = Path(explicit or DEFAULT_PORTKEY_DIR)
    script = base if base.suffix == ".js" else base / _PORTKEY_SCRIPT
    if not script.is_file():
        return Found(None, missing=f"Portkey gateway not installed (no {script}; "
                                   "npm install @portkey-ai/gateway into a directory)")
    version = "unknown"
    package = script.parent.parent / "package.json"
    with contextlib.suppress(OSError, ValueError):  # no readable package.json: "unknown"
        version = json.loads(package.read_text()).get("version", "unknown")
    return Found(str(script), version)


def portkey_launch(script: str, port: int) -> Launch:
    """Portkey's Node server on ``port``, without its console UI."""
    node = shutil.which("node") or "node"
    return Launch([node, script, f"--port={port}", "--headless"], {}, "/", PORTKEY_PROVIDER_KEY)


def portkey_headers(mock_port: int) -> tuple[tuple[str, str], ...]:
    """Route a request through Portkey to the OpenAI-compatible mock on ``mock_port``."""
    return (
        ("Authorization", f"Bearer {PORTKEY_PROVIDER_KEY}"),
        ("x-portkey-provider", "openai"),
        ("x-portkey-custom-host", f"http://127.0.0.1:{mock_port}/v1"),
    )
