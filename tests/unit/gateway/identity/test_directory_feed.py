"""The directory's caches follow the store's change feed: after the feed lost writes
(``Compacted``: an etcd compaction) they are rebuilt from a fresh list, deletions
included; our own writes not yet back on the feed show as lag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.identity.directory import Directory
from gateway.store.base import Change, Compacted, StoreUnavailable
from gateway.store.records import (
    PROJECT,
    REPLICA,
    TOKEN,
    USER,
    Project,
    Replica,
    Token,
    User,
    to_doc,
)
from gateway.store.sqlite import SQLiteStore


class FeedByHand:
    """A SQLite store whose change feed the test writes (changes or an exception)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.inner = store
        self.feed: asyncio.Queue[Change | Exception] = asyncio.Queue()
        self.opened: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def recent_changes(self, after: int) -> None:
        return None

    async def changes(self, after: int) -> AsyncIterator[Change]:
        self.opened.append(after)
        while True:
            item = await self.feed.get()
            if isinstance(item, Exception):
                raise item
            yield item


def token(token_id: str, user_id: str = "u-1") -> Token:
    return Token(token_id, user_id, "scrypt$x$y", 1.0, None)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, FeedByHand, Directory]]:
    store = await SQLiteStore(tmp_path / "db").open()
    fake = FeedByHand(store)
    directory = Directory(fake)  # type: ignore[arg-type]
    try:
        yield store, fake, directory
    finally:
        await store.close()


