"""The manifest ``GET /v3/import/<token>.yaml`` serves: every security field on every
container, least-privilege RBAC (no ``*``, no ``cluster-admin`` binding for the agent),
names that refer to each other, the token only in the Secret."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ace.manifests import NAMESPACE
from gateway.clusters import agent_manifest as m
from gateway.clusters.agent_rbac import (
    AGENT_BIND_ROLE,
    AGENT_CLUSTER_ROLE,
    AGENT_NAMESPACE_ROLE,
    AGENT_ROLES_ROLE,
    AGENT_SERVICE_ACCOUNT,
    OWNED_LABEL,
    OWNED_VALUE,
)
from gateway.controllers.access_sync import owned_cluster_roles
from gateway.store.records import PolicyRule, RoleTemplate

TOKEN = "crt-abcde:s3cr3t-value-of-the-token"
PARAMS = m.ManifestParams(
    server_url="https://gw.example.com:8443",
    ca_checksum="ab" * 32,
    token=TOKEN,
    cluster_id="c-12345",
    image="registry.example.com/herdgate/agent:1.2.3",
)


CUSTOM = RoleTemplate(
    id="rt-qwert",
    name="Pod reader",
    context="cluster",
    rules=(PolicyRule(verbs=("get",), api_groups=("",), resources=("pods",)),),
)
OWNED_ROLES = owned_cluster_roles({CUSTOM.id: CUSTOM})
OWNED_NAMES = {"herdgate-cluster-member", "herdgate-rt-rt-qwert"}


def _docs(params: m.ManifestParams = PARAMS, manage_roles: bool = False) -> list[dict[str, Any]]:
    return m.agent_documents(params, owned_roles=OWNED_ROLES, manage_roles=manage_roles)


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs() if d["kind"] == kind]


def _one(kind: str) -> dict[str, Any]:
    (doc,) = _by_kind(kind)
    return doc


def _workloads() -> list[dict[str, Any]]:
    return [_one("Deployment"), _one("DaemonSet")]


def _walk(value: Any) -> list[Any]:
    """Every key and scalar in a document."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in (k, *_walk(v))]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return [value]


def test_apply_order_namespace_first_workloads_last() -> None:
    kinds = [d["kind"] for d in _docs()]
    assert kinds[0] == "Namespace"
    assert kinds.index("ServiceAccount") < kinds.index("Secret") < kinds.index("Deployment")
    assert kinds[-2:] == ["Deployment", "DaemonSet"]
    assert _one("Namespace")["metadata"]["name"] == NAMESPACE


def test_every_object_is_labelled_as_herdgates_and_namespaced_ones_live_in_its_namespace() -> None:
    for doc in _docs():
        assert doc["metadata"]["labels"][OWNED_LABEL] == OWNED_VALUE, doc["kind"]
        if doc["kind"] in ("ServiceAccount", "Secret", "Role", "RoleBinding", "Deployment"):
            assert doc["metadata"]["namespace"] == NAMESPACE
    names = [(d["kind"], d["metadata"]["name"]) for d in _docs()]
    assert len(names) == len(set(names))


def test_every_container_is_locked_down() -> None:
    for workload in _workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert isinstance(pod["securityContext"]["runAsUser"], int)
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "hostNetwork" not in pod and "hostPID" not in pod
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["privileged"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            for key in ("requests", "limits"):
                assert set(container["resources"][key]) == {"cpu", "memory"}
            assert container["imagePullPolicy"] == "IfNotPresent"
            assert container["image"] == PARAMS.image


def test_probes_hit_the_health_listener_the_environment_opens() -> None:
    for workload in _workloads():
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["HERDGATE_HEALTH_LISTEN"]["value"] == f"0.0.0.0:{m.HEALTH_PORT}"
        (port,) = container["ports"]
        assert port["containerPort"] == m.HEALTH_PORT
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}


def test_gateway_url_checksum_and_token_from_the_secret() -> None:
    secret = _one("Secret")
    assert secret["metadata"]["name"] == m.TOKEN_SECRET
    assert base64.b64decode(secret["data"][m.TOKEN_KEY]).decode() == TOKEN
    for workload in _workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == AGENT_SERVICE_ACCOUNT
        assert pod["automountServiceAccountToken"] is True
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["HERDGATE_SERVER"]["value"] == PARAMS.server_url
        assert env["HERDGATE_CA_CHECKSUM"]["value"] == PARAMS.ca_checksum
        assert env["HERDGATE_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": m.TOKEN_SECRET,
            "key": m.TOKEN_KEY,
        }
        assert container["command"] == ["herdgate"] and container["args"][0] == "agent"
    # The plaintext token appears in the Secret (base64) and nowhere else.
    text = json.dumps([d for d in _docs() if d["kind"] != "Secret"])
    assert TOKEN not in text and "s3cr3t" not in text


def test_no_checksum_when_the_gateway_certificate_is_public() -> None:
    public = m.ManifestParams(PARAMS.server_url, "", TOKEN, PARAMS.cluster_id, PARAMS.image)
    for doc in m.agent_documents(public):
        if doc["kind"] in ("Deployment", "DaemonSet"):
            names = [e["name"] for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]]
            assert "HERDGATE_CA_CHECKSUM" not in names


