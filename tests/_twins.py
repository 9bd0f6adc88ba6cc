"""The two implementations of the hot path, for the tests that run on both.

`compiled` is None when `edge._fastpath` was not built: test_fastpath.py's
test_compiled_module_loaded reports that, and the `impl` fixture skips the compiled run.
"""

from __future__ import annotations

import importlib
import os
import types

import pytest

import edge._fastpath_py as pure

__all__ = ["NO_EXTENSIONS", "both", "compiled", "impl", "pure"]

try:
    compiled: types.ModuleType | None = importlib.import_module("edge._fastpath")
except ImportError:
    compiled = None

NO_EXTENSIONS = os.environ.get("EDGE_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(params=["compiled", "pure"])
def impl(request: pytest.FixtureRequest) -> types.ModuleType:
    """Each implementation in turn."""
    if request.param == "pure":
        return pure
    if compiled is None:
        pytest.skip("edge._fastpath is not built (python setup.py build_ext --inplace)")
    return compiled


def both() -> list[types.ModuleType]:
    """The implementations available, for tests that compare them."""
    return [pure] if compiled is None else [compiled, pure]
