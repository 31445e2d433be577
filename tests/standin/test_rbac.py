"""The stand-in's RBAC: rule matching and escalation (pure, cases after kubernetes'
`plugin/pkg/auth/authorizer/rbac/rbac_test.go` and `pkg/registry/rbac/validation/rule_test.go`),
the authorizer in the request path (in-process HTTP), the agents' RBAC of
`gateway.clusters.agent_rbac`, and real kubectl."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from ace.records import GROUP, TOKEN_PLURAL
from gateway.clusters import agent_rbac
from standin import rbac
from standin.app import Config, StandIn
from standin.harness import StandInProcess, run_kubectl, write_token_file
from standin.rbac import Attributes, Binding, Policy, Rule, Subject
from standin.status import ApiError
from tests.standin.conftest import need_kubectl

RBAC_V1 = "/apis/rbac.authorization.k8s.io/v1"
G = rbac.RBAC_GROUP


def cluster_role(
    name: str, *rules: dict[str, Any], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": rbac.RBAC_API,
        "kind": "ClusterRole",
        "metadata": meta,
        "rules": list(rules),
    }


def role(name: str, namespace: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": rbac.RBAC_API,
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": list(rules),
    }


def binding(
    name: str,
    role_name: str,
    *subjects: dict[str, str],
    namespace: str = "",
    kind: str = "ClusterRole",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": rbac.RBAC_API,
        "kind": "RoleBinding" if namespace else "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": G, "kind": kind, "name": role_name},
        "subjects": list(subjects),
    }


def user(name: str) -> dict[str, str]:
    return {"kind": "User", "name": name, "apiGroup": G}


def group(name: str) -> dict[str, str]:
    return {"kind": "Group", "name": name, "apiGroup": G}


def sa(name: str, namespace: str = "") -> dict[str, str]:
    out = {"kind": "ServiceAccount", "name": name}
    if namespace:
        out["namespace"] = namespace
    return out


def rule(
    verbs: list[str], groups: list[str], resources: list[str], names: list[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"verbs": verbs, "apiGroups": groups, "resources": resources}
    if names:
        out["resourceNames"] = names
    return out


def url_rule(verbs: list[str], urls: list[str]) -> dict[str, Any]:
    return {"verbs": verbs, "nonResourceURLs": urls}


def R(doc: dict[str, Any]) -> Rule:
    return Rule.from_json(doc)


# -- rule matching (rbac_test.go TestRuleMatches & co) ------------------------------------------


def res(
    verb: str, group: str, resource: str, sub: str = "", name: str = "", ns: str = ""
) -> Attributes:
    return Attributes("u", (), verb, True, ns, group, resource, sub, name)


def path(verb: str, p: str) -> Attributes:
    return Attributes("u", (), verb, False, path=p)


@pytest.mark.parametrize(
    ("the_rule", "attrs", "allowed"),
    [
        # star verb, exact group and resource
        (rule(["*"], ["group1"], ["resource1"]), res("get", "group1", "resource1"), True),
        (rule(["*"], ["group1"], ["resource1"]), res("get", "group2", "resource1"), False),
        (rule(["*"], ["group1"], ["resource1"]), res("get", "group1", "resource2"), False),
        # star group, star resource
        (rule(["get"], ["*"], ["*"]), res("get", "anything", "any"), True),
        (rule(["get"], ["*"], ["*"]), res("list", "anything", "any"), False),
        # subresources are matched as resource/subresource, or by */subresource
        (rule(["get"], [""], ["pods"]), res("get", "", "pods", "log"), False),
        (rule(["get"], [""], ["pods/log"]), res("get", "", "pods", "log"), True),
        (rule(["get"], [""], ["*/log"]), res("get", "", "pods", "log"), True),
        (rule(["get"], [""], ["*/log"]), res("get", "", "pods"), False),
        (rule(["get"], [""], ["pods/*"]), res("get", "", "pods", "log"), False),
        (rule(["get"], ["apps"], ["*/scale"]), res("get", "apps", "deployments", "scale"), True),
        (rule(["get"], ["apps"], ["*/scale"]), res("get", "apps", "deployments", "status"), False),
        # resource names
        (rule(["get"], [""], ["configmaps"], ["a"]), res("get", "", "configmaps", name="a"), True),
        (rule(["get"], [""], ["configmaps"], ["a"]), res("get", "", "configmaps", name="b"), False),
        (rule(["list"], [""], ["configmaps"], ["a"]), res("list", "", "configmaps"), False),
        # non-resource URLs: exact, prefix/*, *
        (url_rule(["get"], ["/foo"]), path("get", "/foo"), True),
        (url_rule(["get"], ["/foo"]), path("get", "/foo/bar"), False),
        (url_rule(["get"], ["/foo/*"]), path("get", "/foo/bar/baz"), True),
        (url_rule(["get"], ["/foo/*"]), path("get", "/foo"), False),
        (url_rule(["get"], ["/foo*"]), path("get", "/foobar"), True),
        (url_rule(["get"], ["*"]), path("get", "/anything"), True),
        (url_rule(["get"], ["*"]), path("post", "/anything"), False),
        # a resource rule never allows a path, nor a URL rule a resource
        (rule(["*"], ["*"], ["*"]), path("get", "/foo"), False),
        (url_rule(["*"], ["*"]), res("get", "", "pods"), False),
    ],
)
def test_rule_allows(the_rule: dict[str, Any], attrs: Attributes, allowed: bool) -> None:
    assert rbac.rule_allows(attrs, R(the_rule)) is allowed


# -- Covers (rule_test.go) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "requested", "covered", "missing"),
    [
        ([rule(["*"], ["*"], ["*"])], [rule(["get"], [""], ["pods"])], True, []),
        ([rule(["get"], [""], ["pods"])], [rule(["get", "list"], [""], ["pods"])], False,
         [rule(["list"], [""], ["pods"])]),
        # names: an unrestricted owner covers names; a named owner does not cover all names
        ([rule(["get"], [""], ["pods"])], [rule(["get"], [""], ["pods"], ["a"])], True, []),
        ([rule(["get"], [""], ["pods"], ["a"])], [rule(["get"], [""], ["pods"])], False,
         [rule(["get"], [""], ["pods"])]),
        ([rule(["get"], [""], ["pods"], ["a", "b"])], [rule(["get"], [""], ["pods"], ["b"])],
         True, []),
        # */subresource owner covers any resource's subresource, not the resource
        ([rule(["get"], [""], ["*/status"])], [rule(["get"], [""], ["pods/status"])], True, []),
        ([rule(["get"], [""], ["*/status"])], [rule(["get"], [""], ["pods"])], False,
         [rule(["get"], [""], ["pods"])]),
        # non-resource URLs
        ([url_rule(["get"], ["/foo/*"])], [url_rule(["get"], ["/foo/bar"])], True, []),
        ([url_rule(["get"], ["/foo/*"])], [url_rule(["get"], ["/bar"])], False,
         [url_rule(["get"], ["/bar"])]),
        ([url_rule(["*"], ["*"])], [url_rule(["get", "post"], ["/a", "/b"])], True, []),
        # several owner rules together cover what none covers alone
        ([rule(["get"], [""], ["pods"]), rule(["list"], [""], ["pods"])],
         [rule(["get", "list"], [""], ["pods"])], True, []),
    ],
)  # fmt: skip
def test_covers(
    owner: list[dict[str, Any]],
    requested: list[dict[str, Any]],
    covered: bool,
    missing: list[dict[str, Any]],
) -> None:
    ok, gaps = rbac.covers([R(r) for r in owner], [R(r) for r in requested])
    assert ok is covered
    assert gaps == [R(m) for m in missing]


def test_escalation_message_is_compact_and_sorted() -> None:
    missing = [
        R(rule(["list"], [""], ["secrets"])),
        R(rule(["get"], [""], ["secrets"])),
        R(rule(["get"], ["apps"], ["deployments"], ["web"])),
        R(url_rule(["get"], ["/metrics"])),
    ]
    assert rbac.escalation_message("u", ("g", "system:authenticated"), missing) == (
        'user "u" (groups=["g" "system:authenticated"]) is attempting to grant RBAC permissions '
        "not currently held:\n"
        '{APIGroups:[""], Resources:["secrets"], Verbs:["list" "get"]}\n'
        '{APIGroups:["apps"], Resources:["deployments"], ResourceNames:["web"], Verbs:["get"]}\n'
        '{NonResourceURLs:["/metrics"], Verbs:["get"]}'
    )


_WORDS = st.sampled_from(["*", "a", "b", ""])
_RESOURCES = st.sampled_from(["*", "pods", "pods/log", "*/log", "configmaps"])
_VERBS = st.sampled_from(["*", "get", "list"])


@st.composite
def _rules(draw: st.DrawFn) -> Rule:
    names = draw(st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True))
    return Rule(
        tuple(draw(st.lists(_VERBS, min_size=1, max_size=2, unique=True))),
        tuple(draw(st.lists(_WORDS, min_size=1, max_size=2, unique=True))),
        tuple(draw(st.lists(_RESOURCES, min_size=1, max_size=2, unique=True))),
        tuple(names),
    )


@given(_rules(), _rules())
def test_covered_rights_are_allowed(owner: Rule, requested: Rule) -> None:
    """What `covers` says an owner holds, the authorizer allows it (for concrete requests)."""
    for sub in rbac.breakdown_rule(requested):
        if not rbac.covers([owner], [sub])[0]:
            continue
        verb, grp, resource = sub.verbs[0], sub.api_groups[0], sub.resources[0]
        if "*" in (verb, grp) or "*" in resource:
            continue  # not a request a client can make
        main, _, subresource = resource.partition("/")
        name = sub.resource_names[0] if sub.resource_names else ""
        assert rbac.rule_allows(res(verb, grp, main, subresource, name), owner)


# -- the policy: which bindings apply, reasons ---------------------------------------------------


def _policy(*docs: dict[str, Any]) -> Policy:
    policy = Policy()
    for doc in docs:
        resource = {
            "ClusterRole": "clusterroles",
            "Role": "roles",
            "ClusterRoleBinding": "clusterrolebindings",
            "RoleBinding": "rolebindings",
        }[doc["kind"]]
        policy.put(resource, doc)
    return policy


def test_policy_reasons_and_scopes() -> None:
    policy = _policy(
        cluster_role("reader", rule(["get", "list"], [""], ["pods"])),
        role("cm", "ns1", rule(["*"], [""], ["configmaps"])),
        binding("readers", "reader", group("devs")),
        binding("local-reader", "reader", user("bob"), namespace="ns2"),
        binding("cm", "cm", sa("builder"), namespace="ns1", kind="Role"),
        binding("dangling", "missing", user("eve")),
    )
    d = policy.authorize(Attributes("al", ("devs",), "list", True, "ns1", "", "pods"))
    assert d == rbac.Decision(
        True,
        'RBAC: allowed by ClusterRoleBinding "readers" of ClusterRole "reader" to Group "devs"',
    )
    # a RoleBinding to a ClusterRole grants it in its namespace only
    bob = ("system:authenticated",)
    assert policy.authorize(Attributes("bob", bob, "get", True, "ns2", "", "pods", "", "p")) == (
        rbac.Decision(
            True,
            'RBAC: allowed by RoleBinding "local-reader/ns2" of ClusterRole "reader" to User "bob"',
        )
    )
    assert not policy.authorize(Attributes("bob", bob, "get", True, "ns1", "", "pods")).allowed
    assert not policy.authorize(Attributes("bob", bob, "list", True, "", "", "pods")).allowed
    # a service account subject without namespace is the binding's namespace's
    builder = rbac.service_account_user("ns1", "builder")
    d = policy.authorize(Attributes(builder, (), "create", True, "ns1", "", "configmaps"))
    assert d.reason == (
        'RBAC: allowed by RoleBinding "cm/ns1" of Role "cm" to ServiceAccount "builder/ns1"'
    )
    other = rbac.service_account_user("ns2", "builder")
    assert not policy.authorize(
        Attributes(other, (), "create", True, "ns1", "", "configmaps")
    ).allowed
    # a binding to a missing role: denied, the reason says why
    assert policy.authorize(Attributes("eve", (), "get", True, "", "", "pods")) == rbac.Decision(
        False, 'RBAC: clusterrole.rbac.authorization.k8s.io "missing" not found'
    )
    # system:masters: allowed without a reason (the privileged-group authorizer)
    assert policy.authorize(Attributes("root", ("system:masters",), "nuke", True)) == rbac.Decision(
        True
    )


def test_policy_cache_follows_changes() -> None:
    policy = _policy(cluster_role("reader", rule(["get"], [""], ["pods"])))
    ask = Attributes("al", (), "get", True, "", "", "pods")
    assert not policy.authorize(ask).allowed
    policy.put("clusterrolebindings", binding("b", "reader", user("al")))
    assert policy.authorize(ask).allowed
    policy.put("clusterroles", cluster_role("reader", rule(["list"], [""], ["pods"])))
    assert not policy.authorize(ask).allowed
    policy.put("clusterroles", cluster_role("reader", rule(["get"], [""], ["pods"])))
    policy.remove("clusterrolebindings", "", "b")
    assert not policy.authorize(ask).allowed


def test_subject_matching() -> None:
    assert rbac.applies_to_user(
        "system:serviceaccount:a:b", (), Subject("ServiceAccount", "b", "a"), ""
    )
    assert not rbac.applies_to_user(
        "system:serviceaccount:a:b", (), Subject("ServiceAccount", "b"), ""
    )
    assert rbac.applies_to_user(
        "system:serviceaccount:a:b", (), Subject("ServiceAccount", "b"), "a"
    )
    assert not rbac.applies_to_user("b", ("b",), Subject("User", "x"), "")
    assert rbac.applies_to_user("x", ("g",), Subject("Group", "g"), "")
    assert not rbac.applies_to_user("x", ("g",), Subject("Other", "x"), "")
    b = Binding("n", "", "ClusterRole", "r", (Subject("User", "x"), Subject("Group", "g")))
    assert b.applies_to("y", ("g",)) == Subject("Group", "g")


def test_forbidden_messages() -> None:
    err = rbac.forbidden_error(Attributes("x", (), "list", True, "default", "", "pods"))
    assert err.message == (
        'pods is forbidden: User "x" cannot list resource "pods" in API group "" in the namespace '
        '"default"'
    )
    assert err.status()["details"] == {"kind": "pods"}
    err = rbac.forbidden_error(
        Attributes("x", (), "get", True, "", "apps", "deployments", "scale", "d")
    )
    assert err.message == (
        'deployments.apps "d" is forbidden: User "x" cannot get resource "deployments/scale" in '
        'API group "apps" at the cluster scope'
    )
    err = rbac.forbidden_error(Attributes("x", (), "get", False, path="/foo"), "RBAC: oops")
    assert err.message == 'forbidden: User "x" cannot get path "/foo": RBAC: oops'
    err = rbac.forbidden_error(Attributes("<x>", (), "get", False, path="/a&b"))
    assert err.message == 'forbidden: User "&lt;x&gt;" cannot get path "/a&amp;b"'


def test_validation() -> None:
    with pytest.raises(ApiError) as err:
        rbac.validate(
            "clusterrolebindings", binding("b", "r", {"kind": "Robot", "name": "x"}, kind="Role")
        )
    assert err.value.code == 422
    assert err.value.message == (
        'ClusterRoleBinding.rbac.authorization.k8s.io "b" is invalid: [roleRef.kind: Unsupported '
        'value: "Role": supported values: "ClusterRole", subjects[0].kind: Unsupported value: '
        '"Robot": supported values: "ServiceAccount", "User", "Group"]'
    )
    with pytest.raises(ApiError) as err:
        rbac.validate("clusterrolebindings", binding("b", "r", sa("x")))
    assert err.value.message.endswith("subjects[0].namespace: Required value")
    with pytest.raises(ApiError) as err:
        rbac.validate("roles", role("r", "ns", url_rule(["get"], ["/x"]), {"verbs": ["get"]}))
    assert err.value.message == (
        'Role.rbac.authorization.k8s.io "r" is invalid: [rules[0].nonResourceURLs: Invalid value: '
        '[]string{"/x"}: namespaced rules cannot apply to non-resource URLs, rules[1].apiGroups: '
        "Required value: resource rules must supply at least one api group, rules[1].resources: "
        "Required value: resource rules must supply at least one resource]"
    )
    rbac.validate("clusterroles", cluster_role("system:x", url_rule(["get"], ["/x"])))
    old = binding("b", "view", user("u"))
    with pytest.raises(ApiError) as err:
        rbac.validate_update("clusterrolebindings", binding("b", "edit", user("u")), old)
    assert err.value.message == (
        'ClusterRoleBinding.rbac.authorization.k8s.io "b" is invalid: roleRef: Invalid value: '
        'rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"edit"}: '
        "cannot change roleRef"
    )


def test_aggregation_rules() -> None:
    roles = [
        cluster_role("b-view", rule(["get"], [""], ["b"]), labels={"agg": "yes"}),
        cluster_role(
            "a-view", rule(["get"], [""], ["a"]), rule(["get"], [""], ["b"]), labels={"agg": "yes"}
        ),
        cluster_role("other", rule(["get"], [""], ["c"])),
    ]
    agg = {
        "metadata": {"name": "all"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "yes"}}]},
    }
    assert rbac.aggregated_rules(agg, roles) == [
        rule(["get"], [""], ["a"]),
        rule(["get"], [""], ["b"]),
    ]
    assert rbac.selector_matches(
        {"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}, {"k": "v"}
    )
    assert not rbac.selector_matches({"matchExpressions": [{"key": "k", "operator": "Exists"}]}, {})


# -- in the request path (in-process HTTP) --------------------------------------------------------

ADMIN_TOKEN = "admin-token"
TOKENS = {
    ADMIN_TOKEN: ("admin", "uid-admin", ["system:masters"]),
    "dev-token": ("dev", "uid-dev", ["devs"]),
    "nobody-token": ("nobody", "uid-nobody", []),
    "agent-token": (
        f"system:serviceaccount:{agent_rbac.NAMESPACE}:{agent_rbac.AGENT_SERVICE_ACCOUNT}",
        "uid-agent",
        ["system:serviceaccounts", f"system:serviceaccounts:{agent_rbac.NAMESPACE}"],
    ),
}
OBJECTS = [
    binding("devs-edit", "edit", group("devs"), namespace="default"),
    cluster_role("node-reader", rule(["get", "list", "watch"], [""], ["nodes"])),
    binding("devs-nodes", "node-reader", group("devs")),
    *agent_rbac.agent_rbac(),
]


@dataclass
class Api:
    client: TestClient[Any, Any]
    standin: StandIn

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = ADMIN_TOKEN,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {token}", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        resp = await self.client.request(method, path, data=data, headers=hdrs)
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def _api(tmp_path: Path, mode: str = "RBAC") -> Api:
    tokens = write_token_file(tmp_path / "tokens.csv", TOKENS)
    standin = StandIn(Config(token_file=tokens, authorization_mode=mode, objects=OBJECTS))
    client: TestClient[Any, Any] = TestClient(
        TestServer(standin.make_app()), timeout=aiohttp.ClientTimeout(total=10)
    )
    await client.start_server()
    return Api(client, standin)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    a = await _api(tmp_path)
    yield a
    await a.client.close()


async def test_forbidden_status(api: Api) -> None:
    code, body = await api.call("GET", "/api/v1/namespaces/kube-system/pods", token="dev-token")
    assert code == 403
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods is forbidden: User "dev" cannot list resource "pods" in API group "" in '
        'the namespace "kube-system"',
        "reason": "Forbidden",
        "details": {"kind": "pods"},
        "code": 403,
    }
    assert (await api.call("GET", "/api/v1/namespaces/default/pods", token="dev-token"))[0] == 200
    assert (await api.call("GET", "/api/v1/nodes?watch=0", token="dev-token"))[0] == 200
    code, body = await api.call("DELETE", "/api/v1/nodes/standin-node", token="dev-token")
    assert (code, body["message"], body["details"]) == (
        403,
        'nodes "standin-node" is forbidden: User "dev" cannot delete resource "nodes" in API '
        'group "" at the cluster scope',
        {"name": "standin-node", "kind": "nodes"},
    )
    code, body = await api.call("GET", "/metrics", token="dev-token")
    assert (code, body["message"]) == (403, 'forbidden: User "dev" cannot get path "/metrics"')
    assert "details" not in body or body["details"] == {}
    # discovery and the public paths are everyone's (system:discovery, public-info-viewer)
    assert (await api.call("GET", "/apis", token="nobody-token"))[0] == 200
    assert (await api.call("GET", "/version", token="nobody-token"))[0] == 200
    resp = await api.client.get("/healthz")
    assert resp.status == 200
    # subresources: edit may exec (create pods/exec), view may not read secrets
    code, body = await api.call(
        "POST", "/api/v1/namespaces/kube-system/pods/p/exec", token="dev-token"
    )
    assert body["message"].startswith(
        'pods "p" is forbidden: User "dev" cannot create resource "pods/exec" in API group "" in '
        'the namespace "kube-system"'
    )


async def test_access_reviews(api: Api) -> None:
    sar = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": "dev",
            "groups": ["devs"],
            "resourceAttributes": {"namespace": "default", "verb": "delete", "resource": "pods"},
        },
    }
    code, body = await api.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar)
    assert code == 201
    assert body["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "devs-edit/default" of ClusterRole "edit" to '
        'Group "devs"',
    }
    sar["spec"]["resourceAttributes"]["namespace"] = "kube-system"
    code, body = await api.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar)
    assert body["status"] == {"allowed": False}
    # a user may not ask SubjectAccessReviews without the right
    code, body = await api.call(
        "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar, token="dev-token"
    )
    assert code == 403
    # LocalSubjectAccessReview: the URL's namespace
    lsar = {**sar, "kind": "LocalSubjectAccessReview", "metadata": {"namespace": "default"}}
    lsar["spec"] = {**sar["spec"], "resourceAttributes": {"verb": "delete", "resource": "pods",
                                                          "namespace": "default"}}  # fmt: skip
    code, body = await api.call(
        "POST",
        "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews",
        lsar,
        token="dev-token",
    )  # admin (via edit) holds localsubjectaccessreviews? no: dev has edit, not admin
    assert code == 403
    code, body = await api.call(
        "POST", "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews", lsar
    )
    assert (code, body["status"]["allowed"]) == (201, True)
    # self reviews: anyone authenticated (system:basic-user)
    ssar = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"nonResourceAttributes": {"path": "/apis/apps", "verb": "get"}},
    }
    code, body = await api.call(
        "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ssar, token="nobody-token"
    )
    assert body["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole '
        '"system:discovery" to Group "system:authenticated"',
    }
    ssrr = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": "default"},
    }
    code, body = await api.call(
        "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", ssrr, token="dev-token"
    )
    status = body["status"]
    assert status["incomplete"] is False
    assert {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["nodes"]} in (
        status["resourceRules"]
    )
    assert {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["serviceaccounts"]} in (
        status["resourceRules"]
    )
    assert {"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz",
            "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"]} in (
        status["nonResourceRules"]
    )  # fmt: skip


async def test_impersonation_by_rbac(api: Api) -> None:
    # edit in default: impersonate service accounts there, not users, not elsewhere
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    ssr = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    code, body = await api.call(
        "POST", ssr, review, token="dev-token",
        headers={"Impersonate-User": "system:serviceaccount:default:default"},
    )  # fmt: skip
    assert code == 201, body
    assert body["status"]["userInfo"]["username"] == "system:serviceaccount:default:default"
    code, body = await api.call(
        "POST", ssr, review, token="dev-token",
        headers={"Impersonate-User": "system:serviceaccount:kube-system:default"},
    )  # fmt: skip
    assert (code, body["message"]) == (
        403,
        'serviceaccounts "default" is forbidden: User "dev" cannot impersonate resource '
        '"serviceaccounts" in API group "" in the namespace "kube-system"',
    )
    code, body = await api.call(
        "POST", ssr, review, token="dev-token", headers={"Impersonate-User": "x"}
    )
    assert body["message"] == (
        'users "x" is forbidden: User "dev" cannot impersonate resource "users" in API group "" '
        "at the cluster scope"
    )


async def test_escalation_and_bind(api: Api) -> None:
    crbs = f"{RBAC_V1}/clusterrolebindings"
    # no rights at all: RBAC's 403 before the escalation check
    code, body = await api.call(
        "POST", crbs, binding("x", "view", user("nobody")), token="nobody-token"
    )
    assert code == 403
    # give nobody the right to write bindings and roles, nothing else
    grant = cluster_role("rbac-writer", rule(["create", "update", "get"], [G], ["*"]))
    assert (await api.call("POST", f"{RBAC_V1}/clusterroles", grant))[0] == 201
    assert (await api.call("POST", crbs, binding("w", "rbac-writer", user("nobody"))))[0] == 201
    code, body = await api.call(
        "POST", crbs, binding("x", "view", user("nobody")), token="nobody-token"
    )
    assert code == 403
    assert body["message"].startswith(
        'clusterrolebindings.rbac.authorization.k8s.io "x" is forbidden: user "nobody" '
        '(groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently '
        'held:\n{APIGroups:[""], Resources:["bindings"], Verbs:["get" "list" "watch"]}\n'
    )
    assert body["details"] == {"name": "x", "group": G, "kind": "clusterrolebindings"}
    code, body = await api.call(
        "POST", crbs, binding("x", "nope", user("nobody")), token="nobody-token"
    )
    assert body["message"] == (
        'clusterrolebindings.rbac.authorization.k8s.io "x" is forbidden: '
        'clusterrole.rbac.authorization.k8s.io "nope" not found'
    )
    # a role granting only what the user holds: allowed; more: refused; escalate: allowed
    mine = cluster_role("mine", rule(["get"], [G], ["roles"]))
    assert (await api.call("POST", f"{RBAC_V1}/clusterroles", mine, token="nobody-token"))[0] == 201
    more = cluster_role("more", rule(["get"], [""], ["secrets"]))
    code, body = await api.call("POST", f"{RBAC_V1}/clusterroles", more, token="nobody-token")
    assert (code, body["message"]) == (
        403,
        'clusterroles.rbac.authorization.k8s.io "more" is forbidden: user "nobody" '
        '(groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently '
        'held:\n{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}',
    )
    # binding a role the user holds entirely: allowed without bind
    assert (await api.call("POST", crbs, binding("y", "mine", user("z")), token="nobody-token"))[
        0
    ] == 201
    # bind on a named role
    bind = cluster_role("binder", rule(["bind"], [G], ["clusterroles"], ["view"]))
    assert (await api.call("POST", f"{RBAC_V1}/clusterroles", bind))[0] == 201
    assert (await api.call("POST", crbs, binding("b", "binder", user("nobody"))))[0] == 201
    code, _ = await api.call("POST", crbs, binding("x", "view", user("q")), token="nobody-token")
    assert code == 201
    code, _ = await api.call("POST", crbs, binding("x2", "edit", user("q")), token="nobody-token")
    assert code == 403
    # roleRef cannot change
    current = (await api.call("GET", f"{crbs}/x"))[1]
    current["roleRef"]["name"] = "edit"
    code, body = await api.call("PUT", f"{crbs}/x", current)
    assert (code, body["reason"]) == (422, "Invalid")
    assert body["message"].endswith(": cannot change roleRef")
    # an aggregationRule needs cluster-admin's rights
    agg = {
        **cluster_role("agg"),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]},
    }
    code, body = await api.call("POST", f"{RBAC_V1}/clusterroles", agg, token="nobody-token")
    assert (code, body["message"]) == (
        403,
        'clusterroles.rbac.authorization.k8s.io "agg" is forbidden: must have cluster-admin '
        "privileges to use the aggregationRule",
    )


async def test_aggregated_roles_follow_labels(api: Api) -> None:
    extra = cluster_role(
        "widgets-view",
        rule(["get"], ["example.com"], ["widgets"]),
        labels={"rbac.authorization.k8s.io/aggregate-to-view": "true"},
    )
    assert (await api.call("POST", f"{RBAC_V1}/clusterroles", extra))[0] == 201
    for name in ("view", "edit", "admin"):
        _, body = await api.call("GET", f"{RBAC_V1}/clusterroles/{name}")
        assert rule(["get"], ["example.com"], ["widgets"]) in body["rules"], name
    _, view = await api.call("GET", f"{RBAC_V1}/clusterroles/view")
    assert all("secrets" not in r.get("resources", []) for r in view["rules"])
    _, admin = await api.call("GET", f"{RBAC_V1}/clusterroles/admin")
    assert (
        rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]) in admin["rules"]
    )
    assert (await api.call("DELETE", f"{RBAC_V1}/clusterroles/widgets-view"))[0] == 200
    _, body = await api.call("GET", f"{RBAC_V1}/clusterroles/view")
    assert rule(["get"], ["example.com"], ["widgets"]) not in body["rules"]


async def test_always_allow(tmp_path: Path) -> None:
    api = await _api(tmp_path, "AlwaysAllow")
    try:
        assert (await api.call("GET", "/api/v1/secrets", token="nobody-token"))[0] == 200
        code, _ = await api.call(
            "GET", "/api/v1/namespaces", token="nobody-token", headers={"Impersonate-User": "x"}
        )
        assert code == 200
    finally:
        await api.client.close()


# -- the agents' RBAC (gateway.clusters.agent_rbac) ----------------------------------------------


async def test_agent_rbac_is_enough_and_no_more(api: Api) -> None:
    agent = "agent-token"
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    headers = {
        "Impersonate-User": "u-abc",
        "Impersonate-Group": "herdgate:cluster-owner",
        "Impersonate-Uid": "uid-1",
        f"Impersonate-Extra-{agent_rbac.EXTRA_KEYS[0]}": "alice",
        f"Impersonate-Extra-{agent_rbac.EXTRA_KEYS[1]}": "local://u-abc",
    }
    code, body = await api.call(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        review,
        token=agent,
        headers=headers,
    )
    assert code == 201, body
    assert body["status"]["userInfo"]["username"] == "u-abc"
    code, body = await api.call(
        "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review, token=agent,
        headers={**headers, "Impersonate-Extra-other": "x"},
    )  # fmt: skip
    assert (code, body["message"]) == (
        403,
        'userextras.authentication.k8s.io "x" is forbidden: User '
        '"system:serviceaccount:herdgate-system:herdgate-agent" cannot impersonate resource '
        '"userextras/other" in API group "authentication.k8s.io" at the cluster scope',
    )
    code, body = await api.call(
        "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review, token=agent,
        headers={"Impersonate-User": "system:serviceaccount:default:default"},
    )  # fmt: skip
    assert code == 403  # users, not service accounts
    for path in (
        "/api/v1/nodes",
        "/api/v1/namespaces",
        "/api/v1/namespaces?watch=1&timeoutSeconds=1",
    ):
        assert (await api.call("GET", path, token=agent))[0] == 200, path
    for name in ("/readyz", "/livez", "/version"):
        assert (await api.call("GET", name, token=agent))[0] == 200
    crbs = f"{RBAC_V1}/clusterrolebindings"
    labels = dict(agent_rbac.OWNED_LABELS)
    for role_name in agent_rbac.BUILTIN_BOUND_ROLES:
        doc = binding(f"herdgate-{role_name}", role_name, user("u-abc"))
        doc["metadata"]["labels"] = labels
        code, body = await api.call("POST", crbs, doc, token=agent)
        assert code == 201, body
    code, body = await api.call(
        "POST", crbs, binding("x", "system:auth-delegator", user("u")), token=agent
    )
    assert code == 403
    assert "is attempting to grant RBAC permissions not currently held" in body["message"]
    code, _ = await api.call(
        "POST",
        f"{RBAC_V1}/namespaces/default/rolebindings",
        binding("e", "edit", user("u"), namespace="default"),
        token=agent,
    )
    assert code == 201
    # no secrets, no pods
    assert (await api.call("GET", "/api/v1/namespaces/default/secrets", token=agent))[0] == 403
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}  # fmt: skip
    assert (await api.call("POST", "/api/v1/namespaces/default/pods", pod, token=agent))[0] == 403
    # ClusterRoles: no create, no escalate. A role with rules the agent does not hold is
    # refused, and so is growing its own bind role; shrinking it is allowed.
    custom = f"{agent_rbac.CUSTOM_ROLE_PREFIX}t1"
    template = cluster_role(custom, rule(["get"], [""], ["secrets"]))
    code, body = await api.call("POST", f"{RBAC_V1}/clusterroles", template, token=agent)
    assert code == 403, body
    code, body = await api.call(
        "POST", f"{RBAC_V1}/clusterroles", cluster_role("mine", rule(["get"], [""], ["nodes"])),
        token=agent,
    )  # fmt: skip
    assert code == 403, body  # no create at all, even within its own rights
    grown = agent_rbac.agent_bind_role((custom,))
    code, body = await api.call(
        "PUT", f"{RBAC_V1}/clusterroles/{agent_rbac.AGENT_BIND_ROLE}", grown, token=agent
    )
    assert code == 403, body
    assert "is attempting to grant RBAC permissions not currently held" in body["message"]
    code, body = await api.call("POST", crbs, binding("t1", custom, user("u")), token=agent)
    assert code == 403, body  # not in its bind role
    # The cluster's administrator applies the manifest that lists it: now it may bind it.
    _, held = await api.call("GET", f"{RBAC_V1}/clusterroles/{agent_rbac.AGENT_BIND_ROLE}")
    grown["metadata"]["resourceVersion"] = held["metadata"]["resourceVersion"]
    code, body = await api.call(
        "PUT", f"{RBAC_V1}/clusterroles/{agent_rbac.AGENT_BIND_ROLE}", grown
    )
    assert code == 200, body
    code, body = await api.call("POST", f"{RBAC_V1}/clusterroles", template)
    assert code == 201, body
    code, body = await api.call("POST", crbs, binding("t1", custom, user("u")), token=agent)
    assert code == 201, body
    # It cannot change the role's rules (not its own), nor a built-in role.
    _, have = await api.call("GET", f"{RBAC_V1}/clusterroles/{custom}")
    have["rules"] = [rule(["get", "list"], [""], ["secrets"])]
    code, _ = await api.call("PUT", f"{RBAC_V1}/clusterroles/{custom}", have, token=agent)
    assert code == 403
    _, view = await api.call("GET", f"{RBAC_V1}/clusterroles/view")
    code, _ = await api.call("PUT", f"{RBAC_V1}/clusterroles/view", view, token=agent)
    assert code == 403
    # It may delete the ClusterRoles its bind role lists as herdgate's, and shrink that role.
    code, _ = await api.call("DELETE", f"{RBAC_V1}/clusterroles/{custom}", token=agent)
    assert code == 200
    code, _ = await api.call("DELETE", f"{RBAC_V1}/clusterroles/view", token=agent)
    assert code == 403
    _, held = await api.call("GET", f"{RBAC_V1}/clusterroles/{agent_rbac.AGENT_BIND_ROLE}")
    shrunk = agent_rbac.agent_bind_role()
    shrunk["metadata"]["resourceVersion"] = held["metadata"]["resourceVersion"]
    code, body = await api.call(
        "PUT", f"{RBAC_V1}/clusterroles/{agent_rbac.AGENT_BIND_ROLE}", shrunk, token=agent
    )
    assert code == 200, body
    # its own records in its namespace only
    policy = api.standin.api.authorizer
    sa_user, _, sa_groups = TOKENS[agent]
    groups = (*sa_groups, "system:authenticated")
    here = Attributes(sa_user, groups, "create", True, agent_rbac.NAMESPACE, GROUP, TOKEN_PLURAL)
    assert policy.authorize(here).allowed
    there = Attributes(sa_user, groups, "create", True, "default", GROUP, TOKEN_PLURAL)
    assert not policy.authorize(there).allowed


async def test_agent_with_roles_managed_keeps_herdgate_roles_itself(api: Api) -> None:
    """The opt-in (``?roles=managed``: ``herdgate-agent-roles``): create and escalate on
    ClusterRoles and update of its bind role, so it writes herdgate's roles itself."""
    agent = "agent-token"
    for doc in agent_rbac.agent_rbac(manage_roles=True):
        if doc["metadata"]["name"] == agent_rbac.AGENT_ROLES_ROLE:
            path = "clusterroles" if doc["kind"] == "ClusterRole" else "clusterrolebindings"
            code, body = await api.call("POST", f"{RBAC_V1}/{path}", doc)
            assert code == 201, body
    custom = f"{agent_rbac.CUSTOM_ROLE_PREFIX}t2"
    template = cluster_role(custom, rule(["get"], [""], ["secrets"]))
    code, body = await api.call("POST", f"{RBAC_V1}/clusterroles", template, token=agent)
    assert code == 201, body
    _, held = await api.call("GET", f"{RBAC_V1}/clusterroles/{agent_rbac.AGENT_BIND_ROLE}")
    grown = agent_rbac.agent_bind_role((custom,))
    grown["metadata"]["resourceVersion"] = held["metadata"]["resourceVersion"]
    code, body = await api.call(
        "PUT", f"{RBAC_V1}/clusterroles/{agent_rbac.AGENT_BIND_ROLE}", grown, token=agent
    )
    assert code == 200, body
    crbs = f"{RBAC_V1}/clusterrolebindings"
    code, body = await api.call("POST", crbs, binding("t2", custom, user("u")), token=agent)
    assert code == 201, body
    # Still no other role's update: only the bind role is named.
    _, view = await api.call("GET", f"{RBAC_V1}/clusterroles/view")
    code, _ = await api.call("PUT", f"{RBAC_V1}/clusterroles/view", view, token=agent)
    assert code == 403


