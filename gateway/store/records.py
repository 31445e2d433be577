"""The gateway's stored objects and their store documents.

Times are Unix seconds (floats). Secrets appear only as hashes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

USER = "users"
TOKEN = "tokens"
CLUSTER = "clusters"
BINDING = "bindings"
REGISTRATION = "registrationtokens"
REPLICA = "replicas"
CLUSTER_STATUS = "clusterstatus"
"""What the cluster's controller last saw (``ClusterStatus``), keyed by cluster id."""
LEASE = "leases"
"""Who runs a piece of work now (``gateway.controllers.lease``); not in the directory."""
USERNAME = "usernames"
"""Claims on local user names, keyed by the folded name (``fold_username``): creating one
is how a replica takes a name, so two replicas cannot both create it."""

Role = Literal["cluster-owner", "cluster-member", "read-only"]
ROLES: tuple[Role, ...] = ("cluster-owner", "cluster-member", "read-only")
ROLE_RANK: dict[str, int] = {"read-only": 1, "cluster-member": 2, "cluster-owner": 3}

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


def to_doc(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


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
    """When set, the token is valid only for that cluster."""
    last_used: float | None = None
    """Recorded in memory on every use, written to the store at most once a minute."""

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


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
