"""Both store backends keep the same contract (SQLite file; a real etcd)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store.base import AlreadyExists, Store
from gateway.store.etcd import EtcdStore
from gateway.store.sqlite import SQLiteStore
from tests.fixtures.etcd import Etcd, etcd  # noqa: F401 - the fixture
from tests.fixtures.stores import two_stores  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "etcd"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s: Any = await SQLiteStore(tmp_path / "db").open()
    else:
        server: Etcd = request.getfixturevalue("etcd")
        s = await EtcdStore([server.url], prefix=f"/t-{uuid.uuid4().hex[:8]}/").open()
    try:
        yield s
    finally:
        await s.close()


async def test_crud(store: Store) -> None:
    rev = await store.create("users", "u-1", {"id": "u-1", "name": "a"})
    assert rev > 0
    with pytest.raises(AlreadyExists):
        await store.create("users", "u-1", {"id": "u-1"})
    assert await store.get("users", "u-1") == {"id": "u-1", "name": "a"}
    assert await store.get("users", "nope") is None
    await store.put("users", "u-2", {"id": "u-2"})
    assert [d["id"] for d in await store.list("users")] == ["u-1", "u-2"]
    assert await store.list("tokens") == []
    patched = await store.patch("users", "u-1", {"name": "b", "x": 1})
    assert patched is not None and patched[1] == {"id": "u-1", "name": "b", "x": 1}
    assert await store.patch("users", "ghost", {"name": "b"}) is None
    assert await store.delete("users", "u-1") > 0
    assert await store.delete("users", "u-1") == 0
    assert await store.get("users", "u-1") is None
    # A patch never brings a deleted record back.
    assert await store.patch("users", "u-1", {"name": "zombie"}) is None
    assert await store.get("users", "u-1") is None


async def test_swap_is_compare_and_set(store: Store) -> None:
    """Issue 17: the primitive leases are built on, the same on both backends."""
    assert await store.swap("leases", "l", {"holder": "x"}, {"holder": "a"}) is None
    assert await store.get("leases", "l") is None
    assert (await store.swap("leases", "l", None, {"holder": "a", "expires": 1.5}) or 0) > 0
    assert await store.swap("leases", "l", None, {"holder": "b"}) is None
    assert await store.swap("leases", "l", {"holder": "a"}, {"holder": "b"}) is None
    changed = await store.swap("leases", "l", {"holder": "a", "expires": 1.5}, {"holder": "b"})
    assert changed is not None and changed > 0
    assert await store.get("leases", "l") == {"holder": "b"}
    assert await store.swap("leases", "l", {"holder": "a"}, None) is None
    assert (await store.swap("leases", "l", {"holder": "b"}, None) or 0) > 0
    assert await store.get("leases", "l") is None
    assert await store.swap("leases", "l", None, None) == 0


async def test_racing_swaps_one_wins(store: Store) -> None:
    await store.put("leases", "r", {"n": 0})
    results = await asyncio.gather(
        *(store.swap("leases", "r", {"n": 0}, {"n": i}) for i in range(1, 9))
    )
    assert sum(r is not None for r in results) == 1
    [winner] = [i for i, r in enumerate(results, 1) if r is not None]
    assert await store.get("leases", "r") == {"n": winner}


async def test_change_feed_is_ordered_and_complete(store: Store) -> None:
    start = await store.revision()
    await store.put("clusters", "c-1", {"id": "c-1", "v": 1})
    await store.patch("clusters", "c-1", {"v": 2})
    await store.delete("clusters", "c-1")
    seen = []
    async with asyncio.timeout(10):
        async for change in store.changes(start):
            seen.append((change.kind, change.key, change.value))
            if len(seen) == 3:
                break
    assert seen == [
        ("clusters", "c-1", {"id": "c-1", "v": 1}),
        ("clusters", "c-1", {"id": "c-1", "v": 2}),
        ("clusters", "c-1", None),
    ]


async def test_two_replicas_racing_for_one_user_name_create_one_user(
    two_stores: list[Store],  # noqa: F811 - the fixture
) -> None:
    """The name claim (a ``usernames`` record created only if absent) holds on both
    backends: replicas that both passed their in-memory check create one user."""
    from gateway.identity.directory import Directory, UsernameTaken
    from gateway.store.records import USER, User

    a, b = Directory(two_stores[0]), Directory(two_stores[1])
    await a.load()
    await b.load()

    def user(user_id: str, name: str) -> User:
        return User(user_id, name, "", 0.0, principal_ids=(f"local://{user_id}",))

    for round_no in range(5):
        name = f"racer{round_no}"
        upper = name.upper()
        results = await asyncio.gather(
            a.create_local_user(name, lambda uid, n=name: user(uid, n)),
            b.create_local_user(upper, lambda uid, n=upper: user(uid, n)),
            return_exceptions=True,
        )
        kinds = sorted(type(r).__name__ for r in results)
        assert kinds == ["User", UsernameTaken.__name__], results
    assert len(await two_stores[0].list(USER)) == 5