async def _settle(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the directory did not get there")


async def test_lost_changes_rebuild_the_caches(
    world: tuple[SQLiteStore, FeedByHand, Directory],
) -> None:
    store, fake, d = world
    await store.put(USER, "u-1", to_doc(User("u-1", "ann", "", 0.0)))
    await store.put(TOKEN, "token-old", to_doc(token("token-old")))
    await d.load()
    heard: list[tuple[str, str]] = []
    d.on_change(lambda kind, key: heard.append((kind, key)))
    follower = asyncio.create_task(d.follow())
    try:
        # Written by another replica while our feed was away, then compacted out of reach.
        await store.delete(TOKEN, "token-old")
        await store.put(TOKEN, "token-new", to_doc(token("token-new")))
        assert "token-old" in d.tokens and "token-new" not in d.tokens
        fake.feed.put_nowait(Compacted(d.revision, d.revision + 5))
        await _settle(lambda: "token-new" in d.tokens)
        assert "token-old" not in d.tokens, "a revoked token survived the reload"
        assert (TOKEN, "token-old") in heard  # listeners hear of the deletion
        assert len(fake.opened) == 2 and fake.opened[1] >= await store.revision()
        # The feed goes on from the reload's revision.
        revision = await store.put(TOKEN, "token-later", to_doc(token("token-later")))
        fake.feed.put_nowait(Change(revision, TOKEN, "token-later", to_doc(token("token-later"))))
        await _settle(lambda: "token-later" in d.tokens)
    finally:
        follower.cancel()


async def test_own_writes_not_back_on_the_feed_are_lag(
    world: tuple[SQLiteStore, FeedByHand, Directory],
) -> None:
    _, fake, d = world
    await d.load()
    assert d.feed_lag() == 0
    follower = asyncio.create_task(d.follow())
    try:
        await d.put(REPLICA, Replica("r-1", "host", 1, 0.0, 0.0))
        await asyncio.sleep(0.05)
        assert d.feed_lag() > 0
        # A progress mark past our write: everything up to it was delivered.
        fake.feed.put_nowait(Change(d.revision + 1, "", "", None))
        await _settle(lambda: d.feed_lag() == 0)
    finally:
        follower.cancel()


async def test_a_reload_keeps_our_newer_write(
    world: tuple[SQLiteStore, FeedByHand, Directory],
) -> None:
    """A list read before our own write must not roll that write back."""
    store, _, d = world
    await d.load()
    await d.put(USER, User("u-9", "zed", "", 0.0))
    d._seen[USER, "u-9"] = 10**9  # as if our write came after the reload's revision
    await store.delete(USER, "u-9")
    await d.reload()
    assert "u-9" in d.users


async def test_replace_does_not_lose_another_processs_update(tmp_path: Path) -> None:
    """Two processes edit one project from their caches: the second edit, made on a
    stale copy, is refused (nothing written) instead of silently undoing the first."""
    stores = [await SQLiteStore(tmp_path / "db").open() for _ in range(2)]
    a, b = Directory(stores[0]), Directory(stores[1])
    try:
        project = Project("c-1:p-1", "c-1", "web", 1.0)
        await a.put(PROJECT, project)
        await b.load()
        stale = b.projects["c-1:p-1"]
        assert await a.replace(PROJECT, project, Project("c-1:p-1", "c-1", "web", 1.0, "A's"))
        renamed = Project("c-1:p-1", "c-1", "www", 1.0)
        assert not await b.replace(PROJECT, stale, renamed)
        assert b.projects["c-1:p-1"].description == "A's"  # refreshed from the store
        stored = await stores[0].get(PROJECT, "c-1:p-1")
        assert stored is not None and stored["name"] == "web" and stored["description"] == "A's"
        # On the fresh copy it goes through.
        assert await b.replace(PROJECT, b.projects["c-1:p-1"], renamed)
        assert await stores[0].get(PROJECT, "c-1:p-1") == to_doc(renamed)
    finally:
        for store in stores:
            await store.close()


async def test_a_stalled_feed_is_opened_again(
    world: tuple[SQLiteStore, FeedByHand, Directory],
) -> None:
    """A watch that silently stopped delivering (our write never comes back) is dropped
    and opened again from the last revision it delivered."""
    _, fake, d = world
    await d.load()
    d.max_feed_lag_s = 0.2
    follower = asyncio.create_task(d.follow())
    try:
        await _settle(lambda: len(fake.opened) == 1)
        start = fake.opened[0]
        await d.put(REPLICA, Replica("r-1", "host", 1, 0.0, 0.0))
        await _settle(lambda: len(fake.opened) == 2)
        assert fake.opened[1] == start  # nothing was delivered: from the same place
        # Reopening is no catching up: the lag (what /readyz reports) stands until the
        # reopened feed brings our write back, and a feed still silent is reopened again.
        assert d.feed_lag() > d.max_feed_lag_s
        await _settle(lambda: len(fake.opened) == 3)
        assert d.feed_lag() > 2 * d.max_feed_lag_s
        fake.feed.put_nowait(Change(d.revision + 1, "", "", None))
        await _settle(lambda: d.feed_lag() == 0)
    finally:
        follower.cancel()


async def test_a_failed_reload_is_retried(
    world: tuple[SQLiteStore, FeedByHand, Directory],
) -> None:
    store, fake, d = world
    await d.load()
    failures = [StoreUnavailable("etcd unreachable"), StoreUnavailable("etcd unreachable")]
    real_list = store.list

    async def flaky_list(kind: str) -> list[dict[str, Any]]:
        if failures:
            raise failures.pop()
        return await real_list(kind)

    fake.list = flaky_list  # type: ignore[method-assign]
    await store.put(TOKEN, "token-new", to_doc(token("token-new")))
    follower = asyncio.create_task(d.follow())
    try:
        fake.feed.put_nowait(Compacted(d.revision, d.revision + 5))
        await _settle(lambda: "token-new" in d.tokens)
        assert not failures
        assert not follower.done()
    finally:
        follower.cancel()


async def test_a_record_this_version_cannot_read_does_not_stop_the_feed(
    world: tuple[SQLiteStore, FeedByHand, Directory],
) -> None:
    _, fake, d = world
    await d.load()
    follower = asyncio.create_task(d.follow())
    try:
        fake.feed.put_nowait(Change(d.revision + 1, TOKEN, "token-bad", {"id": "token-bad"}))
        good = to_doc(token("token-good"))
        fake.feed.put_nowait(Change(d.revision + 2, TOKEN, "token-good", good))
        await _settle(lambda: "token-good" in d.tokens)
        assert "token-bad" not in d.tokens
        assert not follower.done()
    finally:
        follower.cancel()


async def test_a_store_gone_back_in_time_is_taken_as_it_is(
    world: tuple[SQLiteStore, FeedByHand, Directory],
) -> None:
    """etcd restored from an older backup: the reload's lists win, and the feed goes on
    from the store's (lower) revision, not from ours."""
    store, fake, d = world
    await store.put(TOKEN, "token-1", to_doc(token("token-1")))
    await d.load()
    await d.put(REPLICA, Replica("r-1", "host", 1, 0.0, 0.0))  # remembered as ours
    d.revision += 1000  # what we had seen before etcd was restored
    await store.delete(REPLICA, "r-1")
    follower = asyncio.create_task(d.follow())
    try:
        await _settle(lambda: len(fake.opened) == 1)
        fake.feed.put_nowait(Compacted(d.revision, 1))
        await _settle(lambda: len(fake.opened) == 2)
        assert fake.opened[1] == await store.revision()
        assert "r-1" not in d.replicas and d.feed_lag() == 0
        assert "token-1" in d.tokens
    finally:
        follower.cancel()


async def test_last_use_times_survive_a_store_outage(
    world: tuple[SQLiteStore, FeedByHand, Directory],
) -> None:
    store, fake, d = world
    await store.put(USER, "u-1", to_doc(User("u-1", "ann", "", 0.0)))
    for name in ("token-a", "token-b"):
        await store.put(TOKEN, name, to_doc(token(name)))
    await d.load()
    d._last_used = {"token-a": 5.0, "token-b": 6.0}
    real_patch = store.patch
    calls = 0

    async def failing_patch(kind: str, key: str, changes: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StoreUnavailable("etcd unreachable")
        return await real_patch(kind, key, changes)

    fake.patch = failing_patch  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await d.flush_last_used()
    assert d._last_used == {"token-b": 6.0}  # the one not written waits for next time
    assert await d.flush_last_used() == 1
    stored = await store.get(TOKEN, "token-b")
    assert stored is not None and stored["last_used"] == 6.0
