"""The ``no_compiled_code`` marker, set by path, for ``scripts/test-all``'s second pass.

``scripts/test-all`` runs the suite on the compiled build, then once more as pure Python
(``HERDGATE_PURE=1``): the modules of ``config.native.COMPILED``, all in ``gateway/`` and
``tunnel/``, then run from their source. A test that runs none of them runs exactly the
same code in both passes, so the second pass leaves it out (``-m "... and not
no_compiled_code"``). Such tests are found, not listed: a test file is marked when it sits
in a folder of ``ONCE_FOLDERS`` (the tests of packages that hold no compiled module and,
by the import contracts of pyproject.toml, import none), is not in ``RUN_TWICE``, and
neither it nor the ``tests`` modules it imports (followed transitively) import
``gateway``, ``tunnel``, ``herdgate`` or ``bench`` or start ``python -m herdgate`` or ``-m
bench``. ``tests/unit/test_pure_pass.py`` imports every marked file in a fresh interpreter
and fails if that loads a compiled module after all.
"""

from __future__ import annotations

import ast
import itertools
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ONCE_FOLDERS = (
    "tests/unit/ace",
    "tests/unit/config",
    "tests/unit/deploy",
    "tests/unit/webhook",
    "tests/standin",
)
RUN_TWICE = frozenset({"tests/unit/config/test_native.py"})
"""Files of ``ONCE_FOLDERS`` that belong to both passes whatever they import
(``test_native`` checks the build each pass runs)."""
REACHES_COMPILED = ("gateway", "tunnel", "herdgate", "bench")
"""Top-level packages that hold or import compiled modules."""


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _starts_a_program(tree: ast.AST) -> bool:
    """``"-m", "herdgate"`` (or ``bench``) next to each other in a list or tuple."""
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple):
            values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for first, second in itertools.pairwise(values):
                if (
                    first == "-m"
                    and isinstance(second, str)
                    and second.split(".")[0] in REACHES_COMPILED
                ):
                    return True
    return False


@cache
def reaches_compiled(path: Path) -> bool:
    """Whether the file imports (itself or through ``tests`` modules) a package of
    ``REACHES_COMPILED`` or starts one as a program."""
    tree = ast.parse(path.read_text(), str(path))
    if _starts_a_program(tree):
        return True
    for name in _imported(tree):
        top = name.split(".")[0]
        if top in REACHES_COMPILED:
            return True
        if top == "tests":
            module = ROOT.joinpath(*name.split("."))
            for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                if candidate.is_file() and candidate != path and reaches_compiled(candidate):
                    return True
    return False


def runs_no_compiled_code(path: Path) -> bool:
    relative = path.resolve().relative_to(ROOT).as_posix()
    if relative in RUN_TWICE or not relative.startswith(tuple(f + "/" for f in ONCE_FOLDERS)):
        return False
    conftests = [
        folder / "conftest.py"
        for folder in path.resolve().parents
        if folder.is_relative_to(ROOT / "tests") and (folder / "conftest.py").is_file()
    ]
    return not any(reaches_compiled(p) for p in (path.resolve(), *conftests))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if runs_no_compiled_code(item.path):
            item.add_marker(pytest.mark.no_compiled_code)
