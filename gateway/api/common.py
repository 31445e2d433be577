"""Helpers shared by the management API handlers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from config.errors import ConfigError
from config.identity import Identity
from config.units import parse_duration
from gateway.api.auditing import ACTOR
from gateway.api.jsonbody import MAX_BODY_BYTES, BadBody, parse_object
from gateway.errors import BadRequest, Forbidden, GatewayError, Unauthenticated
from gateway.identity.directory import DIRECTORY, AuthenticationFailed, Directory
from gateway.identity.ratelimit import LoginLimiter
from gateway.keys import SETTINGS
from gateway.store.records import Token

MAX_TTL_MS = 100 * 365 * 86400 * 1000
"""The longest ``ttl`` accepted, whatever the maximum (0 means none): an expiry past
year 9999 cannot be written as a time."""


def directory(request: web.Request) -> Directory:
    return request.app[DIRECTORY]


def authenticated(request: web.Request) -> tuple[Identity, Token]:
    """The caller of a ``/v3`` endpoint; cluster-scoped tokens are not accepted here."""
    try:
        identity, token = directory(request).authenticate(request.headers.get("Authorization"))
    except AuthenticationFailed as exc:
        raise Unauthenticated(f"must authenticate: {exc}") from None
    if token.cluster_id:
        raise Unauthenticated("this token is valid only for its clusters' Kubernetes API")
    request[ACTOR] = identity  # the audit record's caller
    return identity, token


def require_admin(identity: Identity) -> None:
    if not identity.is_admin:
        raise Forbidden("only administrators may do this")


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's body as one strict JSON object (``gateway.api.jsonbody``).

    Every management-API handler reads its body here: 413 above ``MAX_BODY_BYTES``
    (announced or sent), 400 for anything that is not one strict JSON object.
    """
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise GatewayError(413, "request body too large")
    raw = bytearray()
    while len(raw) <= MAX_BODY_BYTES:  # read() returns what has arrived, not all of it
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > MAX_BODY_BYTES:
        raise GatewayError(413, "request body too large")
    try:
        return parse_object(bytes(raw))
    except BadBody as exc:
        raise BadRequest(str(exc)) from None


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
    value = data.get("ttl")
    if value is None or value == 0:
        seconds = default_s
    elif isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= MAX_TTL_MS:
        seconds = value / 1000
    else:
        raise GatewayError(
            422,
            "ttl must be a positive number of milliseconds (at most 100 years)",
            reason="InvalidFormat",
        )
    return bounded_ttl(request, seconds)


def bounded_ttl(request: web.Request, seconds: float) -> float | None:
    """A token lifetime within ``tokens.max_ttl`` (0 seconds: the longest allowed);
    None for a token that never expires (only when the maximum is 0)."""
    max_s = request.app[SETTINGS].tokens.max_ttl_s
    if max_s:
        seconds = min(seconds, max_s) if seconds else max_s
    return seconds or None


def duration_ms_field(data: dict[str, Any], name: str) -> float | None:
    """Seconds from a field holding milliseconds (``600000``, as Rancher's ``ttl``) or a
    duration (``"10m"``, ``"36h"``); None when absent. At most 100 years."""
    value = data.get(name)
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if 0 <= value <= MAX_TTL_MS else None
    elif isinstance(value, str) and len(value) <= 32:
        try:
            seconds = parse_duration(value, name)
        except ConfigError:
            seconds = None
        if seconds is not None and seconds > MAX_TTL_MS / 1000:
            seconds = None
    if seconds is None:
        raise GatewayError(
            422,
            f"{name} must be milliseconds or a duration such as 10m or 36h (at most 100 years)",
            reason="InvalidFormat",
        )
    return seconds


def time_field(data: dict[str, Any], name: str) -> float | None:
    """Unix seconds from an RFC 3339 time (``2027-01-31T12:00:00Z``); None when absent."""
    value = data.get(name)
    if value is None or value == "":
        return None
    when: float | None = None
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            when = parsed.timestamp()
    if when is None:
        raise GatewayError(
            422,
            f"{name} must be an RFC 3339 time with a zone, such as 2027-01-31T12:00:00Z",
            reason="InvalidFormat",
        )
    return when


def collection(items: Iterable[dict[str, Any]], resource_type: str) -> web.Response:
    return web.json_response(
        {"type": "collection", "resourceType": resource_type, "data": list(items)}
    )


def action(request: web.Request) -> str:
    return request.query.get("action", "")


LIMITER = web.AppKey("limiter", LoginLimiter)
