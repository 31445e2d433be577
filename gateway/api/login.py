"""Login endpoints (``/v3-public/<type>Providers/<name>?action=login``) for every provider.

Every failed login counts against both the user name and the source address; the
answer is the same for an unknown user and a wrong password, and both do the same
work (a password hash check, or a directory bind), so timing does not tell them apart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from config.schema import AuthSettings
from gateway.api import auditing
from gateway.api.common import action, directory, json_body, string_field, ttl_seconds
from gateway.api.tokens import token_view
from gateway.errors import BadRequest, GatewayError, NotFound, Unauthenticated
from gateway.identity import hashing
from gateway.identity.directory import TooManyTokens
from gateway.identity.providers.base import InvalidCredentials, ProviderUnavailable
from gateway.identity.ratelimit import Limit, LoginLimiter
from gateway.keys import LIMITER, PROVIDERS, SETTINGS
from gateway.store.records import User
from gateway.telemetry import metrics

logger = logging.getLogger(__name__)

FAILED = "authentication failed: invalid username or password"

# URL path segment of each password provider, as Rancher names them.
PASSWORD_PROVIDER_PATHS = {
    "localProviders/local": "local",
    "openLdapProviders/openldap": "openldap",
    "activeDirectoryProviders/activedirectory": "activedirectory",
}


def make_limiter(settings: AuthSettings) -> LoginLimiter:
    return LoginLimiter(
        Limit(settings.login_failures_per_user, settings.login_failure_window_s),
        Limit(settings.login_failures_per_address, settings.login_failure_window_s),
    )


class TooManyAttempts(GatewayError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(429, "too many failed logins; try again later")
        self.headers["Retry-After"] = str(max(1, round(retry_after_s)))


async def _local(request: web.Request, username: str, password: str) -> User | None:
    d = directory(request)
    user = d.user_by_name(username)
    stored = user.password_hash if user is not None else hashing.DUMMY_PASSWORD_HASH
    ok = await asyncio.to_thread(hashing.verify_password, password, stored)
    return user if user is not None and ok else None


async def _external(
    request: web.Request, provider_name: str, username: str, password: str
) -> User | None:
    provider = request.app[PROVIDERS].password.get(provider_name)
    if provider is None:
        raise NotFound(f"the {provider_name} provider is not configured")
    try:
        identity = await provider.authenticate(username, password)
    except InvalidCredentials:
        return None
    except ProviderUnavailable as exc:
        raise GatewayError(503, f"the {provider_name} provider is unavailable: {exc}") from None
    return await directory(request).link_external(identity)


async def password_login(request: web.Request) -> web.Response:
    """``POST /v3-public/{localProviders/local|openLdapProviders/openldap|...}?action=login``."""
    key = f"{request.match_info['type']}/{request.match_info['name']}"
    provider_name = PASSWORD_PROVIDER_PATHS.get(key)
    if provider_name is None:
        raise NotFound(f"unknown login provider {key}")
    if action(request) != "login":
        raise BadRequest("unknown action")
    data = await json_body(request)
    username = string_field(data, "username", required=True)
    password = string_field(data, "password", required=True, max_len=4096)
    request[auditing.LOGIN] = {"provider": provider_name, "loginName": username}
    limiter = request.app[LIMITER]
    d = directory(request)
    address = request.remote or "unknown"
    began = d.clock()
    wait = limiter.begin(provider_name, username, address, began)  # counted as failed now
    if wait > 0:
        count_login(provider_name, "limited")
        raise TooManyAttempts(wait)
    try:
        if provider_name == "local":
            user = await _local(request, username, password)
        else:
            user = await _external(request, provider_name, username, password)
    except GatewayError:
        count_login(provider_name, "unavailable")
        limiter.withdraw(provider_name, username, address, began)  # not a failed guess
        raise
    if user is None or not user.enabled:
        logger.debug("login refused: %s user %r from %s", provider_name, username, address)
        count_login(provider_name, "invalid")
        raise Unauthenticated(FAILED)
    limiter.withdraw(provider_name, username, address, began)
    limiter.succeeded(provider_name, username)
    count_login(provider_name, "success")
    return await issue_session_token(request, user, data)


def count_login(provider: str, result: str) -> None:
    """``herdgate_logins_total``: success, invalid, unavailable or limited."""
    metrics.LOGINS.labels(provider, result).inc()


async def session_token(request: web.Request, user: User, data: dict[str, Any]) -> dict[str, Any]:
    """Issue a login token for ``user``; the token view with its one-time plaintext."""
    d = directory(request)
    settings = request.app[SETTINGS].tokens
    ttl = ttl_seconds(request, data, settings.session_ttl_s)
    description = string_field(data, "description") or "login"
    cluster_id = string_field(data, "clusterId")
    if cluster_id and (
        cluster_id not in d.clusters or d.role_on(d.identity_of(user), cluster_id) is None
    ):
        raise NotFound(f"cluster {cluster_id} not found")
    try:
        token, plaintext = await d.issue_token(
            user,
            ttl,
            kind="session",
            description=description,
            cluster_id=cluster_id,
            max_per_user=settings.max_per_user,
        )
    except TooManyTokens as exc:
        raise GatewayError(409, str(exc)) from None
    body = token_view(token, current_id="")
    body["token"] = plaintext
    return body


async def issue_session_token(
    request: web.Request, user: User, data: dict[str, Any]
) -> web.Response:
    return web.json_response(await session_token(request, user, data), status=201)


async def dispatch(request: web.Request) -> web.Response:
    """``/v3-public/<type>Providers/<name>``: password providers here, OAuth ones elsewhere."""
    from gateway.api import oauth_login

    directory(request).catch_up()  # a user created through another replica a moment ago
    key = f"{request.match_info['type']}/{request.match_info['name']}"
    if key in oauth_login.PATHS:
        return await oauth_login.oauth_action(request)
    return await password_login(request)
