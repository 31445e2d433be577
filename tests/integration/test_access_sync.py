"""Access kept in step downstream: bindings, projects and role templates become RBAC
objects in the cluster (the stand-in), as the real kubectl sees them there.

What those objects let people do is in ``test_access_rbac.py`` (the stand-in enforcing
RBAC); here: that the right objects come and go.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.binaries import kubectl
from tests.integration.conftest import (
    AGENT_MODES,
    World,
    agent_args_for,
    agent_objects,
    start_least_privilege_world,
    stop_world,
)
from tests.integration.env import ApiError, kubectl_run, wait_until

pytestmark = pytest.mark.integration

RBAC = "/apis/rbac.authorization.k8s.io/v1"
OWNED = {"app.kubernetes.io/managed-by": "herdgate"}


RECHECK = "access_sync:\n  recheck: 0.5s\n"
"""The access sync looks again soon after the administrator applies the manifest (the
tests wait for it; the default is for real clusters)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_least_privilege_world(tmp_path_factory.mktemp("access"), gateway_config=RECHECK)
    try:
        yield w
    finally:
        stop_world(w)


def k(world: World, *args: str, stdin: str | None = None) -> Any:
    """kubectl against the stand-in itself (as its administrator); JSON out for get."""
    result = kubectl_run(kubectl(), world.cluster_admin_kubeconfig(), *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "-o" in args and "json" in args else result.stdout


def exists(world: World, kind: str, name: str, namespace: str = "") -> bool:
    scope = ("-n", namespace) if namespace else ()
    result = kubectl_run(
        kubectl(),
        world.cluster_admin_kubeconfig(),
        "get",
        kind,
        name,
        *scope,
        "--ignore-not-found",
        "-o",
        "name",
    )
    assert result.returncode == 0, result.stderr
    return bool(result.stdout.strip())


def hand_made(
    world: World, name: str, role: str, user: str, labels: dict[str, str] | None = None
) -> None:
    """A ClusterRoleBinding made by someone else (``kubectl create -f``)."""
    doc: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
    }
    k(world, "create", "-f", "-", stdin=json.dumps(doc))


def crb_names(world: World, binding_id: str) -> set[str]:
    return {o["metadata"]["name"] for o in world.synced_objects(binding_id)}


def suffix(binding_id: str) -> str:
    return binding_id.rpartition(":")[2]


def bind(world: World, user_id: str, role: str) -> str:
    binding = world.admin.post(
        "/v3/clusterroletemplatebindings",
        {"clusterId": world.cluster_id, "userId": user_id, "roleTemplateId": role},
    )
    return str(binding["id"])


def test_a_cluster_member_binding_becomes_cluster_role_bindings(world: World) -> None:
    user_id, _ = world.user("member-one")
    binding_id = bind(world, user_id, "cluster-member")
    expected = {
        f"herdgate-{suffix(binding_id)}-edit",
        f"herdgate-{suffix(binding_id)}-herdgate-cluster-member",
    }
    wait_until(lambda: crb_names(world, binding_id) == expected, 15, "no ClusterRoleBindings")
    edit = k(
        world, "get", "clusterrolebinding", f"herdgate-{suffix(binding_id)}-edit", "-o", "json"
    )
    assert edit["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "edit",
    }
    assert edit["subjects"] == [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user_id}
    ]
    assert edit["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "herdgate"
    basics = k(world, "get", "clusterrole", "herdgate-cluster-member", "-o", "json")
    assert {
        "apiGroups": [""],
        "resources": ["nodes", "namespaces"],
        "verbs": ["get", "list", "watch"],
    } in basics["rules"]
    bind_role = k(world, "get", "clusterrole", "herdgate-agent-bind", "-o", "json")
    assert "herdgate-cluster-member" in bind_role["rules"][0]["resourceNames"]

    # The binding goes: so do its ClusterRoleBindings.
    world.admin.delete(f"/v3/clusterroletemplatebindings/{binding_id}")
    wait_until(lambda: not crb_names(world, binding_id), 15, "ClusterRoleBindings stayed")
    assert not exists(world, "clusterrolebinding", f"herdgate-{suffix(binding_id)}-edit")


def test_a_group_binding_names_the_group_principal(world: World) -> None:
    binding = world.admin.post(
        "/v3/clusterroletemplatebindings",
        {
            "clusterId": world.cluster_id,
            "groupPrincipalId": "github_team://4242",
            "roleTemplateId": "read-only",
        },
    )
    world.wait_synced(binding["id"])
    (crb,) = world.synced_objects(binding["id"])
    assert crb["roleRef"]["name"] == "view"
    assert crb["subjects"] == [
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "github_team://4242"}
    ]
    world.admin.delete(f"/v3/clusterroletemplatebindings/{binding['id']}")


