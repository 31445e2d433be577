"""The gateway's stored objects and their store documents.

Times are Unix seconds (floats). Secrets appear only as hashes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

USER = "users"
TOKEN = "tokens"
CLUSTER = "clusters"
BINDING = "bindings"
REGISTRATION = "registrationtokens"
REPLICA = "replicas"
ROLE_TEMPLATE = "roletemplates"
"""Administrators' role templates (the built-ins are code: ``BUILTIN_TEMPLATES``)."""
PROJECT = "projects"
PROJECT_BINDING = "projectbindings"
CLUSTER_STATUS = "clusterstatus"
"""What the cluster's controller last saw (``ClusterStatus``), keyed by cluster id."""
LEASE = "leases"
"""Who runs a piece of work now (``gateway.controllers.lease``); not in the directory."""
LOGIN_FAILURE = "loginfailures"
"""Recent failed logins of one user name or client address (``gateway.identity.ratelimit``),
keyed by a hash of what is counted; not in the directory, swept once expired."""
BROWSER_LOGIN = "browserlogins"
"""A pending OIDC/GitHub browser login (``gateway.api.oauth_login``), keyed by the hash
of its ``state``; also one index document per client address (``addr-<hash>``). Not in
the directory; expires after ten minutes."""
USERNAME = "usernames"
"""Claims on local user names, keyed by the folded name (``fold_username``): creating one
is how a replica takes a name, so two replicas cannot both create it."""

Role = Literal["cluster-owner", "cluster-member", "read-only"]
ROLES: tuple[Role, ...] = ("cluster-owner", "cluster-member", "read-only")
ROLE_RANK: dict[str, int] = {"read-only": 1, "cluster-member": 2, "cluster-owner": 3}
"""The gateway's coarse roles (what ``Directory.role_on`` answers): every role template,
built-in or custom, cluster or project, implies one of them (``gateway_role``)."""

CLUSTER_CONTEXT = "cluster"
PROJECT_CONTEXT = "project"

T = TypeVar("T")


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC, as Kubernetes and Rancher print times."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fold_username(name: str) -> str:
    """The form in which two user names are the same name: NFKC, case-folded, NFKC again
    (Unicode's NFKC_Casefold, less its removal of ignorables, which names cannot hold).
    ``ADMIN``, ``Admin`` and a fullwidth ``\uff41\uff44\uff4d\uff49\uff4e`` are all ``admin``."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


_SCALARS = (str, int, float, bool, type(None))
_FLAT: dict[type, tuple[str, ...] | None] = {}
"""Per record type: its field names while every record seen had only flat fields; None
once one had another (a dict, a nested record): asdict for that type from then on."""


def to_doc(record: Any) -> dict[str, Any]:
    """``dataclasses.asdict(record)``, without its recursive copy where every field is a
    scalar or a tuple of scalars (what it would return is then the values themselves: a
    replica's heartbeat lists every cluster it holds, and asdict visits each)."""
    cls = type(record)
    names = _FLAT.get(cls, ())
    if names == ():
        names = _FLAT[cls] = tuple(f.name for f in dataclasses.fields(record))
    if names is None:
        return dataclasses.asdict(record)
    doc: dict[str, Any] = {}
    for name in names:
        value = getattr(record, name)
        if not isinstance(value, _SCALARS) and not (
            type(value) is tuple and all(isinstance(item, _SCALARS) for item in value)
        ):
            _FLAT[cls] = None
            return dataclasses.asdict(record)
        doc[name] = value
    return doc


def _tuples(value: Any) -> Any:
    """JSON arrays back to the tuples the frozen records hold (at any depth)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def from_doc(cls: type[T], doc: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: _tuples(v) for k, v in doc.items() if k in names})


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    password_hash: str
    created: float
    display_name: str = ""
    enabled: bool = True
    admin: bool = False
    provider: str = "local"
    principal_ids: tuple[str, ...] = ()
    group_principals: tuple[str, ...] = ()
    last_login: float | None = None
    groups_refreshed: float | None = None
    """When the provider last confirmed the groups and status (external users)."""

    @property
    def principal_id(self) -> str:
        return self.principal_ids[0] if self.principal_ids else f"local://{self.id}"


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    user_id: str
    hash: str
    created: float
    expires_at: float | None
    kind: str = "api"
    """``session`` (login), ``api`` (created by the user) or ``kubeconfig``."""
    description: str = ""
    cluster_id: str = ""
    """When set, the token is valid only for that cluster, or for ``cluster_ids``: a
    scoped token is one whose ``cluster_id`` is set (``scope``)."""
    last_used: float | None = None
    """Recorded in memory on every use, written to the store at most once a minute."""
    cluster_ids: tuple[str, ...] = ()
    """A token scoped to several clusters (a kubeconfig for many): all of them, the
    first also in ``cluster_id``. So code, or an older gateway, that reads only
    ``cluster_id`` takes the token for one scoped to the first cluster: it refuses the
    token elsewhere rather than taking it for an unscoped one. Empty for a token scoped
    to one cluster, or to none."""

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @property
    def scope(self) -> tuple[str, ...]:
        """The clusters the token is limited to; empty: not limited to clusters."""
        if self.cluster_ids:
            return self.cluster_ids
        return (self.cluster_id,) if self.cluster_id else ()

    def valid_on(self, cluster_id: str) -> bool:
        """Whether the token may be used on ``cluster_id``'s Kubernetes API (the caller's
        role there is a separate question)."""
        if not self.cluster_id:
            return True
        return cluster_id == self.cluster_id or cluster_id in self.cluster_ids


def token_scope(cluster_ids: Iterable[str]) -> dict[str, Any]:
    """The ``cluster_id`` and ``cluster_ids`` fields of a token scoped to ``cluster_ids``
    (in order, without repeats; none: unscoped)."""
    ids = tuple(dict.fromkeys(cluster_ids))
    return {"cluster_id": ids[0] if ids else "", "cluster_ids": ids if len(ids) > 1 else ()}


@dataclass(frozen=True, slots=True)
class Cluster:
    id: str
    name: str
    created: float
    description: str = ""
    connected_at: float | None = None
    """Last time an agent connected; None while the cluster has never been seen."""
    ca_cert: str = ""
    """The cluster's API server CA (PEM), as its agent reported it."""
    ace_enabled: bool = False
    """Authorized cluster endpoint: kubeconfigs also reach the API server directly."""
    ace_fqdn: str = ""
    """A DNS name (and port) in front of the control plane, if there is one."""
    ace_ca_certs: str = ""
    """CA (PEM) for ``ace_fqdn``; empty means the cluster's own CA."""
    ace_nodes: tuple[tuple[str, str], ...] = ()
    """(node name, API server URL) of control-plane nodes, as last seen."""


