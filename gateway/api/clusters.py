"""``/v3/clusters``, ``generateKubeconfig`` and ``/v3/clusterregistrationtokens``."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shlex
from typing import Any

from aiohttp import web

from ace import manifests
from config.identity import Identity
from gateway.api import agent_import, kubeconfigs
from gateway.api.common import (
    action,
    authenticated,
    bool_field,
    collection,
    directory,
    duration_ms_field,
    json_body,
    require_admin,
    string_field,
    time_field,
)
from gateway.clusters.replicas import REPLICAS
from gateway.clusters.tunnels import TUNNELS
from gateway.controllers.cluster_health import (
    CONNECTED,
    PENDING,
    UNAVAILABLE,
    AgentView,
    ClusterHealth,
)
from gateway.errors import BadRequest, Forbidden, GatewayError, NotFound
from gateway.keys import RUNTIME, SETTINGS
from gateway.store.records import (
    CLUSTER,
    REGISTRATION,
    Cluster,
    ClusterStatus,
    RegistrationToken,
    iso,
)

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FQDN = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")


def cluster_status(
    cluster: Cluster, status: ClusterStatus | None, tunnel_anywhere: bool
) -> tuple[str, list[dict[str, Any]]]:
    """The state and conditions to show: the cluster controller's stored status
    (``gateway.controllers.cluster_controller``), except that a cluster no live replica
    holds a tunnel to is not shown active (its controller's process may have died
    before it could say so)."""
    if status is None:
        health = ClusterHealth(cluster.id, ever_connected=cluster.connected_at is not None)
        if cluster.connected_at is not None and not tunnel_anywhere:
            health.agents_changed((), cluster.connected_at)
        return health.state, health.condition_docs()
    state = status.state
    conditions = [dict(c) for c in status.conditions]
    if state != PENDING and not tunnel_anywhere:
        for condition in conditions:
            if condition.get("type") == CONNECTED and condition.get("status") == "True":
                condition.update(
                    status="False",
                    reason="NoAgentTunnel",
                    message="no live gateway process holds an agent tunnel",
                    lastTransitionTime=None,
                )
        state = UNAVAILABLE
    return state, conditions


def _local_agents(request: web.Request, cluster: Cluster) -> list[dict[str, Any]]:
    replica = request.app[REPLICAS].id
    offset = directory(request).clock() - asyncio.get_running_loop().time()
    return [
        AgentView(
            link.info.node_name, replica, round(link.connected_at + offset), link.remote
        ).doc()
        for link in request.app[TUNNELS].links(cluster.id)
    ]


def cluster_view(request: web.Request, cluster: Cluster) -> dict[str, Any]:
    replicas = request.app[REPLICAS]
    status = directory(request).statuses.get(cluster.id)
    tunnel_anywhere = replicas.has_tunnel_anywhere(cluster.id)
    state, conditions = cluster_status(cluster, status, tunnel_anywhere)
    if status is None:
        agents = _local_agents(request, cluster)
    else:
        agents = [dict(a) for a in status.agents] if tunnel_anywhere else []
    nodes = [] if status is None else [dict(n) for n in status.nodes]
    return {
        "id": cluster.id,
        "type": "cluster",
        "name": cluster.name,
        "description": cluster.description,
        "state": state,
        "conditions": conditions,
        "version": None if status is None else status.version,
        "nodes": nodes,
        "nodeCount": len(nodes),
        "namespaceCount": 0 if status is None else len(status.namespaces),
        "created": iso(cluster.created),
        "connectedAt": iso(cluster.connected_at),
        "agents": agents,
        "replicas": {
            "live": replicas.count(),
            "withTunnel": replicas.holding(cluster.id),
        },
        "controllerReplica": "" if status is None else status.holder,
        "localClusterAuthEndpoint": {
            "enabled": cluster.ace_enabled,
            "fqdn": cluster.ace_fqdn,
            "caCerts": cluster.ace_ca_certs,
            "nodes": [{"name": name, "server": url} for name, url in cluster.ace_nodes],
        },
    }


def ace_settings(data: dict[str, Any], cluster: Cluster) -> Cluster:
    """Apply a ``localClusterAuthEndpoint`` object (Rancher's field) to a cluster."""
    ace = data.get("localClusterAuthEndpoint")
    if ace is None:
        return cluster
    if not isinstance(ace, dict):
        raise GatewayError(
            422, "localClusterAuthEndpoint must be an object", reason="InvalidFormat"
        )
    fqdn = string_field(ace, "fqdn", max_len=253)
    if fqdn and not _FQDN.match(fqdn):
        raise GatewayError(
            422, "fqdn must be a host name with an optional :port", reason="InvalidFormat"
        )
    ca_certs = ace.get("caCerts") or ""
    if not isinstance(ca_certs, str) or len(ca_certs) > 65536:
        raise GatewayError(
            422, "caCerts must be a string of PEM certificates", reason="InvalidFormat"
        )
    if ca_certs and "-----BEGIN CERTIFICATE-----" not in ca_certs:
        raise GatewayError(422, "caCerts must be PEM certificates", reason="InvalidFormat")
    return dataclasses.replace(
        cluster,
        ace_enabled=bool_field(ace, "enabled", cluster.ace_enabled),
        ace_fqdn=fqdn if "fqdn" in ace else cluster.ace_fqdn,
        ace_ca_certs=ca_certs if "caCerts" in ace else cluster.ace_ca_certs,
    )


def visible_cluster(request: web.Request, identity: Identity, cluster_id: str) -> Cluster:
    """The cluster, if the caller holds any role on it (else 404, to not reveal it)."""
    d = directory(request)
    cluster = d.clusters.get(cluster_id)
    if cluster is None or d.role_on(identity, cluster_id) is None:
        raise NotFound(f"cluster {cluster_id} not found")
    return cluster


def require_owner(request: web.Request, identity: Identity, cluster_id: str) -> Cluster:
    cluster = visible_cluster(request, identity, cluster_id)
    if directory(request).role_on(identity, cluster_id) != "cluster-owner":
        raise Forbidden(f"only owners of cluster {cluster.name} may do this")
    return cluster


async def list_clusters(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    d = directory(request)
    clusters = [c for c in d.clusters.values() if d.role_on(identity, c.id) is not None]
    clusters.sort(key=lambda c: c.created)
    return collection((cluster_view(request, c) for c in clusters), "cluster")


async def create_cluster(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    require_admin(identity)
    data = await json_body(request)
    name = string_field(data, "name", required=True, max_len=63)
    if not _NAME.match(name):
        raise GatewayError(
            422,
            "name must be lowercase letters, digits and '-', starting and ending alphanumeric",
            reason="InvalidFormat",
        )
    d = directory(request)
    if any(c.name == name for c in d.clusters.values()):
        raise GatewayError(409, f"a cluster named {name!r} already exists", reason="NotUnique")
    now = d.clock()
    description = string_field(data, "description", max_len=1024)
    template = ace_settings(data, Cluster("c-new", name, now, description))
    cluster = await d.create_unique(
        CLUSTER, "c", lambda cluster_id: dataclasses.replace(template, id=cluster_id)
    )
    return web.json_response(cluster_view(request, cluster), status=201)


async def update_cluster(request: web.Request) -> web.Response:
    """``PUT /v3/clusters/<id>``: description and ``localClusterAuthEndpoint`` (owners)."""
    identity, _ = authenticated(request)
    cluster = require_owner(request, identity, request.match_info["id"])
    data = await json_body(request)
    updated = ace_settings(data, cluster)
    if "description" in data:
        updated = dataclasses.replace(
            updated, description=string_field(data, "description", max_len=1024)
        )
    fields = ("description", "ace_enabled", "ace_fqdn", "ace_ca_certs")
    d = directory(request)
    await d.patch(CLUSTER, cluster.id, **{f: getattr(updated, f) for f in fields})
    current = d.clusters.get(cluster.id)
    if current is None:
        raise NotFound(f"cluster {cluster.id} not found")
    return web.json_response(cluster_view(request, current))


async def get_cluster(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    cluster = visible_cluster(request, identity, request.match_info["id"])
    return web.json_response(cluster_view(request, cluster))


async def delete_cluster(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    cluster = require_owner(request, identity, request.match_info["id"])
    view = cluster_view(request, cluster)
    await directory(request).delete_cluster(cluster.id)
    for link in request.app[TUNNELS].links(cluster.id):
        await link.session.close(reason="cluster deleted")
    return web.json_response(view)


async def cluster_action(request: web.Request) -> web.Response:
    """``?action=generateKubeconfig`` ``{"credential"?: "token" | "exec", "provider"?}``:
    the cluster's kubeconfig, made as ``POST /v3/kubeconfigs`` makes one for it."""
    identity, _ = authenticated(request)
    cluster = visible_cluster(request, identity, request.match_info["id"])
    if action(request) != "generateKubeconfig":
        raise BadRequest("unknown action")
    data = await json_body(request)
    credential = kubeconfigs.credential_field(data)
    provider = kubeconfigs.provider_field(data, credential)
    answer = await kubeconfigs.make(request, identity, [cluster], credential, provider)
    return web.json_response({"type": "generateKubeConfigOutput", "config": answer["config"]})


# -- registration tokens ---------------------------------------------------------------


def agent_command(request: web.Request, token: str) -> str:
    """The ``herdgate agent ...`` line, for an agent outside Kubernetes (systemd); the
    program as ``registration.agent_program`` names it."""
    runtime = request.app[RUNTIME]
    program = request.app[SETTINGS].registration.agent_program
    parts = [program, "agent", "--server", runtime.server_url, "--token", token]
    if runtime.ca_checksum:
        parts += ["--ca-checksum", runtime.ca_checksum]
    return shlex.join(parts)


def registration_commands(request: web.Request, token: str) -> dict[str, str]:
    """Rancher's fields: ``manifestUrl`` (``GET /v3/import/<token>.yaml``), ``command``
    (here two lines: the ``herdgate agent ...`` line, then ``kubectl apply -f <url>``),
    ``insecureCommand`` (``curl --insecure``, for a gateway CA the machine does not
    trust yet; the agents still check the CA checksum) and ``nodeCommand`` (the plain
    ``herdgate agent ...`` line)."""
    url = agent_import.manifest_url(request.app[RUNTIME].server_url, token)
    agent = agent_command(request, token)
    return {
        "manifestUrl": url,
        "command": f"{agent}\n{shlex.join(['kubectl', 'apply', '-f', url])}",
        "insecureCommand": f"curl --insecure -sfL {shlex.quote(url)} | kubectl apply -f -",
        "nodeCommand": agent,
    }


def registration_view(registration: RegistrationToken, now: float) -> dict[str, Any]:
    """A registration token as the API shows it: never its secret (only its hash is
    kept; the plaintext is in the answer that created it, and nowhere else)."""
    return {
        "id": f"{registration.cluster_id}:{registration.id}",
        "type": "clusterRegistrationToken",
        "clusterId": registration.cluster_id,
        "created": iso(registration.created),
        "expiresAt": iso(registration.expires_at),
        "expired": registration.is_expired(now),
        "rotatedTo": (
            f"{registration.cluster_id}:{registration.rotated_to}"
            if registration.rotated_to
            else None
        ),
    }


def _with_secret(
    request: web.Request, registration: RegistrationToken, token: str, now: float
) -> dict[str, Any]:
    body = registration_view(registration, now)
    body["token"] = token
    body.update(registration_commands(request, token))
    return body


def _expiry(data: dict[str, Any], now: float) -> float | None:
    """``ttl`` (milliseconds or a duration) or ``expiresAt`` (RFC 3339), not both."""
    ttl = duration_ms_field(data, "ttl")
    at = time_field(data, "expiresAt")
    if ttl is not None and at is not None:
        raise GatewayError(422, "give ttl or expiresAt, not both", reason="InvalidFormat")
    if ttl:
        return now + ttl
    if at is not None:
        if at <= now:
            raise GatewayError(422, "expiresAt is in the past", reason="InvalidFormat")
        return at
    return None


async def create_registration(request: web.Request) -> web.Response:
    """``POST /v3/clusterregistrationtokens {clusterId, ttl?, expiresAt?}`` (owners)."""
    identity, _ = authenticated(request)
    data = await json_body(request)
    cluster_id = string_field(data, "clusterId", required=True)
    cluster = require_owner(request, identity, cluster_id)
    d = directory(request)
    now = d.clock()
    expires_at = _expiry(data, now)
    registration, token = await d.new_registration(cluster.id, expires_at)
    return web.json_response(_with_secret(request, registration, token, now), status=201)


async def list_registrations(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    d = directory(request)
    wanted = request.query.get("clusterId")
    now = d.clock()
    items = [
        registration_view(r, now)
        for r in sorted(d.registrations.values(), key=lambda r: r.created)
        if (wanted is None or r.cluster_id == wanted)
        and d.role_on(identity, r.cluster_id) == "cluster-owner"
    ]
    return collection(items, "clusterRegistrationToken")


def _owned_registration(request: web.Request, identity: Identity) -> RegistrationToken:
    """The token ``{id}`` names (``<cluster>:crt-xxxxx`` or ``crt-xxxxx``), if the caller
    owns its cluster (404 otherwise, not to reveal it; 403 for a read-only holder)."""
    cluster_id, _, reg_id = request.match_info["id"].rpartition(":")
    d = directory(request)
    registration = d.registrations.get(reg_id)
    if registration is None or (cluster_id and cluster_id != registration.cluster_id):
        raise NotFound("registration token not found")
    require_owner(request, identity, registration.cluster_id)
    return registration


async def get_registration(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    registration = _owned_registration(request, identity)
    return web.json_response(registration_view(registration, directory(request).clock()))


async def delete_registration(request: web.Request) -> web.Response:
    """``DELETE /v3/clusterregistrationtokens/<id>``: revoke it. Agents connected with it
    are disconnected by every gateway process (``gateway.clusters.tunnels.RegistrationGuard``)."""
    identity, _ = authenticated(request)
    registration = _owned_registration(request, identity)
    d = directory(request)
    await d.delete(REGISTRATION, registration.id)
    return web.json_response(registration_view(registration, d.clock()))


async def registration_action(request: web.Request) -> web.Response:
    """``POST /v3/clusterregistrationtokens/<id>?action=rotate {previousValidFor?}``: a
    new token (shown once); the old one stays valid ``previousValidFor`` (milliseconds
    or a duration such as ``10m``; default 0: revoked at once), then its agents are
    disconnected. ``?action=revoke`` is ``DELETE``."""
    identity, _ = authenticated(request)
    what = action(request)
    if what == "revoke":
        return await delete_registration(request)
    if what != "rotate":
        raise BadRequest("unknown action (rotate or revoke)")
    registration = _owned_registration(request, identity)
    data = await json_body(request)
    previous_valid_s = duration_ms_field(data, "previousValidFor") or 0.0
    d = directory(request)
    rotated = await d.rotate_registration(registration, previous_valid_s)
    if rotated is None:
        raise NotFound("registration token not found")
    new, token = rotated
    return web.json_response(_with_secret(request, new, token, d.clock()), status=201)


async def ace_manifest(request: web.Request) -> web.Response:
    """The webhook's install documents for an ACE cluster (owners).

    ``manifests.yaml``: namespace, CRDs, RBAC and DaemonSet, for ``kubectl apply``;
    ``webhook-kubeconfig.yaml``: the file for kube-apiserver's
    ``--authentication-token-webhook-config-file``.
    """
    identity, _ = authenticated(request)
    cluster = require_owner(request, identity, request.match_info["id"])
    if not cluster.ace_enabled:
        raise NotFound(f"cluster {cluster.name} does not have an authorized endpoint")
    name = request.match_info["file"]
    if name == "manifests.yaml":
        text = manifests.to_yaml(manifests.cluster_documents())
    elif name == "webhook-kubeconfig.yaml":
        text = manifests.to_yaml([manifests.apiserver_webhook_config()])
    else:
        raise NotFound(f"no such file {name}")
    return web.Response(text=text, content_type="application/yaml")