def test_world_user_waits_for_the_sync(world: World) -> None:
    user_id, _ = world.user("owner-one", role="cluster-owner")
    (binding,) = [
        b
        for b in world.admin.get("/v3/clusterroletemplatebindings")["data"]
        if b["userId"] == user_id
    ]
    (crb,) = world.synced_objects(binding["id"])  # already there: no waiting here
    assert crb["roleRef"]["name"] == "cluster-admin"


def test_deleted_bindings_come_back_and_foreign_ones_stay_on_reconnect(world: World) -> None:
    user_id, _ = world.user("drift-one", role="read-only")
    (binding,) = [
        b
        for b in world.admin.get("/v3/clusterroletemplatebindings")["data"]
        if b["userId"] == user_id
    ]
    name = f"herdgate-{suffix(binding['id'])}-view"
    hand_made(world, "hand-made", "view", "someone")
    foreign_namesake = f"herdgate-{suffix(binding['id'])}-edit"
    hand_made(world, foreign_namesake, "edit", "x")
    k(world, "delete", "clusterrolebinding", name)
    # A tunnel reconnect brings a pass: the deleted one is back, the others untouched.
    world.agent.stop()
    world.agent = world.start_agent(log_name="agent-2")
    wait_until(lambda: exists(world, "clusterrolebinding", name), 20, "not restored on reconnect")
    assert exists(world, "clusterrolebinding", "hand-made")
    namesake = k(world, "get", "clusterrolebinding", foreign_namesake, "-o", "json")
    assert namesake["subjects"][0]["name"] == "x" and not namesake["metadata"].get("labels")
    k(world, "delete", "clusterrolebinding", "hand-made", foreign_namesake)


def _namespace(world: World, name: str, project: str = "") -> None:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    if project:
        doc["metadata"]["annotations"] = {"field.cattle.io/projectId": project}
    k(world, "create", "-f", "-", stdin=json.dumps(doc))


def test_project_bindings_follow_namespaces(world: World) -> None:
    project = world.admin.post("/v3/projects", {"clusterId": world.cluster_id, "name": "team"})
    assert project["id"].startswith(f"{world.cluster_id}:p-")
    _namespace(world, "team-a", project["id"])
    _namespace(world, "outside")
    user_id, _ = world.user("project-one")
    binding = world.admin.post(
        "/v3/projectroletemplatebindings",
        {"projectId": project["id"], "userId": user_id, "roleTemplateId": "project-member"},
    )
    name = f"herdgate-{suffix(binding['id'])}-edit"

    def namespaces() -> set[str]:
        return {
            o["metadata"]["namespace"] for o in world.synced_objects(binding["id"], "rolebindings")
        }

    wait_until(lambda: namespaces() == {"team-a"}, 15, "no RoleBinding in team-a")
    rb = k(world, "get", "rolebinding", name, "-n", "team-a", "-o", "json")
    assert rb["roleRef"]["name"] == "edit" and rb["subjects"][0]["name"] == user_id
    # A namespace annotated after the binding was made joins (the namespace watch).
    _namespace(world, "team-b")
    k(world, "annotate", "namespace", "team-b", f"field.cattle.io/projectId={project['id']}")
    wait_until(lambda: namespaces() == {"team-a", "team-b"}, 15, "team-b never joined")
    # A new namespace created in the project joins too.
    _namespace(world, "team-c", project["id"])
    wait_until(lambda: namespaces() == {"team-a", "team-b", "team-c"}, 15, "team-c never joined")
    # Leaving the project takes the RoleBinding away; 'outside' never had one.
    k(world, "annotate", "namespace", "team-a", "field.cattle.io/projectId-")
    wait_until(lambda: namespaces() == {"team-b", "team-c"}, 15, "team-a kept its RoleBinding")
    assert not exists(world, "rolebinding", name, "outside")
    # A project member reaches the cluster at the gateway.
    assert any(
        c["id"] == world.cluster_id
        for c in world.gateway.api(
            world.gateway.api().login("project-one", "a-long-user-password")
        ).get("/v3/clusters")["data"]
    )
    # Deleting the project removes its bindings, and so their RoleBindings.
    world.admin.delete(f"/v3/projects/{project['id']}")
    wait_until(lambda: not namespaces(), 15, "RoleBindings outlived the project")


def synced(world: World) -> dict[str, Any]:
    """The cluster's ``Synced`` condition."""
    conditions = world.cluster()["conditions"]
    assert isinstance(conditions, list)
    return next((c for c in conditions if c["type"] == "Synced"), {})


def bind_names(world: World) -> list[str]:
    doc = world.downstream(f"{RBAC}/clusterroles/herdgate-agent-bind")
    return list(doc["rules"][0]["resourceNames"]) if doc else []


