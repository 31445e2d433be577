"""Authorized cluster endpoint: kubectl straight to the API server, authenticated by the
real webhook from records the gateway keeps in step through the tunnel."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.clusters import agent_rbac
from tests.binaries import kubectl
from tests.integration.conftest import (
    AGENT_SA_TOKEN,
    CLUSTER_ADMIN_TOKEN,
    NO_AGENT,
    World,
)
from tests.integration.env import (
    REPO_ROOT,
    Gateway,
    free_port,
    kubectl_run,
    wait_until,
    write_kubeconfig,
)
from tests.integration.webhook_env import (
    ace_endpoint,
    ace_standin,
    start_cluster_webhook,
    webhook_healthy,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("ace")
    webhook_port = free_port()
    standin = ace_standin(tmp, webhook_port)
    gateway = Gateway(tmp / "gateway", free_port(), tmp / "gateway.log").start()
    admin = gateway.admin()
    cluster = admin.post(
        "/v3/clusters", {"name": "edge", "localClusterAuthEndpoint": ace_endpoint(standin)}
    )
    agent_kc = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    world = World(tmp, standin, gateway, admin, cluster["id"], "edge", NO_AGENT, agent_kc)
    world.agent = world.start_agent()
    world.wait_state("active")
    world.wait_admin_synced()
    webhook = start_cluster_webhook(tmp, standin, webhook_port)
    wait_until(lambda: webhook_healthy(webhook_port), 20, "webhook never became healthy")
    try:
        yield world
    finally:
        webhook.stop()
        world.agent.stop()
        world.gateway.stop()
        standin.stop()


def whoami(kc: Path, context: str, version: str = "1.32") -> dict[str, Any] | None:
    out = kubectl_run(
        kubectl(version),
        kc,
        "--context",
        context,
        "auth",
        "whoami",
        "-o",
        "json",
        home=kc.parent / f"home-{kc.name}-{context}",
    )
    if out.returncode != 0:
        return None
    info: dict[str, Any] = json.loads(out.stdout)["status"]["userInfo"]
    return info


def kubeconfig(world: World, api: Any, name: str) -> tuple[Path, dict[str, Any]]:
    text = api.post(f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig")["config"]
    return write_kubeconfig(world.tmp / f"kubeconfig-{name}", text), yaml.safe_load(text)


def records(world: World, plural: str) -> list[str]:
    kc = world.standin.kubeconfig(world.tmp / "admin-direct", token=CLUSTER_ADMIN_TOKEN)
    out = kubectl_run(kubectl("1.32"), kc, "get", plural, "-n", "herdgate-system", "-o", "json")
    if out.returncode != 0:
        return []
    return [i["metadata"]["name"] for i in json.loads(out.stdout)["items"]]


def test_ace_context_shows_the_same_identity_as_the_gateway(ace: World) -> None:
    user_id, api = ace.user("alice", role="cluster-member")
    kc, doc = kubeconfig(ace, api, "alice")
    assert [c["name"] for c in doc["contexts"]] == ["edge", "edge@fqdn"]
    assert doc["current-context"] == "edge"
    via_gateway = whoami(kc, "edge")
    assert via_gateway is not None and via_gateway["username"] == user_id
    direct = wait_until(lambda: whoami(kc, "edge@fqdn"), 10, "ACE context never worked")
    assert direct["username"] == user_id
    assert set(direct["groups"]) == set(via_gateway["groups"])
    assert direct["extra"] == via_gateway["extra"]
    assert whoami(kc, "edge@fqdn", "1.27") is not None
    out = kubectl_run(kubectl("1.32"), kc, "--context", "edge@fqdn", "get", "pods")
    assert out.returncode == 0, out.stderr


def test_ace_works_while_the_gateway_is_down(ace: World) -> None:
    user_id, api = ace.user("bob", role="cluster-member")
    kc, _ = kubeconfig(ace, api, "bob")
    wait_until(lambda: whoami(kc, "edge@fqdn"), 10, "ACE context never worked")
    ace.gateway.stop()
    try:
        assert whoami(kc, "edge@fqdn")["username"] == user_id  # type: ignore[index]
        out = kubectl_run(kubectl("1.32"), kc, "--context", "edge", "get", "pods")
        assert out.returncode != 0
        assert "connection refused" in out.stderr or "connect:" in out.stderr
    finally:
        ace.gateway.start()
        ace.wait_state("active", timeout=30)


def test_revoked_disabled_expired_are_refused(ace: World) -> None:
    user_id, api = ace.user("carol", role="cluster-member")
    kc, doc = kubeconfig(ace, api, "carol")
    wait_until(lambda: whoami(kc, "edge@fqdn"), 10, "ACE context never worked")
    token_id = doc["users"][0]["user"]["token"].split(":")[0]
    api.delete(f"/v3/tokens/{token_id}")
    revoked_at = time.monotonic()
    wait_until(lambda: whoami(kc, "edge@fqdn") is None, 5, "revoked token still accepted")
    assert time.monotonic() - revoked_at < 5

    kc2, _ = kubeconfig(ace, api, "carol2")
    wait_until(lambda: whoami(kc2, "edge@fqdn"), 10, "new token never synced")
    ace.admin.put(f"/v3/users/{user_id}", {"enabled": False})
    wait_until(lambda: whoami(kc2, "edge@fqdn") is None, 5, "disabled user still accepted")
    ace.admin.put(f"/v3/users/{user_id}", {"enabled": True})

    short = api.post("/v3/tokens", {"ttl": 3000, "clusterId": ace.cluster_id})["token"]
    doc3 = yaml.safe_load(kc2.read_text())
    doc3["users"][0]["user"]["token"] = short
    kc3 = write_kubeconfig(ace.tmp / "kubeconfig-short", yaml.safe_dump(doc3))
    wait_until(lambda: whoami(kc3, "edge@fqdn"), 10, "short token never synced")
    time.sleep(3.2)
    wait_until(lambda: whoami(kc3, "edge@fqdn") is None, 5, "expired token still accepted")


def test_users_without_binding_are_never_synced(ace: World) -> None:
    user_id, api = ace.user("dave")
    token_id = api.token.split(":")[0]
    bound_id, bound = ace.user("erin", role="read-only")
    wait_until(
        lambda: bound.token.split(":")[0] in records(ace, "clusterauthtokens"),
        10,
        "bound user's token not synced",
    )
    assert token_id not in records(ace, "clusterauthtokens")
    assert user_id not in records(ace, "clusteruserattributes")
    assert bound_id in records(ace, "clusteruserattributes")


def test_node_contexts_when_no_fqdn(ace: World) -> None:
    port = ace.standin.url.rsplit(":", 1)[1]
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "edge-cp-1",
            "labels": {"node-role.kubernetes.io/control-plane": ""},
            "annotations": {"herdgate.dev/apiserver-port": port},
        },
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
    }
    admin_kc = ace.standin.kubeconfig(ace.tmp / "admin-direct", token=CLUSTER_ADMIN_TOKEN)
    out = kubectl_run(kubectl("1.32"), admin_kc, "apply", "-f", "-", stdin=json.dumps(node))
    assert out.returncode == 0, out.stderr
    ace.admin.put(
        f"/v3/clusters/{ace.cluster_id}",
        {"localClusterAuthEndpoint": {"enabled": True, "fqdn": ""}},
    )
    wait_until(
        lambda: (
            "edge-cp-1" in [n["name"] for n in ace.cluster()["localClusterAuthEndpoint"]["nodes"]]
        ),
        10,
        "control-plane node not seen",
    )
    user_id, api = ace.user("frank", role="cluster-owner")
    kc, doc = kubeconfig(ace, api, "frank")
    names = [c["name"] for c in doc["contexts"]]
    assert names[0] == "edge" and "edge@edge-cp-1" in names and "edge@fqdn" not in names
    direct = wait_until(lambda: whoami(kc, "edge@edge-cp-1"), 10, "node context never worked")
    assert direct["username"] == user_id


def test_webhook_manifests_are_served(ace: World) -> None:
    ctx = ssl.create_default_context(cafile=str(ace.gateway.ca_file))
    request = urllib.request.Request(
        f"{ace.gateway.url}/v3/clusters/{ace.cluster_id}/authendpoint/manifests.yaml",
        headers={"Authorization": f"Bearer {ace.admin.token}"},
    )
    with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
        docs = list(yaml.safe_load_all(resp.read()))
    kinds = {d["kind"] for d in docs if d}
    assert {"CustomResourceDefinition", "DaemonSet", "ServiceAccount"} <= kinds
    assert REPO_ROOT.exists()


def _ace_synced(world: World) -> dict[str, Any] | None:
    conditions: Any = world.cluster()["conditions"]
    return next((c for c in conditions if c["type"] == "ACESynced"), None)


def test_a_failing_ace_sync_shows_in_the_clusters_conditions(ace: World) -> None:
    """The ACE sync's failures are the cluster's ``ACESynced`` condition (``Synced`` stays
    the access sync's): without the agent's rights on the records it turns False with
    the cluster's answer, and True again once they are back."""
    wait_until(
        lambda: (c := _ace_synced(ace)) is not None and c["status"] == "True",
        15,
        "ACESynced never True",
    )
    admin_kc = ace.cluster_admin_kubeconfig()
    role = agent_rbac.agent_namespace_role()
    out = kubectl_run(
        kubectl("1.32"),
        admin_kc,
        "delete",
        "role",
        role["metadata"]["name"],
        "-n",
        "herdgate-system",
    )
    assert out.returncode == 0, out.stderr
    try:
        ace.user("grace", role="cluster-member")  # something to sync
        failed = wait_until(
            lambda: (c := _ace_synced(ace)) is not None and c["status"] == "False" and c,
            20,
            "ACESynced never turned False",
        )
        assert failed["reason"] == "SyncFailed"
        assert "403" in failed["message"], failed
        synced = next(c for c in ace.cluster()["conditions"] if c["type"] == "Synced")  # type: ignore[union-attr, index]
        assert synced["status"] == "True"  # the access sync is not the one failing
    finally:
        out = kubectl_run(kubectl("1.32"), admin_kc, "apply", "-f", "-", stdin=json.dumps(role))
        assert out.returncode == 0, out.stderr
    wait_until(
        lambda: (c := _ace_synced(ace)) is not None and c["status"] == "True",
        20,
        "ACESynced never True again",
    )