# -- real kubectl ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandInProcess]:
    s = StandInProcess.start(
        tmp_path_factory.mktemp("rbac-standin"),
        tokens={k: v for k, v in TOKENS.items() if k != "agent-token"},
        objects=[binding("devs-admin", "admin", group("devs"), namespace="default")],
    )
    yield s
    s.stop()


def _kubectl(server: StandInProcess, token: str, *args: str, stdin: str | None = None) -> Any:
    kubeconfig = server.kubeconfig(server.workdir / f"kc-{token}", token=token)
    return run_kubectl(need_kubectl("1.32"), kubeconfig, *args, stdin=stdin)


def test_kubectl_rbac(server: StandInProcess) -> None:
    out = _kubectl(server, "admin-token", "create", "role", "pod-reader", "--verb=get,list",
                   "--resource=pods", "-n", "kube-system")  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = _kubectl(server, "admin-token", "create", "rolebinding", "nobody-pods",
                   "--role=pod-reader", "--user=nobody", "-n", "kube-system")  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = _kubectl(server, "nobody-token", "get", "pods", "-n", "kube-system")
    assert out.returncode == 0, out.stderr
    out = _kubectl(server, "nobody-token", "get", "pods", "-n", "default")
    assert out.returncode == 1
    assert (
        'Error from server (Forbidden): pods is forbidden: User "nobody" cannot list resource '
        '"pods" in API group "" in the namespace "default"'
    ) in out.stderr
    out = _kubectl(server, "nobody-token", "auth", "can-i", "list", "pods", "-n", "kube-system")
    assert out.stdout.strip() == "yes"
    out = _kubectl(server, "nobody-token", "auth", "can-i", "delete", "pods", "-n", "kube-system")
    assert out.stdout.strip() == "no"
    out = _kubectl(server, "nobody-token", "auth", "can-i", "--list", "-n", "kube-system")
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert ["pods", "[]", "[]", "[get", "list]"] in lines
    assert ["selfsubjectaccessreviews.authorization.k8s.io", "[]", "[]", "[create]"] in lines
    out = _kubectl(server, "admin-token", "auth", "can-i", "create", "deployments", "--as=dev",
                   "--as-group=devs", "-n", "default")  # fmt: skip
    assert out.stdout.strip() == "yes"
    out = _kubectl(
        server, "admin-token", "auth", "can-i", "get", "secrets", "--as=dev", "-n", "default"
    )
    assert out.stdout.strip() == "no"
    # kubectl create clusterrolebinding, escalation, get with the real columns
    out = _kubectl(
        server,
        "admin-token",
        "create",
        "clusterrolebinding",
        "dev-view",
        "--clusterrole=view",
        "--user=dev",
        "--group=qa",
        "--serviceaccount=default:ci",
    )
    assert out.returncode == 0, out.stderr
    out = _kubectl(server, "admin-token", "get", "clusterrolebinding", "dev-view", "-o", "wide")
    assert out.stdout.split("\n")[0].split() == [
        "NAME",
        "ROLE",
        "AGE",
        "USERS",
        "GROUPS",
        "SERVICEACCOUNTS",
    ]
    row = out.stdout.split("\n")[1].split()
    assert (row[0], row[1], row[3:]) == (
        "dev-view",
        "ClusterRole/view",
        ["dev", "qa", "default/ci"],
    )
    out = _kubectl(server, "dev-token", "create", "rolebinding", "edits", "--clusterrole=edit",
                   "--user=qa", "-n", "default")  # fmt: skip
    assert out.returncode == 0, out.stderr  # admin holds all of edit in default
    out = _kubectl(
        server,
        "dev-token",
        "create",
        "rolebinding",
        "admins",
        "--clusterrole=cluster-admin",
        "--user=dev",
        "-n",
        "default",
    )
    assert out.returncode == 1
    assert (
        'rolebindings.rbac.authorization.k8s.io "admins" is forbidden: user "dev" '
        '(groups=["devs" "system:authenticated"]) is attempting to grant RBAC permissions not '
        "currently held:\n"
    ) in out.stderr
    # roleRef is immutable: apply a changed one
    manifest = {
        **binding("dev-view", "edit", user("dev")),
    }
    out = _kubectl(server, "admin-token", "apply", "-f", "-", stdin=json.dumps(manifest))
    assert out.returncode == 1
    assert "cannot change roleRef" in out.stderr
    out = _kubectl(server, "admin-token", "delete", "clusterrolebinding", "dev-view")
    assert out.returncode == 0, out.stderr
    out = _kubectl(server, "dev-token", "auth", "can-i", "list", "pods", "-n", "default")
    assert out.stdout.strip() == "yes"


