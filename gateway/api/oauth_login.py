"""Logins that go through an OAuth provider: OIDC and GitHub.

Three ways in, all ending with a herdgate session token:

- **Device flow** (what ``herdgate login --provider oidc|github`` uses):
  ``POST /v3-public/{oidcProviders/oidc|githubProviders/github}?action=deviceCode`` starts
  it; ``?action=deviceToken {"deviceCode"}`` polls (202 while pending, 201 with the token).
- **Code** obtained elsewhere (a UI): ``?action=login {"code", "codeVerifier"?, "nonce"?,
  "redirectUri"?}`` (Rancher's shape).
- **Browser redirect**: ``GET /v1/auth/{oidc|github}/login`` sends the browser to the
  provider; ``GET /v1/auth/{provider}/callback`` exchanges the code and shows the token.
  The login is kept in the store under the hash of an unguessable ``state`` (so any
  worker or replica finishes it), its PKCE verifier and nonce derived from ``state`` and
  a cookie that binds the login to the browser that started it (compared at the
  callback; ``BrowserLogins``): a callback link sent to someone else logs no one in
  (login CSRF, RFC 6749 section 10.12). A login started by another part of the gateway
  (the web page, ``gateway.ui``: ``start_browser_login(..., then="web")``) ends with what that part
  registered in ``AFTER_BROWSER_LOGIN`` instead of the token page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import time
from collections.abc import Callable
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
from gateway.identity.providers.oauth import code_challenge_s256, random_token
from gateway.identity.providers.registry import PROVIDERS
from gateway.store.base import Store
from gateway.store.records import BROWSER_LOGIN, User

PATHS = {"oidcProviders/oidc": "oidc", "githubProviders/github": "github"}
STATE_TTL_S = 600.0
MAX_PENDING_STATES = 10_000
MAX_SWAPS = 16
"""Compare-and-set attempts on one address's index before a start gives up (503)."""
MAX_PENDING_PER_ADDRESS = 16
"""Browser logins one client address may have pending; starting another drops its
oldest. An anonymous flood of ``/login`` cannot fill the table for everyone (it used to,
answering every login 503 for ``STATE_TTL_S``)."""


LOGIN_COOKIE = "herdgate_login"
"""Holds the secret that binds a browser login to the browser (HttpOnly, Secure,
SameSite=Lax so that the provider's redirect back carries it, only sent to the callback)."""


