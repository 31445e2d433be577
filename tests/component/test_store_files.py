"""The SQLite store's files are the gateway's only: the database, its ``-wal`` and
``-shm`` files and the change signal are created 0600, directories it creates 0700,
whatever the umask, and files an older version left readable are narrowed on open."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.sqlite import SQLiteStore


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
async def test_database_wal_shm_and_signal_are_0600_and_new_directories_0700(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "nested" / "herdgate.db"
    store = await SQLiteStore(path).open()
    try:
        await store.put("users", "u-1", {"id": "u-1"})
        files = [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", ".changed"))]
        for file in files:
            assert file.exists(), file
            assert _mode(file) == 0o600, (file, oct(_mode(file)))
        for directory in (tmp_path / "state", tmp_path / "state" / "nested"):
            assert _mode(directory) == 0o700, (directory, oct(_mode(directory)))
    finally:
        await store.close()


@pytest.mark.usefixtures("permissive_umask")
async def test_files_left_readable_by_an_older_version_are_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "herdgate.db"
    store = await SQLiteStore(path).open()
    await store.put("users", "u-1", {"id": "u-1"})
    await store.close()
    files = [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", ".changed"))]
    for file in files:
        if file.exists():
            file.chmod(0o644)
    store = await SQLiteStore(path).open()
    try:
        await store.put("users", "u-2", {"id": "u-2"})
        for file in files:
            assert _mode(file) == 0o600, (file, oct(_mode(file)))
    finally:
        await store.close()