def test_field_selector_names() -> None:
    assert rbac.name_from_field_selector("metadata.name=a") == "a"
    assert rbac.name_from_field_selector("status.phase=x,metadata.name==b") == "b"
    assert rbac.name_from_field_selector("metadata.name!=a") == ""
    assert rbac.name_from_field_selector("metadata.name=a/b") == ""


async def test_resource_names_allow_a_named_watch(api: Api) -> None:
    named = cluster_role("one-cm", rule(["get", "list", "watch"], [""], ["configmaps"], ["one"]))
    assert (await api.call("POST", f"{RBAC_V1}/clusterroles", named))[0] == 201
    crb = binding("one-cm", "one-cm", user("nobody"))
    assert (await api.call("POST", f"{RBAC_V1}/clusterrolebindings", crb))[0] == 201
    cms = "/api/v1/namespaces/default/configmaps"
    code, _ = await api.call(
        "GET", f"{cms}?fieldSelector=metadata.name%3Done", token="nobody-token"
    )
    assert code == 200
    assert (await api.call("GET", cms, token="nobody-token"))[0] == 403
    assert (await api.call("GET", f"{cms}/two", token="nobody-token"))[0] == 403
    assert (await api.call("GET", f"{cms}/one", token="nobody-token"))[0] == 404


