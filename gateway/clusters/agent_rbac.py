"""What the agents may do in their cluster: the names and rules of their RBAC (pure data).

The agents' service account is bound to two ClusterRoles and one Role, and to nothing
else (never ``cluster-admin``, no wildcard verb or resource):

* ``herdgate-agent`` (:func:`agent_cluster_role`): ``impersonate`` on users, groups, uids
  and exactly the extra keys the gateway sends (``userextras/<key>``: RBAC has no
  ``userextras/*`` wildcard, it compares the whole ``resource/subresource``); get, list
  and watch of nodes and namespaces (the cluster controller); the ACE CRDs; RBAC bindings
  (the access controller); read of ClusterRoles and update of :data:`AGENT_BIND_ROLE`
  only; ``/readyz``, ``/livez`` and ``/version``. Neither ``create`` nor ``escalate`` on
  ClusterRoles: the agent cannot make a role with rules it does not hold, nor widen its
  own (an update is checked as a create: every rule must be one the writer holds).
* :data:`AGENT_BIND_ROLE` (:func:`agent_bind_role`): ``bind`` on exactly the ClusterRoles
  herdgate binds, and update/delete of the ClusterRoles herdgate owns. The agent can grant
  only those roles, and Kubernetes' escalation check applies to everything else. It may
  shrink this role (a role template deleted) but not grow it: Kubernetes lets a subject
  write only a role whose rules it holds.
* ``herdgate-agent`` Role in :data:`NAMESPACE` (:func:`agent_namespace_role`): the ACE
  records, in that namespace only.

The ClusterRoles herdgate binds and owns (:data:`CLUSTER_MEMBER_BASICS` and one per
administrator's role template, ``herdgate-rt-<id>``) are in the manifest, so the cluster's
administrator creates them with ``kubectl apply``; when templates change, applying the
manifest again brings them in step (the access sync says so in the cluster's ``Synced``
condition). Opt-in, ``?roles=managed`` on the manifest's URL adds
:data:`AGENT_ROLES_ROLE` (:func:`agent_roles_role`): ``create`` and ``escalate`` on
ClusterRoles (so it may grow :data:`AGENT_BIND_ROLE` too), and the agent keeps them in step itself,
as Rancher's does; it then can grant itself any right, and Kubernetes' escalation check no
longer bounds it.

Everything herdgate creates downstream carries :data:`OWNED_LABELS`; objects without them
are never changed or deleted.
"""

from __future__ import annotations

from typing import Any

from ace.manifests import NAMESPACE
from ace.records import EXTRA_PRINCIPAL_ID, EXTRA_USERNAME, GROUP, TOKEN_PLURAL, USER_PLURAL

Doc = dict[str, Any]

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_API = f"{RBAC_GROUP}/v1"

AGENT_SERVICE_ACCOUNT = "herdgate-agent"
AGENT_CLUSTER_ROLE = "herdgate-agent"
AGENT_BIND_ROLE = "herdgate-agent-bind"
AGENT_ROLES_ROLE = "herdgate-agent-roles"
"""Opt-in (``?roles=managed``): the agent creates and changes herdgate's ClusterRoles."""
AGENT_NAMESPACE_ROLE = "herdgate-agent"

OWNED_LABEL = "app.kubernetes.io/managed-by"
OWNED_VALUE = "herdgate"
OWNED_LABELS: dict[str, str] = {OWNED_LABEL: OWNED_VALUE}
"""On every object herdgate creates downstream (and only there)."""

CLUSTER_MEMBER_BASICS = "herdgate-cluster-member"
"""The ClusterRole a ``cluster-member`` holds beside ``edit``: read of the cluster-scoped
basics (nodes, namespaces, storage classes)."""

BUILTIN_BOUND_ROLES: tuple[str, ...] = ("cluster-admin", "admin", "edit", "view")
"""Kubernetes' default ClusterRoles that herdgate's built-in role templates bind."""

CUSTOM_ROLE_PREFIX = "herdgate-rt-"
"""ClusterRoles made from an administrator's role templates: ``herdgate-rt-<template id>``."""

EXTRA_KEYS: tuple[str, ...] = (EXTRA_USERNAME, EXTRA_PRINCIPAL_ID)
"""The ``Impersonate-Extra-*`` keys the gateway sends (``gateway.proxy.impersonation``)."""

_READ = ["get", "list", "watch"]
_WRITE = ["get", "list", "watch", "create", "update", "patch", "delete"]


