"""Helpers shared by the management API handlers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from config.identity import Identity
from gateway.directory import AuthenticationFailed, Directory
from gateway.errors import BadRequest, Forbidden, GatewayError, Unauthenticated
from gateway.keys import DIRECTORY, SETTINGS
from gateway.records import Token

MAX_BODY_BYTES = 1024 * 1024


def directory(request: web.Request) -> Directory:
    return request.app[DIRECTORY]


def authenticated(request: web.Request) -> tuple[Identity, Token]:
    """The caller of a ``/v3`` endpoint; cluster-scoped tokens are not accepted here."""
    try:
        identity, token = directory(request).authenticate(request.headers.get("Authorization"))
    except AuthenticationFailed as exc:
        raise Unauthenticated(f"must authenticate: {exc}") from None
    if token.cluster_id:
        raise Unauthenticated("this token is valid only for its cluster's Kubernetes API")
    return identity, token


def require_admin(identity: Identity) -> None:
    if not identity.is_admin:
        raise Forbidden("only administrators may do this")


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise GatewayError(413, "request body too large")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise GatewayError(413, "request body too large")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def string_field(
    data: dict[str, Any], name: str, required: bool = False, max_len: int = 256
) -> str:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise GatewayError(422, f"{name} is required", reason="MissingRequired")
        return ""
    if not isinstance(value, str):
        raise GatewayError(422, f"{name} must be a string", reason="InvalidFormat")
    if len(value) > max_len or not value.isprintable():
        raise GatewayError(
            422, f"{name} is too long or contains control characters", reason="InvalidFormat"
        )
    return value


def bool_field(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise GatewayError(422, f"{name} must be true or false", reason="InvalidFormat")
    return value


def ttl_seconds(request: web.Request, data: dict[str, Any], default_s: float) -> float | None:
    """A ``ttl`` in milliseconds (as Rancher's API takes it), bounded by the maximum.

    Returns None for a token that never expires (only when the maximum is 0).
    """
    max_s = request.app[SETTINGS].tokens.max_ttl_s
    value = data.get("ttl")
    if value is None or value == 0:
        seconds = default_s
    elif isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        seconds = value / 1000
    else:
        raise GatewayError(
            422, "ttl must be a positive number of milliseconds", reason="InvalidFormat"
        )
    if max_s:
        seconds = min(seconds, max_s) if seconds else max_s
    return seconds or None


def collection(items: Iterable[dict[str, Any]], resource_type: str) -> web.Response:
    return web.json_response(
        {"type": "collection", "resourceType": resource_type, "data": list(items)}
    )


def action(request: web.Request) -> str:
    return request.query.get("action", "")
