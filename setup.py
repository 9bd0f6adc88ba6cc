"""Build the Cython hot path unless EDGE_NO_EXTENSIONS=1 asks for the pure-Python twin only."""

import os

from setuptools import setup

ext_modules = []
if os.environ.get("EDGE_NO_EXTENSIONS", "") not in ("1", "true", "yes"):
    from Cython.Build import cythonize
    from setuptools import Extension

    # -ffp-contract=off: no fused multiply-add, so the EWMA agrees bit for bit with the twin.
    ext_modules = cythonize(
        [Extension("edge._fastpath", ["edge/_fastpath.pyx"], extra_compile_args=["-O3", "-ffp-contract=off"])],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