def test_kubectl_apply_and_delete_rbac(server: StandInProcess) -> None:
    doc = cluster_role("applied", rule(["get"], [""], ["configmaps"]), labels={"team": "a"})
    out = _kubectl(server, "admin-token", "apply", "-f", "-", stdin=json.dumps(doc))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clusterrole.rbac.authorization.k8s.io/applied created"
    doc["rules"] = [rule(["get", "list"], [""], ["configmaps", "secrets"])]
    out = _kubectl(server, "admin-token", "apply", "-f", "-", stdin=json.dumps(doc))
    assert out.stdout.strip() == "clusterrole.rbac.authorization.k8s.io/applied configured"
    out = _kubectl(server, "admin-token", "get", "clusterrole", "applied", "-o", "json")
    assert json.loads(out.stdout)["rules"] == doc["rules"]
    rb = binding("applied", "applied", user("nobody"), namespace="kube-public")
    out = _kubectl(server, "admin-token", "apply", "-f", "-", stdin=json.dumps(rb))
    assert out.returncode == 0, out.stderr
    out = _kubectl(server, "nobody-token", "get", "secrets", "-n", "kube-public")
    assert out.returncode == 0, out.stderr
    out = _kubectl(server, "admin-token", "get", "rolebindings", "-n", "kube-public")
    assert out.stdout.split("\n")[1].split()[:2] == ["applied", "ClusterRole/applied"]
    out = _kubectl(server, "admin-token", "delete", "rolebinding", "applied", "-n", "kube-public")
    assert out.returncode == 0, out.stderr
    out = _kubectl(server, "nobody-token", "get", "secrets", "-n", "kube-public")
    assert out.returncode == 1
    assert 'User "nobody" cannot list resource "secrets"' in out.stderr
    out = _kubectl(server, "admin-token", "delete", "clusterrole", "applied")
    assert out.stdout.strip() == 'clusterrole.rbac.authorization.k8s.io "applied" deleted'