@dataclass(frozen=True, slots=True)
class Binding:
    id: str
    cluster_id: str
    role: str
    created: float
    user_id: str = ""
    group_principal_id: str = ""


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    id: str
    cluster_id: str
    hash: str
    created: float
    expires_at: float | None = None
    """After this an agent can no longer connect with it, and those connected with it
    are disconnected; None: until revoked (deleted)."""
    rotated_to: str = ""
    """The token that replaced this one (``?action=rotate``), if any."""

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class Replica:
    """One running gateway process (a worker on this host, or a replica elsewhere)."""

    id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    clusters: tuple[str, ...] = ()
    """Clusters this replica holds at least one agent tunnel for."""
    url: str = ""
    """Where agents dial this replica itself (``replica.advertise_url``); empty: only
    through the gateway's address."""


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One Kubernetes RBAC ``PolicyRule`` (``rbac.authorization.k8s.io/v1``)."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    def to_k8s(self) -> dict[str, Any]:
        """As Kubernetes writes it (empty lists left out)."""
        out: dict[str, Any] = {}
        if self.api_groups or self.resources:
            out["apiGroups"] = list(self.api_groups)
        if self.resources:
            out["resources"] = list(self.resources)
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        if self.non_resource_urls:
            out["nonResourceURLs"] = list(self.non_resource_urls)
        out["verbs"] = list(self.verbs)
        return out


@dataclass(frozen=True, slots=True)
class RoleTemplate:
    """Rancher's ``roleTemplate``: a named set of rights in a cluster or a project.

    A built-in binds Kubernetes' own ClusterRoles (``cluster_roles``); a custom one (an
    administrator's, stored) carries ``rules`` and becomes the herdgate-owned ClusterRole
    ``herdgate-rt-<id>`` downstream, plus whatever its ``role_template_names`` bind.
    """

    id: str
    name: str
    context: str
    created: float = 0.0
    description: str = ""
    rules: tuple[PolicyRule, ...] = ()
    role_template_names: tuple[str, ...] = ()
    """Templates whose rights this one inherits (Rancher's ``roleTemplateNames``)."""
    builtin: bool = False
    locked: bool = False
    """New bindings to a locked template are refused (existing ones stay)."""
    external: bool = False
    administrative: bool = False
    cluster_creator_default: bool = False
    project_creator_default: bool = False
    cluster_roles: tuple[str, ...] = ()
    """Built-ins only: the ClusterRoles a binding to it binds."""
    gateway_role: str = ""
    """Built-ins only: the coarse role at the gateway (``ROLE_RANK``)."""
    contexts: tuple[str, ...] = ()
    """Built-ins only: every context it may be bound in (``read-only`` serves both)."""

    def bindable_in(self, context: str) -> bool:
        return context in (self.contexts or (self.context,))


def _builtin(
    template_id: str,
    name: str,
    context: str,
    cluster_roles: tuple[str, ...],
    gateway_role: Role,
    description: str,
    contexts: tuple[str, ...] = (),
    cluster_creator_default: bool = False,
    project_creator_default: bool = False,
) -> RoleTemplate:
    return RoleTemplate(
        id=template_id,
        name=name,
        context=context,
        description=description,
        builtin=True,
        cluster_roles=cluster_roles,
        gateway_role=gateway_role,
        contexts=contexts,
        cluster_creator_default=cluster_creator_default,
        project_creator_default=project_creator_default,
    )


