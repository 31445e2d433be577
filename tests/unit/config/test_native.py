"""The compiled build: used only while it matches the sources, and what the suite runs."""

from __future__ import annotations

import collections
import importlib
import os
import re
from pathlib import Path

import pytest

from config import native


def _tree(root: Path) -> None:
    for rel in native.COMPILED:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {rel}\n")


def _stamp(root: Path, value: str) -> None:
    (root / ".native").mkdir(exist_ok=True)
    (root / ".native" / native.STAMP).write_text(value + "\n")


def test_a_build_that_matches_the_sources_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    _tree(tmp_path)
    _stamp(tmp_path, native.digest(tmp_path))
    path = [str(tmp_path / "gateway")]
    assert native.use_build("gateway", path, root=tmp_path)
    assert path == [str(tmp_path / ".native" / "gateway"), str(tmp_path / "gateway")]
    monkeypatch.setattr("sys.path", [])
    assert native.use_build("gateway", path, root=tmp_path)  # idempotent
    assert len(path) == 2


def test_an_edited_source_runs_as_python_until_the_next_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    _tree(tmp_path)
    _stamp(tmp_path, native.digest(tmp_path))
    (tmp_path / native.COMPILED[3]).write_text("# edited\n")
    monkeypatch.setattr(native, "_warned", False)
    path = [str(tmp_path / "tunnel")]
    assert not native.use_build("tunnel", path, root=tmp_path)
    assert path == [str(tmp_path / "tunnel")]
    assert "built from other sources" in capsys.readouterr().err


def test_no_build_and_the_pure_switch_leave_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    path = [str(tmp_path / "gateway")]
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    assert not native.use_build("gateway", path, root=tmp_path)  # nothing built
    _stamp(tmp_path, native.digest(tmp_path))
    monkeypatch.setenv(native.PURE_ENV, "1")
    assert not native.use_build("gateway", path, root=tmp_path)
    assert path == [str(tmp_path / "gateway")]


def test_the_digest_covers_every_compiled_source(tmp_path: Path) -> None:
    _tree(tmp_path)
    before = native.digest(tmp_path)
    for rel in native.COMPILED:
        (tmp_path / rel).write_text("# changed\n")
        assert native.digest(tmp_path) != before, rel
        (tmp_path / rel).write_text(f"# {rel}\n")
    assert native.digest(tmp_path) == before


def test_every_compiled_module_exists_and_is_listed_once() -> None:
    assert len(set(native.COMPILED)) == len(native.COMPILED)
    for rel in native.COMPILED:
        assert (native.ROOT / rel).is_file(), rel


def test_the_suite_runs_the_compiled_build() -> None:
    """CI (``CI=true``) runs ``scripts/test-all``, which builds it: the tests then exercise
    the code that ships. Locally, without a build, the source is what runs. The second
    pass of ``scripts/test-all`` (``HERDGATE_PURE=1``, what ``pip install`` gives without
    a compiler) must run every module as Python."""
    assert native.loaded()[1] == len(native.COMPILED)
    for name in native.module_names():
        importlib.import_module(name)
    compiled, total = native.loaded()
    if native.pure_requested():
        assert compiled == 0, native.describe()
        assert native.describe() == "pure Python"
        return
    if os.environ.get("CI") != "true" and compiled == 0:
        pytest.skip("no compiled build here (python -m config.native build)")
    assert (compiled, total) == (len(native.COMPILED), len(native.COMPILED)), native.describe()
    assert native.describe() == f"compiled (mypyc, {len(native.COMPILED)} modules)"


def test_the_docs_give_the_compiled_module_count_the_list_has() -> None:
    # Every "<N> compiled modules" in the README and docs/, and design.md's split by
    # package; figures of past runs say "modules" without "compiled" (their count then).
    root = Path(native.ROOT)
    texts = {p: p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))]}
    counts = [
        (path.name, int(n))
        for path, text in texts.items()
        for n in re.findall(r"(\d+) compiled modules", text.replace("\n", " "))
    ]
    assert ("design.md", len(native.COMPILED)) in counts
    assert all(n == len(native.COMPILED) for _, n in counts), counts
    packages = collections.Counter(rel.split("/")[0] for rel in native.COMPILED)
    split = re.search(r"(\d+) of gateway, (\d+) of tunnel", texts[root / "docs" / "design.md"])
    assert split is not None
    assert (int(split[1]), int(split[2])) == (packages["gateway"], packages["tunnel"])
    assert set(packages) == {"gateway", "tunnel"}
