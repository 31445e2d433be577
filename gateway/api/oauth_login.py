"""Logins that go through an OAuth provider: OIDC and GitHub.

Three ways in, all ending with a herdgate session token:

- **Device flow** (what ``herdgate login --provider oidc|github`` uses):
  ``POST /v3-public/{oidcProviders/oidc|githubProviders/github}?action=deviceCode`` starts
  it; ``?action=deviceToken {"deviceCode"}`` polls (202 while pending, 201 with the token).
- **Code** obtained elsewhere (a UI): ``?action=login {"code", "codeVerifier"?, "nonce"?,
  "redirectUri"?}`` (Rancher's shape).
- **Browser redirect**: ``GET /v1/auth/{oidc|github}/login`` sends the browser to the
  provider; ``GET /v1/auth/{provider}/callback`` exchanges the code and shows the token.
  The PKCE verifier and nonce stay on the gateway, keyed by an unguessable ``state``,
  and the login is bound to the browser that started it (a cookie, compared at the
  callback): a callback link sent to someone else logs no one in (login CSRF, RFC 6749
  section 10.12). A login started by another part of the gateway (the web page,
  ``gateway.ui``: ``start_browser_login(..., then="web")``) ends with what that part
  registered in ``AFTER_BROWSER_LOGIN`` instead of the token page.
"""

from __future__ import annotations

import hmac
import html
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from gateway.api import auditing
from gateway.api.common import LIMITER, action, directory, json_body, string_field
from gateway.api.login_common import TooManyAttempts, count_login, session_token
from gateway.errors import BadRequest, GatewayError, NotFound, Unauthenticated
from gateway.identity.providers.base import (
    ExternalIdentity,
    InvalidCredentials,
    ProviderUnavailable,
)
from gateway.identity.providers.oauth import code_challenge_s256, new_code_verifier, random_token
from gateway.identity.providers.registry import PROVIDERS
from gateway.store.records import User

PATHS = {"oidcProviders/oidc": "oidc", "githubProviders/github": "github"}
STATE_TTL_S = 600.0
MAX_PENDING_STATES = 10_000
MAX_PENDING_PER_ADDRESS = 16
"""Browser logins one client address may have pending; starting another drops its
oldest. An anonymous flood of ``/login`` cannot fill the table for everyone (it used to,
answering every login 503 for ``STATE_TTL_S``)."""


LOGIN_COOKIE = "herdgate_login"
"""Holds the secret that binds a browser login to the browser (HttpOnly, Secure,
SameSite=Lax so that the provider's redirect back carries it, only sent to the callback)."""


@dataclass(frozen=True)
class _PendingBrowserLogin:
    provider: str
    code_verifier: str
    nonce: str
    expires: float
    browser: str = ""
    """The cookie value the callback must come with."""
    address: str = ""
    """The client address that started it."""
    then: str = ""
    """Who finishes it (a key of ``AFTER_BROWSER_LOGIN``); empty: the token page."""