CLUSTER_MEMBER_BASICS_ROLE = "herdgate-cluster-member"
"""The same name as ``gateway.clusters.agent_rbac.CLUSTER_MEMBER_BASICS`` (the store sits
below ``clusters``; a unit test holds the two equal)."""

BUILTIN_TEMPLATES: dict[str, RoleTemplate] = {
    t.id: t
    for t in (
        _builtin(
            "cluster-owner",
            "Cluster Owner",
            CLUSTER_CONTEXT,
            ("cluster-admin",),
            "cluster-owner",
            "everything in the cluster, and its management at the gateway",
            cluster_creator_default=True,
        ),
        _builtin(
            "cluster-member",
            "Cluster Member",
            CLUSTER_CONTEXT,
            ("edit", CLUSTER_MEMBER_BASICS_ROLE),
            "cluster-member",
            "work in every namespace; read nodes, namespaces and storage classes",
        ),
        _builtin(
            "read-only",
            "Read-only",
            PROJECT_CONTEXT,
            ("view",),
            "read-only",
            "read what is there (in the cluster or the project)",
            contexts=(CLUSTER_CONTEXT, PROJECT_CONTEXT),
        ),
        _builtin(
            "project-owner",
            "Project Owner",
            PROJECT_CONTEXT,
            ("admin",),
            "cluster-member",
            "everything in the project's namespaces, their RBAC included",
            project_creator_default=True,
        ),
        _builtin(
            "project-member",
            "Project Member",
            PROJECT_CONTEXT,
            ("edit",),
            "cluster-member",
            "work in the project's namespaces",
        ),
    )
}
"""Present from the start and not deletable. ``read-only`` is Rancher's project
``read-only`` and herdgate's cluster ``read-only`` at once: ``view`` in either context."""

READ_VERBS = frozenset({"get", "list", "watch"})


def gateway_role(template: RoleTemplate, templates: dict[str, RoleTemplate]) -> Role:
    """The coarse role a binding to ``template`` gives at the gateway.

    Built-ins: as they always were (``cluster-owner``, ``cluster-member``, ``read-only``;
    a project owner or member is ``cluster-member``). A custom template is ``read-only``
    when its rules, and those of every template it inherits, grant only get, list and
    watch; else ``cluster-member``. A custom template is never ``cluster-owner``: owning
    a cluster at the gateway (managing its bindings and tokens) takes ``cluster-owner``.
    """
    seen: set[str] = set()
    pending = [template]
    writes = False
    for _ in range(1000):  # bounded: inheritance may not be a tree
        if not pending:
            break
        current = pending.pop()
        if current.id in seen:
            continue
        seen.add(current.id)
        if current.builtin:
            if current is template:
                return current.gateway_role  # type: ignore[return-value]
            writes = writes or current.gateway_role != "read-only"
        if any(not set(rule.verbs) <= READ_VERBS for rule in current.rules):
            writes = True
        pending.extend(templates[n] for n in current.role_template_names if n in templates)
    return "cluster-member" if writes else "read-only"


def role_template_from_doc(doc: dict[str, Any]) -> RoleTemplate:
    """A stored role template (its rules are objects, which ``from_doc`` leaves alone)."""
    template = from_doc(RoleTemplate, doc)
    raw: tuple[Any, ...] = template.rules
    rules = tuple(
        from_doc(PolicyRule, dict(rule)) if isinstance(rule, dict) else rule for rule in raw
    )
    return dataclasses.replace(template, rules=rules)


@dataclass(frozen=True, slots=True)
class Project:
    """Rancher's project: a named group of namespaces in one cluster. Its id is
    ``<cluster id>:p-xxxxx``, also the value of a member namespace's
    ``field.cattle.io/projectId`` annotation."""

    id: str
    cluster_id: str
    name: str
    created: float
    description: str = ""


@dataclass(frozen=True, slots=True)
class ProjectBinding:
    """Rancher's ``projectRoleTemplateBinding``."""

    id: str
    project_id: str
    cluster_id: str
    role: str
    created: float
    user_id: str = ""
    group_principal_id: str = ""


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """A cluster as its controller last saw it (``gateway.controllers.cluster_health``),
    written by the replica holding the cluster's lease, only when something changed, so
    that every replica and worker shows the same state."""

    id: str
    """The cluster's id."""
    state: str = "pending"
    """``pending`` (no agent yet), ``active`` or ``unavailable``."""
    conditions: tuple[dict[str, Any], ...] = ()
    """Kubernetes-style: type, status, reason, message, lastTransitionTime."""
    version: dict[str, Any] | None = None
    """The API server's ``/version`` answer (gitVersion, ...)."""
    nodes: tuple[dict[str, Any], ...] = ()
    namespaces: tuple[str, ...] = ()
    agents: tuple[dict[str, Any], ...] = ()
    """The agents connected to the writing replica: node, role, replica, since, remote."""
    holder: str = ""
    """The replica that wrote it (held the cluster's lease)."""
    generation: int = 0
    """The lease generation it was written under: a higher one is never overwritten by a
    lower (a replica that lost the lease cannot overwrite its successor's status)."""
    updated: float = 0.0
