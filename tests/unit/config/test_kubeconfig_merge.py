"""Merging a kubeconfig into another (``config.kubeconfig_merge``), property-tested."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from config.kubeconfig_merge import KubeconfigError, check, dump, load, merge, names

KINDS = {"clusters": "cluster", "users": "user", "contexts": "context"}
_name = st.sampled_from(["a", "b", "c", "a@fqdn", "b@cp1", "dev", "prod", "kind-kind", "x y"])
_value = st.dictionaries(
    st.sampled_from(["server", "token", "cluster", "user", "namespace"]),
    st.text(max_size=8),
    max_size=3,
)


@st.composite
def _entries(draw: st.DrawFn, key: str, unique: bool) -> list[dict[str, Any]]:
    names_ = draw(st.lists(_name, max_size=6, unique=unique))
    return [{"name": n, KINDS[key]: draw(_value)} for n in names_]


@st.composite
def _kubeconfig(draw: st.DrawFn, unique: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["apiVersion"], doc["kind"] = "v1", "Config"
    for key in KINDS:
        if draw(st.integers(0, 4)):  # mostly present
            doc[key] = draw(_entries(key, unique))
    if draw(st.booleans()):
        doc["current-context"] = draw(st.one_of(st.just(""), _name))
    if draw(st.booleans()):
        doc["preferences"] = {"colors": draw(st.booleans())}
    return doc


_existing = st.one_of(_kubeconfig(unique=True), _kubeconfig(unique=False), st.just({}))


@given(_existing, _kubeconfig(), st.booleans())
def test_merging_twice_is_merging_once(
    existing: dict[str, Any], new: dict[str, Any], use_new: bool
) -> None:
    once = merge(existing, new, use_new)
    assert merge(once, new, use_new) == once
    assert load(dump(once)) == once  # and it is a file kubectl and we can read back


@given(_existing, _kubeconfig(), st.booleans())
def test_entries_are_replaced_by_name_and_the_rest_survive(
    existing: dict[str, Any], new: dict[str, Any], use_new: bool
) -> None:
    before = copy.deepcopy(existing), copy.deepcopy(new)
    merged = merge(existing, new, use_new)
    assert (existing, new) == before  # neither input is changed
    for key in KINDS:
        incoming = {e["name"]: e for e in new.get(key) or ()}
        got = merged.get(key) or []
        # Each name the new file has is there once, as the new file has it.
        for name, entry in incoming.items():
            assert [e for e in got if e["name"] == name] == [entry]
        # Every old entry whose name the new file does not have is still there, in order.
        kept = [e for e in existing.get(key) or () if e["name"] not in incoming]
        assert [e for e in got if e["name"] not in incoming] == kept
        # Old names first (in their order), then the new ones the old file lacked.
        old_names = list(dict.fromkeys(names(existing, key)))
        assert list(dict.fromkeys(names(merged, key)))[: len(old_names)] == old_names
    assert merged.get("preferences") == existing.get("preferences")


@given(_existing, _kubeconfig(), st.booleans())
def test_the_current_context_stays_unless_asked(
    existing: dict[str, Any], new: dict[str, Any], use_new: bool
) -> None:
    merged = merge(existing, new, use_new)
    old, incoming = existing.get("current-context"), new.get("current-context")
    if incoming and (use_new or not old):
        assert merged["current-context"] == incoming
    else:
        assert merged["current-context"] == (old or "")


def test_a_missing_file_takes_the_new_one() -> None:
    new = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "a", "cluster": {"server": "https://a"}}],
        "users": [{"name": "a", "user": {"token": "t"}}],
        "contexts": [{"name": "a", "context": {"cluster": "a", "user": "a"}}],
        "current-context": "a",
    }
    assert merge(load(""), new) == new


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "not a mapping"),
        ("clusters: {a: 1}", "clusters is not a list"),
        ("users: [{user: {}}]", r"users\[0\] has no name"),
        ("contexts: [{name: 3}]", r"contexts\[0\] has no name"),
        ("current-context: [a]", "current-context is not a string"),
        ("a: [", "not YAML"),
    ],
)
def test_what_is_not_a_kubeconfig_is_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(KubeconfigError, match=message):
        load(text, "the file")
    with pytest.raises(KubeconfigError):
        check(None if message == "not YAML" else yaml.safe_load(text))
