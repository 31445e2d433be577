"""``POST /v3/kubeconfigs``: one kubeconfig for many clusters; and what every kubeconfig
the gateway makes holds (``generateKubeconfig``, ``gateway.api.clusters``, makes its
one-cluster kubeconfig here too).

The body: ``{"clusters": ["*"] | [cluster ids or names], "ttl"?: seconds,
"credential"?: "token" | "exec", "provider"?: login provider (exec)}``. ``"*"`` is every
cluster the caller holds a role on now (not one more: a cluster bound later needs a new
kubeconfig). A name or id the caller may not see is answered as one that does not exist
(404). The credential is one token scoped to exactly those clusters (``Token.scope``:
the proxy refuses it for any other cluster, the management API refuses it, the ACE sync
writes it into each of those clusters), its lifetime ``ttl`` bounded by
``tokens.max_ttl`` (default ``tokens.kubeconfig_ttl``); or, with ``"exec"``, no token
but ``herdgate login`` with one ``--cluster`` per cluster, whose login is scoped alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from config.identity import Identity
from config.kubeconfig_merge import dump
from gateway.api import kubeconfig
from gateway.api.common import (
    MAX_TTL_MS,
    authenticated,
    bounded_ttl,
    directory,
    json_body,
    string_field,
)
from gateway.errors import GatewayError, NotFound
from gateway.identity.directory import TooManyTokens
from gateway.keys import RUNTIME, SETTINGS
from gateway.store.records import Cluster, iso

ALL = "*"
MAX_LISTED = 1000
"""Clusters one request may name (``"*"`` is not limited)."""
FIELDS = frozenset({"clusters", "ttl", "credential", "provider"})
CREDENTIALS = ("token", "exec")
LOGIN_PROVIDERS = ("local", "ldap", "openldap", "activedirectory", "ad", "oidc", "github")
"""``herdgate login --provider`` values (``herdgate.login``)."""


def _invalid(message: str) -> GatewayError:
    return GatewayError(422, message, reason="InvalidFormat")


def wanted_clusters(data: dict[str, Any]) -> list[str]:
    """The ``clusters`` field: ``["*"]``, or ids and names (at most ``MAX_LISTED``)."""
    value = data.get("clusters")
    if value is None:
        raise GatewayError(422, "clusters is required", reason="MissingRequired")
    if not isinstance(value, list) or not value or len(value) > MAX_LISTED:
        raise _invalid(f'clusters must be ["*"] or a list of 1 to {MAX_LISTED} ids or names')
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > 253 or not item.isprintable():
            raise _invalid(f"clusters[{index}] must be a cluster id or name")
    if ALL in value and len(value) > 1:
        raise _invalid('"*" stands alone: it already means every cluster you may use')
    return list(value)


def credential_field(data: dict[str, Any]) -> str:
    """``token`` (the default) or ``exec``."""
    value = data.get("credential") or "token"
    if value not in CREDENTIALS:
        raise _invalid('credential must be "token" or "exec"')
    return str(value)


def provider_field(data: dict[str, Any], credential: str) -> str:
    provider = string_field(data, "provider")
    if provider and credential != "exec":
        raise _invalid('provider is for the exec credential ("credential": "exec")')
    if provider and provider not in LOGIN_PROVIDERS:
        raise _invalid(f"provider must be one of {', '.join(LOGIN_PROVIDERS)}")
    return provider


def ttl_field(data: dict[str, Any], credential: str) -> float | None:
    """``ttl`` in seconds; None when absent or 0 (the default lifetime)."""
    value = data.get("ttl")
    if value is None or value == 0:
        return None
    if credential == "exec":
        raise _invalid("ttl is for a token; the exec credential's login lasts a session")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _invalid("ttl must be a number of seconds")
    if not 0 < value <= MAX_TTL_MS / 1000:
        raise _invalid("ttl must be a positive number of seconds (at most 100 years)")
    return float(value)


def resolve(request: web.Request, identity: Identity, wanted: Sequence[str]) -> list[Cluster]:
    """The clusters ``wanted`` names, in that order without repeats; ``["*"]``: every
    cluster the caller holds a role on, by name. Only those are looked at, so an id or
    name of a cluster the caller may not see is one that does not exist: 404, the same
    answer either way."""
    d = directory(request)
    visible = sorted(
        (c for c in d.clusters.values() if d.role_on(identity, c.id) is not None),
        key=lambda c: c.name,
    )
    if list(wanted) == [ALL]:
        if not visible:
            raise NotFound("you may use no cluster")
        return visible
    by_id = {c.id: c for c in visible}
    by_name = {c.name: c for c in visible}
    found: dict[str, Cluster] = {}
    for index, item in enumerate(wanted):
        cluster = by_id.get(item) or by_name.get(item)
        if cluster is None:
            raise NotFound(f"clusters[{index}]: no such cluster")
        found.setdefault(cluster.id, cluster)
    return list(found.values())


def login_provider(provider: str) -> str:
    """The ``herdgate login --provider`` value for a user's provider."""
    return {"openldap": "ldap"}.get(provider, provider)


