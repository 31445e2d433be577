"""Two gateway processes sharing one SQLite store see each other's writes at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.identity.directory import AuthenticationFailed, Directory
from gateway.store.records import TOKEN, USER, User
from gateway.store.sqlite import SQLiteStore


async def two_workers(tmp_path: Path) -> tuple[Directory, Directory, list[SQLiteStore]]:
    stores = [await SQLiteStore(tmp_path / "db").open() for _ in range(2)]
    a, b = Directory(stores[0]), Directory(stores[1])
    await a.load()
    await b.load()
    return a, b, stores


async def test_revocation_on_one_worker_holds_on_the_next_request_of_the_other(
    tmp_path: Path,
) -> None:
    a, b, stores = await two_workers(tmp_path)
    try:
        user = User("u-1", "alice", "", 0.0, principal_ids=("local://u-1",))
        await a.put(USER, user)
        token, plaintext = await a.issue_token(user, 3600, kind="api")
        identity, _ = b.authenticate(f"Bearer {plaintext}")  # b has never polled the feed
        assert identity.user_id == "u-1"
        await a.delete(TOKEN, token.id)
        with pytest.raises(AuthenticationFailed):
            b.authenticate(f"Bearer {plaintext}")
        # Disabling the user on b is seen by a on its next request.
        _, again = await a.issue_token(user, 3600, kind="api")
        a.authenticate(f"Bearer {again}")
        await b.patch(USER, "u-1", enabled=False)
        with pytest.raises(AuthenticationFailed):
            a.authenticate(f"Bearer {again}")
    finally:
        for store in stores:
            await store.close()


async def test_own_writes_are_not_undone_by_the_feed(tmp_path: Path) -> None:
    a, b, stores = await two_workers(tmp_path)
    try:
        user = User("u-2", "bob", "", 0.0)
        await a.put(USER, user)
        await a.patch(USER, "u-2", display_name="first")
        await a.patch(USER, "u-2", display_name="second")
        # Replaying the feed (as the follower would) must not go back to "first".
        a.revision = 0
        a.catch_up()
        assert a.users["u-2"].display_name == "second"
        b.catch_up()
        assert b.users["u-2"].display_name == "second"
    finally:
        for store in stores:
            await store.close()


async def test_patch_never_resurrects_a_deleted_record(tmp_path: Path) -> None:
    a, b, stores = await two_workers(tmp_path)
    try:
        user = User("u-3", "carol", "", 0.0)
        await a.put(USER, user)
        token, _ = await a.issue_token(user, 3600, kind="api")
        b.catch_up()
        await a.delete(TOKEN, token.id)
        # b still holds the token in memory and records a last-use: it must stay deleted.
        assert not await b.patch(TOKEN, token.id, last_used=123.0)
        assert token.id not in b.tokens
        assert await stores[0].get(TOKEN, token.id) is None
    finally:
        for store in stores:
            await store.close()
