"""Access kept in step downstream: role templates and bindings in each cluster's RBAC.

From the directory, :func:`desired_state` (pure) computes the RBAC objects a cluster
should hold:

* ``herdgate-cluster-member`` (the basics a ``cluster-member`` holds beside ``edit``),
  one ``herdgate-rt-<id>`` ClusterRole per custom role template, and the agent's
  ``herdgate-agent-bind`` listing them (``gateway.clusters.agent_rbac``);
* for each cluster binding, one ClusterRoleBinding per ClusterRole its template binds
  (``herdgate-crtb-xxxxx-<role>``, after the binding id ``<cluster>:crtb-xxxxx``), its
  subject the ``User`` the gateway impersonates (the user id) or the ``Group`` (the
  group principal as it is sent in ``Impersonate-Group``);
* for each project binding, one RoleBinding per bound ClusterRole in every namespace
  of the project (``herdgate-prtb-xxxxx-<role>``); a namespace is in a project
  when its ``field.cattle.io/projectId`` annotation is ``<cluster id>:<project id>``
  (Rancher's form; the project's own id).

:func:`plan` compares that with what the cluster holds and :class:`AccessController`
applies the difference through the tunnel (``kubeapi.KubeClient`` on the internal
listener, as the agent's service account): missing objects are created, drifted ones
replaced, and objects labelled as the sync's (:data:`SYNC_LABEL` beside
``OWNED_LABELS``) that should not exist are deleted. Only objects carrying herdgate's
owned label are listed, so an object without it is never seen, changed or deleted (a
name taken by such an object is left alone and logged). ``herdgate-agent-bind`` is
updated, never deleted.

What the agent may write decides how far a pass goes. Each pass asks the cluster
(a SelfSubjectAccessReview) whether the agent may ``escalate`` ClusterRoles. By default
it may not (``agent_rbac``): :func:`within_agent_rights` keeps the bindings of roles its
bind role lists, deletions and a shrinking bind role, and leaves creating or changing
ClusterRoles to the cluster's administrator, who applies the manifest again (it carries
them); the ``Synced`` condition is then False with reason :data:`MANIFEST_OUTDATED`
naming them, and the pass is repeated soon. With the opt-in ``?roles=managed`` manifest
the agent writes them itself.

A per-cluster loop runs a pass on every relevant directory change (debounced), when a
tunnel comes up, and every ``access_sync.resync``; the cluster's namespaces wake it
when a namespace joins or leaves a project, appears or disappears: as its agent reports
them (``ClusterControllers.on_namespaces``; ``tunnel.cluster_state``) or, from an agent
that does not report, through a watch here (resumed from its resourceVersion, re-listed
after ``410 Gone``); and one when the cluster's API server is ``Ready`` again. A pass
lists the namespaces itself either way (a report only says when to look). The pass and
the watch run where the cluster's controller runs: in the one process holding the cluster's lease
(``ClusterControllers.leads``), and every write is fenced: a process whose lease is no
longer certainly its own (``Lease.held`` turns False before anyone else can take it)
stops before its next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.clusters import agent_rbac
from gateway.clusters.agent_rbac import (
    AGENT_BIND_ROLE,
    CLUSTER_MEMBER_BASICS,
    OWNED_LABEL,
    OWNED_LABELS,
    OWNED_VALUE,
    RBAC_API,
    RBAC_GROUP,
    custom_role_name,
)
from gateway.clusters.tunnels import TUNNELS
from gateway.controllers.cluster_controller import CLUSTER_CONTROLLERS
from gateway.controllers.cluster_health import READY, SYNCED
from gateway.controllers.downstream import InternalListener
from gateway.controllers.kubeapi import (
    AUTHORIZATION,
    RBAC,
    ApiError,
    KubeClient,
    Params,
    resource_path,
)
from gateway.controllers.lease import LeaseLost
from gateway.identity.directory import DIRECTORY, Directory
from gateway.keys import SETTINGS
from gateway.store.base import StoreError
from gateway.store.records import (
    BINDING,
    CLUSTER,
    CLUSTER_CONTEXT,
    CLUSTER_STATUS,
    PROJECT,
    PROJECT_BINDING,
    PROJECT_CONTEXT,
    ROLE_TEMPLATE,
    USER,
    Binding,
    ProjectBinding,
    RoleTemplate,
)
from gateway.telemetry import metrics
from tunnel.cluster_state import project_of

logger = logging.getLogger(__name__)

SYNC_LABEL = "herdgate.dev/access-sync"
SYNC_VALUE = "true"
BINDING_LABEL = "herdgate.dev/binding"
TEMPLATE_LABEL = "herdgate.dev/role-template"
ADMIN_LABEL = "herdgate.dev/admin"
SYNC_SELECTOR = f"{OWNED_LABEL}={OWNED_VALUE}"

CLUSTER_ROLE = "ClusterRole"
CLUSTER_ROLE_BINDING = "ClusterRoleBinding"
ROLE_BINDING = "RoleBinding"
KINDS = (CLUSTER_ROLE, CLUSTER_ROLE_BINDING, ROLE_BINDING)

DEBOUNCE_S = 0.2
RETRY_S = 2.0
WATCH_TIMEOUT_S = 290
PASS_TIMEOUT_S = 60.0
"""A pass (or a watch's list) that takes longer is abandoned and retried: an agent that
holds its tunnel but never answers must not stall the cluster's loop for good."""
WATCH_RETRY_MAX_S = 30.0

MANIFEST_OUTDATED = "ManifestOutdated"
"""The ``Synced`` reason when role templates changed and the agent may not follow."""
ESCALATE_REVIEW: dict[str, Any] = {
    "apiVersion": "authorization.k8s.io/v1",
    "kind": "SelfSubjectAccessReview",
    "spec": {
        "resourceAttributes": {
            "verb": "escalate",
            "group": "rbac.authorization.k8s.io",
            "resource": "clusterroles",
        }
    },
}
"""Asked at each pass: whether the agent holds the opt-in ``herdgate-agent-roles``
(or more), and so keeps herdgate's ClusterRoles in step itself."""

Doc = dict[str, Any]
Key = tuple[str, str, str]
"""(kind, namespace or "", name)."""


# -- the desired state (pure) -----------------------------------------------------------


def bound_cluster_roles(template_id: str, templates: Mapping[str, RoleTemplate]) -> list[str]:
    """The ClusterRoles a binding to the template binds: a built-in's Kubernetes roles, a
    custom template's own ``herdgate-rt-<id>``, and those of every template it inherits
    (``roleTemplateNames``; cycles and missing names are ignored)."""
    out: list[str] = []
    seen: set[str] = set()
    pending = [template_id]
    for _ in range(len(templates) + 1):  # each template at most once
        if not pending:
            break
        current_id = pending.pop(0)
        template = templates.get(current_id)
        if template is None or current_id in seen:
            continue
        seen.add(current_id)
        roles = template.cluster_roles if template.builtin else (custom_role_name(template.id),)
        out.extend(r for r in roles if r not in out)
        pending.extend(template.role_template_names)
    return out


def binding_suffix(binding_id: str) -> str:
    """``c-xxxxx:crtb-yyyyy`` → ``crtb-yyyyy`` (a DNS label: ids are lowercase)."""
    return _dns_part(binding_id.rpartition(":")[2])


_DNS_PART = re.compile(r"^[a-z0-9]([-a-z0-9]{0,60}[a-z0-9])?$")


def _dns_part(value: str) -> str:
    """``value`` if it may be part of an object name and a label value, else a digest."""
    if _DNS_PART.match(value):
        return value
    return "x" + hashlib.sha256(value.encode()).hexdigest()[:20]


def _labels(**extra: str) -> dict[str, str]:
    return {**OWNED_LABELS, SYNC_LABEL: SYNC_VALUE, **extra}


def _subject(binding: Binding | ProjectBinding) -> Doc:
    if binding.user_id:
        return {"kind": "User", "apiGroup": RBAC_GROUP, "name": binding.user_id}
    return {"kind": "Group", "apiGroup": RBAC_GROUP, "name": binding.group_principal_id}


def _binding_doc(
    kind: str, name: str, namespace: str, role: str, binding: Binding | ProjectBinding
) -> Doc:
    meta: Doc = {
        "name": name,
        "labels": _labels(
            **{BINDING_LABEL: binding_suffix(binding.id), TEMPLATE_LABEL: binding.role}
        ),
    }
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": RBAC_API,
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": CLUSTER_ROLE, "name": role},
        "subjects": [_subject(binding)],
    }


