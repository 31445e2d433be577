"""The kubeconfigs the page hands out: one cluster's (what ``generateKubeconfig`` gives)
and all of the caller's clusters' in one file.

``all_clusters`` is the one place the "all clusters" button reaches: once the
management API has ``POST /v3/kubeconfigs {"clusters": ["*"]}``, it calls that
endpoint's builder instead, and nothing else of the page changes.
"""

from __future__ import annotations

from typing import Any

import yaml
from aiohttp import web

from config.identity import Identity
from gateway.api import kubeconfig
from gateway.api.clusters import ace_endpoints
from gateway.api.common import directory
from gateway.errors import GatewayError, NotFound
from gateway.identity.directory import TooManyTokens
from gateway.keys import RUNTIME, SETTINGS
from gateway.store.records import Cluster


def visible_clusters(request: web.Request, identity: Identity) -> list[Cluster]:
    """The clusters ``identity`` holds a role on, by name."""
    d = directory(request)
    found = [c for c in d.clusters.values() if d.role_on(identity, c.id) is not None]
    return sorted(found, key=lambda c: (c.name, c.id))


async def one_cluster(request: web.Request, identity: Identity, cluster: Cluster) -> str:
    """The document ``POST /v3/clusters/<id>?action=generateKubeconfig`` answers: the
    gateway's context (and the direct ones of an authorized endpoint), with a new
    ``kubeconfig`` token valid for this cluster only (tests/component/test_ui.py holds
    the two alike)."""
    d = directory(request)
    runtime = request.app[RUNTIME]
    tokens = request.app[SETTINGS].tokens
    try:
        _, token = await d.issue_token(
            d.users[identity.user_id],
            tokens.kubeconfig_ttl_s or None,
            kind="kubeconfig",
            description=f"kubeconfig for {cluster.name}",
            cluster_id=cluster.id,
            max_per_user=tokens.max_per_user,
        )
    except TooManyTokens as exc:
        raise GatewayError(409, str(exc)) from None
    endpoints = [
        kubeconfig.Endpoint(
            cluster.name, f"{runtime.server_url}/k8s/clusters/{cluster.id}", runtime.ca_pem
        ),
        *ace_endpoints(cluster),
    ]
    return kubeconfig.build(cluster.name, endpoints, token)


async def all_clusters(request: web.Request, identity: Identity) -> str:
    """One kubeconfig for every cluster ``identity`` may use: each cluster's document
    from ``one_cluster`` (its own token, valid for that cluster alone), merged; the
    first cluster by name is the current context. NotFound when there is none.

    Until ``POST /v3/kubeconfigs`` exists this is built here; switch to it by calling
    its builder from this function."""
    clusters = visible_clusters(request, identity)
    if not clusters:
        raise NotFound("you may use no cluster yet")
    return merge([yaml.safe_load(await one_cluster(request, identity, c)) for c in clusters])


def merge(documents: list[dict[str, Any]]) -> str:
    """Kubeconfig documents as one: their clusters, users and contexts side by side; the
    first one's current context. A name already taken (a direct context ``a-fqdn`` of
    cluster ``a`` beside a cluster called ``a-fqdn``) gets a ``-2``, ``-3``... suffix,
    and the entries that refer to it follow."""
    if not documents:
        raise ValueError("no kubeconfig to merge")
    merged: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [],
        "users": [],
        "contexts": [],
        "current-context": documents[0]["current-context"],
    }
    taken: dict[str, set[str]] = {"clusters": set(), "users": set(), "contexts": set()}

    def claim(kind: str, name: str) -> str:
        new, n = name, 1
        while new in taken[kind]:
            n += 1
            new = f"{name}-{n}"
        taken[kind].add(new)
        return new

    for doc in documents:
        renamed: dict[str, dict[str, str]] = {"clusters": {}, "users": {}}
        for kind in ("clusters", "users"):
            for entry in doc[kind]:
                name = claim(kind, entry["name"])
                renamed[kind][entry["name"]] = name
                merged[kind].append({**entry, "name": name})
        for entry in doc["contexts"]:
            name = claim("contexts", entry["name"])
            context = dict(entry["context"])
            context["cluster"] = renamed["clusters"].get(context["cluster"], context["cluster"])
            context["user"] = renamed["users"].get(context["user"], context["user"])
            merged["contexts"].append({"name": name, "context": context})
            if doc is documents[0] and entry["name"] == doc["current-context"]:
                merged["current-context"] = name
    return yaml.safe_dump(merged, sort_keys=False)
