"""Tokens scoped to several clusters (a kubeconfig for many): where they are valid, how
they are stored, what deleting one of their clusters does, and the ACE records they get."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.controllers.ace_sync import desired_records
from gateway.identity.directory import Directory
from gateway.store.records import (
    BINDING,
    CLUSTER,
    TOKEN,
    USER,
    Binding,
    Cluster,
    Token,
    User,
    from_doc,
    to_doc,
    token_scope,
)
from gateway.store.sqlite import SQLiteStore

_ids = st.lists(st.sampled_from(["c-a", "c-b", "c-c", "c-d", "c-e"]), max_size=5)


def _token(scope: list[str]) -> Token:
    return Token("token-x", "u-1", "", 0.0, None, kind="kubeconfig", **token_scope(scope))


@given(_ids, st.sampled_from(["c-a", "c-b", "c-c", "c-d", "c-e", "c-zz", ""]))
def test_a_token_is_valid_on_exactly_its_clusters(scope: list[str], cluster: str) -> None:
    token = _token(scope)
    assert token.scope == tuple(dict.fromkeys(scope))
    if scope:
        assert token.valid_on(cluster) == (cluster in scope)
    else:
        assert token.valid_on(cluster)


@given(_ids)
def test_what_an_older_reader_sees_is_never_wider(scope: list[str]) -> None:
    """Code (or a gateway version) that reads only ``cluster_id`` sees a token scoped to
    its first cluster: narrower than the real scope, never unscoped."""
    token = _token(scope)
    assert bool(token.cluster_id) == bool(scope)
    if scope:
        assert token.cluster_id == scope[0]
    old_view = from_doc(Token, {k: v for k, v in to_doc(token).items() if k != "cluster_ids"})
    assert set(old_view.scope) <= set(token.scope)
    assert bool(old_view.scope) == bool(token.scope)


def test_the_stored_document_round_trips() -> None:
    token = _token(["c-a", "c-b"])
    assert from_doc(Token, to_doc(token)) == token
    one = _token(["c-a"])
    assert to_doc(one)["cluster_ids"] == () and one.cluster_id == "c-a"


async def _directory(tmp_path: Path) -> tuple[SQLiteStore, Directory]:
    store = await SQLiteStore(tmp_path / "db").open()
    d = Directory(store, clock=lambda: 1000.0)
    await d.load()
    await d.put(USER, _user())
    for name in ("a", "b", "c"):
        await d.put(CLUSTER, Cluster(f"c-{name}", name, 1.0))
    return store, d


def _user() -> User:
    return User("u-1", "ann", "", 0.0, principal_ids=("local://u-1",))


async def test_issue_and_delete_a_cluster_narrows_the_token(tmp_path: Path) -> None:
    store, d = await _directory(tmp_path)
    try:
        user = d.users["u-1"]
        multi, _ = await d.issue_token(user, 60, "kubeconfig", cluster_ids=["c-a", "c-b"])
        single, _ = await d.issue_token(user, 60, "kubeconfig", cluster_id="c-b")
        assert multi.scope == ("c-a", "c-b") and single.scope == ("c-b",)
        await d.delete_cluster("c-a")
        narrowed = d.tokens[multi.id]
        assert narrowed.scope == ("c-b",) and narrowed.cluster_id == "c-b"
        assert narrowed.cluster_ids == ()
        # What another process reads back from the store is the same.
        other = Directory(store)
        await other.load()
        assert other.tokens[multi.id].scope == ("c-b",)
        await d.delete_cluster("c-b")
        assert multi.id not in d.tokens and single.id not in d.tokens
    finally:
        await store.close()


async def test_ace_records_go_to_each_cluster_of_the_scope_the_user_holds_a_role_on(
    tmp_path: Path,
) -> None:
    store, d = await _directory(tmp_path)
    try:
        for cluster in ("c-a", "c-b", "c-c"):
            await d.put(BINDING, Binding(f"b-{cluster}", cluster, "cluster-member", 1.0, "u-1"))
        user = d.users["u-1"]
        multi, _ = await d.issue_token(user, 60, "kubeconfig", cluster_ids=["c-a", "c-b"])
        holding = {c: set(desired_records(d, c, 1000.0)[0]) for c in ("c-a", "c-b", "c-c")}
        assert holding == {"c-a": {multi.id}, "c-b": {multi.id}, "c-c": set()}
        await d.delete(BINDING, "b-c-b")  # the user loses cluster b: its record goes there
        assert set(desired_records(d, "c-b", 1000.0)[0]) == set()
        assert set(desired_records(d, "c-a", 1000.0)[0]) == {multi.id}
        assert d.tokens[multi.id] == from_doc(Token, (await store.get(TOKEN, multi.id)) or {})
    finally:
        await store.close()
