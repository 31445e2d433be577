"""The default ClusterRoles and ClusterRoleBindings kube-apiserver creates at start.

From kubernetes' `plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`, as its
`testdata/cluster-roles.yaml` and `cluster-role-bindings.yaml` print them (1.32): `cluster-admin`,
the aggregated `admin`, `edit`, `view` and the `system:aggregate-to-*` roles they gather (whole,
including resources the stand-in does not serve), `system:basic-user`, `system:discovery`,
`system:public-info-viewer`, `system:auth-delegator`, and their default bindings. The controller
and node roles are left out (the stand-in has no controllers or kubelets that authenticate).
"""

from __future__ import annotations

from typing import Any

from .rbac import RBAC_API, RBAC_GROUP

Doc = dict[str, Any]

_READ = ["get", "list", "watch"]
_WRITE = ["create", "delete", "deletecollection", "patch", "update"]
_ALL = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
AGGREGATE_TO = "rbac.authorization.k8s.io/aggregate-to-"


def _r(groups: list[str], resources: list[str], verbs: list[str]) -> Doc:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def _meta(name: str, labels: dict[str, str] | None = None) -> Doc:
    return {
        "name": name,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults", **(labels or {})},
    }


def _role(name: str, rules: list[Doc], labels: dict[str, str] | None = None) -> Doc:
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": _meta(name, labels),
        "rules": rules,
    }


def _aggregated(name: str, to: str, labels: dict[str, str] | None = None) -> Doc:
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": _meta(name, labels),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {AGGREGATE_TO + to: "true"}}]},
        "rules": [],
    }


def _binding(name: str, role: str, groups: list[str]) -> Doc:
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRoleBinding",
        "metadata": _meta(name),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups],
    }


_VIEW_RULES = [
    _r(
        [""],
        [
            "configmaps",
            "endpoints",
            "persistentvolumeclaims",
            "persistentvolumeclaims/status",
            "pods",
            "replicationcontrollers",
            "replicationcontrollers/scale",
            "serviceaccounts",
            "services",
            "services/status",
        ],
        _READ,
    ),
    _r(
        [""],
        [
            "bindings",
            "events",
            "limitranges",
            "namespaces/status",
            "pods/log",
            "pods/status",
            "replicationcontrollers/status",
            "resourcequotas",
            "resourcequotas/status",
        ],
        _READ,
    ),
    _r([""], ["namespaces"], _READ),
    _r(["discovery.k8s.io"], ["endpointslices"], _READ),
    _r(
        ["apps"],
        [
            "controllerrevisions",
            "daemonsets",
            "daemonsets/status",
            "deployments",
            "deployments/scale",
            "deployments/status",
            "replicasets",
            "replicasets/scale",
            "replicasets/status",
            "statefulsets",
            "statefulsets/scale",
            "statefulsets/status",
        ],
        _READ,
    ),
    _r(["autoscaling"], ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], _READ),
    _r(["batch"], ["cronjobs", "cronjobs/status", "jobs", "jobs/status"], _READ),
    _r(
        ["extensions"],
        [
            "daemonsets",
            "daemonsets/status",
            "deployments",
            "deployments/scale",
            "deployments/status",
            "ingresses",
            "ingresses/status",
            "networkpolicies",
            "replicasets",
            "replicasets/scale",
            "replicasets/status",
            "replicationcontrollers/scale",
        ],
        _READ,
    ),
    _r(["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"], _READ),
    _r(["networking.k8s.io"], ["ingresses", "ingresses/status", "networkpolicies"], _READ),
]

_EDIT_RULES = [
    _r(
        [""],
        [
            "pods/attach",
            "pods/exec",
            "pods/portforward",
            "pods/proxy",
            "secrets",
            "services/proxy",
        ],
        _READ,
    ),
    _r([""], ["serviceaccounts"], ["impersonate"]),
    _r([""], ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], _WRITE),
    _r([""], ["pods/eviction"], ["create"]),
    _r(
        [""],
        [
            "configmaps",
            "events",
            "persistentvolumeclaims",
            "replicationcontrollers",
            "replicationcontrollers/scale",
            "secrets",
            "serviceaccounts",
            "services",
            "services/proxy",
        ],
        _WRITE,
    ),
    _r([""], ["serviceaccounts/token"], ["create"]),
    _r(
        ["apps"],
        [
            "daemonsets",
            "deployments",
            "deployments/rollback",
            "deployments/scale",
            "replicasets",
            "replicasets/scale",
            "statefulsets",
            "statefulsets/scale",
        ],
        _WRITE,
    ),
    _r(["autoscaling"], ["horizontalpodautoscalers"], _WRITE),
    _r(["batch"], ["cronjobs", "jobs"], _WRITE),
    _r(
        ["extensions"],
        [
            "daemonsets",
            "deployments",
            "deployments/rollback",
            "deployments/scale",
            "ingresses",
            "networkpolicies",
            "replicasets",
            "replicasets/scale",
            "replicationcontrollers/scale",
        ],
        _WRITE,
    ),
    _r(["policy"], ["poddisruptionbudgets"], _WRITE),
    _r(["networking.k8s.io"], ["ingresses", "networkpolicies"], _WRITE),
    _r(["coordination.k8s.io"], ["leases"], _ALL),
]

_ADMIN_RULES = [
    _r(["authorization.k8s.io"], ["localsubjectaccessreviews"], ["create"]),
    _r([RBAC_GROUP], ["rolebindings", "roles"], _ALL),
]

_PUBLIC_URLS = ["/healthz", "/livez", "/readyz", "/version", "/version/"]


def bootstrap_objects() -> list[Doc]:
    """ClusterRoles first, then their bindings (so the aggregation sees every role)."""
    admin_label = {AGGREGATE_TO + "admin": "true"}
    edit_label = {AGGREGATE_TO + "edit": "true"}
    return [
        _aggregated("admin", "admin"),
        _role(
            "cluster-admin",
            [_r(["*"], ["*"], ["*"]), {"nonResourceURLs": ["*"], "verbs": ["*"]}],
        ),
        _aggregated("edit", "edit", admin_label),
        _aggregated("view", "view", edit_label),
        _role("system:aggregate-to-admin", _ADMIN_RULES, admin_label),
        _role("system:aggregate-to-edit", _EDIT_RULES, edit_label),
        _role("system:aggregate-to-view", _VIEW_RULES, {AGGREGATE_TO + "view": "true"}),
        _role(
            "system:auth-delegator",
            [
                _r(["authentication.k8s.io"], ["tokenreviews"], ["create"]),
                _r(["authorization.k8s.io"], ["subjectaccessreviews"], ["create"]),
            ],
        ),
        _role(
            "system:basic-user",
            [
                _r(
                    ["authorization.k8s.io"],
                    ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    ["create"],
                ),
                _r(["authentication.k8s.io"], ["selfsubjectreviews"], ["create"]),
            ],
        ),
        _role(
            "system:discovery",
            [
                {
                    "nonResourceURLs": [
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/healthz",
                        "/livez",
                        "/openapi",
                        "/openapi/*",
                        "/readyz",
                        "/version",
                        "/version/",
                    ],
                    "verbs": ["get"],
                }
            ],
        ),
        _role("system:public-info-viewer", [{"nonResourceURLs": _PUBLIC_URLS, "verbs": ["get"]}]),
        _binding("cluster-admin", "cluster-admin", ["system:masters"]),
        _binding("system:basic-user", "system:basic-user", ["system:authenticated"]),
        _binding("system:discovery", "system:discovery", ["system:authenticated"]),
        _binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            ["system:authenticated", "system:unauthenticated"],
        ),
    ]
