"""``GET /v3/import/<registration-token>.yaml``: the manifest that registers a cluster.

As Rancher's ``/v3/import/<token>_<cluster>.yaml``, the token in the path is the only
credential: it is checked as ``/v3/connect`` checks an agent's (``Directory.registration_for``:
its hash, expiry, a rotated token's grace period, revocation), and failed guesses count
against the caller's address in the same limiter as failed logins (429 once over). Any
bad token gets the same 404, whether it exists or not. The token is never logged: this
handler logs nothing of the path, and catches its own failures so that the error
middleware (which logs the path) never sees them.

The answer is ``gateway.clusters.agent_manifest.agent_documents`` as YAML
(``application/yaml``), for ``kubectl apply -f <url>``, with the ClusterRoles of the role
templates as they are now (apply it again after changing templates, or ask for
``?roles=managed`` so the agent keeps them in step itself).
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web

from gateway.api.common import LIMITER, directory
from gateway.api.login_common import TooManyAttempts
from gateway.clusters.agent_manifest import (
    ManifestParams,
    agent_documents,
    default_image,
    to_yaml,
)
from gateway.controllers.access_sync import owned_cluster_roles
from gateway.errors import GatewayError, NotFound
from gateway.keys import RUNTIME, SETTINGS

logger = logging.getLogger(__name__)

IMPORT_PREFIX = "/v3/import/"
SUFFIX = ".yaml"
MAX_TOKEN_LENGTH = 256
CONTENT_TYPE = "application/yaml"
MANAGED_ROLES = "managed"
"""``?roles=managed``: the agent may create and change herdgate's ClusterRoles itself
(``agent_rbac.AGENT_ROLES_ROLE``, ``escalate``); without it they come with the manifest."""


def manifest_url(server_url: str, token: str) -> str:
    """Where ``kubectl apply -f`` fetches the manifest for ``token``."""
    return f"{server_url}{IMPORT_PREFIX}{quote(token, safe=':')}{SUFFIX}"


async def import_manifest(request: web.Request) -> web.Response:
    """The manifest for the cluster the token registers, or 404 (429 when over the
    failed-attempt limit)."""
    limiter = request.app[LIMITER]
    d = directory(request)
    address = request.remote or "unknown"
    now = d.clock()
    wait = await limiter.address_retry_after(address, now)
    if wait > 0:
        raise TooManyAttempts(wait)
    name = request.match_info.get("file", "")
    token = name.removesuffix(SUFFIX) if name.endswith(SUFFIX) else ""
    registration = None
    if token and len(token) <= MAX_TOKEN_LENGTH:
        d.catch_up()  # the token may have been created through another replica
        registration = d.registration_for(token)
    cluster = None if registration is None else d.clusters.get(registration.cluster_id)
    if registration is None or cluster is None:
        await limiter.address_failed(address, now)
        logger.info("agent manifest refused: unknown or expired registration token")
        raise NotFound("not found")
    runtime = request.app[RUNTIME]
    image = request.app[SETTINGS].registration.agent_image or default_image(runtime.version)
    params = ManifestParams(
        server_url=runtime.server_url,
        ca_checksum=runtime.ca_checksum,
        token=token,
        cluster_id=cluster.id,
        image=image,
    )
    roles = request.query.get("roles", "")
    if roles not in ("", MANAGED_ROLES):
        raise GatewayError(400, f"roles must be {MANAGED_ROLES!r} or absent", reason="BadRequest")
    try:
        body = to_yaml(
            agent_documents(
                params,
                owned_roles=owned_cluster_roles(d.role_templates),
                manage_roles=roles == MANAGED_ROLES,
            )
        )
    except Exception:  # logged here without the path (it holds the token)
        logger.exception("cannot build the agent manifest for cluster %s", cluster.id)
        raise GatewayError(500, "internal error") from None
    logger.info("agent manifest served for cluster %s", cluster.id)
    return web.Response(
        body=body.encode(),
        headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
    )
