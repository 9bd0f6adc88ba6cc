"""The sdist carries the Cython source, and a wheel with the compiled module builds from it."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_builds_from_sdist(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (sdist,) = tmp_path.glob("edge-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("edge/_fastpath.pyx") for n in names)
    assert any(n.endswith("edge/_fastpath_py.py") for n in names)
    assert not any(n.endswith((".so", ".c")) for n in names)

    # Build from the sdist alone (no repository around it), compiling the extension.
    wheels = tmp_path / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(wheels), str(sdist)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("edge-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        members = zf.namelist()
    assert any(m.startswith("edge/_fastpath") and m.endswith(".so") for m in members)
    assert "edge/cli.py" in members
    assert "edge/py.typed" in members
    # the dashboard's files, served from the installed package (edge/ui/__init__.py)
    for name in ("index.html", "setup.html", "app.js", "app.css"):
        assert f"edge/ui/{name}" in members, name
    entry_points = next(m for m in members if m.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        assert "edge = edge.cli:main" in zf.read(entry_points).decode()
