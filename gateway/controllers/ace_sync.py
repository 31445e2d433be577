"""Authorized cluster endpoint (ACE): keep each cluster's token records in step.

A cluster with ACE enabled runs the TokenReview webhook (``herdgate webhook``), which
decides from records stored in the cluster itself: ``ClusterAuthToken`` (one per
token: its hash, user and expiry) and ``ClusterUserAttribute`` (one per user: groups,
enabled). This controller computes the records that should exist from the gateway's
directory (:func:`desired_records`, pure) and applies the difference through the
tunnel with ``kubeapi.KubeClient``: on every relevant change (debounced), when a tunnel
comes up (so a partition heals), and periodically to remove drift.

A token is synced to a cluster when it is unscoped or scoped to that cluster (alone or
among others: a kubeconfig token for several clusters is synced to each of them), not
expired, and its user is enabled and holds a role there. Anything else is deleted.

Which process: the one holding the cluster's lease (``cluster/<id>``, where its
cluster controller and access sync run: ``ClusterControllers.leads``), so each cluster is
kept in step by a process that holds a tunnel to it, and the work is spread over the
replicas. Every write, to the cluster (CRDs, namespace, records) or to the store (the
control-plane endpoints), is fenced: it is made only if the lease is still certainly held
(``Lease.held`` turns False a fifth of the TTL before anyone else may take it), so a
holder that lost its lease stops before its successor starts. Each pass's outcome is the
cluster's ``ACESynced`` condition (True ``Synced``, or False ``SyncFailed`` with the
error), set by the holder when it changes; ``Synced`` stays the access sync's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ace import manifests
from ace.manifests import NAMESPACE
from ace.records import GROUP, VERSION
from ace.records import TOKEN_PLURAL as TOKENS
from ace.records import USER_PLURAL as USERS
from gateway.clusters.tunnels import TUNNELS
from gateway.controllers.cluster_controller import (
    CLUSTER_CONTROLLERS,
    LEASE_PREFIX,
    ClusterControllers,
)
from gateway.controllers.cluster_health import ACE_SYNCED, MAX_MESSAGE
from gateway.controllers.downstream import INTERNAL_LISTENER, InternalListener
from gateway.controllers.kubeapi import APIEXTENSIONS, ApiError, KubeClient, resource_path
from gateway.controllers.lease import LeaseLost
from gateway.identity.directory import DIRECTORY, Directory
from gateway.proxy.impersonation import ROLE_GROUP_PREFIX
from gateway.store.base import StoreError
from gateway.store.records import (
    BINDING,
    CLUSTER,
    PROJECT_BINDING,
    ROLE_TEMPLATE,
    TOKEN,
    USER,
    Cluster,
    iso,
)
from gateway.telemetry import metrics

logger = logging.getLogger(__name__)

DEBOUNCE_S = 0.2
RESYNC_S = 300.0
RETRY_S = 5.0
CONTROL_PLANE_LABELS = (
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/controlplane",
)
APISERVER_PORT_ANNOTATION = "herdgate.dev/apiserver-port"

Doc = dict[str, Any]


def desired_records(directory: Directory, cluster_id: str, now: float) -> tuple[Doc, Doc]:
    """The ClusterAuthToken and ClusterUserAttribute bodies (by name) for one cluster."""
    users: Doc = {}
    for user in directory.users.values():
        if not user.enabled:
            continue
        role = directory.role_on(directory.identity_of(user), cluster_id)
        if role is None:
            continue
        users[user.id] = {
            "username": user.username,
            "principalId": user.principal_id,
            "groups": [*user.group_principals, ROLE_GROUP_PREFIX + role],
            "enabled": True,
        }
    tokens: Doc = {}
    for token in directory.tokens.values():
        if token.user_id not in users or not token.valid_on(cluster_id):
            continue
        if token.is_expired(now):
            continue
        tokens[token.id] = {
            "userName": token.user_id,
            "hash": token.hash,
            "expiresAt": iso(token.expires_at) or "",
            "enabled": True,
        }
    return tokens, users


def _body(kind: str, name: str, fields: Doc, resource_version: str | None = None) -> Doc:
    metadata: Doc = {
        "name": name,
        "namespace": NAMESPACE,
        "labels": {"app.kubernetes.io/managed-by": "herdgate"},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": metadata, **fields}


def _same(existing: Doc, fields: Doc) -> bool:
    return all(existing.get(key) == value for key, value in fields.items())


def node_endpoints(nodes: list[Doc]) -> tuple[tuple[str, str], ...]:
    """(node name, https URL) of the control-plane nodes' API servers."""
    out: list[tuple[str, str]] = []
    for node in nodes:
        meta = node.get("metadata", {})
        labels = meta.get("labels") or {}
        if not any(labels.get(label) in ("true", "") for label in CONTROL_PLANE_LABELS):
            continue
        addresses = {
            a.get("type"): a.get("address") for a in node.get("status", {}).get("addresses") or []
        }
        address = addresses.get("ExternalIP") or addresses.get("InternalIP")
        if not address:
            continue
        port = (meta.get("annotations") or {}).get(APISERVER_PORT_ANNOTATION, "6443")
        host = f"[{address}]" if ":" in address else address
        out.append((meta.get("name", address), f"https://{host}:{port}"))
    return tuple(sorted(out))


