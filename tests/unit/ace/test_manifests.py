"""The install documents: they parse, deploy/ is their output, the stand-in takes the CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ace import manifests
from ace.records import GROUP, TOKEN_PLURAL, USER_PLURAL
from standin.crds import validate_crd

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_deploy_files_are_the_generated_ones() -> None:
    for name, text in manifests.deploy_files().items():
        path = DEPLOY / name
        assert path.read_text() == text, f"{path} is stale: python -m ace.manifests write deploy"


def test_documents_round_trip_through_yaml() -> None:
    docs = manifests.cluster_documents()
    assert list(yaml.safe_load_all(manifests.to_yaml(docs))) == docs
    kinds = [d["kind"] for d in docs]
    assert kinds == [
        "Namespace",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "DaemonSet",
    ]
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]


def test_crds_are_valid_for_the_stand_in() -> None:
    for crd in manifests.crds():
        validate_crd(crd)
        spec = crd["spec"]
        assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
        (version,) = spec["versions"]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        schema = version["schema"]["openAPIV3Schema"]
        assert schema["type"] == "object" and "spec" not in schema["properties"]
    token, user = manifests.crds()
    assert set(token["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]) >= {
        "userName", "hash", "expiresAt", "enabled",
    }  # fmt: skip
    assert set(user["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]) >= {
        "username", "principalId", "groups", "enabled",
    }  # fmt: skip


def test_rbac_is_read_only_on_exactly_the_two_kinds() -> None:
    sa, role, binding = manifests.rbac()
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "herdgate-system"
    assert role["rules"] == [
        {
            "apiGroups": [GROUP],
            "resources": [TOKEN_PLURAL, USER_PLURAL],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "herdgate-system"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_daemonset_runs_on_control_planes_with_host_network() -> None:
    ds = manifests.daemonset(image="example/herdgate:1")
    pod: dict[str, Any] = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = {e["key"] for t in terms for e in t["matchExpressions"] if e["operator"] == "Exists"}
    assert keys == {"node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/controlplane"}
    (container,) = pod["containers"]
    assert container["image"] == "example/herdgate:1"
    assert container["command"] == ["herdgate", "webhook"]
    assert "127.0.0.1:6440" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels(ds).items()


def pod_labels(ds: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = ds["spec"]["template"]["metadata"]["labels"]
    return labels


def test_apiserver_file_points_at_the_loopback_webhook() -> None:
    config = manifests.apiserver_webhook_config()
    assert config["kind"] == "Config"
    assert config["clusters"][0]["cluster"]["server"] == "http://127.0.0.1:6440/v1/authenticate"
    context = config["contexts"][0]["context"]
    assert context["cluster"] == config["clusters"][0]["name"]
    assert config["current-context"] == config["contexts"][0]["name"]


def test_documents_are_independent_copies() -> None:
    a = manifests.cluster_documents()
    a[-1]["metadata"]["labels"]["x"] = "y"
    assert "x" not in manifests.cluster_documents()[-1]["metadata"]["labels"]
