"""Kubeconfig documents: one block per cluster, every entry named after its cluster."""

from __future__ import annotations

import base64
import re

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from config.errors import ConfigError
from config.kubeconfig_merge import dump, merge
from config.schema import KubeconfigSettings
from gateway.api import kubeconfigs
from gateway.api.kubeconfig import (
    ClusterBlock,
    Endpoint,
    document,
    endpoints,
    exec_user,
    token_user,
)
from gateway.store.records import Cluster
from herdgate import login

SERVER = "https://gw:8443"
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
"""Cluster names as ``gateway.api.clusters`` accepts them."""


def _cluster(name: str, cluster_id: str = "", **ace: object) -> Cluster:
    return Cluster(cluster_id or f"c-{name}", name, 1.0, ca_cert="CLUSTER-CA", **ace)  # type: ignore[arg-type]


def test_one_cluster_with_a_direct_endpoint() -> None:
    cluster = _cluster("dev", ace_enabled=True, ace_fqdn="k.example:6443")
    doc = document([ClusterBlock("dev", endpoints(cluster, SERVER, "GW-CA"), token_user("t:s"))])
    assert doc["current-context"] == "dev"
    assert [c["name"] for c in doc["contexts"]] == ["dev", "dev@fqdn"]
    servers = {c["name"]: c["cluster"]["server"] for c in doc["clusters"]}
    assert servers == {"dev": f"{SERVER}/k8s/clusters/c-dev", "dev@fqdn": "https://k.example:6443"}
    cas = {
        c["name"]: base64.b64decode(c["cluster"]["certificate-authority-data"])
        for c in doc["clusters"]
    }
    assert cas == {"dev": b"GW-CA", "dev@fqdn": b"CLUSTER-CA"}  # no caCerts: the cluster's CA
    assert doc["users"] == [{"name": "dev", "user": {"token": "t:s"}}]
    assert {c["context"]["user"] for c in doc["contexts"]} == {"dev"}


def test_direct_endpoints_per_node_keep_the_whole_node_name() -> None:
    """Nodes ``cp1`` and ``edge-cp1`` are two contexts (Rancher's ``<cluster>-<node>`` with
    the cluster's prefix cut off made one name of them)."""
    cluster = _cluster(
        "edge",
        ace_enabled=True,
        ace_nodes=(("cp1", "https://10.0.0.1:6443"), ("edge-cp1", "https://10.0.0.2:6443")),
    )
    names = [e.context for e in endpoints(cluster, SERVER, "")]
    assert names == ["edge", "edge@cp1", "edge@edge-cp1"]
    assert [e.context for e in endpoints(_cluster("off", ace_fqdn="x"), SERVER, "")] == ["off"]


def test_several_clusters_share_one_credential_in_a_user_entry_each() -> None:
    user = token_user("token-1:secret")
    blocks = [
        ClusterBlock(c.name, endpoints(c, SERVER, "CA"), user)
        for c in (_cluster("a"), _cluster("b", ace_enabled=True, ace_fqdn="b.example"))
    ]
    doc = document(blocks)
    assert [u["name"] for u in doc["users"]] == ["a", "b"]
    assert {u["user"]["token"] for u in doc["users"]} == {"token-1:secret"}
    assert [(c["name"], c["context"]["user"]) for c in doc["contexts"]] == [
        ("a", "a"),
        ("b", "b"),
        ("b@fqdn", "b"),
    ]
    assert doc["current-context"] == "a"
    text = dump(doc)
    assert "&id" not in text and "*id" not in text  # no YAML aliases for the shared entry
    assert yaml.safe_load(text) == doc


def test_a_name_that_would_repeat_is_refused() -> None:
    block = ClusterBlock("a", [Endpoint("a", "https://x")], token_user("t"))
    with pytest.raises(ValueError, match="share a name"):
        document([block, block])
    with pytest.raises(ValueError, match="at least one"):
        document([])


_names = st.from_regex(NAME, fullmatch=True)
_nodes = st.lists(st.text(min_size=1, max_size=12), max_size=3, unique=True)


