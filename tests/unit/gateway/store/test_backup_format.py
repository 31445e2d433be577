"""Issue 19: the backup file's format and the store URLs of ``herdgate store`` (pure)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.errors import ConfigError
from config.schema import StoreSettings
from gateway.store.backup import FORMAT, Backup, BackupError, decode, encode
from gateway.store.cli import store_from_url

names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=20
)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
documents = st.dictionaries(
    st.tuples(
        names.filter(lambda n: "/" not in n and n.isprintable()), names.filter(str.isprintable)
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    max_size=8,
)


@given(documents, st.integers(1, 50), st.integers(0, 10**12))
def test_a_backup_reads_back_as_written(
    docs: dict[tuple[str, str], dict[str, Any]], schema: int, revision: int
) -> None:
    items = tuple(sorted(((k, key, v) for (k, key), v in docs.items()), key=lambda d: d[:2]))
    backup = Backup(schema, revision, 1_700_000_000.0, items)
    data = encode(backup)
    json.loads(data)  # plain JSON, readable by any tool
    back = decode(data)
    assert (back.schema, back.revision, back.documents) == (schema, revision, items)


@given(st.binary(max_size=300))
def test_any_bytes_are_a_backup_or_a_clear_error(data: bytes) -> None:
    try:
        decode(data)
    except BackupError as exc:
        assert "\n" not in str(exc)


@given(json_values)
def test_any_json_is_a_backup_or_a_clear_error(value: Any) -> None:
    for wrapped in (value, {"format": FORMAT, "schema": 2, "revision": 1, "documents": value}):
        try:
            decode(json.dumps(wrapped).encode())
        except BackupError as exc:
            assert "\n" not in str(exc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a herdgate store backup"),
        ({"schema": 0}, "schema version"),
        ({"schema": True}, "schema version"),
        ({"revision": -1}, "revision"),
        ({"documents": {}}, "no list of documents"),
        ({"documents": [{"kind": "users", "key": "u", "value": []}]}, "value is not an object"),
        ({"documents": [{"kind": "a/b", "key": "u", "value": {}}]}, "kind is not a name"),
        ({"documents": [{"kind": "users", "key": "", "value": {}}]}, "key is not a name"),
        ({"documents": [{"kind": "users", "key": "u", "value": {}}] * 2}, "appears twice"),
        ({"count": 3}, "says 3 documents but holds 0"),
    ],
)
def test_what_is_wrong_is_named(change: dict[str, Any], message: str) -> None:
    top = {"format": FORMAT, "schema": 2, "revision": 5, "documents": [], **change}
    with pytest.raises(BackupError, match=message):
        decode(json.dumps(top).encode())


def test_store_urls() -> None:
    assert store_from_url("sqlite:///var/lib/h.db", "--from") == StoreSettings(
        backend="sqlite", sqlite_path="/var/lib/h.db"
    )
    etcd = store_from_url("etcd://127.0.0.1:2379,[::1]:2380/ha/herd", "--to")
    assert etcd.backend == "etcd"
    assert etcd.etcd_endpoints == ("http://127.0.0.1:2379", "http://[::1]:2380")
    assert etcd.etcd_prefix == "/ha/herd/"
    assert store_from_url("etcd://e1:2379", "--to").etcd_prefix == "/herdgate/"
    for bad, message in [
        ("/var/lib/h.db", "not a store URL"),
        ("sqlite://", "needs a file"),
        ("etcd://host", "not HOST:PORT"),
        ("etcd://host:99999", "not HOST:PORT"),
        ("etcd://u:p@host:1", "not HOST:PORT"),
        ("mysql://host:1", "unknown store"),
    ]:
        with pytest.raises(ConfigError, match=message) as caught:
            store_from_url(bad, "--from")
        assert caught.value.path == "--from"


@given(st.text(max_size=60))
def test_any_url_is_a_store_or_a_configuration_error(text: str) -> None:
    for url in (text, "etcd://" + text, "sqlite://" + text):
        with contextlib.suppress(ConfigError):
            store_from_url(url, "--from")


def test_cluster_statuses_are_kept_without_their_lease_generation() -> None:
    """Leases are not backed up, and a new store's first lease holders start again at a
    low generation: a status restored with the old store's would fence them off."""
    from gateway.store.backup import kept
    from gateway.store.records import CLUSTER, CLUSTER_STATUS, LEASE

    status = {"id": "c-1", "state": "active", "generation": 41, "replica": "r-1"}
    documents = [
        (CLUSTER, "c-1", {"id": "c-1", "generation": 3}),
        (CLUSTER_STATUS, "c-1", status),
        (LEASE, "cluster/c-1", {"holder": "r-1", "generation": 41}),
    ]
    assert kept(documents) == [
        (CLUSTER, "c-1", {"id": "c-1", "generation": 3}),
        (CLUSTER_STATUS, "c-1", {"id": "c-1", "state": "active", "replica": "r-1"}),
    ]
    assert status["generation"] == 41  # the store's own document is not changed
