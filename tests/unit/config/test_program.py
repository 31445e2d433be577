"""config.program.off_path: is the running herdgate the one a command line naming it finds?"""

from __future__ import annotations

from pathlib import Path

import pytest

from config.program import off_path


def _program(directory: Path) -> Path:
    directory.mkdir(parents=True)
    path = directory / "herdgate"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_a_venv_program_not_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = _program(tmp_path / "venv" / "bin")
    assert off_path(str(program), "/usr/bin:/bin") == str(program.parent)
    # Started by a relative path, as `.venv/bin/herdgate gateway` is.
    monkeypatch.chdir(tmp_path)
    assert off_path("venv/bin/herdgate", "/usr/bin:/bin") == str(program.parent)


def test_on_path_directly_or_through_a_link(tmp_path: Path) -> None:
    program = _program(tmp_path / "venv" / "bin")
    assert off_path(str(program), f"/usr/bin:{program.parent}") is None
    links = tmp_path / "links"
    links.mkdir()
    (links / "herdgate").symlink_to(program)
    assert off_path(str(program), str(links)) is None


def test_another_herdgate_on_path_is_not_this_one(tmp_path: Path) -> None:
    program = _program(tmp_path / "venv" / "bin")
    other = _program(tmp_path / "usr" / "bin")
    assert off_path(str(program), str(other.parent)) == str(program.parent)


def test_started_otherwise(tmp_path: Path) -> None:
    assert off_path("herdgate", "") is None  # found on PATH by the shell
    assert off_path(str(tmp_path / "herdgate" / "__main__.py"), "") is None  # python -m
    assert off_path(str(tmp_path / "bin" / "herdgate"), "") is None  # not a file