class AceController:
    """One sync loop per ACE cluster, woken by directory and tunnel changes; it acts only
    where the cluster's lease is held (``ClusterControllers.leads``), and fences every
    write (``_fence``)."""

    def __init__(
        self, app: web.Application, listener: InternalListener, controllers: ClusterControllers
    ) -> None:
        self.app = app
        self.directory: Directory = app[DIRECTORY]
        self.listener = listener
        self.controllers = controllers
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reported: dict[str, tuple[bool, str]] = {}
        """The ``ACESynced`` condition last reported per cluster (status, reason)."""
        self.synced: dict[str, float] = {}
        """When each cluster was last fully in step (for tests and status)."""

    def start(self) -> None:
        self.directory.on_change(self._on_directory_change)
        self.app[TUNNELS].on_change(self._on_tunnel_change)
        self.controllers.on_lead(self._on_lead)
        for cluster in self.directory.clusters.values():
            self._ensure(cluster)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    # -- triggers ---------------------------------------------------------------------

    def _on_directory_change(self, kind: str, key: str) -> None:
        if kind == CLUSTER:
            cluster = self.directory.clusters.get(key)
            if cluster is None:
                task = self._tasks.pop(key, None)
                if task is not None:
                    task.cancel()
                self._wake.pop(key, None)
                self._reported.pop(key, None)
                self.synced.pop(key, None)
            else:
                self._ensure(cluster)
        if kind in (USER, TOKEN, BINDING, PROJECT_BINDING, ROLE_TEMPLATE, CLUSTER):
            for event in self._wake.values():
                event.set()

    def _on_tunnel_change(self, cluster_id: str, live: int) -> None:
        event = self._wake.get(cluster_id)
        if event is not None and live:
            event.set()

    def _on_lead(self, cluster_id: str, holding: bool) -> None:
        event = self._wake.get(cluster_id)
        if event is not None and holding:
            event.set()  # taken over: bring the records in step at once
        if not holding:
            self._reported.pop(cluster_id, None)  # the next holder reports afresh

    def _ensure(self, cluster: Cluster) -> None:
        if cluster.id in self._tasks or not cluster.ace_enabled:
            return
        self._wake[cluster.id] = asyncio.Event()
        self._wake[cluster.id].set()
        self._tasks[cluster.id] = asyncio.create_task(self._loop(cluster.id))

    # -- the lease ------------------------------------------------------------------------

    def leads(self, cluster_id: str) -> bool:
        """Whether this process holds the cluster's lease (its controller runs here)."""
        return self.controllers.leads(cluster_id)

    def _fence(self, cluster_id: str) -> None:
        """Before every write, downstream or to the store: stop (``LeaseLost``) if the
        cluster's lease may be someone else's by now."""
        if not self.leads(cluster_id):
            raise LeaseLost(LEASE_PREFIX + cluster_id)

    # -- the loop -------------------------------------------------------------------------

    async def _loop(self, cluster_id: str) -> None:
        wake = self._wake[cluster_id]
        while True:
            try:
                async with asyncio.timeout(RESYNC_S):
                    await wake.wait()
            except TimeoutError:
                pass
            await asyncio.sleep(DEBOUNCE_S)
            wake.clear()
            cluster = self.directory.clusters.get(cluster_id)
            if cluster is None or not cluster.ace_enabled:
                self._tasks.pop(cluster_id, None)
                self._wake.pop(cluster_id, None)
                if cluster is not None:
                    await self._withdraw(cluster_id)
                return
            if not self.app[TUNNELS].count(cluster_id) or not self.leads(cluster_id):
                continue  # woken when a tunnel comes up or this process takes the lease
            try:
                await self.sync(cluster)
            except asyncio.CancelledError:
                raise
            except LeaseLost:
                logger.info("ACE sync of %s stopped: the lease is no longer held", cluster_id)
            except Exception as exc:  # noqa: BLE001 - retried; the cluster may be unreachable
                metrics.ACE_SYNC_ERRORS.labels(cluster_id).inc()
                logger.warning("ACE sync of %s failed: %r; retrying", cluster_id, exc)
                await self._report(cluster_id, False, "SyncFailed", _failure(exc))
                await asyncio.sleep(RETRY_S)
                wake.set()
            else:
                await self._report(cluster_id, True, "Synced", "direct-access records are in step")

    async def _report(self, cluster_id: str, ok: bool, reason: str, message: str) -> None:
        """The cluster's ``ACESynced`` condition, set only when it changes and only by the
        lease holder; a store failure is logged, the next pass reports again."""
        if self._reported.get(cluster_id) == (ok, reason) or not self.leads(cluster_id):
            return
        try:
            await self.controllers.set_condition(cluster_id, ACE_SYNCED, ok, reason, message)
        except StoreError as exc:
            logger.warning("ACESynced of %s not recorded: %s", cluster_id, exc)
            return
        self._reported[cluster_id] = (ok, reason)

    async def _withdraw(self, cluster_id: str) -> None:
        """Direct access was turned off: the holder removes ``ACESynced``."""
        self._reported.pop(cluster_id, None)
        self.synced.pop(cluster_id, None)
        if not self.leads(cluster_id):
            return
        try:
            await self.controllers.remove_condition(cluster_id, ACE_SYNCED)
        except StoreError as exc:
            logger.warning("ACESynced of %s not removed: %s", cluster_id, exc)

    async def sync(self, cluster: Cluster) -> None:
        api = self.listener.client(cluster.id)
        creates = [
            (resource_path(APIEXTENSIONS, "v1", "customresourcedefinitions"), crd)
            for crd in manifests.crds()
        ]
        # The manifest makes the namespace and the agent may not create namespaces (a
        # create is authorised before it is found to exist, so a 409 is never seen):
        # create it only where it is missing, for agents installed by hand.
        try:
            await api.get(resource_path("", "v1", "namespaces", name=NAMESPACE))
        except ApiError as exc:
            if exc.status != 404:
                raise
            creates.insert(0, (resource_path("", "v1", "namespaces"), manifests.namespace()))
        for path, doc in creates:
            self._fence(cluster.id)
            try:
                await api.create(path, doc)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        tokens, users = desired_records(self.directory, cluster.id, self.directory.clock())
        # Users first, so that a token never exists downstream without its user.
        await self._apply(cluster.id, api, USERS, "ClusterUserAttribute", users, False)
        await self._apply(cluster.id, api, TOKENS, "ClusterAuthToken", tokens, True)
        await self._apply(cluster.id, api, USERS, "ClusterUserAttribute", users, True)
        nodes = await api.get(resource_path("", "v1", "nodes"))
        endpoints = node_endpoints(nodes.get("items", []))
        await self.record_nodes(cluster.id, endpoints)
        self.synced[cluster.id] = self.directory.clock()
        metrics.ACE_SYNC_LAST.labels(cluster.id).set(self.synced[cluster.id])
        logger.debug(
            "ACE records of %s in step: %d tokens, %d users", cluster.id, len(tokens), len(users)
        )

    async def record_nodes(self, cluster_id: str, endpoints: tuple[tuple[str, str], ...]) -> None:
        """Store the control-plane endpoints the kubeconfigs offer, if they changed."""
        current = self.directory.clusters.get(cluster_id)
        if current is not None and current.ace_nodes != endpoints:
            self._fence(cluster_id)
            await self.directory.patch(CLUSTER, current.id, ace_nodes=[list(e) for e in endpoints])

    async def _apply(
        self, cluster_id: str, api: KubeClient, plural: str, kind: str, desired: Doc, delete: bool
    ) -> None:
        listed = await api.get(resource_path(GROUP, VERSION, plural, namespace=NAMESPACE))
        existing = {item["metadata"]["name"]: item for item in listed.get("items", [])}
        changes = metrics.ACE_SYNC_CHANGES
        for name, fields in desired.items():
            have = existing.get(name)
            if have is not None and _same(have, fields):
                continue
            self._fence(cluster_id)
            try:
                if have is None:
                    await api.create(
                        resource_path(GROUP, VERSION, plural, namespace=NAMESPACE),
                        _body(kind, name, fields),
                    )
                    changes.labels(cluster_id, "create").inc()
                else:
                    await api.replace(
                        resource_path(GROUP, VERSION, plural, namespace=NAMESPACE, name=name),
                        _body(kind, name, fields, have["metadata"].get("resourceVersion")),
                    )
                    changes.labels(cluster_id, "replace").inc()
            except ApiError as exc:
                if exc.status != 409:
                    raise
        if delete:
            for name in existing.keys() - desired.keys():
                self._fence(cluster_id)
                try:
                    await api.delete(
                        resource_path(GROUP, VERSION, plural, namespace=NAMESPACE, name=name)
                    )
                    changes.labels(cluster_id, "delete").inc()
                except ApiError as exc:
                    if exc.status != 404:
                        raise


def _failure(exc: BaseException) -> str:
    """What the condition's message says of a failed pass (the API server's own message
    when it answered, not its whole body)."""
    if isinstance(exc, ApiError):
        return f"the cluster answered {exc.status}: {exc.message()}"[:MAX_MESSAGE]
    return f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE]


ACE = web.AppKey("ace", AceController)


async def ace_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the ACE controller, on the internal listener and the
    leases of ``cluster_controller.cluster_context`` (which runs before it)."""
    controller = AceController(app, app[INTERNAL_LISTENER], app[CLUSTER_CONTROLLERS])
    app[ACE] = controller
    controller.start()
    yield
    await controller.stop()
