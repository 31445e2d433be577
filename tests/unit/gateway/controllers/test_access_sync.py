"""The access sync's pure parts: the desired RBAC objects and the difference."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.clusters import agent_rbac
from gateway.controllers.access_sync import (
    BINDING_LABEL,
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    ROLE_BINDING,
    SYNC_LABEL,
    AccessController,
    Plan,
    _ClusterState,
    bound_cluster_roles,
    desired_state,
    drifted,
    key_of,
    outdated_message,
    plan,
    within_agent_rights,
)
from gateway.store.records import (
    BUILTIN_TEMPLATES,
    CLUSTER_MEMBER_BASICS_ROLE,
    Binding,
    PolicyRule,
    ProjectBinding,
    RoleTemplate,
    gateway_role,
)
from tunnel.cluster_state import project_of

CID = "c-abcde"
PID = f"{CID}:p-xyz12"
DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

CUSTOM = RoleTemplate(
    id="rt-qwert",
    name="Pod reader",
    context="cluster",
    rules=(PolicyRule(verbs=("get", "list"), api_groups=("",), resources=("pods",)),),
)


def templates(*extra: RoleTemplate) -> dict[str, RoleTemplate]:
    return {**BUILTIN_TEMPLATES, **{t.id: t for t in extra}}


def state(
    bindings: list[Binding] = [],  # noqa: B006 - read only
    project_bindings: list[ProjectBinding] = [],  # noqa: B006
    namespaces: dict[str, str] | None = None,
    extra: tuple[RoleTemplate, ...] = (),
) -> dict[Any, Any]:
    return desired_state(templates(*extra), bindings, project_bindings, namespaces or {}, [PID])


def test_basics_name_is_the_contracts() -> None:
    assert CLUSTER_MEMBER_BASICS_ROLE == agent_rbac.CLUSTER_MEMBER_BASICS


def test_builtin_templates_bind_kubernetes_roles() -> None:
    t = templates()
    assert bound_cluster_roles("cluster-owner", t) == ["cluster-admin"]
    assert bound_cluster_roles("cluster-member", t) == ["edit", "herdgate-cluster-member"]
    assert bound_cluster_roles("read-only", t) == ["view"]
    assert bound_cluster_roles("project-owner", t) == ["admin"]
    assert bound_cluster_roles("project-member", t) == ["edit"]
    assert bound_cluster_roles("no-such", t) == []


def test_gateway_roles_of_builtins_stay_as_they_were() -> None:
    t = templates()
    assert {k: gateway_role(v, t) for k, v in t.items()} == {
        "cluster-owner": "cluster-owner",
        "cluster-member": "cluster-member",
        "read-only": "read-only",
        "project-owner": "cluster-member",
        "project-member": "cluster-member",
    }


def test_gateway_role_of_custom_templates() -> None:
    writer = RoleTemplate(
        "rt-write", "w", "cluster", rules=(PolicyRule(("create",), ("",), ("pods",)),)
    )
    inherits_writer = RoleTemplate("rt-inh", "i", "cluster", role_template_names=("rt-write",))
    inherits_member = RoleTemplate(
        "rt-mem", "m", "cluster", role_template_names=("cluster-member",)
    )
    inherits_owner = RoleTemplate("rt-own", "o", "cluster", role_template_names=("cluster-owner",))
    cycle_a = RoleTemplate("rt-a", "a", "cluster", role_template_names=("rt-b",))
    cycle_b = RoleTemplate("rt-b", "b", "cluster", role_template_names=("rt-a",))
    t = templates(
        CUSTOM, writer, inherits_writer, inherits_member, inherits_owner, cycle_a, cycle_b
    )
    assert gateway_role(CUSTOM, t) == "read-only"
    assert gateway_role(writer, t) == "cluster-member"
    assert gateway_role(inherits_writer, t) == "cluster-member"
    assert gateway_role(inherits_member, t) == "cluster-member"
    assert gateway_role(inherits_owner, t) == "cluster-member"  # never owner
    assert gateway_role(cycle_a, t) == "read-only"
    assert bound_cluster_roles("rt-a", t) == ["herdgate-rt-rt-a", "herdgate-rt-rt-b"]
    assert bound_cluster_roles("rt-mem", t) == [
        "herdgate-rt-rt-mem",
        "edit",
        "herdgate-cluster-member",
    ]


def test_no_bindings_still_wants_the_owned_cluster_roles() -> None:
    desired = state()
    assert set(desired) == {
        (CLUSTER_ROLE, "", "herdgate-cluster-member"),
        (CLUSTER_ROLE, "", "herdgate-agent-bind"),
    }
    basics = desired[(CLUSTER_ROLE, "", "herdgate-cluster-member")]
    assert basics["rules"] == agent_rbac.cluster_member_basics_role()["rules"]
    assert basics["metadata"]["labels"][agent_rbac.OWNED_LABEL] == agent_rbac.OWNED_VALUE
    assert desired[(CLUSTER_ROLE, "", "herdgate-agent-bind")] == agent_rbac.agent_bind_role()


def test_cluster_member_binding_for_user_and_group() -> None:
    user = Binding(f"{CID}:crtb-aaaaa", CID, "cluster-member", 0.0, user_id="u-12345")
    group = Binding(
        f"{CID}:crtb-bbbbb", CID, "read-only", 0.0, group_principal_id="github_team://42"
    )
    desired = state([user, group])
    crbs = {k[2]: v for k, v in desired.items() if k[0] == CLUSTER_ROLE_BINDING}
    assert set(crbs) == {
        "herdgate-crtb-aaaaa-edit",
        "herdgate-crtb-aaaaa-herdgate-cluster-member",
        "herdgate-crtb-bbbbb-view",
    }
    edit = crbs["herdgate-crtb-aaaaa-edit"]
    assert edit["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "edit",
    }
    assert edit["subjects"] == [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "u-12345"}
    ]
    assert edit["metadata"]["labels"][BINDING_LABEL] == "crtb-aaaaa"
    assert crbs["herdgate-crtb-bbbbb-view"]["subjects"][0] == {
        "kind": "Group",
        "apiGroup": "rbac.authorization.k8s.io",
        "name": "github_team://42",
    }
    assert all(DNS.match(name) for name in crbs)


def test_project_bindings_follow_the_annotation() -> None:
    pb = ProjectBinding("p-xyz12:prtb-ccccc", PID, CID, "project-member", 0.0, user_id="u-1")
    namespaces = {"team-a": PID, "team-b": PID, "other": "", "elsewhere": f"{CID}:p-zzzzz"}
    desired = state(project_bindings=[pb], namespaces=namespaces)
    rbs = sorted(k for k in desired if k[0] == ROLE_BINDING)
    assert rbs == [
        (ROLE_BINDING, "team-a", "herdgate-prtb-ccccc-edit"),
        (ROLE_BINDING, "team-b", "herdgate-prtb-ccccc-edit"),
    ]
    doc = desired[rbs[0]]
    assert doc["metadata"]["namespace"] == "team-a" and doc["kind"] == "RoleBinding"
    # The namespace leaves: its RoleBinding is no longer wanted.
    namespaces["team-b"] = ""
    assert (ROLE_BINDING, "team-b", "herdgate-prtb-ccccc-edit") not in state(
        project_bindings=[pb], namespaces=namespaces
    )


def test_a_project_template_is_not_bound_at_cluster_scope_nor_the_reverse() -> None:
    wrong = Binding(f"{CID}:crtb-ddddd", CID, "project-member", 0.0, user_id="u-1")
    also_wrong = ProjectBinding("p-xyz12:prtb-eeeee", PID, CID, "cluster-owner", 0.0, "u-1")
    desired = state([wrong], [also_wrong], {"ns": PID})
    assert not [k for k in desired if k[0] in (CLUSTER_ROLE_BINDING, ROLE_BINDING)]


def test_custom_template_becomes_a_cluster_role_listed_in_the_bind_role() -> None:
    binding = Binding(f"{CID}:crtb-fffff", CID, CUSTOM.id, 0.0, user_id="u-1")
    desired = state([binding], extra=(CUSTOM,))
    role = desired[(CLUSTER_ROLE, "", "herdgate-rt-rt-qwert")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    assert role["metadata"]["labels"][SYNC_LABEL] == "true"
    bind = desired[(CLUSTER_ROLE, "", "herdgate-agent-bind")]
    assert "herdgate-rt-rt-qwert" in bind["rules"][0]["resourceNames"]
    assert "herdgate-rt-rt-qwert" in bind["rules"][1]["resourceNames"]
    assert (CLUSTER_ROLE_BINDING, "", "herdgate-crtb-fffff-herdgate-rt-rt-qwert") in desired


def _listed(doc: dict[str, Any], rv: str = "7") -> dict[str, Any]:
    """As the API server lists it: the same fields, and a resourceVersion."""
    out = copy.deepcopy(doc)
    out["metadata"]["resourceVersion"] = rv
    return out


def test_plan_creates_what_is_missing_and_leaves_what_is_in_step() -> None:
    binding = Binding(f"{CID}:crtb-aaaaa", CID, "cluster-member", 0.0, user_id="u-1")
    desired = state([binding])
    todo = plan(desired, [])
    assert sorted(key_of(d) for d in todo.create) == sorted(desired)
    assert not (todo.update or todo.delete or todo.recreate)
    assert plan(desired, [_listed(d) for d in desired.values()]).empty()


def test_plan_updates_drift_and_deletes_only_its_own_objects() -> None:
    binding = Binding(f"{CID}:crtb-aaaaa", CID, "cluster-member", 0.0, user_id="u-1")
    desired = state([binding])
    existing = [_listed(d) for d in desired.values()]
    edited = next(d for d in existing if d["metadata"]["name"] == "herdgate-crtb-aaaaa-edit")
    edited["subjects"] = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "x"}]
    stale = _listed(
        state([Binding(f"{CID}:crtb-zzzzz", CID, "read-only", 0.0, "u-2")])[
            (CLUSTER_ROLE_BINDING, "", "herdgate-crtb-zzzzz-view")
        ]
    )
    agent_own = _listed(agent_rbac.agent_rbac()[5])  # herdgate-agent's ClusterRoleBinding
    foreign = {
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "herdgate-crtb-aaaaa-herdgate-cluster-member", "labels": {}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"},
        "subjects": [],
    }
    hand_made = {
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "ops-admins"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
    }
    existing = [d for d in existing if d["metadata"]["name"] != foreign["metadata"]["name"]] + [
        stale,
        agent_own,
        foreign,
        hand_made,
    ]
    todo = plan(desired, existing)
    assert [d["metadata"]["name"] for d, _ in todo.update] == ["herdgate-crtb-aaaaa-edit"]
    assert [d["metadata"]["name"] for d in todo.delete] == ["herdgate-crtb-zzzzz-view"]
    assert not todo.create and not todo.recreate  # the foreign namesake is left alone


def test_plan_recreates_a_binding_whose_role_ref_changed() -> None:
    binding = Binding(f"{CID}:crtb-aaaaa", CID, "read-only", 0.0, user_id="u-1")
    desired = state([binding])
    existing = [_listed(d) for d in desired.values()]
    crb = next(d for d in existing if d["kind"] == CLUSTER_ROLE_BINDING)
    crb["roleRef"]["name"] = "edit"
    todo = plan(desired, existing)
    assert [key_of(d) for d in todo.recreate] == [key_of(crb)]


def test_drift_ignores_fields_the_server_adds_or_leaves_out() -> None:
    doc = state()[(CLUSTER_ROLE, "", "herdgate-cluster-member")]
    listed = _listed(doc)
    listed["metadata"]["labels"]["extra"] = "x"
    listed["metadata"]["uid"] = "u"
    listed["rules"][0]["resourceNames"] = []
    assert not drifted(listed, doc)
    listed["rules"][0]["verbs"] = ["get"]
    assert drifted(listed, doc)


def test_project_of() -> None:
    assert project_of({"metadata": {"annotations": {"field.cattle.io/projectId": PID}}}) == PID
    assert project_of({"metadata": {}}) == ""
    assert project_of({"metadata": {"annotations": {"field.cattle.io/projectId": 3}}}) == ""


NAMES = st.text(alphabet="abc-", min_size=1, max_size=6)


@given(
    namespaces=st.dictionaries(NAMES, st.sampled_from(["", PID, f"{CID}:p-other"]), max_size=6),
    roles=st.lists(st.sampled_from(sorted(BUILTIN_TEMPLATES)), max_size=4),
)
def test_plan_of_its_own_result_is_empty(namespaces: dict[str, str], roles: list[str]) -> None:
    bindings = [
        Binding(f"{CID}:crtb-b{i}", CID, role, 0.0, user_id=f"u-{i}")
        for i, role in enumerate(roles)
    ]
    pbs = [
        ProjectBinding(f"p-xyz12:prtb-p{i}", PID, CID, role, 0.0, user_id=f"u-{i}")
        for i, role in enumerate(roles)
    ]
    desired = desired_state(templates(), bindings, pbs, namespaces, [PID])
    assert plan(desired, [_listed(d) for d in desired.values()]).empty()
    # Everything it made, and nothing it did not, goes when nothing is wanted.
    bare = desired_state(templates(), [], [], namespaces, [PID])
    todo = plan(bare, [_listed(d) for d in desired.values()])
    assert {key_of(d) for d in todo.delete} == set(desired) - set(bare)


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> Any:
        for chunk in self._chunks:
            yield chunk


class _Response:
    def __init__(self, lines: list[dict[str, Any]], split: int = 7) -> None:
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        self.content = _Content([data[i : i + split] for i in range(0, len(data), split)])


def _ns(name: str, rv: str, project: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv}
    if project:
        meta["annotations"] = {"field.cattle.io/projectId": project}
    return {"kind": "Namespace", "metadata": meta}


async def test_the_namespace_watch_wakes_the_loop_only_for_project_changes() -> None:
    controller = AccessController.__new__(AccessController)
    state = _ClusterState()
    state.wake.clear()
    state.namespaces = {"plain": "", "team": PID}
    state.resource_version = "10"
    await controller._follow(
        _Response(
            [
                {"type": "MODIFIED", "object": _ns("plain", "11")},  # no project: nothing
                {"type": "ADDED", "object": _ns("other", "12")},
                {
                    "type": "BOOKMARK",
                    "object": {"kind": "Namespace", "metadata": {"resourceVersion": "13"}},
                },
            ]
        ),
        state,
    )
    assert not state.wake.is_set() and state.resource_version == "13"
    await controller._follow(
        _Response([{"type": "MODIFIED", "object": _ns("plain", "14", PID)}]), state
    )
    assert state.wake.is_set() and state.namespaces["plain"] == PID  # joined
    state.wake.clear()
    await controller._follow(
        _Response([{"type": "DELETED", "object": _ns("team", "15", PID)}]), state
    )
    assert state.wake.is_set() and "team" not in state.namespaces  # a project namespace went
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    await controller._follow(_Response([gone]), state)
    assert state.namespaces is None and state.resource_version == ""  # re-listed next
    with pytest.raises(RuntimeError):
        state.namespaces = {}
        await controller._follow(
            _Response([{"type": "ERROR", "object": {"code": 500, "message": "boom"}}]), state
        )


def test_enabled_admins_are_cluster_admins_everywhere() -> None:
    desired = desired_state(templates(), [], [], {}, [], admins=["u-admin", "Odd:Id"])
    admin = desired[(CLUSTER_ROLE_BINDING, "", "herdgate-admin-u-admin")]
    assert admin["roleRef"]["name"] == "cluster-admin"
    assert admin["subjects"] == [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "u-admin"}
    ]
    odd = [k for k in desired if k[2].startswith("herdgate-admin-x")]
    assert len(odd) == 1 and DNS.match(odd[0][2])  # a digest where the id cannot be a name
    assert desired[odd[0]]["subjects"][0]["name"] == "Odd:Id"
    # No longer an admin: its binding is the sync's to delete.
    todo = plan(desired_state(templates(), [], [], {}, []), [_listed(d) for d in desired.values()])
    assert {d["metadata"]["name"] for d in todo.delete} == {"herdgate-admin-u-admin", odd[0][2]}


# -- an agent without escalate (the default manifest) -----------------------------------


def _as_applied(desired: dict[Any, Any]) -> list[dict[str, Any]]:
    """What a cluster holds when the manifest and the sync brought it to ``desired``."""
    return [_listed(d) for d in desired.values()]


def _names(todo: Plan) -> dict[str, list[str]]:
    return {
        "create": sorted(d["metadata"]["name"] for d in todo.create),
        "update": sorted(d["metadata"]["name"] for d, _ in todo.update),
        "delete": sorted(d["metadata"]["name"] for d in todo.delete),
    }


def test_a_new_template_waits_for_the_manifest_its_binding_too() -> None:
    before = state()
    binding = Binding(f"{CID}:crtb-fffff", CID, CUSTOM.id, 0.0, user_id="u-1")
    member = Binding(f"{CID}:crtb-mmmmm", CID, "cluster-member", 0.0, user_id="u-2")
    existing = _as_applied(before)
    todo = within_agent_rights(plan(state([binding, member], extra=(CUSTOM,)), existing), existing)
    assert _names(todo) == {
        "create": ["herdgate-crtb-mmmmm-edit", "herdgate-crtb-mmmmm-herdgate-cluster-member"],
        "update": [],
        "delete": [],
    }
    assert todo.pending == [
        "ClusterRole herdgate-rt-rt-qwert",
        "ClusterRoleBinding herdgate-crtb-fffff-herdgate-rt-rt-qwert (binds herdgate-rt-rt-qwert)",
        "ClusterRole herdgate-agent-bind",
    ]
    assert "herdgate-rt-rt-qwert" in outdated_message(todo)


def test_once_the_manifest_is_applied_the_binding_follows() -> None:
    binding = Binding(f"{CID}:crtb-fffff", CID, CUSTOM.id, 0.0, user_id="u-1")
    desired = state([binding], extra=(CUSTOM,))
    applied = _as_applied(
        {k: v for k, v in desired.items() if k[0] == CLUSTER_ROLE}  # the manifest's roles
    )
    todo = within_agent_rights(plan(desired, applied), applied)
    assert _names(todo)["create"] == ["herdgate-crtb-fffff-herdgate-rt-rt-qwert"]
    assert todo.pending == []


def test_changed_rules_wait_for_the_manifest() -> None:
    existing = _as_applied(state(extra=(CUSTOM,)))
    wider = RoleTemplate(
        id=CUSTOM.id,
        name=CUSTOM.name,
        context="cluster",
        rules=(PolicyRule(verbs=("get",), api_groups=("",), resources=("secrets",)),),
    )
    todo = within_agent_rights(plan(state(extra=(wider,)), existing), existing)
    assert todo.empty()
    assert todo.pending == ["ClusterRole herdgate-rt-rt-qwert"]


def test_a_deleted_template_goes_and_the_bind_role_shrinks() -> None:
    existing = _as_applied(state(extra=(CUSTOM,)))
    todo = within_agent_rights(plan(state(), existing), existing)
    assert _names(todo) == {
        "create": [],
        "update": ["herdgate-agent-bind"],
        "delete": ["herdgate-rt-rt-qwert"],
    }
    assert todo.pending == []
    ((shrunk, _),) = todo.update
    assert shrunk == agent_rbac.agent_bind_role()


def test_roles_it_does_not_list_are_not_deleted() -> None:
    stray = _listed(state(extra=(CUSTOM,))[(CLUSTER_ROLE, "", "herdgate-rt-rt-qwert")])
    existing = [*_as_applied(state()), stray]  # the bind role does not list it
    todo = within_agent_rights(plan(state(), existing), existing)
    assert todo.empty()
    assert todo.pending == ["ClusterRole herdgate-rt-rt-qwert (to delete)"]


def test_without_a_bind_role_nothing_is_bound() -> None:
    member = Binding(f"{CID}:crtb-mmmmm", CID, "cluster-member", 0.0, user_id="u-2")
    todo = within_agent_rights(plan(state([member]), []), [])
    assert todo.empty()
    assert "ClusterRole herdgate-agent-bind" in todo.pending


_TEMPLATE_IDS = st.sampled_from(["rt-aaaaa", "rt-bbbbb", "rt-ccccc"])


def _custom(template_id: str) -> RoleTemplate:
    return RoleTemplate(id=template_id, name=template_id, context="cluster", rules=CUSTOM.rules)


@given(
    before=st.sets(_TEMPLATE_IDS),
    after=st.sets(_TEMPLATE_IDS),
    bound=st.sets(_TEMPLATE_IDS),
)
def test_never_writes_a_role_it_may_not(before: set[str], after: set[str], bound: set[str]) -> None:
    """Whatever the change of templates: no ClusterRole is created, only the bind role is
    updated and only to fewer names, no binding of a role it does not list, no deletion of
    a role it does not list; and once everything pending is applied, nothing is."""
    existing = _as_applied(state(extra=tuple(_custom(t) for t in sorted(before))))
    bindings = [
        Binding(f"{CID}:crtb-{t[3:]}", CID, t, 0.0, user_id="u-1") for t in sorted(bound & after)
    ]
    desired = state(bindings, extra=tuple(_custom(t) for t in sorted(after)))
    todo = within_agent_rights(plan(desired, existing), existing)
    have = {key_of(d): d for d in existing}
    bindable = set(have[(CLUSTER_ROLE, "", "herdgate-agent-bind")]["rules"][0]["resourceNames"])
    deletable = set(have[(CLUSTER_ROLE, "", "herdgate-agent-bind")]["rules"][1]["resourceNames"])
    assert all(d["kind"] != CLUSTER_ROLE for d in todo.create)
    for doc, _ in todo.update:
        if doc["kind"] == CLUSTER_ROLE:
            assert doc["metadata"]["name"] == "herdgate-agent-bind"
            assert set(doc["rules"][0]["resourceNames"]) <= bindable
            assert set(doc["rules"][1]["resourceNames"]) <= deletable
    for doc in [*todo.create, *todo.recreate, *(d for d, _ in todo.update)]:
        if doc["kind"] != CLUSTER_ROLE:
            assert doc["roleRef"]["name"] in bindable
    for doc in todo.delete:
        if doc["kind"] == CLUSTER_ROLE:
            assert doc["metadata"]["name"] in deletable
    assert bool(todo.pending) == bool(after - before)


async def test_a_namespace_watch_ends_when_the_agents_reports_come_back() -> None:
    """Reports stop (a tunnel dropped): the watch here starts. They come back while it
    is open: it ends at once instead of holding its request until the server ends it."""
    import asyncio
    from types import SimpleNamespace

    from gateway.controllers import access_sync

    controller = access_sync.AccessController.__new__(access_sync.AccessController)
    controller.directory = SimpleNamespace(clusters={"c-1": object()})  # type: ignore[assignment]
    state = access_sync._ClusterState()
    controller._clusters = {"c-1": state}
    reported = [False]
    watches: list[asyncio.Future[None]] = []

    async def watch(cluster_id: str, _state: Any) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        watches.append(waiter)
        await waiter  # an open watch: only a cancellation ends it

    controller._in_charge = lambda cluster_id: True  # type: ignore[method-assign]
    controller._reported = lambda cluster_id: reported[0]  # type: ignore[method-assign]
    controller._watch = watch  # type: ignore[method-assign]
    controller._on_namespaces("c-1", None)  # reports stopped
    await asyncio.sleep(0.01)
    assert len(watches) == 1 and state.watching
    reported[0] = True
    controller._on_namespaces("c-1", {"default": ""})  # and came back
    await asyncio.sleep(0.01)
    assert watches[0].cancelled()
    assert len(watches) == 1 and not state.watching  # the new loop waits, no request
    assert state.watch is not None and not state.watch.done()
    state.watch.cancel()
    await asyncio.gather(state.watch, return_exceptions=True)
