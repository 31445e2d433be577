"""Packaging: the request path compiled with mypyc (see config/native.py).

``pip install .`` builds a wheel whose ``COMPILED`` modules are C extensions beside their
sources. Without a C compiler or Python's headers, or with ``HERDGATE_PURE=1``, the
wheel is pure Python (same behaviour, slower). An editable install (``pip install -e``)
compiles nothing: a development tree uses ``python -m config.native build``, whose build
is used only while it matches the sources.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from config import native

ext_modules: list[object] = []
if not native.pure_requested() and "editable_wheel" not in sys.argv:
    missing = native.can_compile()
    if missing is None:
        try:
            import mypyc.build  # noqa: F401 - a build without isolation may lack it
        except ImportError:
            missing = "mypyc (pip install mypy)"
    if missing is None:
        ext_modules = native.extensions()
    else:
        print(f"herdgate: building pure Python: no {missing}", file=sys.stderr)

setup(ext_modules=ext_modules)
