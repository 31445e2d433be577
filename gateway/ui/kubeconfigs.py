"""The kubeconfigs the page hands out: one cluster's, and all of the caller's clusters'
in one file, both made by the management API's own builder
(``gateway.api.kubeconfigs.make``, what ``POST /v3/kubeconfigs`` and
``generateKubeconfig`` answer), so the page and the API never differ.
"""

from __future__ import annotations

from aiohttp import web

from config.identity import Identity
from gateway.api import kubeconfigs
from gateway.api.common import directory
from gateway.errors import NotFound
from gateway.store.records import Cluster


def visible_clusters(request: web.Request, identity: Identity) -> list[Cluster]:
    """The clusters ``identity`` holds a role on, by name."""
    d = directory(request)
    found = [c for c in d.clusters.values() if d.role_on(identity, c.id) is not None]
    return sorted(found, key=lambda c: (c.name, c.id))


async def one_cluster(request: web.Request, identity: Identity, cluster: Cluster) -> str:
    """The document ``generateKubeconfig`` answers: the gateway's context (and the direct
    ones of an authorized endpoint), with a new ``kubeconfig`` token valid for this
    cluster only (tests/component/test_ui.py holds the two alike)."""
    made = await kubeconfigs.make(request, identity, [cluster])
    return str(made["config"])


async def all_clusters(request: web.Request, identity: Identity) -> str:
    """What ``POST /v3/kubeconfigs {"clusters": ["*"]}`` answers: a context per cluster
    ``identity`` may use and one token valid on exactly those. NotFound when there is
    none."""
    clusters = visible_clusters(request, identity)
    if not clusters:
        raise NotFound("you may use no cluster yet")
    made = await kubeconfigs.make(request, identity, clusters)
    return str(made["config"])