class BrowserLogins:
    """``state`` -> what the callback needs; bounded (per client address and in all: the
    oldest make way) and expiring."""

    def __init__(self) -> None:
        self._pending: OrderedDict[str, _PendingBrowserLogin] = OrderedDict()
        """In the order they were started (the oldest first: found in O(1))."""
        self._by_address: dict[str, list[str]] = {}

    def add(
        self,
        provider: str,
        verifier: str,
        nonce: str,
        browser: str = "",
        address: str = "",
        then: str = "",
    ) -> str:
        now = time.monotonic()
        mine = self._by_address.setdefault(address, [])
        while len(mine) >= MAX_PENDING_PER_ADDRESS:
            self._pending.pop(mine.pop(0), None)
        if len(self._pending) >= MAX_PENDING_STATES:
            for state in [k for k, v in self._pending.items() if v.expires <= now]:
                self._forget(state)
            while len(self._pending) >= MAX_PENDING_STATES:
                self._forget(next(iter(self._pending)))
        state = random_token()
        self._pending[state] = _PendingBrowserLogin(
            provider, verifier, nonce, now + STATE_TTL_S, browser, address, then
        )
        self._by_address.setdefault(address, []).append(state)
        return state

    def _forget(self, state: str) -> None:
        pending = self._pending.pop(state, None)
        if pending is None:
            return
        mine = self._by_address.get(pending.address)
        if mine is not None:
            if state in mine:
                mine.remove(state)
            if not mine:
                del self._by_address[pending.address]

    def take(self, state: str, provider: str, browser: str = "") -> _PendingBrowserLogin | None:
        """The login ``state`` names, once, if it is this ``provider``'s, not expired, and
        ``browser`` is the cookie value it was started with."""
        pending = self._pending.get(state)
        if pending is None or not hmac.compare_digest(pending.browser, browser):
            return None  # kept: the browser that started it may still come back
        self._forget(state)
        if pending.provider != provider or pending.expires < time.monotonic():
            return None
        return pending


BROWSER_LOGINS = web.AppKey("browser_logins", BrowserLogins)


class AfterBrowserLogin(Protocol):
    """Ends a browser login that was started with ``then``: ``user`` is logged in (the
    provider checked them, the account is enabled); the answer is the callback's."""

    async def __call__(
        self, request: web.Request, user: User, provider: str
    ) -> web.StreamResponse: ...


AFTER_BROWSER_LOGIN = web.AppKey("after_browser_login", dict[str, AfterBrowserLogin])
"""``then`` -> how such a login ends (the application builder fills it)."""


def _provider(request: web.Request, name: str) -> Any:
    provider = getattr(request.app[PROVIDERS], name)
    if provider is None:
        raise NotFound(f"the {name} provider is not configured")
    return provider


async def _user_for(request: web.Request, identity: ExternalIdentity) -> User:
    user = await directory(request).link_external(identity)
    if not user.enabled:
        count_login(identity.provider, "invalid")
        raise Unauthenticated("authentication failed: the account is disabled")
    count_login(identity.provider, "success")
    return user


async def _finish(
    request: web.Request, identity: ExternalIdentity, data: dict[str, Any]
) -> dict[str, Any]:
    return await session_token(request, await _user_for(request, identity), data)


def _failed(exc: Exception, name: str) -> GatewayError:
    if isinstance(exc, ProviderUnavailable):
        count_login(name, "unavailable")
        return GatewayError(503, f"the {name} provider is unavailable: {exc}")
    count_login(name, "invalid")
    return Unauthenticated(f"authentication failed: {exc}")


async def oauth_action(request: web.Request) -> web.Response:
    """``POST /v3-public/{oidcProviders/oidc|githubProviders/github}?action=...``."""
    key = f"{request.match_info['type']}/{request.match_info['name']}"
    name = PATHS[key]
    provider = _provider(request, name)
    data = await json_body(request)
    what = action(request)
    limiter = request.app[LIMITER]
    address = request.remote or "unknown"
    wait = limiter.address_retry_after(address, directory(request).clock())
    if wait > 0:
        count_login(name, "limited")
        raise TooManyAttempts(wait)
    try:
        if what == "deviceCode":
            flow = await provider.start_device_flow()
            return web.json_response(
                {
                    "deviceCode": flow.device_code,
                    "userCode": flow.user_code,
                    "verificationUri": flow.verification_uri,
                    "verificationUriComplete": flow.verification_uri_complete,
                    "interval": flow.interval,
                    "expiresIn": flow.expires_in,
                },
                status=201,
            )
        if what == "deviceToken":
            device_code = string_field(data, "deviceCode", required=True, max_len=1024)
            identity = await provider.poll_device_flow(device_code)
            if identity is None:
                interval = provider.device_poll_interval(device_code)
                return web.json_response({"status": "pending", "interval": interval}, status=202)
            return web.json_response(await _finish(request, identity, data), status=201)
        if what == "login":
            code = string_field(data, "code", required=True, max_len=4096)
            redirect_uri = string_field(data, "redirectUri", max_len=2048)
            if name == "oidc":
                identity = await provider.exchange_code(
                    code,
                    string_field(data, "codeVerifier", required=True, max_len=256),
                    string_field(data, "nonce", max_len=256),
                    redirect_uri,
                )
            else:
                identity = await provider.exchange_code(code, redirect_uri)
            return web.json_response(await _finish(request, identity, data), status=201)
    except (InvalidCredentials, ProviderUnavailable) as exc:
        if isinstance(exc, InvalidCredentials):
            limiter.address_failed(address, directory(request).clock())
        raise _failed(exc, name) from None
    raise BadRequest("unknown action (deviceCode, deviceToken or login)")