def custom_cluster_role(template: RoleTemplate) -> Doc:
    return {
        "apiVersion": RBAC_API,
        "kind": CLUSTER_ROLE,
        "metadata": {
            "name": custom_role_name(template.id),
            "labels": _labels(**{TEMPLATE_LABEL: template.id}),
        },
        "rules": [rule.to_k8s() for rule in template.rules],
    }


def owned_cluster_roles(templates: Mapping[str, RoleTemplate]) -> list[Doc]:
    """The ClusterRoles herdgate owns in every cluster: :data:`CLUSTER_MEMBER_BASICS` and
    one per custom role template, labelled as this sync's. The agent's manifest carries
    them too (an agent without ``escalate`` cannot create them: their rules are not its)."""
    basics = agent_rbac.cluster_member_basics_role()
    basics["metadata"]["labels"] = _labels(**{TEMPLATE_LABEL: "cluster-member"})
    custom = sorted((t for t in templates.values() if not t.builtin), key=lambda t: t.id)
    return [basics, *(custom_cluster_role(template) for template in custom)]


def desired_state(
    templates: Mapping[str, RoleTemplate],
    bindings: Iterable[Binding],
    project_bindings: Iterable[ProjectBinding],
    namespaces: Mapping[str, str],
    projects: Iterable[str],
    admins: Iterable[str] = (),
) -> dict[Key, Doc]:
    """Every RBAC object the access sync keeps in one cluster, by key.

    ``bindings``/``project_bindings``: the cluster's; ``namespaces``: each namespace's
    ``field.cattle.io/projectId`` annotation ("" when it has none); ``projects``: the
    ids of the cluster's projects (a namespace naming any other project is in none);
    ``admins``: the user ids of the enabled administrators, ``cluster-admin`` in every
    cluster (``herdgate-admin-<user id>``), as the gateway treats them as owners.
    """
    out: dict[Key, Doc] = {}
    custom_names: list[str] = []
    for doc in owned_cluster_roles(templates):
        name = doc["metadata"]["name"]
        if name != CLUSTER_MEMBER_BASICS:
            custom_names.append(name)
        out[(CLUSTER_ROLE, "", name)] = doc
    out[(CLUSTER_ROLE, "", AGENT_BIND_ROLE)] = agent_rbac.agent_bind_role(tuple(custom_names))
    for binding in bindings:
        bound = templates.get(binding.role)
        if bound is None or not bound.bindable_in(CLUSTER_CONTEXT):
            continue
        for role in bound_cluster_roles(binding.role, templates):
            name = f"herdgate-{binding_suffix(binding.id)}-{role}"
            out[(CLUSTER_ROLE_BINDING, "", name)] = _binding_doc(
                CLUSTER_ROLE_BINDING, name, "", role, binding
            )
    for user_id in sorted(admins):
        name = f"herdgate-admin-{_dns_part(user_id)}"
        out[(CLUSTER_ROLE_BINDING, "", name)] = {
            "apiVersion": RBAC_API,
            "kind": CLUSTER_ROLE_BINDING,
            "metadata": {"name": name, "labels": _labels(**{ADMIN_LABEL: _dns_part(user_id)})},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": CLUSTER_ROLE, "name": "cluster-admin"},
            "subjects": [{"kind": "User", "apiGroup": RBAC_GROUP, "name": user_id}],
        }
    members: dict[str, list[str]] = {}
    known = set(projects)
    for namespace, project_id in sorted(namespaces.items()):
        if project_id in known:
            members.setdefault(project_id, []).append(namespace)
    for pb in project_bindings:
        bound = templates.get(pb.role)
        if bound is None or not bound.bindable_in(PROJECT_CONTEXT):
            continue
        roles = bound_cluster_roles(pb.role, templates)
        for namespace in members.get(pb.project_id, ()):
            for role in roles:
                name = f"herdgate-{binding_suffix(pb.id)}-{role}"
                out[(ROLE_BINDING, namespace, name)] = _binding_doc(
                    ROLE_BINDING, name, namespace, role, pb
                )
    return out


