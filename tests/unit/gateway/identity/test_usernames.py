"""User names compare under NFKC and case folding: one name, one user, one limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.directory import Directory, UsernameTaken
from gateway.identity.ratelimit import Limit, LoginLimiter
from gateway.store.records import USER, User, fold_username
from gateway.store.sqlite import SQLiteStore

FULLWIDTH_ADMIN = "\uff41\uff44\uff4d\uff49\uff4e"
FULLWIDTH_CAPS = "\uff21\uff24\uff2d\uff29\uff2e"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("admin", "ADMIN"),
        ("admin", "Admin"),
        ("admin", FULLWIDTH_ADMIN),
        ("admin", FULLWIDTH_CAPS),
        ("strasse", "STRASSE"),
        ("stra\u00dfe", "strasse"),  # sharp s folds to ss
        ("kate", "\u212aate"),  # KELVIN SIGN
        ("file", "\ufb01le"),  # the fi ligature
        ("e\u0301", "\u00e9"),  # combining acute vs precomposed
    ],
)
def test_spellings_of_one_name_fold_together(a: str, b: str) -> None:
    assert fold_username(a) == fold_username(b)


@pytest.mark.parametrize(("a", "b"), [("admin", "admin2"), ("adm\u0131n", "admin")])
def test_different_names_stay_different(a: str, b: str) -> None:
    assert fold_username(a) != fold_username(b)


@given(st.text(max_size=20))
def test_folding_is_idempotent(name: str) -> None:
    assert fold_username(fold_username(name)) == fold_username(name)


async def test_the_login_limiter_counts_every_spelling_as_one_user(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    try:
        limiter = LoginLimiter(store, Limit(3, 60), Limit(1000, 60))
        for spelling in ("ADMIN", FULLWIDTH_ADMIN, "Admin"):
            await limiter.failed("local", spelling, f"10.0.0.{len(spelling)}", 0.0)
        assert await limiter.retry_after("local", "admin", "10.9.9.9", 1.0) > 0
        await limiter.succeeded("local", FULLWIDTH_CAPS)
        assert await limiter.retry_after("local", "admin", "10.9.9.9", 1.0) == 0
    finally:
        await store.close()


def _user(user_id: str, name: str) -> User:
    return User(user_id, name, "", 0.0, principal_ids=(f"local://{user_id}",))


async def test_one_directory_refuses_a_second_spelling(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    d = Directory(store)
    try:
        await d.load()
        await d.create_local_user("admin", lambda uid: _user(uid, "admin"))
        for spelling in ("ADMIN", FULLWIDTH_ADMIN, "Admin"):
            with pytest.raises(UsernameTaken):
                await d.create_local_user(spelling, lambda uid, s=spelling: _user(uid, s))
        assert d.user_by_name(FULLWIDTH_CAPS) is d.user_by_name("admin") is not None
        assert [u.username for u in d.users.values()] == ["admin"]
    finally:
        await store.close()


async def test_two_replicas_racing_for_one_name_create_one_user(tmp_path: Path) -> None:
    """Both pass the in-memory check before either writes: the store's claim decides."""
    stores = [await SQLiteStore(tmp_path / "db").open() for _ in range(2)]
    a, b = Directory(stores[0]), Directory(stores[1])
    try:
        await a.load()
        await b.load()
        results = await asyncio.gather(
            a.create_local_user("carol", lambda uid: _user(uid, "carol")),
            b.create_local_user("CAROL", lambda uid: _user(uid, "CAROL")),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["User", "UsernameTaken"], results
        a.catch_up()
        b.catch_up()
        assert len(a.users) == len(b.users) == 1
        assert len(await stores[0].list(USER)) == 1
    finally:
        for store in stores:
            await store.close()


async def test_deleting_a_user_frees_its_name(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    d = Directory(store)
    try:
        await d.load()
        user = await d.create_local_user("dave", lambda uid: _user(uid, "dave"))
        await d.delete_user(user.id)
        again = await d.create_local_user("DAVE", lambda uid: _user(uid, "DAVE"))
        assert d.user_by_name("dave") == again
    finally:
        await store.close()


async def test_names_held_before_claims_existed_still_count(tmp_path: Path) -> None:
    """A user stored by an older version (no claim record) still holds its name."""
    store = await SQLiteStore(tmp_path / "db").open()
    d = Directory(store)
    try:
        await d.load()
        await d.put(USER, _user("u-old", "erin"))
        with pytest.raises(UsernameTaken):
            await d.create_local_user("ERIN", lambda uid: _user(uid, "ERIN"))
        other = Directory(store)
        await other.load()
        with pytest.raises(UsernameTaken):
            await other.create_local_user("Erin", lambda uid: _user(uid, "Erin"))
    finally:
        await store.close()


async def test_an_old_pair_that_folds_together_logs_in_by_the_exact_name(tmp_path: Path) -> None:
    """Two users an older version let through (``admin`` and ``ADMIN``): each exact name
    finds its own user; another spelling finds neither."""
    store = await SQLiteStore(tmp_path / "db").open()
    d = Directory(store)
    try:
        await d.load()
        await d.put(USER, _user("u-a", "admin"))
        await d.put(USER, _user("u-b", "ADMIN"))
        assert d.user_by_name("admin") == d.users["u-a"]
        assert d.user_by_name("ADMIN") == d.users["u-b"]
        assert d.user_by_name(FULLWIDTH_ADMIN) is None
    finally:
        await store.close()