async def test_audit_annotations(tmp_path: Path) -> None:
    tokens = write_token_file(tmp_path / "tokens.csv", TOKENS)
    log = tmp_path / "audit.log"
    standin = StandIn(Config(token_file=tokens, audit_log=log, objects=OBJECTS))
    client: TestClient[Any, Any] = TestClient(TestServer(standin.make_app()))
    await client.start_server()
    try:
        api = Api(client, standin)
        assert (await api.call("GET", "/api/v1/nodes", token="dev-token"))[0] == 200
        assert (await api.call("GET", "/api/v1/secrets", token="dev-token"))[0] == 403
    finally:
        await client.close()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0]["annotations"] == {
        "authorization.k8s.io/decision": "allow",
        "authorization.k8s.io/reason": 'RBAC: allowed by ClusterRoleBinding "devs-nodes" of '
        'ClusterRole "node-reader" to Group "devs"',
    }
    assert events[1]["annotations"] == {
        "authorization.k8s.io/decision": "forbid",
        "authorization.k8s.io/reason": "",
    }


def test_kubectl_create_clusterrole(server: StandInProcess) -> None:
    out = _kubectl(
        server, "admin-token", "create", "clusterrole", "pod-logs", "--verb=get",
        "--resource=pods,pods/log", "--resource-name=web",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clusterrole.rbac.authorization.k8s.io/pod-logs created"
    out = _kubectl(server, "admin-token", "get", "clusterrole", "pod-logs", "-o", "json")
    assert json.loads(out.stdout)["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "resourceNames": ["web"],
         "verbs": ["get"]}
    ]  # fmt: skip
    out = _kubectl(
        server, "nobody-token", "create", "clusterrole", "x", "--verb=get", "--resource=pods"
    )
    assert out.returncode == 1
    assert (
        'clusterroles.rbac.authorization.k8s.io is forbidden: User "nobody" cannot create '
        'resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope'
    ) in out.stderr


def test_bad_bootstrap_objects_stop_the_server(tmp_path: Path) -> None:
    bad = binding("x", "r", user("u"), kind="Role")
    with pytest.raises(RuntimeError, match=r'roleRef.kind: Unsupported value: "Role"'):
        StandInProcess.start(tmp_path / "s", objects=[bad])