@dataclass(frozen=True)
class PendingBrowserLogin:
    provider: str
    code_verifier: str
    nonce: str
    then: str = ""
    """Who finishes it (a key of ``AFTER_BROWSER_LOGIN``); empty: the token page."""


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _derived(browser: str, state: str, label: str) -> str:
    """A value only the browser's cookie and the state together give (43 URL-safe
    characters: a valid PKCE verifier, RFC 7636 section 4.1)."""
    mac = hmac.new(browser.encode("utf-8"), f"{label}\0{state}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def derived_secrets(browser: str, state: str) -> tuple[str, str]:
    """The PKCE verifier and the nonce of the login ``state`` started by the browser
    holding ``browser``. Derived, never stored: the store holds only hashes, and a
    stolen callback URL (code and state) without the cookie cannot redeem the code."""
    return _derived(browser, state, "pkce"), _derived(browser, state, "nonce")


class BrowserLogins:
    """``state`` -> what the callback needs, in the store (``records.BROWSER_LOGIN``), so
    a login started through one worker or replica finishes through any other.

    A login's document is named by the hash of its ``state`` and holds the provider,
    the hash of the browser's cookie, who finishes it and when it expires; the PKCE
    verifier and nonce are derived from cookie and state (``derived_secrets``), so
    nothing in the store can finish a login. Bounded: a client address has at most
    ``MAX_PENDING_PER_ADDRESS`` pending (an index document per address, the oldest
    dropped), and ``sweep`` deletes the expired and, past ``MAX_PENDING_STATES``, the
    oldest. Every change is a compare-and-set, so two processes taking one state cannot
    both have it."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def add(self, provider: str, browser: str, address: str = "", then: str = "") -> str:
        """A new ``state`` for a login started by the browser holding ``browser``."""
        now = self.clock()
        state = random_token()
        name = _digest(state)
        doc = {
            "id": name,
            "provider": provider,
            "browser": _digest(browser),
            "then": then,
            "expires": now + STATE_TTL_S,
        }
        await self.store.put(BROWSER_LOGIN, name, doc)
        await self._index(address, name, now)
        return state

    async def _index(self, address: str, name: str, now: float) -> None:
        key = "addr-" + _digest(address)
        for _ in range(MAX_SWAPS):
            index = await self.store.get(BROWSER_LOGIN, key)
            raw = index.get("pending") if index is not None else None
            pending = [
                (str(p[0]), float(p[1]))
                for p in (raw if isinstance(raw, list) else [])
                if isinstance(p, list)
                and len(p) == 2
                and isinstance(p[1], int | float)
                and p[1] > now
            ]
            pending.append((name, now + STATE_TTL_S))
            dropped = pending[:-MAX_PENDING_PER_ADDRESS]
            pending = pending[-MAX_PENDING_PER_ADDRESS:]
            value = {
                "id": key,
                "pending": [list(p) for p in pending],
                "expires": max(p[1] for p in pending),
            }
            if await self.store.swap(BROWSER_LOGIN, key, index, value) is not None:
                for old, _ in dropped:
                    await self.store.delete(BROWSER_LOGIN, old)
                return
        await self.store.delete(BROWSER_LOGIN, name)  # too contended: not started
        raise GatewayError(503, "too many browser logins at once; try again")

    async def take(self, state: str, provider: str, browser: str) -> PendingBrowserLogin | None:
        """The login ``state`` names, once, if it is this ``provider``'s, not expired, and
        ``browser`` is the cookie value it was started with."""
        if not state or not browser or len(state) > 256:
            return None
        name = _digest(state)
        doc = await self.store.get(BROWSER_LOGIN, name)
        if doc is None or not hmac.compare_digest(str(doc.get("browser", "")), _digest(browser)):
            return None  # kept: the browser that started it may still come back
        if not await self.store.swap(BROWSER_LOGIN, name, doc, None):
            return None  # another process took it first
        expires = doc.get("expires")
        if doc.get("provider") != provider or not isinstance(expires, int | float):
            return None
        if expires < self.clock():
            return None
        verifier, nonce = derived_secrets(browser, state)
        return PendingBrowserLogin(provider, verifier, nonce, str(doc.get("then", "")))

    async def sweep(self) -> int:
        """Delete expired logins and address indexes and, past ``MAX_PENDING_STATES``, the
        oldest logins; how many were deleted."""
        now = self.clock()
        removed = 0
        live: list[tuple[float, dict[str, Any]]] = []
        for doc in await self.store.list(BROWSER_LOGIN):
            name, expires = doc.get("id"), doc.get("expires")
            if not isinstance(name, str):
                continue
            if isinstance(expires, int | float) and expires > now:
                if not name.startswith("addr-"):
                    live.append((float(expires), doc))
                continue
            if await self.store.swap(BROWSER_LOGIN, name, doc, None):
                removed += 1
        live.sort(key=lambda item: item[0])
        for _, doc in live[: max(0, len(live) - MAX_PENDING_STATES)]:
            if await self.store.swap(BROWSER_LOGIN, doc["id"], doc, None):
                removed += 1
        return removed


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
    wait = await limiter.address_retry_after(address, directory(request).clock())
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
            await limiter.address_failed(address, directory(request).clock())
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
    browser = random_token()
    state = await request.app[BROWSER_LOGINS].add(name, browser, request.remote or "", then)
    verifier, nonce = derived_secrets(browser, state)
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
        state = request.query.get("state", "")
        pending = await request.app[BROWSER_LOGINS].take(state, name, browser)
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
