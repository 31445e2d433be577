"""A stand-in for GitHub's OAuth endpoints and the REST API paths herdgate reads.

One HTTPS server on 127.0.0.1 serves both sides: the web endpoints
(``/login/oauth/authorize``, ``/login/oauth/access_token``, ``/login/device/code``)
at the root, and the API (``/user``, ``/user/orgs``, ``/user/teams``) under
``api_prefix`` — empty like ``api.github.com``, or ``/api/v3`` like GitHub
Enterprise Server. Lists are paginated with ``per_page``/``page`` and ``Link``
headers the way GitHub does it. Errors can be injected per API path.

Web endpoints answer errors with HTTP 200 and an ``error`` field, as GitHub does.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from tests.fakes import FakeServer, TestPKI

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class FakeUser:
    id: int
    login: str
    name: str | None = None
    orgs: list[dict[str, Any]] = field(default_factory=list)
    """``{"id", "login"}`` per organization."""
    teams: list[dict[str, Any]] = field(default_factory=list)
    """``{"id", "slug", "organization": {"id", "login"}}`` per team."""

    def add_org(self, org_id: int, login: str) -> dict[str, Any]:
        org = {"id": org_id, "login": login, "node_id": f"O_{org_id}", "description": ""}
        self.orgs.append(org)
        return org

    def add_team(self, team_id: int, slug: str, org: dict[str, Any]) -> None:
        self.teams.append(
            {
                "id": team_id,
                "slug": slug,
                "name": slug,
                "organization": {"id": org["id"], "login": org["login"]},
            }
        )


@dataclass
class _Device:
    user: FakeUser
    user_code: str
    interval: int
    expires_at: float
    approved: bool = False
    denied: bool = False


@dataclass
class Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    times: int = 1
    """How many requests fail (then the path works again); -1: all of them."""
    delay: float = 0.0
    """Seconds to wait before answering (to provoke client timeouts)."""


@dataclass
class FakeGitHub:
    directory: Path
    api_prefix: str = ""
    client_id: str = "Iv1.herdgate"
    client_secret: str = "gh-secret"
    device_interval: int = 0

    hits: Counter[str] = field(default_factory=Counter)
    """Requests per route path (``/user/orgs``, ``/login/oauth/access_token``, ...)."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Method, path, query and headers of API requests."""
    users: dict[int, FakeUser] = field(default_factory=dict)
    current_user: FakeUser | None = None
    """Who the authorization endpoint approves."""
    failures: dict[str, Failure] = field(default_factory=dict)
    """API path (without the prefix) -> injected failure."""
    force_slow_down: bool = False

    def __post_init__(self) -> None:
        self.pki = TestPKI.create(self.directory)
        self._server = FakeServer(self._app(), self.pki)
        self._codes: dict[str, FakeUser] = {}
        self._tokens: dict[str, FakeUser] = {}
        self._devices: dict[str, _Device] = {}
        self.redirect_uris: list[str] = []

    # ------------------------------------------------------------------ set-up

    @property
    def web_url(self) -> str:
        return self._server.base_url

    @property
    def api_url(self) -> str:
        return self._server.base_url + self.api_prefix

    @property
    def ca_file(self) -> str:
        return str(self.pki.ca_file)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    def add_user(self, user_id: int, login: str, name: str | None = None) -> FakeUser:
        user = FakeUser(user_id, login, name)
        self.users[user_id] = user
        if self.current_user is None:
            self.current_user = user
        return user

    def token_for(self, user: FakeUser) -> str:
        """An access token as the OAuth flow would issue it (for refresh_with_token)."""
        token = "gho_" + secrets.token_urlsafe(24)
        self._tokens[token] = user
        return token

    def revoke(self, token: str) -> None:
        self._tokens.pop(token, None)

    def fail(self, path: str, status: int, times: int = 1, **kwargs: Any) -> None:
        self.failures[path] = Failure(status, times=times, **kwargs)

    def approve(self, user_code: str, deny: bool = False) -> None:
        for device in self._devices.values():
            if device.user_code == user_code:
                device.approved = not deny
                device.denied = deny
                return
        raise KeyError(user_code)

    # ------------------------------------------------------------------ HTTP

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/login/oauth/authorize", self._authorize)
        app.router.add_post("/login/oauth/access_token", self._access_token)
        app.router.add_post("/login/device/code", self._device_code)
        api = self.api_prefix
        app.router.add_get(api + "/user", self._user)
        app.router.add_get(api + "/user/orgs", self._orgs)
        app.router.add_get(api + "/user/teams", self._teams)
        return app

    async def _authorize(self, request: web.Request) -> web.Response:
        self.hits["/login/oauth/authorize"] += 1
        q = request.query
        if q.get("client_id") != self.client_id or self.current_user is None:
            return web.Response(status=404, text="unknown client")
        code = secrets.token_hex(10)
        self._codes[code] = self.current_user
        redirect = q.get("redirect_uri", "https://registered.example/callback")
        raise web.HTTPFound(redirect + "?" + urlencode({"code": code, "state": q.get("state", "")}))

    async def _access_token(self, request: web.Request) -> web.Response:
        self.hits["/login/oauth/access_token"] += 1
        if request.headers.get("Accept") != "application/json":
            return web.Response(text="access_token=form-encoded-is-not-what-herdgate-wants")
        form = {k: str(v) for k, v in (await request.post()).items()}
        if form.get("grant_type") == DEVICE_GRANT:
            return self._device_token(form)
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return web.json_response({"error": "incorrect_client_credentials"})
        if "redirect_uri" in form:
            self.redirect_uris.append(form["redirect_uri"])
        user = self._codes.pop(form.get("code", ""), None)
        if user is None:
            return web.json_response(
                {"error": "bad_verification_code", "error_description": "bad code"}
            )
        return self._token_response(user)

    def _token_response(self, user: FakeUser) -> web.Response:
        return web.json_response(
            {"access_token": self.token_for(user), "token_type": "bearer", "scope": "read:org"}
        )

    async def _device_code(self, request: web.Request) -> web.Response:
        self.hits["/login/device/code"] += 1
        form = await request.post()
        if form.get("client_id") != self.client_id or self.current_user is None:
            return web.json_response({"error": "incorrect_client_credentials"})
        device_code = secrets.token_hex(20)
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        self._devices[device_code] = _Device(
            self.current_user, user_code, self.device_interval, time.monotonic() + 900
        )
        return web.json_response(
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": self.web_url + "/login/device",
                "expires_in": 900,
                "interval": self.device_interval,
            }
        )

    def _device_token(self, form: dict[str, str]) -> web.Response:
        if form.get("client_id") != self.client_id:
            return web.json_response({"error": "incorrect_client_credentials"})
        device = self._devices.get(form.get("device_code", ""))
        if device is None:
            return web.json_response({"error": "incorrect_device_code"})
        if device.expires_at <= time.monotonic():
            return web.json_response({"error": "expired_token"})
        if self.force_slow_down:
            self.force_slow_down = False
            device.interval += 5
            return web.json_response({"error": "slow_down", "interval": device.interval})
        if device.denied:
            return web.json_response({"error": "access_denied"})
        if not device.approved:
            return web.json_response({"error": "authorization_pending"})
        del self._devices[form["device_code"]]
        return self._token_response(device.user)

    async def _authenticate(self, request: web.Request, path: str) -> FakeUser | web.Response:
        """The token's user, or the error response to send."""
        self.hits[path] += 1
        self.requests.append(
            {"path": path, "query": dict(request.query), "headers": dict(request.headers)}
        )
        failure = self.failures.get(path)
        if failure is not None and failure.times != 0:
            failure.times -= 1
            await asyncio.sleep(failure.delay)
            return web.json_response(
                failure.body or {"message": "injected failure"},
                status=failure.status,
                headers=failure.headers,
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        user = self._tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        if user is None:
            return web.json_response(
                {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
                status=401,
            )
        return user

    async def _user(self, request: web.Request) -> web.Response:
        user = await self._authenticate(request, "/user")
        if isinstance(user, web.Response):
            return user
        return web.json_response(
            {"login": user.login, "id": user.id, "name": user.name, "type": "User"}
        )

    async def _orgs(self, request: web.Request) -> web.Response:
        user = await self._authenticate(request, "/user/orgs")
        return user if isinstance(user, web.Response) else self._page(request, user.orgs)

    async def _teams(self, request: web.Request) -> web.Response:
        user = await self._authenticate(request, "/user/teams")
        return user if isinstance(user, web.Response) else self._page(request, user.teams)

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        per_page = min(int(request.query.get("per_page", "30")), 100)
        page = int(request.query.get("page", "1"))
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []
        base = str(request.url.with_query({}))

        def link(number: int, rel: str) -> str:
            return f'<{base}?{urlencode({"per_page": per_page, "page": number})}>; rel="{rel}"'

        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        headers = {"Link": ", ".join(links)} if links else {}
        return web.json_response(chunk, headers=headers)
