"""Kubeconfigs of several clusters merged into one (gateway.ui.kubeconfigs.merge)."""

from __future__ import annotations

import pytest
import yaml

from gateway.api import kubeconfig
from gateway.ui.kubeconfigs import merge


def doc(name: str, *extra: str) -> dict[str, object]:
    endpoints = [kubeconfig.Endpoint(name, f"https://gw/k8s/clusters/c-{name}", "CA")]
    endpoints += [kubeconfig.Endpoint(e, f"https://{e}.example", "") for e in extra]
    loaded: dict[str, object] = yaml.safe_load(kubeconfig.build(name, endpoints, f"tok-{name}"))
    return loaded


def test_merged_clusters_keep_each_token_and_the_first_context() -> None:
    merged = yaml.safe_load(merge([doc("dev", "dev-fqdn"), doc("prod")]))
    assert merged["current-context"] == "dev"
    assert [c["name"] for c in merged["contexts"]] == ["dev", "dev-fqdn", "prod"]
    by_name = {c["name"]: c["context"] for c in merged["contexts"]}
    assert by_name["dev-fqdn"] == {"cluster": "dev-fqdn", "user": "dev"}
    assert by_name["prod"] == {"cluster": "prod", "user": "prod"}
    assert {u["name"]: u["user"]["token"] for u in merged["users"]} == {
        "dev": "tok-dev",
        "prod": "tok-prod",
    }
    servers = {c["name"]: c["cluster"]["server"] for c in merged["clusters"]}
    assert servers["prod"] == "https://gw/k8s/clusters/c-prod"


def test_names_taken_by_another_cluster_get_a_suffix() -> None:
    # Cluster "a" has a direct context "a-fqdn"; another cluster is called "a-fqdn".
    merged = yaml.safe_load(merge([doc("a", "a-fqdn"), doc("a-fqdn")]))
    contexts = {c["name"]: c["context"] for c in merged["contexts"]}
    assert contexts == {
        "a": {"cluster": "a", "user": "a"},
        "a-fqdn": {"cluster": "a-fqdn", "user": "a"},
        "a-fqdn-2": {"cluster": "a-fqdn-2", "user": "a-fqdn"},
    }
    servers = {c["name"]: c["cluster"]["server"] for c in merged["clusters"]}
    assert servers["a-fqdn"] == "https://a-fqdn.example"
    assert servers["a-fqdn-2"] == "https://gw/k8s/clusters/c-a-fqdn"
    assert len({u["name"] for u in merged["users"]}) == 2


def test_nothing_to_merge() -> None:
    with pytest.raises(ValueError, match="no kubeconfig"):
        merge([])
