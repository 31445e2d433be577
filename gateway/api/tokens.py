"""``/v3/tokens``: create, list, read and revoke tokens."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.common import (
    action,
    authenticated,
    collection,
    directory,
    json_body,
    string_field,
    ttl_seconds,
)
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.identity.directory import TooManyTokens
from gateway.keys import SETTINGS
from gateway.store.records import TOKEN, Token, iso


def token_view(
    token: Token, current_id: str, now: float | None = None, last_used: float | None = None
) -> dict[str, Any]:
    ttl_ms = 0 if token.expires_at is None else round((token.expires_at - token.created) * 1000)
    return {
        "id": token.id,
        "name": token.id,
        "type": "token",
        "userId": token.user_id,
        "authProvider": "local",
        "kind": token.kind,
        "description": token.description,
        "clusterId": token.cluster_id or None,
        "clusterIds": list(token.scope),
        "ttl": ttl_ms,
        "created": iso(token.created),
        "expiresAt": iso(token.expires_at),
        "expired": now is not None and token.is_expired(now),
        "current": token.id == current_id,
        "lastUsedAt": iso(last_used if last_used is not None else token.last_used),
    }


async def list_tokens(request: web.Request) -> web.Response:
    identity, current = authenticated(request)
    d = directory(request)
    user_filter = request.query.get("userId")
    now = d.clock()
    tokens = [
        t
        for t in d.tokens.values()
        if (identity.is_admin and (user_filter is None or t.user_id == user_filter))
        or t.user_id == identity.user_id
    ]
    tokens.sort(key=lambda t: t.created)
    return collection((token_view(t, current.id, now, d.last_used(t)) for t in tokens), "token")


async def create_token(request: web.Request) -> web.Response:
    identity, current = authenticated(request)
    d = directory(request)
    if action(request) == "logout":
        await d.delete(TOKEN, current.id)
        return web.json_response({}, status=200)
    if action(request):
        raise BadRequest("unknown action")
    data = await json_body(request)
    cluster_id = string_field(data, "clusterId")
    if cluster_id and (cluster_id not in d.clusters or d.role_on(identity, cluster_id) is None):
        raise NotFound(f"cluster {cluster_id} not found")
    user = d.users[identity.user_id]
    ttl = ttl_seconds(request, data, request.app[SETTINGS].tokens.default_ttl_s)
    try:
        token, plaintext = await d.issue_token(
            user,
            ttl,
            kind="api",
            description=string_field(data, "description"),
            cluster_id=cluster_id,
            max_per_user=request.app[SETTINGS].tokens.max_per_user,
        )
    except TooManyTokens as exc:
        raise GatewayError(409, str(exc)) from None
    body = token_view(token, current.id, d.clock())
    body["token"] = plaintext
    return web.json_response(body, status=201)


def _owned_token(request: web.Request) -> tuple[Token, str]:
    identity, current = authenticated(request)
    token = directory(request).tokens.get(request.match_info["id"])
    if token is None or (token.user_id != identity.user_id and not identity.is_admin):
        raise NotFound(f"token {request.match_info['id']} not found")
    return token, current.id


async def get_token(request: web.Request) -> web.Response:
    token, current_id = _owned_token(request)
    d = directory(request)
    return web.json_response(token_view(token, current_id, d.clock(), d.last_used(token)))


async def delete_token(request: web.Request) -> web.Response:
    token, current_id = _owned_token(request)
    await directory(request).delete(TOKEN, token.id)
    return web.json_response(token_view(token, current_id))


async def delete_tokens(request: web.Request) -> web.Response:
    """``DELETE /v3/tokens?userId=u-xxxxx``: revoke all of a user's tokens (admins, or own)."""
    identity, current = authenticated(request)
    user_id = request.query.get("userId")
    if not user_id:
        raise BadRequest("userId is required")
    if user_id != identity.user_id and not identity.is_admin:
        raise NotFound(f"user {user_id} not found")
    d = directory(request)
    doomed = [t for t in d.tokens.values() if t.user_id == user_id]
    for token in doomed:
        await d.delete(TOKEN, token.id)
    return collection((token_view(t, current.id) for t in doomed), "token")
