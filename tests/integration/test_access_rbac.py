"""What the synced bindings grant: the stand-in enforcing RBAC, the agent holding only
``gateway.clusters.agent_rbac``'s rights (a service account's groups, no system:masters),
users reaching the cluster through the gateway with the real kubectl.

Needs the stand-in's RBAC authorizer (branch ``i17-rbac``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.clusters import agent_rbac
from tests.binaries import kubectl
from tests.integration.conftest import World, start_least_privilege_world, stop_world
from tests.integration.env import kubectl_run, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_least_privilege_world(tmp_path_factory.mktemp("rbac"))
    try:
        yield w
    finally:
        stop_world(w)


def as_user(world: World, name: str, role: str | None = None) -> tuple[str, Path]:
    """A user (bound to the cluster with ``role``, synced) and their kubeconfig."""
    user_id, api = world.user(name, role=role)
    return user_id, world.kubeconfig_for(api, name)


def kc(config: Path, *args: str, stdin: str | None = None) -> Any:
    return kubectl_run(kubectl(), config, *args, stdin=stdin)


def admin_kc(world: World, *args: str, stdin: str | None = None) -> str:
    """kubectl straight at the stand-in as the cluster's administrator."""
    config = world.cluster_admin_kubeconfig()
    result = kubectl_run(kubectl(), config, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def forbidden(result: Any) -> bool:
    return result.returncode != 0 and "forbidden" in result.stderr.lower()


def test_the_agent_holds_no_more_than_its_contract(world: World) -> None:
    sa = f"system:serviceaccount:herdgate-system:{agent_rbac.AGENT_SERVICE_ACCOUNT}"
    config = world.cluster_admin_kubeconfig()
    can = kubectl_run(kubectl(), config, "auth", "can-i", "create", "deployments", "--as", sa)
    assert can.stdout.strip() == "no"


def test_a_cluster_member_works_but_cannot_grant(world: World) -> None:
    _, config = as_user(world, "rbac-member", "cluster-member")
    created = kc(config, "create", "deployment", "web", "--image=nginx", "-n", "default")
    assert created.returncode == 0, created.stderr
    assert kc(config, "get", "nodes").returncode == 0  # herdgate-cluster-member
    refused = kc(config, "create", "clusterrolebinding", "mine", "--clusterrole=cluster-admin",
                 "--user=rbac-member")  # fmt: skip
    assert forbidden(refused), refused.stderr


def test_read_only_reads_and_cannot_create(world: World) -> None:
    _, config = as_user(world, "rbac-reader", "read-only")
    assert kc(config, "get", "pods", "-n", "default").returncode == 0
    refused = kc(config, "create", "configmap", "x", "-n", "default")
    assert refused.returncode != 0


def test_removing_the_binding_removes_the_access_downstream(world: World) -> None:
    user_id, config = as_user(world, "rbac-gone", "cluster-member")
    sa_config = world.cluster_admin_kubeconfig()
    (binding,) = [
        b
        for b in world.admin.get("/v3/clusterroletemplatebindings")["data"]
        if b["userId"] == user_id
    ]
    world.admin.delete(f"/v3/clusterroletemplatebindings/{binding['id']}")
    wait_until(lambda: not world.synced_objects(binding["id"]), 15, "bindings stayed")
    can = kubectl_run(
        kubectl(), sa_config, "auth", "can-i", "create", "deployments", "--as", user_id
    )
    assert can.stdout.strip() == "no"
    assert kc(config, "get", "pods").returncode != 0  # and the gateway refuses too


def test_a_project_member_works_only_in_its_namespaces(world: World) -> None:
    project = world.admin.post("/v3/projects", {"clusterId": world.cluster_id, "name": "apps"})
    annotation = f"field.cattle.io/projectId={project['id']}"
    admin_kc(world, "create", "namespace", "apps-a")
    admin_kc(world, "annotate", "namespace", "apps-a", annotation)
    admin_kc(world, "create", "namespace", "not-apps")
    user_id, api = world.user("rbac-project")
    binding = world.admin.post(
        "/v3/projectroletemplatebindings",
        {"projectId": project["id"], "userId": user_id, "roleTemplateId": "project-member"},
    )
    config = world.kubeconfig_for(api, "rbac-project")

    def rolebindings_in() -> set[str]:
        return {
            o["metadata"]["namespace"] for o in world.synced_objects(binding["id"], "rolebindings")
        }

    wait_until(lambda: rolebindings_in() == {"apps-a"}, 15, "no RoleBinding")
    ok = kc(config, "create", "configmap", "cfg", "-n", "apps-a")
    assert ok.returncode == 0, ok.stderr
    assert forbidden(kc(config, "create", "configmap", "cfg", "-n", "not-apps"))
    assert forbidden(kc(config, "create", "configmap", "cfg", "-n", "default"))
    # A namespace joining after the binding was made.
    admin_kc(world, "create", "namespace", "apps-b")
    admin_kc(world, "annotate", "namespace", "apps-b", annotation)
    wait_until(lambda: rolebindings_in() == {"apps-a", "apps-b"}, 15, "apps-b never joined")
    ok = kc(config, "create", "configmap", "cfg", "-n", "apps-b")
    assert ok.returncode == 0, ok.stderr


def test_a_custom_template_grants_its_rules(world: World) -> None:
    template = world.admin.post(
        "/v3/roletemplates",
        {
            "name": "Config reader",
            "context": "cluster",
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    world.apply_manifest()  # the cluster's administrator: the template's role comes with it
    _, config = as_user(world, "rbac-custom", template["id"])
    assert kc(config, "get", "configmaps", "-n", "default").returncode == 0
    assert forbidden(kc(config, "get", "secrets", "-n", "default"))
    assert forbidden(kc(config, "create", "configmap", "y", "-n", "default"))
    doc = json.loads(admin_kc(world, "get", "clusterrole", "herdgate-agent-bind", "-o", "json"))
    assert f"herdgate-rt-{template['id']}" in doc["rules"][0]["resourceNames"]


def test_an_administrator_is_cluster_admin_downstream(world: World) -> None:
    me = world.admin.get("/v3/users?me=true")["data"][0]
    wait_until(
        lambda: world.downstream(
            f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/herdgate-admin-{me['id']}"
        ),
        15,
        "the admin was never bound",
    )
    config = world.kubeconfig_for(world.admin, "gateway-admin")
    created = kc(config, "create", "namespace", "made-by-the-admin")
    assert created.returncode == 0, created.stderr
    # A new administrator is bound too; one who stops being one is unbound.
    user_id, _ = world.user("second-admin", admin=True)
    name = f"herdgate-admin-{user_id}"
    path = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}"
    wait_until(lambda: world.downstream(path), 15, "the new admin was never bound")
    world.admin.put(f"/v3/users/{user_id}", {"admin": False})
    wait_until(lambda: world.downstream(path) is None, 15, "the former admin stayed bound")
