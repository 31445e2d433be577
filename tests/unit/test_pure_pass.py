"""What ``scripts/test-all``'s pure-Python pass leaves out really runs no compiled module.

``tests/conftest.py`` marks ``no_compiled_code`` by reading imports; here every marked
file is imported in a fresh interpreter (as the compiled pass would: no
``HERDGATE_PURE``), with its folders' ``conftest.py``, and none of
``config.native.COMPILED`` may be loaded by that."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from config.native import COMPILED
from tests.conftest import ONCE_FOLDERS, ROOT, RUN_TWICE, runs_no_compiled_code

IMPORT_ALL = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def _module(path: object) -> str:
    relative = os.path.relpath(str(path), ROOT)
    return relative.removesuffix(".py").replace(os.sep, ".")


def test_marked_files_load_no_compiled_module() -> None:
    marked = sorted(
        path
        for folder in ONCE_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if (path.name.startswith("test_") or path.name == "conftest.py")
        and runs_no_compiled_code(path)
    )
    assert any(p.name.startswith("test_") for p in marked)
    assert not {_module(p) for p in marked} & {_module(ROOT / p) for p in RUN_TWICE}
    env = {k: v for k, v in os.environ.items() if k != "HERDGATE_PURE"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, *(_module(p) for p in marked)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    compiled = {name.removesuffix(".py").replace("/", ".") for name in COMPILED}
    assert not loaded & compiled, sorted(loaded & compiled)
    assert not {"gateway", "tunnel"} & loaded, "a marked file imports gateway or tunnel"


def test_a_file_that_imports_the_gateway_or_starts_it_runs_twice() -> None:
    for name in ("test_compat.py", "test_cli_errors.py", "test_native.py"):
        assert not runs_no_compiled_code(ROOT / "tests/unit/config" / name), name
    assert runs_no_compiled_code(ROOT / "tests/unit/config/test_loader.py")
    assert not runs_no_compiled_code(ROOT / "tests/unit/test_docstrings.py")