def _description(clusters: Sequence[Cluster]) -> str:
    names = ", ".join(c.name for c in clusters)
    if len(clusters) == 1:
        return f"kubeconfig for {names}"
    text = f"kubeconfig for {len(clusters)} clusters: {names}"
    return text if len(text) <= 200 else text[:199] + "\u2026"


async def make(
    request: web.Request,
    identity: Identity,
    clusters: Sequence[Cluster],
    credential: str = "token",
    provider: str = "",
    ttl_s: float | None = None,
) -> dict[str, Any]:
    """A kubeconfig for ``clusters`` (visible to the caller, at least one) and what it
    holds: ``config`` (the YAML), ``contexts``, ``currentContext``, the token's ``id`` and
    ``expiresAt`` (a token credential)."""
    d = directory(request)
    runtime = request.app[RUNTIME]
    settings = request.app[SETTINGS]
    user = d.users[identity.user_id]
    token_id, expires_at = "", None
    user_entry: dict[str, Any]
    if credential == "exec":
        # No embedded token: kubectl runs `herdgate login`, which logs in when needed.
        user_entry = kubeconfig.exec_user(
            runtime.server_url,
            provider or login_provider(user.provider),
            [c.id for c in clusters],
            command=settings.kubeconfig.exec_command,
            hint=settings.kubeconfig.exec_install_hint,
        )
    else:
        lifetime = bounded_ttl(
            request, settings.tokens.kubeconfig_ttl_s if ttl_s is None else ttl_s
        )
        try:
            token, plaintext = await d.issue_token(
                user,
                lifetime,
                kind="kubeconfig",
                description=_description(clusters),
                cluster_ids=[c.id for c in clusters],
                max_per_user=settings.tokens.max_per_user,
            )
        except TooManyTokens as exc:
            raise GatewayError(409, str(exc)) from None
        token_id, expires_at = token.id, token.expires_at
        user_entry = kubeconfig.token_user(plaintext)
    blocks = [
        kubeconfig.ClusterBlock(
            c.name, kubeconfig.endpoints(c, runtime.server_url, runtime.ca_pem), user_entry
        )
        for c in clusters
    ]
    doc = kubeconfig.document(blocks)
    return {
        "type": "kubeconfig",
        "id": token_id,
        "config": dump(doc),
        "clusters": [{"id": c.id, "name": c.name} for c in clusters],
        "contexts": [c["name"] for c in doc["contexts"]],
        "currentContext": doc["current-context"],
        "credential": credential,
        "tokenId": token_id or None,
        "expiresAt": iso(expires_at),
    }


async def create_kubeconfig(request: web.Request) -> web.Response:
    """``POST /v3/kubeconfigs``: 201 with the kubeconfig (its token is shown only here)."""
    identity, _ = authenticated(request)
    data = await json_body(request)
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise _invalid(f"unknown fields: {', '.join(unknown)}")
    wanted = wanted_clusters(data)
    credential = credential_field(data)
    provider = provider_field(data, credential)
    ttl_s = ttl_field(data, credential)
    clusters = resolve(request, identity, wanted)
    answer = await make(request, identity, clusters, credential, provider, ttl_s)
    return web.json_response(answer, status=201)