async def browser_start(request: web.Request) -> web.Response:
    """``GET /v1/auth/{provider}/login``: redirect the browser to the provider."""
    raise await start_browser_login(request, request.match_info["provider"])


async def start_browser_login(request: web.Request, name: str, then: str = "") -> web.HTTPFound:
    """The redirect (to raise) that sends the browser to provider ``name`` (``oidc`` or
    ``github``), with the cookie that binds the login to this browser; the callback
    ends it with ``AFTER_BROWSER_LOGIN[then]``, or the token page."""
    if name not in ("oidc", "github"):
        raise NotFound("unknown provider")
    provider = _provider(request, name)
    verifier = new_code_verifier()
    nonce = random_token()
    browser = random_token()
    state = request.app[BROWSER_LOGINS].add(
        name, verifier, nonce, browser, request.remote or "", then
    )
    try:
        if name == "oidc":
            await provider.discover()
            url = provider.authorization_url(state, nonce, code_challenge_s256(verifier))
        else:
            url = provider.authorization_url(state)
    except ProviderUnavailable as exc:
        raise _failed(exc, name) from None
    found = web.HTTPFound(url)
    found.set_cookie(
        LOGIN_COOKIE,
        browser,
        max_age=int(STATE_TTL_S),
        path=f"/v1/auth/{name}/callback",
        secure=True,
        httponly=True,
        samesite="Lax",
    )
    return found


async def browser_callback(request: web.Request) -> web.StreamResponse:
    """``GET /v1/auth/{provider}/callback?code=&state=``: exchange and show the token."""
    name = request.match_info["provider"]
    provider = _provider(request, name)
    request[auditing.LOGIN] = {"provider": name}
    browser = request.cookies.get(LOGIN_COOKIE, "")
    pending = None
    if browser:
        pending = request.app[BROWSER_LOGINS].take(request.query.get("state", ""), name, browser)
    code = request.query.get("code", "")
    if pending is None or not code:
        raise BadRequest(
            "this login link is invalid, has expired, or was started in another browser; "
            "start again"
        )
    try:
        if name == "oidc":
            identity = await provider.exchange_code(code, pending.code_verifier, pending.nonce)
        else:
            identity = await provider.exchange_code(code)
    except (InvalidCredentials, ProviderUnavailable) as exc:
        raise _failed(exc, name) from None
    user = await _user_for(request, identity)
    finish = request.app[AFTER_BROWSER_LOGIN].get(pending.then) if pending.then else None
    response: web.StreamResponse
    if finish is not None:
        response = await finish(request, user, name)
    else:
        body = await session_token(request, user, {})
        request[auditing.LOGIN].update(result="success", userId=user.id, tokenId=body["id"])
        page = (
            "<!doctype html><title>herdgate login</title><h1>Logged in</h1>"
            f"<p>Your herdgate token (shown once):</p><pre>{html.escape(body['token'])}</pre>"
        )
        response = web.Response(text=page, content_type="text/html", headers=_PAGE_HEADERS)
    response.del_cookie(LOGIN_COOKIE, path=f"/v1/auth/{name}/callback")
    return response


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # The token page may not be framed, run scripts or leak its address.
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
