"""Issue 19: a process that fell behind the SQLite change log's window reloads everything
instead of silently missing the rows compacted away; and the table layout's version."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.identity.directory import AuthenticationFailed, Directory
from gateway.store.base import Compacted, SchemaTooNew
from gateway.store.records import CLUSTER, TOKEN, USER, Cluster, User
from gateway.store.sqlite import LAYOUT_VERSION, SQLiteStore

WINDOW = 20


def tables(d: Directory) -> tuple[object, ...]:
    return (
        d.users,
        d.tokens,
        d.clusters,
        d.bindings,
        d.role_templates,
        d.projects,
        d.project_bindings,
        d.registrations,
        d.statuses,
    )


async def test_a_follower_beyond_the_window_reloads_and_misses_nothing(tmp_path: Path) -> None:
    stores = [await SQLiteStore(tmp_path / "db", keep_changes=WINDOW).open() for _ in range(2)]
    a, b = Directory(stores[0]), Directory(stores[1])
    try:
        await a.load()
        alice = User("u-a", "alice", "", 0.0, principal_ids=("local://u-a",))
        await a.put(USER, alice)
        old, old_secret = await a.issue_token(alice, 3600, kind="api")
        await b.load()
        b.authenticate(f"Bearer {old_secret}")
        heard: list[tuple[str, str]] = []
        b.on_change(lambda kind, key: heard.append((kind, key)))

        # b is paused (neither its feed nor a request runs) while a makes far more
        # writes than the log keeps: the token b knows is revoked in the first of them.
        await a.delete(TOKEN, old.id)
        for n in range(3 * WINDOW):
            await a.put(CLUSTER, Cluster(f"c-{n}", f"cluster-{n}", 0.0))
        await a.delete(CLUSTER, "c-0")
        _, new_secret = await a.issue_token(alice, 3600, kind="api")
        assert (await stores[0].revision()) - b.revision > WINDOW
        probe = await SQLiteStore(tmp_path / "db", keep_changes=WINDOW).open()
        try:
            with pytest.raises(Compacted) as caught:
                probe.recent_changes(b.revision)
            assert caught.value.snapshot is not None
        finally:
            await probe.close()

        # Its next request notices, and rebuilds from everything read at once before it
        # trusts the token: nothing past the gap is applied from the log.
        b.catch_up()
        assert b.reloads == 1
        assert tables(b) == tables(a)
        with pytest.raises(AuthenticationFailed):
            b.authenticate(f"Bearer {old_secret}")
        assert b.authenticate(f"Bearer {new_secret}")[0].user_id == "u-a"
        assert (TOKEN, old.id) in heard and (CLUSTER, "c-5") in heard
        assert (USER, "u-a") not in heard  # unchanged records are left alone

        # The feed follows on from there, without reading everything a second time.
        follower = asyncio.create_task(b.follow())
        try:
            await a.put(CLUSTER, Cluster("c-late", "late", 0.0))
            for _ in range(100):
                if "c-late" in b.clusters:
                    break
                await asyncio.sleep(0.05)
            assert "c-late" in b.clusters
            assert b.reloads == 1
        finally:
            follower.cancel()
            with pytest.raises(asyncio.CancelledError):
                await follower
    finally:
        for store in stores:
            await store.close()


async def test_the_feed_itself_reports_the_gap(tmp_path: Path) -> None:
    """Without a request to notice, the background feed finds the gap and reloads."""
    stores = [await SQLiteStore(tmp_path / "db", keep_changes=WINDOW).open() for _ in range(2)]
    a, b = Directory(stores[0]), Directory(stores[1])
    try:
        await a.load()
        await b.load()
        for n in range(2 * WINDOW + 5):
            await a.put(CLUSTER, Cluster(f"c-{n}", f"cluster-{n}", 0.0))
        follower = asyncio.create_task(b.follow())
        try:
            for _ in range(100):
                if b.reloads and len(b.clusters) == 2 * WINDOW + 5:
                    break
                await asyncio.sleep(0.05)
            assert b.reloads == 1
            assert b.clusters == a.clusters
        finally:
            follower.cancel()
            with pytest.raises(asyncio.CancelledError):
                await follower
    finally:
        for store in stores:
            await store.close()


async def test_within_the_window_there_is_no_reload(tmp_path: Path) -> None:
    stores = [await SQLiteStore(tmp_path / "db", keep_changes=WINDOW).open() for _ in range(2)]
    a, b = Directory(stores[0]), Directory(stores[1])
    try:
        await a.load()
        await b.load()
        for n in range(WINDOW - 2):
            await a.put(CLUSTER, Cluster(f"c-{n}", f"cluster-{n}", 0.0))
        b.catch_up()
        assert b.clusters == a.clusters and b.reloads == 0
    finally:
        for store in stores:
            await store.close()


def test_a_file_from_before_layout_versions_is_migrated(tmp_path: Path) -> None:
    """A file written before the ``meta`` table, whose log was compacted already."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE objects (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
            revision INTEGER NOT NULL, PRIMARY KEY (kind, key));
        CREATE TABLE changes (revision INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
            key TEXT NOT NULL, value TEXT);
        """
    )
    for n in range(1, 31):
        db.execute("INSERT INTO changes (kind, key, value) VALUES ('clusters', ?, '{}')", (n,))
    db.execute("DELETE FROM changes WHERE revision <= 12")
    db.commit()
    db.close()

    async def check() -> None:
        store = await SQLiteStore(path).open()
        try:
            with pytest.raises(Compacted) as caught:
                store.recent_changes(5)
            assert caught.value.compacted == 12
            feed = store.changes(12)
            assert [(await anext(feed)).revision for _ in range(18)] == list(range(13, 31))
            await feed.aclose()  # type: ignore[attr-defined]
            with pytest.raises(Compacted):
                await anext(store.changes(11))
        finally:
            await store.close()

    asyncio.run(check())
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == LAYOUT_VERSION
    db.close()


async def test_a_file_from_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    await (await SQLiteStore(path).open()).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {LAYOUT_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="newer than this herdgate"):
        await SQLiteStore(path).open()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "delete", "look"]), st.integers(0, 6)),
        max_size=80,
    )
)
def test_however_far_behind_the_follower_ends_where_the_writer_is(
    steps: list[tuple[str, int]],
) -> None:
    """Writes to a few records with the follower looking in at random moments, some
    within the window and some far beyond it: it always ends with the writer's view."""

    async def run(path: Path) -> None:
        stores = [await SQLiteStore(path, keep_changes=5).open() for _ in range(2)]
        a, b = Directory(stores[0]), Directory(stores[1])
        try:
            await a.load()
            await b.load()
            for n, (op, key) in enumerate(steps):
                if op == "put":
                    await a.put(CLUSTER, Cluster(f"c-{key}", f"name-{n}", 0.0))
                elif op == "delete":
                    await a.delete(CLUSTER, f"c-{key}")
                else:
                    b.catch_up()
                    assert b.clusters == a.clusters
            await a.put(CLUSTER, Cluster("c-last", "last", 0.0))
            b.catch_up()
            assert b.clusters == a.clusters
        finally:
            for store in stores:
                await store.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(Path(directory) / "db"))
