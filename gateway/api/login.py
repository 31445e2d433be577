"""Login endpoints (``/v3-public/<type>Providers/<name>?action=login``) for every provider.

Every failed login counts against both the user name and the source address; the
answer is the same for an unknown user and a wrong password, and both do the same
work (a password hash check, or a directory bind), so timing does not tell them apart.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.api import auditing, oauth_login
from gateway.api.common import LIMITER, action, directory, json_body, string_field
from gateway.api.login_common import TooManyAttempts, count_login, issue_session_token
from gateway.errors import BadRequest, GatewayError, NotFound, Unauthenticated
from gateway.identity import hashing
from gateway.identity.providers.base import InvalidCredentials, ProviderUnavailable
from gateway.identity.providers.registry import PROVIDERS
from gateway.store.records import User

logger = logging.getLogger(__name__)

FAILED = "authentication failed: invalid username or password"

# URL path segment of each password provider, as Rancher names them.
PASSWORD_PROVIDER_PATHS = {
    "localProviders/local": "local",
    "openLdapProviders/openldap": "openldap",
    "activeDirectoryProviders/activedirectory": "activedirectory",
}


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
    user = await check_password(request, provider_name, username, password)
    return await issue_session_token(request, user, data)


async def check_password(
    request: web.Request, provider_name: str, username: str, password: str
) -> User:
    """The enabled user ``username`` with ``password`` at ``provider_name`` (``local``,
    ``openldap`` or ``activedirectory``), under the failed-login limits; counted in the
    login metric. Raises ``TooManyAttempts`` (429), ``Unauthenticated`` (401, the same
    for an unknown user and a wrong password), ``NotFound`` for a provider that is not
    configured, ``GatewayError`` 503 when the provider cannot be reached. Both the JSON
    login here and the web page's form (``gateway.ui``) log in through it."""
    limiter = request.app[LIMITER]
    d = directory(request)
    address = request.remote or "unknown"
    began = d.clock()
    wait = await limiter.begin(provider_name, username, address, began)  # counted as failed now
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
        await limiter.withdraw(provider_name, username, address, began)  # not a failed guess
        raise
    if user is None or not user.enabled:
        logger.debug("login refused: %s user %r from %s", provider_name, username, address)
        count_login(provider_name, "invalid")
        raise Unauthenticated(FAILED)
    await limiter.withdraw(provider_name, username, address, began)
    await limiter.succeeded(provider_name, username)
    count_login(provider_name, "success")
    return user


async def dispatch(request: web.Request) -> web.Response:
    """``/v3-public/<type>Providers/<name>``: password providers here, OAuth ones elsewhere."""
    directory(request).catch_up()  # a user created through another replica a moment ago
    key = f"{request.match_info['type']}/{request.match_info['name']}"
    if key in oauth_login.PATHS:
        return await oauth_login.oauth_action(request)
    return await password_login(request)
