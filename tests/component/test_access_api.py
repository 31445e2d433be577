"""``/v3/roletemplates``, ``/v3/projects`` and ``/v3/projectroletemplatebindings`` in
process, and the gateway roles they give (``Directory.role_on``)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.identity import Identity
from gateway.api.roletemplates import parse_rules
from gateway.errors import GatewayError
from tests.component.test_management_api import PASSWORD, auth, env, login

__all__ = ["env"]  # the fixture, shared


async def _setup(client: Any) -> tuple[str, str, dict[str, str]]:
    """An admin token, a cluster id, and user tokens (carol, dave) by name → (id, token)."""
    admin = (await login(client, "admin", PASSWORD))[1]["token"]
    cluster = await (
        await client.post("/v3/clusters", json={"name": "prod"}, headers=auth(admin))
    ).json()
    users: dict[str, str] = {}
    for name in ("carol", "dave"):
        created = await (
            await client.post(
                "/v3/users",
                json={"username": name, "password": f"{name}-password-1"},
                headers=auth(admin),
            )
        ).json()
        users[name] = created["id"]
        users[name + "-token"] = (await login(client, name, f"{name}-password-1"))[1]["token"]
    return admin, cluster["id"], users


def who(user_id: str, groups: tuple[str, ...] = ()) -> Identity:
    return Identity(
        user_id=user_id, username=user_id, principal_id=f"local://{user_id}", groups=groups
    )


async def test_role_templates_crud_and_rules(env: Any) -> None:
    client, directory, _ = env
    admin, cluster_id, users = await _setup(client)
    listed = await (
        await client.get("/v3/roletemplates", headers=auth(users["carol-token"]))
    ).json()
    ids = [t["id"] for t in listed["data"]]
    assert ids[:5] == [
        "cluster-member",
        "cluster-owner",
        "project-member",
        "project-owner",
        "read-only",
    ]
    clusters_only = await (
        await client.get("/v3/roletemplates?context=cluster", headers=auth(admin))
    ).json()
    assert {t["id"] for t in clusters_only["data"]} == {
        "cluster-owner",
        "cluster-member",
        "read-only",
    }
    body = {
        "name": "Deployer",
        "context": "cluster",
        "description": "deploys",
        "rules": [
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create"]}
        ],
    }
    # Only administrators create them.
    assert (
        await client.post("/v3/roletemplates", json=body, headers=auth(users["carol-token"]))
    ).status == 403
    resp = await client.post("/v3/roletemplates", json=body, headers=auth(admin))
    template = await resp.json()
    assert resp.status == 201 and template["id"].startswith("rt-") and template["builtin"] is False
    assert template["rules"][0]["verbs"] == ["get", "create"]
    # A cluster binding to it: the user is a member at the gateway.
    resp = await client.post(
        "/v3/clusterroletemplatebindings",
        json={"clusterId": cluster_id, "userId": users["carol"], "roleTemplateId": template["id"]},
        headers=auth(admin),
    )
    assert resp.status == 201
    binding = await resp.json()
    assert directory.role_on(who(users["carol"]), cluster_id) == "cluster-member"
    # Rules made read-only: the gateway role follows.
    resp = await client.put(
        f"/v3/roletemplates/{template['id']}",
        json={"rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]},
        headers=auth(admin),
    )
    assert resp.status == 200
    assert directory.role_on(who(users["carol"]), cluster_id) == "read-only"
    # In use: 409; built-ins: 403; context is fixed.
    assert (
        await client.delete(f"/v3/roletemplates/{template['id']}", headers=auth(admin))
    ).status == 409
    assert (
        await client.delete("/v3/roletemplates/cluster-owner", headers=auth(admin))
    ).status == 403
    assert (
        await client.put("/v3/roletemplates/read-only", json={"name": "x"}, headers=auth(admin))
    ).status == 403
    resp = await client.put(
        f"/v3/roletemplates/{template['id']}", json={"context": "project"}, headers=auth(admin)
    )
    assert resp.status == 422
    # Locked: no new bindings.
    await client.put(
        f"/v3/roletemplates/{template['id']}", json={"locked": True}, headers=auth(admin)
    )
    resp = await client.post(
        "/v3/clusterroletemplatebindings",
        json={"clusterId": cluster_id, "userId": users["dave"], "roleTemplateId": template["id"]},
        headers=auth(admin),
    )
    assert resp.status == 422
    # A project template is not a cluster one.
    resp = await client.post(
        "/v3/clusterroletemplatebindings",
        json={"clusterId": cluster_id, "userId": users["dave"], "roleTemplateId": "project-member"},
        headers=auth(admin),
    )
    assert resp.status == 422
    await client.delete(f"/v3/clusterroletemplatebindings/{binding['id']}", headers=auth(admin))
    assert directory.role_on(who(users["carol"]), cluster_id) is None
    assert (
        await client.delete(f"/v3/roletemplates/{template['id']}", headers=auth(admin))
    ).status == 200
    assert (
        await client.get(f"/v3/roletemplates/{template['id']}", headers=auth(admin))
    ).status == 404


async def test_inheritance_must_exist_and_not_cycle(env: Any) -> None:
    client, _, _ = env
    admin, _, _ = await _setup(client)
    base = {"name": "b", "context": "cluster", "rules": []}
    resp = await client.post(
        "/v3/roletemplates", json={**base, "roleTemplateNames": ["ghost"]}, headers=auth(admin)
    )
    assert resp.status == 422
    first = await (await client.post("/v3/roletemplates", json=base, headers=auth(admin))).json()
    second = await (
        await client.post(
            "/v3/roletemplates",
            json={**base, "roleTemplateNames": [first["id"]]},
            headers=auth(admin),
        )
    ).json()
    resp = await client.put(
        f"/v3/roletemplates/{first['id']}",
        json={"roleTemplateNames": [second["id"]]},
        headers=auth(admin),
    )
    assert resp.status == 422  # a cycle
    assert (
        await client.delete(f"/v3/roletemplates/{first['id']}", headers=auth(admin))
    ).status == 409


async def test_projects_and_their_bindings(env: Any) -> None:
    client, directory, _ = env
    admin, cluster_id, users = await _setup(client)
    carol = users["carol-token"]
    # Only cluster owners make projects.
    resp = await client.post(
        "/v3/projects", json={"clusterId": cluster_id, "name": "team"}, headers=auth(carol)
    )
    assert resp.status == 404  # carol cannot even see the cluster
    resp = await client.post(
        "/v3/projects", json={"clusterId": cluster_id, "name": "team"}, headers=auth(admin)
    )
    project = await resp.json()
    assert resp.status == 201 and project["id"].startswith(f"{cluster_id}:p-")
    assert project["clusterId"] == cluster_id and project["name"] == "team"
    assert (await client.post("/v3/projects", json={"clusterId": cluster_id, "name": "team"},
                              headers=auth(admin))).status == 409  # fmt: skip
    for bad in (
        {"projectId": project["id"], "userId": users["carol"], "roleTemplateId": "cluster-owner"},
        {"projectId": project["id"], "roleTemplateId": "project-member"},
        {"projectId": project["id"], "userId": "u-ghost", "roleTemplateId": "project-member"},
    ):
        resp = await client.post("/v3/projectroletemplatebindings", json=bad, headers=auth(admin))
        assert resp.status == 422, bad
    resp = await client.post(
        "/v3/projectroletemplatebindings",
        json={
            "projectId": project["id"],
            "userId": users["carol"],
            "roleTemplateId": "project-owner",
        },
        headers=auth(admin),
    )
    owner_binding = await resp.json()
    assert resp.status == 201 and owner_binding["id"].startswith(
        project["id"].rpartition(":")[2] + ":prtb-"
    )
    # A project binding reaches the cluster at the gateway, as a member.
    assert directory.role_on(who(users["carol"]), cluster_id) == "cluster-member"
    visible = await (await client.get("/v3/clusters", headers=auth(carol))).json()
    assert [c["id"] for c in visible["data"]] == [cluster_id]
    seen = await (await client.get("/v3/projects", headers=auth(carol))).json()
    assert [p["id"] for p in seen["data"]] == [project["id"]]
    # A project owner manages the project's members, not the project itself.
    resp = await client.post(
        "/v3/projectroletemplatebindings",
        json={"projectId": project["id"], "userId": users["dave"], "roleTemplateId": "read-only"},
        headers=auth(carol),
    )
    assert resp.status == 201
    dave_binding = await resp.json()
    assert directory.role_on(who(users["dave"]), cluster_id) == "read-only"
    dave = users["dave-token"]
    assert (await client.delete(f"/v3/projectroletemplatebindings/{dave_binding['id']}",
                                headers=auth(dave))).status == 403  # fmt: skip
    assert (
        await client.put(f"/v3/projects/{project['id']}", json={"name": "x"}, headers=auth(carol))
    ).status == 403
    listed = await (await client.get(f"/v3/projectroletemplatebindings?projectId={project['id']}",
                                     headers=auth(carol))).json()  # fmt: skip
    assert {b["id"] for b in listed["data"]} == {owner_binding["id"], dave_binding["id"]}
    own = await (await client.get("/v3/projectroletemplatebindings", headers=auth(dave))).json()
    assert [b["id"] for b in own["data"]] == [dave_binding["id"]]
    resp = await client.put(
        f"/v3/projects/{project['id']}", json={"description": "the team"}, headers=auth(admin)
    )
    assert (await resp.json())["description"] == "the team"
    # Deleting the project deletes its bindings.
    assert (await client.delete(f"/v3/projects/{project['id']}", headers=auth(admin))).status == 200
    assert not directory.project_bindings
    assert directory.role_on(who(users["carol"]), cluster_id) is None


async def test_group_project_binding_gives_the_gateway_role(env: Any) -> None:
    client, directory, _ = env
    admin, cluster_id, _ = await _setup(client)
    project = await (
        await client.post(
            "/v3/projects", json={"clusterId": cluster_id, "name": "t"}, headers=auth(admin)
        )
    ).json()
    resp = await client.post(
        "/v3/projectroletemplatebindings",
        json={
            "projectId": project["id"],
            "groupPrincipalId": "github_team://7",
            "roleTemplateId": "project-member",
        },
        headers=auth(admin),
    )
    assert resp.status == 201
    assert directory.role_on(who("u-x", ("github_team://7",)), cluster_id) == "cluster-member"
    assert directory.role_on(who("u-x", ("github_team://8",)), cluster_id) is None


def test_rule_validation_follows_the_api_server() -> None:
    ok = parse_rules([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}])
    assert ok[0].non_resource_urls == ("/healthz",)
    for bad in (
        [{"apiGroups": [""], "resources": ["pods"]}],  # no verbs
        [{"resources": ["pods"], "verbs": ["get"]}],  # no api group
        [{"apiGroups": [""], "verbs": ["get"]}],  # no resource
        [{"apiGroups": [""], "resources": ["pods"], "nonResourceURLs": ["/x"], "verbs": ["get"]}],
        [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "bogus": 1}],
        [{"apiGroups": [""], "resources": "pods", "verbs": ["get"]}],
        "rules",
        [1],
    ):
        try:
            parse_rules(bad)
        except GatewayError as exc:
            assert exc.status == 422
        else:
            raise AssertionError(f"accepted {bad!r}")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=16), c, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_json_is_rules_or_a_422(value: Any) -> None:
    try:
        parse_rules(value)
    except GatewayError as exc:
        assert exc.status == 422


async def test_an_edit_on_a_stale_copy_is_a_409_not_a_lost_update(env: Any) -> None:
    """Another replica changed the template after this process read it: the edit made
    on this process's copy is refused (409) rather than undoing that change; read again
    (the refusal refreshed the copy), the edit goes through."""
    client, directory, _ = env
    admin = (await login(client, "admin", PASSWORD))[1]["token"]
    body = {"name": "Viewer", "context": "cluster", "rules": []}
    template = await (await client.post("/v3/roletemplates", json=body, headers=auth(admin))).json()
    # The other replica's write, straight to the store, and not seen here yet (as on etcd
    # before the watch brings it: this process's copy is the one from before).
    ours = directory.role_templates[template["id"]]
    await directory.store.patch("roletemplates", template["id"], {"description": "theirs"})
    directory.catch_up()
    directory.role_templates[template["id"]] = ours
    resp = await client.put(
        f"/v3/roletemplates/{template['id']}", json={"name": "Mine"}, headers=auth(admin)
    )
    assert resp.status == 409
    assert "changed meanwhile" in (await resp.json())["message"]
    assert directory.role_templates[template["id"]].description == "theirs"
    resp = await client.put(
        f"/v3/roletemplates/{template['id']}", json={"name": "Mine"}, headers=auth(admin)
    )
    assert resp.status == 200
    stored = await directory.store.get("roletemplates", template["id"])
    assert stored["name"] == "Mine" and stored["description"] == "theirs"