def desired_for(
    directory: Directory,
    cluster_id: str,
    namespaces: Mapping[str, str],
    admins_cluster_admin: bool = True,
) -> dict[Key, Doc]:
    """:func:`desired_state` from the directory's records of one cluster
    (``admins_cluster_admin``: the setting ``access_sync.admins_cluster_admin``)."""
    return desired_state(
        directory.role_templates,
        directory.bindings_by_cluster.get(cluster_id, {}).values(),
        directory.project_bindings_by_cluster.get(cluster_id, {}).values(),
        namespaces,
        (p.id for p in directory.projects.values() if p.cluster_id == cluster_id),
        admin_ids(directory) if admins_cluster_admin else (),
    )


def admin_ids(directory: Directory) -> set[str]:
    return {u.id for u in directory.users.values() if u.admin and u.enabled}


# -- the difference (pure) --------------------------------------------------------------


def _path(kind: str, namespace: str = "", name: str = "") -> str:
    """The REST path of a synced object (its collection when ``name`` is empty; every
    RoleBinding when ``namespace`` is empty too)."""
    plural = {
        CLUSTER_ROLE: "clusterroles",
        CLUSTER_ROLE_BINDING: "clusterrolebindings",
        ROLE_BINDING: "rolebindings",
    }[kind]
    return resource_path(RBAC, "v1", plural, namespace=namespace, name=name)


