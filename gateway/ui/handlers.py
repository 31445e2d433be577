"""The web page's routes: ``/ui/`` (clusters), ``/ui/tokens``, ``/ui/login`` and the
forms they post (docs/design.md, "The web page").

Every answer carries ``security.HEADERS``; every form is refused with 403 unless its
``csrf`` field matches the browser's cookie (``security.csrf_valid``) and, where the
browser says where the form came from, it came from this site; errors are HTML pages.
The session is a herdgate session token in ``SESSION_COOKIE``, checked as any token is
(``Directory.authenticate``); logging out or revoking it deletes it from the store.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from config.identity import Identity
from gateway.api import auditing, oauth_login
from gateway.api.clusters import cluster_view, visible_cluster
from gateway.api.common import directory
from gateway.api.login import check_password
from gateway.api.login_common import session_token
from gateway.errors import BadRequest, Forbidden, GatewayError, NotFound
from gateway.identity.directory import AuthenticationFailed
from gateway.identity.providers.registry import PROVIDERS
from gateway.store.records import TOKEN, Token, User
from gateway.ui import kubeconfigs, pages, security

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PASSWORD_PROVIDERS = {
    "local": "Local user",
    "openldap": "OpenLDAP",
    "activedirectory": "Active Directory",
}
OAUTH_PROVIDERS = {"oidc": "OpenID Connect", "github": "GitHub"}
WEB_LOGIN = "web"
"""``then`` of the OAuth browser logins the page starts (``oauth_login.AFTER_BROWSER_LOGIN``)."""

_TITLES = {
    400: "Bad request",
    401: "Not logged in",
    403: "Refused",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    415: "Not a form",
    429: "Too many attempts",
    500: "Error",
    503: "Unavailable",
}


@dataclass(frozen=True)
class Session:
    """A logged-in browser: who, their token, and the CSRF token of their forms."""

    identity: Identity
    token: Token
    csrf: str

    def viewer(self, user: User | None) -> pages.Viewer:
        return pages.Viewer(
            self.identity.username,
            user.display_name if user is not None else "",
            self.csrf,
            self.identity.is_admin,
        )


def session_of(request: web.Request) -> Session | None:
    """The browser's session, if its cookie holds a valid token for the whole gateway."""
    value = request.cookies.get(security.SESSION_COOKIE, "")
    if not value:
        return None
    try:
        identity, token = directory(request).authenticate(f"Bearer {value}")
    except AuthenticationFailed:
        return None
    if token.cluster_id:
        return None  # a kubeconfig's token is for its cluster's API only
    request[auditing.ACTOR] = identity
    return Session(identity, token, security.csrf_token(value))


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def _see_other(location: str) -> web.Response:
    """A 303 to a path of this page (never a URL built from input)."""
    return web.Response(status=303, headers={"Location": location})


def _error(status: int, message: str) -> web.Response:
    title = _TITLES.get(status, "Error")
    return _html(pages.error_page(status, title, message), status)


