"""No import cycles between herdgate's modules.

The import graph is built with grimp (what import-linter uses, see ``[tool.importlinter]``
in pyproject.toml for the layer contracts) from every import statement, those under
``if TYPE_CHECKING:`` and inside functions included: a cycle hidden that way is still a
cycle for the reader. Each strongly connected component of more than one module is a
cycle; the test names every one that touches a package of ``CHECKED``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]

PACKAGES = ("herdgate", "bench", "standin", "gateway", "tunnel", "webhook", "ace", "config")
"""Every top-level package of the project: the graph spans them all, so a cycle through
two packages is found too."""

CHECKED = ("herdgate", "bench", "standin", "gateway", "tunnel", "webhook", "ace", "config")
"""The packages that must have no cycle: all of them."""


def import_graph() -> Mapping[str, set[str]]:
    """Each module of ``PACKAGES`` and the modules of ``PACKAGES`` it imports."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    return {
        module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules
    }


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def _in_checked(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in CHECKED)


def test_cycles_finds_each_strongly_connected_component() -> None:
    graph = {
        "a": {"b"},
        "b": {"c", "d"},
        "c": {"a"},  # a -> b -> c -> a
        "d": {"e"},
        "e": {"d"},  # d <-> e
        "f": {"a"},  # leads into a cycle, is not in one
        "g": set(),
    }
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_type_checking_and_function_local_imports() -> None:
    graph = import_graph()
    # tunnel/cli.py imports the agent inside a function only; the providers' registry
    # imports the OIDC provider under TYPE_CHECKING only.
    assert "tunnel.agent" in graph["tunnel.cli"]
    assert "gateway.identity.providers.oidc" in graph["gateway.identity.providers.registry"]
    assert set(CHECKED) <= set(PACKAGES)


def test_no_import_cycles() -> None:
    found = [c for c in cycles(import_graph()) if any(_in_checked(m) for m in c)]
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_installed_packages_are_every_package_of_the_programs() -> None:
    # pyproject.toml lists them one by one ([tool.setuptools] packages): a package left
    # out would be missing from `pip install .` while the tests, run from the tree, pass.
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for package in PACKAGES
        if package not in ("bench", "standin")  # the benchmarks and the stand-in run from the tree
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert set(listed["packages"]) == found