def key_of(doc: Doc) -> Key:
    meta = doc.get("metadata") or {}
    return (str(doc.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name", "")))


def is_owned(doc: Doc) -> bool:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(OWNED_LABEL) == OWNED_VALUE)


def is_synced(doc: Doc) -> bool:
    """Made by this sync (so deleted when no longer wanted)."""
    labels = (doc.get("metadata") or {}).get("labels") or {}
    return is_owned(doc) and labels.get(SYNC_LABEL) == SYNC_VALUE


def _clean(value: Any) -> Any:
    """A Kubernetes object part without empty fields (the server leaves some out)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v not in (None, [], {}, "")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def drifted(existing: Doc, desired: Doc) -> bool:
    """Whether the object in the cluster differs from what the sync wants."""
    labels = (existing.get("metadata") or {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in desired["metadata"].get("labels", {}).items()):
        return True
    fields = ("rules",) if desired["kind"] == CLUSTER_ROLE else ("roleRef", "subjects")
    return any(_clean(existing.get(f)) != _clean(desired.get(f)) for f in fields)


@dataclass
class Plan:
    create: list[Doc] = field(default_factory=list)
    update: list[tuple[Doc, Doc]] = field(default_factory=list)
    """(desired, existing): replaced in place."""
    recreate: list[Doc] = field(default_factory=list)
    """Bindings whose ``roleRef`` changed (immutable): deleted, then created."""
    delete: list[Doc] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    """What the agent may not do itself (:func:`within_agent_rights`): left for the
    cluster's administrator, who applies the manifest again."""

    def empty(self) -> bool:
        return not (self.create or self.update or self.recreate or self.delete)


def plan(desired: Mapping[Key, Doc], existing: Iterable[Doc]) -> Plan:
    """What to change so the cluster holds ``desired``. ``existing``: the objects listed
    (any; those without herdgate's owned label are never changed or deleted)."""
    out = Plan()
    have: dict[Key, Doc] = {key_of(doc): doc for doc in existing}
    for key, want in desired.items():
        doc = have.get(key)
        if doc is None:
            out.create.append(want)
        elif not is_owned(doc):
            continue  # someone else's object holds the name: leave it
        elif drifted(doc, want):
            if want["kind"] != CLUSTER_ROLE and _clean(doc.get("roleRef")) != _clean(
                want.get("roleRef")
            ):
                out.recreate.append(want)
            else:
                out.update.append((want, doc))
    for key, doc in have.items():
        if key not in desired and is_synced(doc):
            out.delete.append(doc)
    return out


def _bind_role_names(doc: Doc | None) -> tuple[set[str], set[str]]:
    """The ClusterRoles a bind role (:func:`agent_rbac.agent_bind_role`) lets the agent
    bind, and those it lets the agent delete."""
    bindable: set[str] = set()
    deletable: set[str] = set()
    for rule in (doc or {}).get("rules") or ():
        if "clusterroles" not in (rule.get("resources") or ()):
            continue
        names = set(rule.get("resourceNames") or ())
        if "bind" in (rule.get("verbs") or ()):
            bindable |= names
        if "delete" in (rule.get("verbs") or ()):
            deletable |= names
    return bindable, deletable


def _role_ref(doc: Doc) -> str:
    ref = doc.get("roleRef") or {}
    return str(ref.get("name", "")) if ref.get("kind") == CLUSTER_ROLE else ""


def within_agent_rights(todo: Plan, existing: Iterable[Doc]) -> Plan:
    """The part of ``todo`` an agent without ``escalate`` on ClusterRoles (the default
    manifest, :mod:`gateway.clusters.agent_rbac`) may do, with the rest in ``pending``:
    ClusterRoles to create or change (their rules are not the agent's), bindings of a
    ClusterRole its bind role does not list, deletions of roles it does not list. Its bind
    role may only shrink (Kubernetes lets a subject write a role whose rules it holds);
    the manifest applied again by the cluster's administrator grows it."""
    have = {key_of(doc): doc for doc in existing}
    current_bind = have.get((CLUSTER_ROLE, "", AGENT_BIND_ROLE))
    bindable, deletable = _bind_role_names(current_bind)
    out = Plan()
    pending: list[str] = []

    def binding_allowed(doc: Doc) -> bool:
        role = _role_ref(doc)
        if role and role not in bindable:
            pending.append(f"{doc['kind']} {doc['metadata']['name']} (binds {role})")
            return False
        return True

    for doc in todo.create:
        if doc["kind"] != CLUSTER_ROLE:
            if binding_allowed(doc):
                out.create.append(doc)
        elif doc["metadata"]["name"] != AGENT_BIND_ROLE:
            pending.append(f"ClusterRole {doc['metadata']['name']}")
    for doc, old in todo.update:
        if doc["kind"] != CLUSTER_ROLE:
            if binding_allowed(doc):
                out.update.append((doc, old))
        elif doc["metadata"]["name"] != AGENT_BIND_ROLE:
            pending.append(f"ClusterRole {doc['metadata']['name']}")
    out.recreate = [doc for doc in todo.recreate if binding_allowed(doc)]
    for doc in todo.delete:
        name = doc["metadata"]["name"]
        if doc["kind"] == CLUSTER_ROLE and name not in deletable:
            pending.append(f"ClusterRole {name} (to delete)")
        else:
            out.delete.append(doc)
    wanted = next(
        (
            doc
            for doc in (*todo.create, *(d for d, _ in todo.update))
            if key_of(doc) == (CLUSTER_ROLE, "", AGENT_BIND_ROLE)
        ),
        None,
    )
    if wanted is not None:
        if current_bind is None:
            pending.append(f"ClusterRole {AGENT_BIND_ROLE}")
        else:
            want_bind, want_owned = _bind_role_names(wanted)
            keep = sorted(
                n for n in want_owned & deletable if n.startswith(agent_rbac.CUSTOM_ROLE_PREFIX)
            )
            shrunk = agent_rbac.agent_bind_role(tuple(keep))
            shrunk_bind, shrunk_owned = _bind_role_names(shrunk)
            if want_bind - bindable or want_owned - deletable:
                pending.append(f"ClusterRole {AGENT_BIND_ROLE}")
            if shrunk_bind <= bindable and shrunk_owned <= deletable:
                if drifted(current_bind, shrunk):
                    out.update.append((shrunk, current_bind))
            elif f"ClusterRole {AGENT_BIND_ROLE}" not in pending:
                pending.append(f"ClusterRole {AGENT_BIND_ROLE}")
    out.pending = pending
    return out


def outdated_message(todo: Plan, limit: int = 8) -> str:
    """The ``Synced`` message of a pass that left work for the cluster's administrator."""
    shown = ", ".join(todo.pending[:limit])
    more = f" and {len(todo.pending) - limit} more" if len(todo.pending) > limit else ""
    return (
        f"role templates changed; the agent may not write {shown}{more}: apply the "
        "cluster's manifest again (`herdgate cluster import-command <cluster>` prints the "
        "kubectl apply line), or register it with ?roles=managed to let the agent do it"
    )


def _projects(namespaces: Mapping[str, str]) -> dict[str, str]:
    """The namespaces that are in a project (what the passes act on)."""
    return {name: project for name, project in namespaces.items() if project}


# -- the controller ---------------------------------------------------------------------


class _ClusterState:
    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.wake.set()
        self.nudge = asyncio.Event()
        """Cuts the watch's wait short when a tunnel comes up or the lease is taken."""
        self.namespaces: dict[str, str] | None = None
        """Namespace → project annotation, as the watch last saw them (None: to be listed);
        only to tell which events matter."""
        self.resource_version = ""
        self.loop: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None
        self.watching = False
        """Whether ``watch`` is in a list or watch request (not waiting to be nudged)."""
        self.reported: tuple[bool, str] | None = None
        """The ``Synced`` condition last reported (status, reason)."""
        self.ready: bool | None = None
        """The cluster's ``Ready`` condition as last seen (None: not yet seen)."""
        self.recheck_s = 0.0
        """While work waits for the cluster's administrator: the next pass's delay (0: the
        resync period)."""


class AccessController:
    """One sync loop and one namespace watch per cluster."""

    def __init__(
        self,
        app: web.Application,
        listener: InternalListener,
        resync_s: float,
        recheck_s: float = 5.0,
    ) -> None:
        self.app = app
        self.directory: Directory = app[DIRECTORY]
        self.listener = listener
        self.resync_s = resync_s
        self.recheck_s = recheck_s
        """A pass that left work for the administrator (:data:`MANIFEST_OUTDATED`) runs
        again after this, doubling up to the resync period (``access_sync.recheck``)."""
        self._clusters: dict[str, _ClusterState] = {}
        self._admins = admin_ids(self.directory)
        self.synced: dict[str, float] = {}
        """When each cluster was last fully in step (for tests and status)."""

    def start(self) -> None:
        self.directory.on_change(self._on_directory_change)
        self.app[TUNNELS].on_change(self._on_tunnel_change)
        self.app[CLUSTER_CONTROLLERS].on_lead(self._on_lead)
        self.app[CLUSTER_CONTROLLERS].on_namespaces(self._on_namespaces)
        for cluster_id in list(self.directory.clusters):
            self._ensure(cluster_id)

    async def stop(self) -> None:
        tasks = [t for s in self._clusters.values() for t in (s.loop, s.watch) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._clusters.clear()

    # -- triggers -------------------------------------------------------------------------

    def _on_directory_change(self, kind: str, key: str) -> None:
        if kind == CLUSTER:
            if key in self.directory.clusters:
                self._ensure(key)
            else:
                self._drop(key)
        elif kind in (BINDING, PROJECT_BINDING, PROJECT):
            cluster_id = self._cluster_of(kind, key)
            if cluster_id is None:  # deleted: wake them all (rare)
                for state in self._clusters.values():
                    state.wake.set()
            elif cluster_id in self._clusters:
                self._clusters[cluster_id].wake.set()
        elif kind == ROLE_TEMPLATE or (kind == USER and self._admin_changed(key)):
            for state in self._clusters.values():
                state.wake.set()
        elif kind == CLUSTER_STATUS:
            self._on_status(key)

    def _on_status(self, cluster_id: str) -> None:
        """A cluster whose API server is ready again gets a full pass at once: what it
        holds may have changed while it was away (an etcd restored from a backup, objects
        deleted by hand), and the periodic resync could be minutes off."""
        state = self._clusters.get(cluster_id)
        status = self.directory.statuses.get(cluster_id)
        if state is None or status is None:
            return
        ready = any(c.get("type") == READY and c.get("status") == "True" for c in status.conditions)
        if ready and state.ready is False:
            state.wake.set()
        state.ready = ready

    def _admin_changed(self, user_id: str) -> bool:
        """Whether the user's change adds or removes an administrator (a login, which
        writes the user record too, does not wake every cluster)."""
        user = self.directory.users.get(user_id)
        now = user is not None and user.admin and user.enabled
        if now == (user_id in self._admins):
            return False
        if now:
            self._admins.add(user_id)
        else:
            self._admins.discard(user_id)
        return True

    def _cluster_of(self, kind: str, key: str) -> str | None:
        if kind == BINDING:
            binding = self.directory.bindings.get(key)
            return None if binding is None else binding.cluster_id
        if kind == PROJECT_BINDING:
            pb = self.directory.project_bindings.get(key)
            return None if pb is None else pb.cluster_id
        project = self.directory.projects.get(key)
        return None if project is None else project.cluster_id

    def _on_tunnel_change(self, cluster_id: str, live: int) -> None:
        state = self._clusters.get(cluster_id)
        if state is not None and live:
            state.wake.set()
            state.nudge.set()

    def _ensure(self, cluster_id: str) -> None:
        if cluster_id in self._clusters:
            return
        state = _ClusterState()
        self._clusters[cluster_id] = state
        state.loop = asyncio.create_task(self._loop(cluster_id, state))
        state.watch = asyncio.create_task(self._watch_loop(cluster_id, state))

    def _drop(self, cluster_id: str) -> None:
        state = self._clusters.pop(cluster_id, None)
        if state is not None:
            for task in (state.loop, state.watch):
                if task is not None:
                    task.cancel()
        self.synced.pop(cluster_id, None)

    def _in_charge(self, cluster_id: str) -> bool:
        """Whether this process holds the cluster's lease (its controller runs here)."""
        return self.app[CLUSTER_CONTROLLERS].leads(cluster_id)

    def _fence(self, cluster_id: str) -> None:
        """Before every write: stop if the lease may be someone else's by now."""
        if not self._in_charge(cluster_id):
            raise LeaseLost(cluster_id)

    def _on_lead(self, cluster_id: str, holding: bool) -> None:
        state = self._clusters.get(cluster_id)
        if state is None:
            return
        if holding:
            state.wake.set()
            state.nudge.set()
        else:  # another process follows the namespaces now: list afresh when back
            state.namespaces = None
            state.resource_version = ""

    def _on_namespaces(self, cluster_id: str, namespaces: dict[str, str] | None) -> None:
        """The cluster's agent reports its namespaces (``ClusterControllers.on_namespaces``):
        a pass when a namespace joined or left a project; None: reports started or stopped,
        so the namespace watch here stops or starts."""
        state = self._clusters.get(cluster_id)
        if state is None:
            return
        state.resource_version = ""
        if namespaces is None:
            state.namespaces = None
            if state.watch is not None:
                state.watch.cancel()
            state.watch = asyncio.create_task(self._watch_loop(cluster_id, state))
            return
        if state.watching and state.watch is not None:
            # Reports came back while the watch here ran (it started when they stopped):
            # end it now rather than hold a request open until the server ends it.
            state.watch.cancel()
            state.watching = False
            state.watch = asyncio.create_task(self._watch_loop(cluster_id, state))
        before, state.namespaces = state.namespaces, namespaces
        if before is None or _projects(before) != _projects(namespaces):
            state.wake.set()

    def _reported(self, cluster_id: str) -> bool:
        """Whether the cluster's agent reports its namespaces (no watch here then)."""
        return self.app[CLUSTER_CONTROLLERS].reporting(cluster_id)

    # -- the sync loop --------------------------------------------------------------------

    async def _loop(self, cluster_id: str, state: _ClusterState) -> None:
        while cluster_id in self.directory.clusters:
            try:
                async with asyncio.timeout(state.recheck_s or self.resync_s):
                    await state.wake.wait()
            except TimeoutError:
                pass
            await asyncio.sleep(DEBOUNCE_S)
            state.wake.clear()
            if not self._in_charge(cluster_id):
                continue  # woken when this process takes the cluster's lease
            if state.ready is False and self._reported(cluster_id):
                # Its agent says the API server does not answer: no pass (nor a retry
                # every few seconds) until it says it does (``_on_status``).
                continue
            try:
                async with asyncio.timeout(PASS_TIMEOUT_S):
                    todo = await self.sync(cluster_id)
                if todo.pending:
                    # Looked at again soon (then less often): the administrator's kubectl
                    # apply is not watched.
                    state.recheck_s = min(max(2 * state.recheck_s, self.recheck_s), self.resync_s)
                    await self._report(
                        cluster_id, state, False, MANIFEST_OUTDATED, outdated_message(todo)
                    )
                else:
                    state.recheck_s = 0.0
                    await self._report(cluster_id, state, True, "Synced", "access is in step")
            except asyncio.CancelledError:
                raise
            except LeaseLost:
                logger.info("access sync of %s stopped: the lease is no longer held", cluster_id)
            except Exception as exc:  # noqa: BLE001 - retried; the cluster may be unreachable
                metrics.ACCESS_SYNC_ERRORS.labels(cluster_id).inc()
                logger.warning("access sync of %s failed: %r; retrying", cluster_id, exc)
                await self._report(cluster_id, state, False, "SyncFailed", repr(exc)[:300])
                await asyncio.sleep(RETRY_S)
                state.wake.set()

    async def _report(
        self, cluster_id: str, state: _ClusterState, ok: bool, reason: str, message: str
    ) -> None:
        """The cluster's ``Synced`` condition (``ClusterControllers.set_condition``), set
        only when it changes; a store failure is logged, the next pass reports again."""
        if state.reported == (ok, reason):
            return
        controllers = self.app.get(CLUSTER_CONTROLLERS)
        if controllers is None:
            return
        try:
            await controllers.set_condition(cluster_id, SYNCED, ok, reason, message)
        except StoreError as exc:
            logger.warning("Synced of %s not recorded: %s", cluster_id, exc)
            return
        state.reported = (ok, reason)

    async def sync(self, cluster_id: str) -> Plan:
        """One full pass: list, compare, apply. Returns what it changed. The namespaces
        are listed each time (the watch only says when to look again)."""
        api = self.listener.client(cluster_id)
        review = await api.create(
            resource_path(AUTHORIZATION, "v1", "selfsubjectaccessreviews"), ESCALATE_REVIEW
        )
        manages_roles = (review.get("status") or {}).get("allowed") is True
        listed = await api.get(resource_path("", "v1", "namespaces"))
        namespaces = {str(ns["metadata"]["name"]): project_of(ns) for ns in listed.get("items", [])}
        desired = desired_for(
            self.directory,
            cluster_id,
            namespaces,
            self.app[SETTINGS].access_sync.admins_cluster_admin,
        )
        existing = await self._list(api)
        todo = plan(desired, existing)
        if not manages_roles:
            todo = within_agent_rights(todo, existing)
        await self._apply(cluster_id, api, todo, existing)
        self.synced[cluster_id] = self.directory.clock()
        for kind in KINDS:
            count = sum(1 for key in desired if key[0] == kind)
            metrics.ACCESS_SYNC_OBJECTS.labels(cluster_id, kind).set(count)
        metrics.ACCESS_SYNC_LAST.labels(cluster_id).set(self.synced[cluster_id])
        if not todo.empty():
            logger.info(
                "access of %s in step: %d created, %d updated, %d replaced, %d deleted",
                cluster_id,
                len(todo.create),
                len(todo.update),
                len(todo.recreate),
                len(todo.delete),
            )
        return todo

    async def _list(self, api: KubeClient) -> list[Doc]:
        out: list[Doc] = []
        for kind in (CLUSTER_ROLE, CLUSTER_ROLE_BINDING, ROLE_BINDING):
            listed = await api.get(_path(kind), {"labelSelector": SYNC_SELECTOR})
            for item in listed.get("items", []):
                item["kind"] = kind  # list items carry no kind
                out.append(item)
        return out

    async def _apply(
        self, cluster_id: str, api: KubeClient, todo: Plan, existing: list[Doc]
    ) -> None:
        """In an order the agent's own RBAC allows: the bind role first (listing the roles
        to create and those to delete too, so the agent may update and bind the former
        and delete the latter), the other roles, the bindings, deletions (bindings before
        roles), and the bind role in its final form."""
        count = metrics.ACCESS_SYNC_CHANGES.labels
        bind_key = (CLUSTER_ROLE, "", AGENT_BIND_ROLE)
        roles_first = [d for d in todo.create if d["kind"] == CLUSTER_ROLE]
        roles_first += [d for d, _ in todo.update if d["kind"] == CLUSTER_ROLE]
        deleted_roles = [
            d["metadata"]["name"]
            for d in todo.delete
            if d["kind"] == CLUSTER_ROLE and d["metadata"]["name"].startswith("herdgate-rt-")
        ]
        final_bind = next(
            (d for d in roles_first if key_of(d) == bind_key),
            None,
        )
        current = {key_of(d): d for d in existing}
        if final_bind is not None:
            # First: it grants update of the owned roles the next steps change.
            if deleted_roles:
                names = [
                    n for n in final_bind["rules"][1]["resourceNames"] if n != CLUSTER_MEMBER_BASICS
                ]
                interim = agent_rbac.agent_bind_role(tuple(sorted({*names, *deleted_roles})))
                await self._put(cluster_id, api, interim, current.get(bind_key))
            else:
                await self._put(cluster_id, api, final_bind, current.get(bind_key))
                count(cluster_id, "create" if bind_key not in current else "update").inc()
        for doc in roles_first:
            if key_of(doc) == bind_key:
                continue  # above (and after the deletions, when there are some)
            await self._put(cluster_id, api, doc, current.get(key_of(doc)))
            count(cluster_id, "create" if key_of(doc) not in current else "update").inc()
        for doc in todo.recreate:
            await self._delete(cluster_id, api, doc)
            await self._put(cluster_id, api, doc, None)
            count(cluster_id, "update").inc()
        for doc in todo.create:
            if doc["kind"] != CLUSTER_ROLE:
                await self._put(cluster_id, api, doc, None)
                count(cluster_id, "create").inc()
        for doc, have in todo.update:
            if doc["kind"] != CLUSTER_ROLE:
                await self._put(cluster_id, api, doc, have)
                count(cluster_id, "update").inc()
        for doc in sorted(todo.delete, key=lambda d: d["kind"] == CLUSTER_ROLE):
            await self._delete(cluster_id, api, doc)
            count(cluster_id, "delete").inc()
        if final_bind is not None and deleted_roles:
            refreshed = await self._read_cluster_role(api, AGENT_BIND_ROLE)
            await self._put(cluster_id, api, final_bind, refreshed)

    async def _read_cluster_role(self, api: KubeClient, name: str) -> Doc | None:
        try:
            return await api.get(_path(CLUSTER_ROLE, name=name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def _put(self, cluster_id: str, api: KubeClient, doc: Doc, have: Doc | None) -> None:
        """Create ``doc``, or replace ``have`` with it (at ``have``'s resourceVersion)."""
        self._fence(cluster_id)

        kind, namespace, name = key_of(doc)
        try:
            if have is None:
                await api.create(_path(kind, namespace), doc)
                return
            body = json.loads(json.dumps(doc))
            body["metadata"]["resourceVersion"] = (have.get("metadata") or {}).get(
                "resourceVersion", ""
            )
            await api.replace(_path(kind, namespace, name), body)
        except ApiError as exc:
            if exc.status == 409 and have is None:
                # Not listed (no owned label) yet present: someone else's object.
                logger.warning("%s %s exists without herdgate's label; left alone", kind, name)
                return
            if exc.status == 404 and kind == ROLE_BINDING:
                return  # the namespace went away meanwhile
            raise

    async def _delete(self, cluster_id: str, api: KubeClient, doc: Doc) -> None:
        self._fence(cluster_id)

        kind, namespace, name = key_of(doc)
        try:
            await api.delete(_path(kind, namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    # -- the namespace watch --------------------------------------------------------------

    async def _watch_loop(self, cluster_id: str, state: _ClusterState) -> None:
        """Follow the cluster's namespaces while this process is in charge of it."""
        failures = 0
        while cluster_id in self.directory.clusters:
            state.watching = False
            if not self._in_charge(cluster_id) or self._reported(cluster_id):
                # Woken when this process takes the cluster's lease (``_on_lead``) or an
                # agent connects (``_on_tunnel_change``), restarted when the agent's
                # reports stop (``_on_namespaces``); no polling: every cluster in the
                # directory has this task, and a wake-up a second each kept a gateway with
                # thousands of clusters and no tunnels busy (docs/benchmarks.md, "10,000
                # agents on one gateway").
                state.nudge.clear()
                await state.nudge.wait()
                continue
            state.watching = True
            try:
                async with asyncio.timeout(WATCH_TIMEOUT_S + PASS_TIMEOUT_S):
                    await self._watch(cluster_id, state)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried with backoff
                failures += 1
                delay = min(WATCH_RETRY_MAX_S, RETRY_S * 2 ** min(failures, 5))
                logger.info(
                    "namespace watch of %s broke off (%r); again in %.0fs", cluster_id, exc, delay
                )
                state.nudge.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay * (0.5 + random.random() / 2)):  # noqa: S311
                        await state.nudge.wait()

    async def _watch(self, cluster_id: str, state: _ClusterState) -> None:
        api = self.listener.client(cluster_id)
        namespaces = resource_path("", "v1", "namespaces")
        if state.namespaces is None or not state.resource_version:
            listed = await api.get(namespaces)
            fresh = {str(ns["metadata"]["name"]): project_of(ns) for ns in listed["items"]}
            changed = fresh != state.namespaces
            state.namespaces = fresh
            state.resource_version = str(listed.get("metadata", {}).get("resourceVersion", ""))
            if changed:
                state.wake.set()
        params: Params = {
            "watch": True,
            "resourceVersion": state.resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": WATCH_TIMEOUT_S,
        }
        try:
            async with api.stream(namespaces, params) as response:
                await self._follow(response, state)
        except ApiError as exc:
            if exc.status != 410:
                raise
            # Too old (some servers answer so rather than with an ERROR event): list again.
            logger.info("namespace watch of %s expired (410 Gone); listing again", cluster_id)
            state.namespaces = None
            state.resource_version = ""

    async def _follow(self, response: Any, state: _ClusterState) -> None:
        """Apply the watch's events to ``state`` until the server ends it."""
        buffer = b""
        namespaces = state.namespaces if state.namespaces is not None else {}
        async for chunk in response.content.iter_any():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        logger.info("namespace watch expired (410 Gone); listing again")
                        state.namespaces = None  # re-list, then watch from there
                        state.resource_version = ""
                        return
                    raise RuntimeError(f"namespace watch error: {obj.get('message', obj)}")
                meta = obj.get("metadata") or {}
                if meta.get("resourceVersion"):
                    state.resource_version = str(meta["resourceVersion"])
                if kind == "BOOKMARK":
                    continue
                name = str(meta.get("name", ""))
                before = namespaces.get(name)
                if kind == "DELETED":
                    namespaces.pop(name, None)
                    after = None
                else:
                    after = namespaces[name] = project_of(obj)
                if before != after and (before or after):
                    state.wake.set()  # joined, left, or a project namespace came or went
            if len(buffer) > 16 * 1024 * 1024:
                raise RuntimeError("a namespace watch event larger than 16 MiB")


ACCESS = web.AppKey("access", AccessController)


async def access_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the access controller on its own internal listener."""
    listener = InternalListener(app, Path(app[SETTINGS].state_dir), name="access")
    await listener.start()
    settings = app[SETTINGS].access_sync
    controller = AccessController(app, listener, settings.resync_s, settings.recheck_s)
    app[ACCESS] = controller
    controller.start()
    yield
    await controller.stop()
    await listener.stop()