def page(handler: Handler) -> Handler:
    """The page's answers: security headers on all, gateway errors as HTML pages."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = _error(exc.status, exc.message)
            response.headers.update(exc.headers)
        except web.HTTPException as exc:  # a redirect to a provider
            exc.headers.update(security.HEADERS)
            raise
        response.headers.update(security.HEADERS)
        return response

    return wrapped


def _set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite=security.SAME_SITE,
    )


def _clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite=security.SAME_SITE)


def _start_session(
    request: web.Request, response: web.StreamResponse, body: dict[str, Any]
) -> None:
    """Put the new session token ``body`` (``session_token``'s answer) in the cookie."""
    expires = directory(request).tokens[body["id"]].expires_at
    max_age = None if expires is None else max(1, int(expires - directory(request).clock()))
    _set_cookie(response, security.SESSION_COOKIE, body["token"], max_age)
    _clear_cookie(response, security.LOGIN_CSRF_COOKIE)


async def _form(request: web.Request, secret: str) -> dict[str, str]:
    """The posted form, if it comes from a page of this site shown to this browser."""
    if not security.fetch_allowed(request.headers.get("Sec-Fetch-Site")):
        raise Forbidden("a form from another site is not accepted")
    length = request.content_length
    if length is not None and length > security.MAX_FORM_BYTES:
        raise GatewayError(413, "the form is too large")
    if request.content_type != "application/x-www-form-urlencoded":
        raise GatewayError(415, "expected a form (application/x-www-form-urlencoded)")
    fields: dict[str, str] = {}
    for name, value in (await request.post()).items():
        if isinstance(value, str):
            fields.setdefault(name, value)  # the first of a repeated field
    if not security.csrf_valid(secret, fields.get(security.CSRF_FIELD)):
        raise Forbidden(
            "this form's CSRF token is missing or does not belong to this browser's "
            "session; reload the page and try again"
        )
    return fields


def _field(form: dict[str, str], name: str, max_len: int = 256) -> str:
    value = form.get(name, "")
    if len(value) > max_len or not value.isprintable():
        raise BadRequest(f"{name} is too long or contains control characters")
    return value


def _password_choices(request: web.Request) -> list[pages.Choice]:
    configured = request.app[PROVIDERS].password
    return [
        pages.Choice(name, label)
        for name, label in PASSWORD_PROVIDERS.items()
        if name == "local" or name in configured
    ]


def _oauth_choices(request: web.Request) -> list[pages.Choice]:
    providers = request.app[PROVIDERS]
    return [
        pages.Choice(name, label)
        for name, label in OAUTH_PROVIDERS.items()
        if getattr(providers, name) is not None
    ]


def _login_secret(request: web.Request) -> tuple[str, bool]:
    """The browser's pre-login secret, and whether it is new (to be set)."""
    value = request.cookies.get(security.LOGIN_CSRF_COOKIE, "")
    if 32 <= len(value) <= 64 and value.isascii() and value.isprintable():
        return value, False
    return security.new_login_secret(), True


def _login_form(
    request: web.Request, error: str = "", username: str = "", provider: str = "", status: int = 200
) -> web.Response:
    secret, new = _login_secret(request)
    response = _html(
        pages.login_page(
            security.csrf_token(secret),
            _password_choices(request),
            _oauth_choices(request),
            error=error,
            username=username,
            provider=provider,
        ),
        status,
    )
    if new:
        _set_cookie(response, security.LOGIN_CSRF_COOKIE, secret, None)
    return response


# -- routes ----------------------------------------------------------------------------


@page
async def to_clusters(request: web.Request) -> web.StreamResponse:
    """``GET /`` and ``GET /ui``: the page lives at ``/ui/``."""
    return _see_other("/ui/")


@page
async def login_form(request: web.Request) -> web.StreamResponse:
    """``GET /ui/login``."""
    if session_of(request) is not None:
        return _see_other("/ui/")
    return _login_form(request)


@page
async def login(request: web.Request) -> web.StreamResponse:
    """``POST /ui/login``: a password login (local, LDAP, Active Directory)."""
    secret = request.cookies.get(security.LOGIN_CSRF_COOKIE, "")
    request[auditing.AUDITED_AS] = ("login", "login", "")
    form = await _form(request, secret)
    provider = _field(form, "provider") or "local"
    username = _field(form, "username")
    password = _field(form, "password", max_len=4096)
    if provider not in {c.value for c in _password_choices(request)}:
        raise NotFound(f"the {provider} provider is not configured")
    if not username or not password:
        return _login_form(request, "Enter a user name and a password.", username, provider, 400)
    login_record = request[auditing.LOGIN] = {"provider": provider, "loginName": username}
    directory(request).catch_up()  # a user created through another replica a moment ago
    try:
        user = await check_password(request, provider, username, password)
    except GatewayError as exc:
        response = _login_form(request, exc.message, username, provider, exc.status)
        response.headers.update(exc.headers)
        return response
    body = await session_token(request, user, {"description": "web page"})
    login_record.update(result="success", userId=user.id, tokenId=body["id"])
    response = _see_other("/ui/")
    _start_session(request, response, body)
    return response


@page
async def oauth_start(request: web.Request) -> web.StreamResponse:
    """``GET /ui/login/{provider}``: an OIDC or GitHub browser login for this page."""
    name = request.match_info["provider"]
    if name not in OAUTH_PROVIDERS or getattr(request.app[PROVIDERS], name) is None:
        raise NotFound(f"the {name} provider is not configured")
    raise await oauth_login.start_browser_login(request, name, then=WEB_LOGIN)


async def after_oauth_login(request: web.Request, user: User, provider: str) -> web.StreamResponse:
    """How an OAuth login the page started ends: the session cookie, then ``/ui/``."""
    body = await session_token(request, user, {"description": f"web page ({provider})"})
    request[auditing.LOGIN].update(result="success", userId=user.id, tokenId=body["id"])
    response = _html(pages.logged_in_page())
    _start_session(request, response, body)
    response.headers.update(security.HEADERS)
    return response


@page
async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /ui/logout``: the session token is deleted, the cookie cleared."""
    session = session_of(request)
    response = _see_other("/ui/login")
    request[auditing.AUDITED_AS] = ("tokens", "logout", "")
    if session is not None:
        request[auditing.AUDITED_AS] = ("tokens", "logout", session.token.id)
        await _form(request, request.cookies[security.SESSION_COOKIE])
        await directory(request).delete(TOKEN, session.token.id)
    _clear_cookie(response, security.SESSION_COOKIE)
    return response


def _required(request: web.Request) -> Session:
    session = session_of(request)
    if session is None:
        raise GatewayError(401, "Your session has ended; log in again.")
    return session


def _when(ts: float | None) -> str:
    """``2027-01-31 12:00 UTC``; empty for None."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _git_version(version: Any) -> str:
    """``v1.32.0`` from the cluster's version object (Rancher's: ``gitVersion``, ...)."""
    if isinstance(version, dict):
        return str(version.get("gitVersion") or "")
    return str(version or "")


@page
async def clusters(request: web.Request) -> web.StreamResponse:
    """``GET /ui/``: the clusters the caller may use, with their state now."""
    session = session_of(request)
    if session is None:
        return _see_other("/ui/login")
    d = directory(request)
    rows = []
    for cluster in kubeconfigs.visible_clusters(request, session.identity):
        view = cluster_view(request, cluster)
        rows.append(
            pages.ClusterRow(
                id=cluster.id,
                name=cluster.name,
                description=cluster.description,
                state=str(view["state"]),
                version=_git_version(view["version"]),
                node_count=int(view["nodeCount"]),
                role=d.role_on(session.identity, cluster.id) or "",
            )
        )
    viewer = session.viewer(d.users.get(session.identity.user_id))
    return _html(pages.clusters_page(viewer, rows))


@page
async def download_kubeconfig(request: web.Request) -> web.StreamResponse:
    """``POST /ui/kubeconfig`` with ``cluster`` (an id, or ``*`` for all): the file."""
    request[auditing.AUDITED_AS] = ("clusters", "generateKubeconfig", "")
    session = _required(request)
    form = await _form(request, request.cookies[security.SESSION_COOKIE])
    wanted = _field(form, "cluster")
    request[auditing.AUDITED_AS] = ("clusters", "generateKubeconfig", wanted)
    if wanted == "*":
        text = await kubeconfigs.all_clusters(request, session.identity)
        name = "all-clusters"
    else:
        cluster = visible_cluster(request, session.identity, wanted)
        text = await kubeconfigs.one_cluster(request, session.identity, cluster)
        name = cluster.name
    return web.Response(
        text=text,
        content_type="application/yaml",
        headers={"Content-Disposition": f'attachment; filename="{security.attachment_name(name)}"'},
    )


@page
async def tokens(request: web.Request) -> web.StreamResponse:
    """``GET /ui/tokens``: the caller's own tokens."""
    session = session_of(request)
    if session is None:
        return _see_other("/ui/login")
    d = directory(request)
    now = d.clock()
    rows = []
    mine = [t for t in d.tokens.values() if t.user_id == session.identity.user_id]
    for token in sorted(mine, key=lambda t: (t.created, t.id)):
        cluster = d.clusters.get(token.cluster_id) if token.cluster_id else None
        rows.append(
            pages.TokenRow(
                id=token.id,
                kind=token.kind,
                description=token.description,
                cluster=cluster.name if cluster is not None else token.cluster_id,
                created=_when(token.created),
                expires=_when(token.expires_at),
                last_used=_when(d.last_used(token)),
                current=token.id == session.token.id,
                expired=token.is_expired(now),
            )
        )
    viewer = session.viewer(d.users.get(session.identity.user_id))
    return _html(pages.tokens_page(viewer, rows))


@page
async def revoke_token(request: web.Request) -> web.StreamResponse:
    """``POST /ui/tokens/revoke`` with ``token``: one of the caller's own tokens; the
    session's own logs out."""
    request[auditing.AUDITED_AS] = ("tokens", "delete", "")
    session = _required(request)
    form = await _form(request, request.cookies[security.SESSION_COOKIE])
    token_id = _field(form, "token")
    request[auditing.AUDITED_AS] = ("tokens", "delete", token_id)
    d = directory(request)
    token = d.tokens.get(token_id)
    if token is None or token.user_id != session.identity.user_id:
        raise NotFound(f"token {token_id} not found")
    await d.delete(TOKEN, token.id)
    if token.id == session.token.id:
        response = _see_other("/ui/login")
        _clear_cookie(response, security.SESSION_COOKIE)
        return response
    return _see_other("/ui/tokens")


async def style(request: web.Request) -> web.StreamResponse:
    """``GET /ui/style.css``."""
    response = web.Response(text=pages.STYLE, content_type="text/css", charset="utf-8")
    response.headers.update(security.HEADERS)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@page
async def not_found(request: web.Request) -> web.StreamResponse:
    raise NotFound("there is no such page")


def install(app: web.Application) -> None:
    """Add the page's routes to the gateway's application, and its end of OAuth logins."""
    app[oauth_login.AFTER_BROWSER_LOGIN][WEB_LOGIN] = after_oauth_login
    r = app.router
    r.add_get("/", to_clusters)
    r.add_get("/ui", to_clusters)
    r.add_get("/ui/", clusters)
    r.add_get("/ui/style.css", style)
    r.add_get("/ui/login", login_form)
    r.add_post("/ui/login", login)
    r.add_get("/ui/login/{provider}", oauth_start)
    r.add_post("/ui/logout", logout)
    r.add_post("/ui/kubeconfig", download_kubeconfig)
    r.add_get("/ui/tokens", tokens)
    r.add_post("/ui/tokens/revoke", revoke_token)
    r.add_get("/ui/{tail:.*}", not_found)
