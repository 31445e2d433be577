"""``/v3/clusters``, ``generateKubeconfig`` and ``/v3/clusterregistrationtokens``."""

from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Any

from aiohttp import web

from config.identity import Identity
from gateway import kubeconfig
from gateway.api.common import (
    action,
    authenticated,
    bool_field,
    collection,
    directory,
    json_body,
    require_admin,
    string_field,
)
from gateway.directory import TooManyTokens
from gateway.errors import BadRequest, Forbidden, GatewayError, NotFound
from gateway.keys import REPLICAS, RUNTIME, SETTINGS, TUNNELS
from gateway.records import CLUSTER, REGISTRATION, Cluster, RegistrationToken, iso

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FQDN = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")


def cluster_state(cluster: Cluster, live_links: int) -> str:
    if live_links:
        return "active"
    return "pending" if cluster.connected_at is None else "unavailable"


def cluster_view(request: web.Request, cluster: Cluster) -> dict[str, Any]:
    links = request.app[TUNNELS].links(cluster.id)
    return {
        "id": cluster.id,
        "type": "cluster",
        "name": cluster.name,
        "description": cluster.description,
        "state": cluster_state(
            cluster, len(links) or request.app[REPLICAS].has_tunnel_anywhere(cluster.id)
        ),
        "created": iso(cluster.created),
        "connectedAt": iso(cluster.connected_at),
        "agents": [link.describe() for link in links],
        "replicas": {
            "live": request.app[REPLICAS].count(),
            "withTunnel": request.app[REPLICAS].holding(cluster.id),
        },
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
    identity, _ = authenticated(request)
    cluster = visible_cluster(request, identity, request.match_info["id"])
    if action(request) != "generateKubeconfig":
        raise BadRequest("unknown action")
    d = directory(request)
    runtime = request.app[RUNTIME]
    user = d.users[identity.user_id]
    data = await json_body(request)
    credential: str | dict[str, Any]
    if string_field(data, "credential") == "exec":
        # No embedded token: kubectl runs `herdgate login`, which logs in when needed.
        provider = string_field(data, "provider") or _login_provider(user.provider)
        credential = kubeconfig.exec_user(runtime.server_url, provider, cluster.id)
    else:
        ttl = request.app[SETTINGS].tokens.kubeconfig_ttl_s or None
        try:
            _, credential = await d.issue_token(
                user,
                ttl,
                kind="kubeconfig",
                description=f"kubeconfig for {cluster.name}",
                cluster_id=cluster.id,
                max_per_user=request.app[SETTINGS].tokens.max_per_user,
            )
        except TooManyTokens as exc:
            raise GatewayError(409, str(exc)) from None
    endpoints = [
        kubeconfig.Endpoint(
            cluster.name, f"{runtime.server_url}/k8s/clusters/{cluster.id}", runtime.ca_pem
        ),
        *ace_endpoints(cluster),
    ]
    return web.json_response(
        {
            "type": "generateKubeConfigOutput",
            "config": kubeconfig.build(cluster.name, endpoints, credential),
        }
    )


def ace_endpoints(cluster: Cluster) -> list[kubeconfig.Endpoint]:
    """Direct contexts: ``<name>-fqdn``, else one ``<name>-<node>`` per control-plane node."""
    if not cluster.ace_enabled:
        return []
    if cluster.ace_fqdn:
        ca = cluster.ace_ca_certs or cluster.ca_cert
        return [kubeconfig.Endpoint(f"{cluster.name}-fqdn", f"https://{cluster.ace_fqdn}", ca)]
    return [
        kubeconfig.Endpoint(
            f"{cluster.name}-{node.removeprefix(cluster.name + '-')}", url, cluster.ca_cert
        )
        for node, url in cluster.ace_nodes
    ]


def _login_provider(provider: str) -> str:
    """The ``herdgate login --provider`` value for a user's provider."""
    return {"openldap": "ldap"}.get(provider, provider)


# -- registration tokens ---------------------------------------------------------------


def agent_command(request: web.Request, token: str) -> str:
    runtime = request.app[RUNTIME]
    parts = ["herdgate", "agent", "--server", runtime.server_url, "--token", token]
    if runtime.ca_checksum:
        parts += ["--ca-checksum", runtime.ca_checksum]
    return shlex.join(parts)


def registration_view(registration: RegistrationToken) -> dict[str, Any]:
    return {
        "id": f"{registration.cluster_id}:{registration.id}",
        "type": "clusterRegistrationToken",
        "clusterId": registration.cluster_id,
        "created": iso(registration.created),
    }


async def create_registration(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    data = await json_body(request)
    cluster_id = string_field(data, "clusterId", required=True)
    cluster = require_owner(request, identity, cluster_id)
    registration, token = await directory(request).new_registration(cluster.id)
    body = registration_view(registration)
    body["token"] = token
    body["command"] = agent_command(request, token)
    return web.json_response(body, status=201)


async def list_registrations(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    d = directory(request)
    wanted = request.query.get("clusterId")
    items = [
        registration_view(r)
        for r in d.registrations.values()
        if (wanted is None or r.cluster_id == wanted)
        and d.role_on(identity, r.cluster_id) == "cluster-owner"
    ]
    return collection(items, "clusterRegistrationToken")


async def delete_registration(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    cluster_id, _, reg_id = request.match_info["id"].rpartition(":")
    d = directory(request)
    registration = d.registrations.get(reg_id)
    if registration is None or (cluster_id and cluster_id != registration.cluster_id):
        raise NotFound("registration token not found")
    require_owner(request, identity, registration.cluster_id)
    await d.delete(REGISTRATION, registration.id)
    return web.json_response(registration_view(registration))


async def ace_manifest(request: web.Request) -> web.Response:
    """The webhook's install documents for an ACE cluster (owners).

    ``manifests.yaml``: namespace, CRDs, RBAC and DaemonSet, for ``kubectl apply``;
    ``webhook-kubeconfig.yaml``: the file for kube-apiserver's
    ``--authentication-token-webhook-config-file``.
    """
    from webhook import manifests

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
