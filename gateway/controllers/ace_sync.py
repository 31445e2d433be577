"""Authorized cluster endpoint (ACE): keep each cluster's token records in step.

A cluster with ACE enabled runs the TokenReview webhook (``herdgate webhook``), which
decides from records stored in the cluster itself: ``ClusterAuthToken`` (one per
token: its hash, user and expiry) and ``ClusterUserAttribute`` (one per user: groups,
enabled). This controller computes the records that should exist from the gateway's
directory (:func:`desired_records`, pure) and applies the difference through the
tunnel with kubernetes-asyncio: on every relevant change (debounced), when a tunnel
comes up (so a partition heals), and periodically to remove drift.

A token is synced to a cluster when it is unscoped or scoped to that cluster (alone or
among others: a kubeconfig token for several clusters is synced to each of them), not
expired, and its user is enabled and holds a role there. Anything else is deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from ace import manifests
from ace.manifests import NAMESPACE
from ace.records import GROUP, VERSION
from ace.records import TOKEN_PLURAL as TOKENS
from ace.records import USER_PLURAL as USERS
from gateway.clusters.replicas import REPLICAS
from gateway.clusters.tunnels import TUNNELS
from gateway.controllers.downstream import INTERNAL_LISTENER, InternalListener
from gateway.identity.directory import DIRECTORY, Directory
from gateway.keys import SETTINGS
from gateway.proxy.impersonation import ROLE_GROUP_PREFIX
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
    """One sync loop per ACE cluster, woken by directory and tunnel changes."""

    def __init__(self, app: web.Application, listener: InternalListener) -> None:
        self.app = app
        self.directory: Directory = app[DIRECTORY]
        self.listener = listener
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.synced: dict[str, float] = {}
        """When each cluster was last fully in step (for tests and status)."""

    def start(self) -> None:
        self.directory.on_change(self._on_directory_change)
        self.app[TUNNELS].on_change(self._on_tunnel_change)
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
            else:
                self._ensure(cluster)
        if kind in (USER, TOKEN, BINDING, PROJECT_BINDING, ROLE_TEMPLATE, CLUSTER):
            for event in self._wake.values():
                event.set()

    def _on_tunnel_change(self, cluster_id: str, live: int) -> None:
        event = self._wake.get(cluster_id)
        if event is not None and live:
            event.set()

    def _ensure(self, cluster: Cluster) -> None:
        if cluster.id in self._tasks or not cluster.ace_enabled:
            return
        self._wake[cluster.id] = asyncio.Event()
        self._wake[cluster.id].set()
        self._tasks[cluster.id] = asyncio.create_task(self._loop(cluster.id))

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
                return
            if not self.app[TUNNELS].count(cluster_id):
                continue  # resynced when a tunnel comes up
            if not self.app[REPLICAS].is_leader():
                continue  # another replica keeps the records in step
            try:
                await self.sync(cluster)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried; the cluster may be unreachable
                logger.warning("ACE sync of %s failed: %s; retrying", cluster_id, exc)
                await asyncio.sleep(RETRY_S)
                wake.set()

    async def sync(self, cluster: Cluster) -> None:
        from kubernetes_asyncio.client import ApiextensionsV1Api, CoreV1Api, CustomObjectsApi
        from kubernetes_asyncio.client.exceptions import ApiException

        async with self.listener.client(cluster.id) as api:
            core = CoreV1Api(api)
            extensions = ApiextensionsV1Api(api)
            custom = CustomObjectsApi(api)
            creates: list[tuple[Any, Doc]] = [
                (extensions.create_custom_resource_definition, crd) for crd in manifests.crds()
            ]
            # The manifest makes the namespace and the agent may not create namespaces
            # (a create is authorised before it is found to exist, so a 409 is never seen):
            # create it only where it is missing, for agents installed by hand.
            try:
                await core.read_namespace(NAMESPACE)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                creates.insert(0, (core.create_namespace, manifests.namespace()))
            for create, doc in creates:
                try:
                    await create(doc)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            tokens, users = desired_records(self.directory, cluster.id, self.directory.clock())
            # Users first, so that a token never exists downstream without its user.
            await self._apply(custom, USERS, "ClusterUserAttribute", users, delete=False)
            await self._apply(custom, TOKENS, "ClusterAuthToken", tokens, delete=True)
            await self._apply(custom, USERS, "ClusterUserAttribute", users, delete=True)
            nodes = await core.list_node()
            endpoints = node_endpoints(api.sanitize_for_serialization(nodes).get("items", []))
        current = self.directory.clusters.get(cluster.id)
        if current is not None and current.ace_nodes != endpoints:
            await self.directory.patch(CLUSTER, current.id, ace_nodes=[list(e) for e in endpoints])
        self.synced[cluster.id] = self.directory.clock()
        logger.debug(
            "ACE records of %s in step: %d tokens, %d users", cluster.id, len(tokens), len(users)
        )

    async def _apply(self, custom: Any, plural: str, kind: str, desired: Doc, delete: bool) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        listed = await custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)
        existing = {item["metadata"]["name"]: item for item in listed.get("items", [])}
        for name, fields in desired.items():
            have = existing.get(name)
            try:
                if have is None:
                    await custom.create_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, plural, _body(kind, name, fields)
                    )
                elif not _same(have, fields):
                    await custom.replace_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        NAMESPACE,
                        plural,
                        name,
                        _body(kind, name, fields, have["metadata"].get("resourceVersion")),
                    )
            except ApiException as exc:
                if exc.status != 409:
                    raise
        if delete:
            for name in existing.keys() - desired.keys():
                try:
                    await custom.delete_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, plural, name
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise


ACE = web.AppKey("ace", AceController)


async def ace_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the internal listener and the ACE controller."""
    listener = InternalListener(app, Path(app[SETTINGS].state_dir))
    await listener.start()
    app[INTERNAL_LISTENER] = listener
    controller = AceController(app, listener)
    app[ACE] = controller
    controller.start()
    yield
    await controller.stop()
    await listener.stop()