def test_custom_role_templates_come_with_the_manifest(world: World) -> None:
    """The default manifest: the agent cannot write a role with rules it does not hold,
    so a new or changed template waits (Synced False, ManifestOutdated) until the
    cluster's administrator applies the manifest again; then its bindings follow."""
    template = world.admin.post(
        "/v3/roletemplates",
        {
            "name": "Pod reader",
            "context": "cluster",
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    role = f"herdgate-rt-{template['id']}"
    wait_until(lambda: synced(world).get("reason") == "ManifestOutdated", 15, "not outdated")
    condition = synced(world)
    assert condition["status"] == "False"
    assert role in condition["message"] and "import-command" in condition["message"]
    assert world.downstream_as_admin(f"{RBAC}/clusterroles/{role}") is None
    user_id, _ = world.user("custom-one")
    binding_id = bind(world, user_id, template["id"])
    time.sleep(0.5)
    assert crb_names(world, binding_id) == set()  # the agent may not bind it yet

    applied = world.apply_manifest()
    assert f"clusterrole.rbac.authorization.k8s.io/{role} created" in applied
    wait_until(
        lambda: crb_names(world, binding_id) == {f"herdgate-{suffix(binding_id)}-{role}"},
        30,
        "not bound after the manifest was applied",
    )
    wait_until(lambda: synced(world).get("status") == "True", 30, "Synced stayed False")
    cluster_role = k(world, "get", "clusterrole", role, "-o", "json")
    assert cluster_role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
    ]
    assert cluster_role["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "herdgate"
    assert role in bind_names(world)
    # A template in use cannot be deleted.
    with pytest.raises(ApiError) as refused:
        world.admin.delete(f"/v3/roletemplates/{template['id']}")
    assert refused.value.status == 409
    # Changed rules: outdated again; the cluster keeps the old rules until applied.
    world.admin.put(
        f"/v3/roletemplates/{template['id']}",
        {"rules": [{"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get"]}]},
    )
    wait_until(lambda: synced(world).get("reason") == "ManifestOutdated", 15, "not outdated")
    assert world.downstream(f"{RBAC}/clusterroles/{role}")["rules"][0]["resources"] == ["pods"]
    world.apply_manifest()
    assert world.downstream(f"{RBAC}/clusterroles/{role}")["rules"][0]["resources"] == [
        "pods",
        "services",
    ]
    wait_until(lambda: synced(world).get("status") == "True", 30, "Synced stayed False")
    # Deleted: the agent deletes the role (its bind role lists it) and shrinks that role.
    world.admin.delete(f"/v3/clusterroletemplatebindings/{binding_id}")
    world.admin.delete(f"/v3/roletemplates/{template['id']}")
    wait_until(lambda: world.downstream(f"{RBAC}/clusterroles/{role}") is None, 15, "role stayed")
    wait_until(lambda: role not in bind_names(world), 15, "herdgate-agent-bind still lists it")
    wait_until(lambda: synced(world).get("status") == "True", 15, "Synced not True")


def test_with_roles_managed_the_agent_keeps_them_itself(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The opt-in ``?roles=managed`` manifest (``herdgate-agent-roles``: create and
    escalate on ClusterRoles): templates reach the cluster with no one applying anything."""
    managed = start_least_privilege_world(
        tmp_path_factory.mktemp("managed"), standin_objects=agent_objects(manage_roles=True)
    )
    try:
        template = managed.admin.post(
            "/v3/roletemplates",
            {
                "name": "Pod reader",
                "context": "cluster",
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            },
        )
        role = f"herdgate-rt-{template['id']}"
        wait_until(lambda: managed.downstream(f"{RBAC}/clusterroles/{role}"), 15, "no role")
        wait_until(lambda: role in bind_names(managed), 15, "bind role does not list it")
        user_id, _ = managed.user("custom-managed")
        binding_id = bind(managed, user_id, template["id"])
        wait_until(lambda: crb_names(managed, binding_id), 15, "not bound")
        managed.admin.put(
            f"/v3/roletemplates/{template['id']}",
            {"rules": [{"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get"]}]},
        )
        wait_until(
            lambda: (
                managed.downstream(f"{RBAC}/clusterroles/{role}")["rules"][0]["resources"]
                == ["pods", "services"]
            ),
            15,
            "rules not updated",
        )
        assert synced(managed).get("status") == "True"
        managed.admin.delete(f"/v3/clusterroletemplatebindings/{binding_id}")
        managed.admin.delete(f"/v3/roletemplates/{template['id']}")
        wait_until(
            lambda: managed.downstream(f"{RBAC}/clusterroles/{role}") is None, 15, "role stayed"
        )
        wait_until(lambda: role not in bind_names(managed), 15, "bind role still lists it")
    finally:
        stop_world(managed)


def test_builtin_templates_are_listed_and_cannot_be_deleted(world: World) -> None:
    templates = {t["id"]: t for t in world.admin.get("/v3/roletemplates")["data"]}
    assert {
        "cluster-owner",
        "cluster-member",
        "read-only",
        "project-owner",
        "project-member",
    } <= set(templates)
    assert templates["read-only"]["builtin"] is True
    with pytest.raises(ApiError) as refused:
        world.admin.delete("/v3/roletemplates/cluster-owner")
    assert refused.value.status == 403


@pytest.fixture(scope="module")
def resyncing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_least_privilege_world(
        tmp_path_factory.mktemp("resync"), gateway_config="access_sync:\n  resync: 1s\n"
    )
    try:
        yield w
    finally:
        stop_world(w)


def test_periodic_resync_restores_bindings_and_leaves_foreign_objects(resyncing: World) -> None:
    world = resyncing
    user_id, _ = world.user("resync-one", role="cluster-member")
    (binding,) = [
        b
        for b in world.admin.get("/v3/clusterroletemplatebindings")["data"]
        if b["userId"] == user_id
    ]
    name = f"herdgate-{suffix(binding['id'])}-edit"
    # Hand-made objects: one without any label, one with herdgate's owned label but not
    # made by the sync (as the manifest's own bindings are).
    hand_made(world, "hand-made", "view", "someone")
    hand_made(world, "herdgate-other", "view", "y", OWNED)
    k(world, "delete", "clusterrolebinding", name)
    wait_until(lambda: exists(world, "clusterrolebinding", name), 20, "not restored by the resync")
    # Drift in a synced object is undone too.
    k(world, "patch", "clusterrolebinding", name, "--type=json", "-p",
      '[{"op":"replace","path":"/subjects/0/name","value":"intruder"}]')  # fmt: skip
    wait_until(
        lambda: (
            world.downstream(f"{RBAC}/clusterrolebindings/{name}")["subjects"][0]["name"] == user_id
        ),
        20,
        "drift not undone",
    )
    assert exists(world, "clusterrolebinding", "hand-made")
    assert exists(world, "clusterrolebinding", "herdgate-other")


def test_metrics_show_each_clusters_sync(world: World) -> None:
    context = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    request = urllib.request.Request(world.gateway.url + "/metrics")
    request.add_header("Authorization", f"Bearer {world.admin.token}")
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        text = response.read().decode()
    cluster = f'cluster="{world.cluster_id}"'
    lines = [line for line in text.splitlines() if cluster in line]
    last = [x for x in lines if x.startswith("herdgate_access_sync_last_success_timestamp_seconds")]
    assert last and float(last[0].rsplit(" ", 1)[1]) > 0
    assert any(
        x.startswith("herdgate_access_sync_objects{") and 'kind="ClusterRole"' in x for x in lines
    )
    assert any(
        x.startswith("herdgate_access_sync_changes_total{") and 'action="create"' in x
        for x in lines
    )


@pytest.fixture(scope="module", params=AGENT_MODES)
def short_history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """A stand-in that keeps only 3 watch events: a watch resumed after a while gets
    410 Gone. With an agent that reports its namespaces (its own watch gets the 410) and
    with an old one (the access sync's watch gets it)."""
    tmp = tmp_path_factory.mktemp(f"history-{request.param}")
    w = start_least_privilege_world(
        tmp,
        standin_args=["--watch-history", "3"],
        agent_args=agent_args_for(request.param, tmp),
    )
    try:
        yield w
    finally:
        stop_world(w)


def test_the_namespace_watch_survives_a_reconnect_and_410(short_history: World) -> None:
    world = short_history
    project = world.admin.post("/v3/projects", {"clusterId": world.cluster_id, "name": "h"})
    _namespace(world, "h-a", project["id"])
    user_id, _ = world.user("history-one")
    binding = world.admin.post(
        "/v3/projectroletemplatebindings",
        {"projectId": project["id"], "userId": user_id, "roleTemplateId": "read-only"},
    )

    def namespaces() -> set[str]:
        return {
            o["metadata"]["namespace"] for o in world.synced_objects(binding["id"], "rolebindings")
        }

    wait_until(lambda: namespaces() == {"h-a"}, 15, "no RoleBinding in h-a")
    world.agent.stop()
    for i in range(8):  # more events than the stand-in keeps
        _namespace(world, f"filler-{i}")
    _namespace(world, "h-b", project["id"])
    world.agent = world.start_agent(log_name="agent-2")
    wait_until(lambda: namespaces() == {"h-a", "h-b"}, 20, "h-b not joined on reconnect")
    # The watch lives on (re-listed after its resourceVersion expired): a namespace
    # joining now is followed without any other trigger (the resync is 5 minutes).
    _namespace(world, "h-c")
    k(world, "annotate", "namespace", "h-c", f"field.cattle.io/projectId={project['id']}")
    wait_until(lambda: namespaces() == {"h-a", "h-b", "h-c"}, 20, "the watch died")