def _meta(name: str, namespace: str = "") -> Doc:
    meta: Doc = {"name": name, "labels": dict(OWNED_LABELS)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def agent_cluster_role() -> Doc:
    rules: list[Doc] = [
        {"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]},
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["uids", *(f"userextras/{key}" for key in EXTRA_KEYS)],
            "verbs": ["impersonate"],
        },
        {"apiGroups": [""], "resources": ["nodes", "namespaces"], "verbs": _READ},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": [*_READ, "create"],
        },
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": [f"{TOKEN_PLURAL}.{GROUP}", f"{USER_PLURAL}.{GROUP}"],
            "verbs": ["update", "patch"],
        },
        {
            "apiGroups": [RBAC_GROUP],
            "resources": ["clusterrolebindings", "rolebindings"],
            "verbs": _WRITE,
        },
        {"apiGroups": [RBAC_GROUP], "resources": ["clusterroles"], "verbs": _READ},
        {
            "apiGroups": [RBAC_GROUP],
            "resources": ["clusterroles"],
            "resourceNames": [AGENT_BIND_ROLE],
            "verbs": ["update", "patch"],
        },
        {"nonResourceURLs": ["/readyz", "/livez", "/version"], "verbs": ["get"]},
    ]
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": _meta(AGENT_CLUSTER_ROLE),
        "rules": rules,
    }


def agent_bind_role(custom_roles: tuple[str, ...] = ()) -> Doc:
    """``bind`` on the ClusterRoles herdgate binds; update/delete of those it owns.
    ``custom_roles``: the ``herdgate-rt-*`` ClusterRoles of the administrator's templates."""
    owned = [CLUSTER_MEMBER_BASICS, *sorted(custom_roles)]
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": _meta(AGENT_BIND_ROLE),
        "rules": [
            {
                "apiGroups": [RBAC_GROUP],
                "resources": ["clusterroles"],
                "resourceNames": [*BUILTIN_BOUND_ROLES, *owned],
                "verbs": ["bind"],
            },
            {
                "apiGroups": [RBAC_GROUP],
                "resources": ["clusterroles"],
                "resourceNames": owned,
                "verbs": ["get", "update", "patch", "delete"],
            },
        ],
    }


def agent_roles_role() -> Doc:
    """:data:`AGENT_ROLES_ROLE`, the opt-in: make any ClusterRole (``create`` cannot be
    limited by name; ``escalate``: with rules the agent does not hold, its bind role
    included)."""
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": _meta(AGENT_ROLES_ROLE),
        "rules": [
            {
                "apiGroups": [RBAC_GROUP],
                "resources": ["clusterroles"],
                "verbs": ["create", "escalate"],
            },
        ],
    }


def custom_role_name(template_id: str) -> str:
    """The ClusterRole of an administrator's role template."""
    return CUSTOM_ROLE_PREFIX + template_id


def cluster_member_basics_role() -> Doc:
    """:data:`CLUSTER_MEMBER_BASICS`: read of nodes, namespaces and storage classes."""
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": _meta(CLUSTER_MEMBER_BASICS),
        "rules": [
            {"apiGroups": [""], "resources": ["nodes", "namespaces"], "verbs": _READ},
            {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": _READ},
        ],
    }


def agent_namespace_role(namespace: str = NAMESPACE) -> Doc:
    return {
        "apiVersion": RBAC_API,
        "kind": "Role",
        "metadata": _meta(AGENT_NAMESPACE_ROLE, namespace),
        "rules": [
            {"apiGroups": [GROUP], "resources": [TOKEN_PLURAL, USER_PLURAL], "verbs": _WRITE}
        ],
    }


def _subject(namespace: str) -> Doc:
    return {"kind": "ServiceAccount", "name": AGENT_SERVICE_ACCOUNT, "namespace": namespace}


def agent_rbac(
    namespace: str = NAMESPACE,
    custom_roles: tuple[str, ...] = (),
    manage_roles: bool = False,
) -> list[Doc]:
    """The ServiceAccount, its roles and their bindings, in apply order.
    ``manage_roles``: with :data:`AGENT_ROLES_ROLE` (the opt-in)."""
    docs: list[Doc] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(AGENT_SERVICE_ACCOUNT, namespace),
        },
        agent_cluster_role(),
        agent_bind_role(custom_roles),
        *([agent_roles_role()] if manage_roles else []),
        agent_namespace_role(namespace),
    ]
    cluster_roles = [AGENT_CLUSTER_ROLE, AGENT_BIND_ROLE]
    if manage_roles:
        cluster_roles.append(AGENT_ROLES_ROLE)
    docs.extend(
        {
            "apiVersion": RBAC_API,
            "kind": "ClusterRoleBinding",
            "metadata": _meta(role),
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [_subject(namespace)],
        }
        for role in cluster_roles
    )
    docs.append(
        {
            "apiVersion": RBAC_API,
            "kind": "RoleBinding",
            "metadata": _meta(AGENT_NAMESPACE_ROLE, namespace),
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": AGENT_NAMESPACE_ROLE},
            "subjects": [_subject(namespace)],
        }
    )
    return docs