@st.composite
def _clusters(draw: st.DrawFn) -> list[Cluster]:
    names = draw(st.lists(_names, min_size=1, max_size=6, unique=True))
    out = []
    for index, name in enumerate(names):
        kind = draw(st.sampled_from(["none", "fqdn", "nodes"]))
        nodes = tuple((n, f"https://{i}.example") for i, n in enumerate(draw(_nodes)))
        out.append(
            _cluster(
                name,
                f"c-{index}",
                ace_enabled=kind != "none",
                ace_fqdn="k.example" if kind == "fqdn" else "",
                ace_nodes=nodes if kind == "nodes" else (),
            )
        )
    return out


@given(_clusters())
def test_entry_names_never_collide_and_name_their_cluster(clusters: list[Cluster]) -> None:
    """Any cluster names herdgate accepts, with any direct endpoints: every list's names
    are unique, and the part before the first ``@`` is the cluster each entry is for."""
    blocks = [ClusterBlock(c.name, endpoints(c, SERVER, "CA"), token_user("t")) for c in clusters]
    doc = document(blocks)
    for key in ("clusters", "users", "contexts"):
        names = [e["name"] for e in doc[key]]
        assert len(names) == len(set(names)), names
    by_name = {c.name: c for c in clusters}
    for context in doc["contexts"]:
        owner = context["name"].partition("@")[0]
        assert owner in by_name and context["context"]["user"] == owner
        if "@" not in context["name"]:
            server = next(c for c in doc["clusters"] if c["name"] == context["name"])
            assert server["cluster"]["server"].endswith(f"/k8s/clusters/{by_name[owner].id}")


def _block(cluster: Cluster, token: str) -> ClusterBlock:
    return ClusterBlock(cluster.name, endpoints(cluster, SERVER, "CA"), token_user(token))


@given(_clusters(), st.data())
def test_merging_one_clusters_kubeconfig_replaces_only_its_entries(
    clusters: list[Cluster], data: st.DataObject
) -> None:
    """The file for every cluster, then one cluster's new file merged in: that cluster's
    entries are the new ones, every other entry is untouched."""
    old = document([_block(c, "old") for c in clusters])
    changed = data.draw(st.sampled_from(clusters))
    new = document([_block(changed, "new")])
    merged = merge(old, new)
    for key in ("clusters", "users", "contexts"):
        assert [e["name"] for e in merged[key]] == [e["name"] for e in old[key]]
        for entry in merged[key]:
            mine = entry["name"].partition("@")[0] == changed.name
            source = new if mine else old
            assert entry == next(e for e in source[key] if e["name"] == entry["name"])
    assert merged["current-context"] == old["current-context"]


def test_exec_user_logs_in_once_for_all_its_clusters_and_says_how_to_install() -> None:
    user = exec_user(SERVER, "local", ["c-a", "c-b"])["exec"]
    assert user["command"] == "herdgate"
    assert user["args"] == ["login", "--server", SERVER, "--provider", "local",
                            "--cluster", "c-a", "--cluster", "c-b"]  # fmt: skip
    assert "PATH" in user["installHint"] and "herdgate" in user["installHint"]
    assert SERVER in user["installHint"] and "kubeconfig.exec_command" in user["installHint"]
    custom = exec_user(SERVER, "ldap", ["c-a"], "/opt/hg bin/herdgate", "ask the desk")["exec"]
    assert custom["command"] == "/opt/hg bin/herdgate" and custom["installHint"] == "ask the desk"
    default_hint = exec_user(SERVER, "ldap", ["c-a"], "/opt/hg bin/herdgate")["exec"]
    assert "'/opt/hg bin/herdgate' login" in default_hint["installHint"]


def test_the_providers_offered_are_those_herdgate_login_takes() -> None:
    assert set(kubeconfigs.LOGIN_PROVIDERS) == {*login.PROVIDER_PATHS, *login.DEVICE_PROVIDERS}


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"exec_command": ""}, "kubeconfig.exec_command"),
        ({"exec_command": "herd\ngate"}, "kubeconfig.exec_command"),
        ({"exec_install_hint": "bell\x07"}, "kubeconfig.exec_install_hint"),
    ],
)
def test_exec_settings_are_checked(fields: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        KubeconfigSettings(**fields)
    assert KubeconfigSettings(exec_install_hint="two\nlines").exec_install_hint == "two\nlines"