def test_cluster_agent_two_replicas_spread_by_hostname() -> None:
    deployment = _one("Deployment")
    assert deployment["metadata"]["name"] == m.CLUSTER_AGENT
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in spec["selector"]["matchLabels"].items())
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    )
    assert "--node-name" not in spec["template"]["spec"]["containers"][0]["args"]


def test_node_agents_everywhere_named_by_the_downward_api() -> None:
    daemonset = _one("DaemonSet")
    assert daemonset["metadata"]["name"] == m.NODE_AGENT
    pod = daemonset["spec"]["template"]["spec"]
    tolerations = {(t["key"], t["effect"]) for t in pod["tolerations"]}
    assert ("node-role.kubernetes.io/control-plane", "NoSchedule") in tolerations
    assert ("node-role.kubernetes.io/master", "NoSchedule") in tolerations
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--node-name") + 1] == f"$({m.NODE_NAME_VAR})"
    (node_env,) = [e for e in container["env"] if e["name"] == m.NODE_NAME_VAR]
    assert node_env["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # Defined before use: Kubernetes expands $(VAR) only from variables listed earlier.
    assert container["env"][0]["name"] == m.NODE_NAME_VAR


def test_rbac_has_no_wildcard_and_no_cluster_admin_binding() -> None:
    for doc in _docs():
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for key in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                    assert not any("*" in item for item in rule.get(key, [])), (doc, rule)
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            assert doc["roleRef"]["name"] != "cluster-admin"
            assert doc["roleRef"]["name"] in (
                AGENT_CLUSTER_ROLE,
                AGENT_BIND_ROLE,
                AGENT_NAMESPACE_ROLE,
            )
    assert "cluster-admin" not in [d["roleRef"]["name"] for d in _docs() if "roleRef" in d]
    assert not any(item == "*" for item in _walk(_docs()))


def test_bindings_refer_to_roles_and_the_service_account_in_the_manifest() -> None:
    docs = _docs()
    roles = {
        (d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("ClusterRole", "Role")
    }
    sa = _one("ServiceAccount")["metadata"]
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert {b["roleRef"]["name"] for b in bindings} == {n for _, n in roles} - OWNED_NAMES
    for binding in bindings:
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]


def test_yaml_round_trips_without_aliases() -> None:
    text = m.to_yaml(_docs())
    assert "&id" not in text and "*id" not in text
    assert [d for d in yaml.safe_load_all(text)] == _docs()


def test_default_image_names_the_gateway_version() -> None:
    assert m.default_image("0.1.0") == "herdgate/agent:0.1.0"


@settings(deadline=None)  # YAML of the whole manifest: slow on a busy box, not wrong
@given(
    token=st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
        max_size=80,
    )
)
def test_any_token_text_survives_yaml(token: str) -> None:
    params = m.ManifestParams(PARAMS.server_url, PARAMS.ca_checksum, token, "c-1", "i:1")
    (secret,) = [
        d for d in yaml.safe_load_all(m.to_yaml(m.agent_documents(params))) if d["kind"] == "Secret"
    ]
    assert base64.b64decode(secret["data"][m.TOKEN_KEY]).decode() == token


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_pods_carry_the_cluster_id(kind: str) -> None:
    template = _one(kind)["spec"]["template"]
    assert template["metadata"]["annotations"][m.CLUSTER_ID_ANNOTATION] == PARAMS.cluster_id


def _cluster_role_rules(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    (role,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name]
    return list(role["rules"])


def test_by_default_the_agent_may_not_create_or_escalate_roles() -> None:
    """It binds herdgate's roles, it does not write them: they come with the manifest
    (applied by the cluster's administrator), listed in its bind role."""
    docs = _docs()
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert AGENT_ROLES_ROLE not in bound
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role") and doc["metadata"]["name"] in bound | {
            AGENT_NAMESPACE_ROLE
        }:
            for rule in doc["rules"]:
                if "clusterroles" in rule.get("resources", []):
                    assert not {"create", "escalate"} & set(rule["verbs"]), rule
                    if {"update", "patch", "delete"} & set(rule["verbs"]):
                        assert rule.get("resourceNames"), rule  # named roles only
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"}
    assert names >= OWNED_NAMES
    bind_rule, owned_rule = _cluster_role_rules(docs, AGENT_BIND_ROLE)
    assert set(bind_rule["resourceNames"]) == {
        "cluster-admin", "admin", "edit", "view", *OWNED_NAMES
    }  # fmt: skip
    assert set(owned_rule["resourceNames"]) == OWNED_NAMES
    rules = {d["metadata"]["name"]: d["rules"] for d in OWNED_ROLES}
    assert _cluster_role_rules(docs, "herdgate-rt-rt-qwert") == rules["herdgate-rt-rt-qwert"]


def test_roles_managed_adds_create_and_escalate() -> None:
    docs = _docs(manage_roles=True)
    (rule,) = _cluster_role_rules(docs, AGENT_ROLES_ROLE)
    assert rule == {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"],
        "verbs": ["create", "escalate"],
    }
    (binding,) = [
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == AGENT_ROLES_ROLE
    ]
    assert binding["roleRef"]["name"] == AGENT_ROLES_ROLE
    assert binding["subjects"][0]["name"] == AGENT_SERVICE_ACCOUNT
