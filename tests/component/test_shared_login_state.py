"""Login state lives in the store: two gateway applications on one SQLite store (two
workers, or two replicas) count failed logins together, and a browser login started
through one finishes through the other."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from config.schema import AuthSettings, GatewaySettings, OIDCSettings
from config.tls import client_context
from gateway.api import oauth_login
from gateway.front.balancers import TrustedProxies
from gateway.front.connection import Front
from gateway.identity import hashing
from gateway.identity.directory import Directory
from gateway.identity.providers.oidc import OIDCProvider
from gateway.identity.providers.registry import PROVIDERS, Providers
from gateway.identity.ratelimit import Limit, LoginLimiter
from gateway.operations.app import build_app
from gateway.runtime import Runtime
from gateway.store.records import BROWSER_LOGIN, LOGIN_FAILURE, USER, User
from gateway.store.sqlite import SQLiteStore
from tests.component.front_server import FrontServer
from tests.fakes.oidc_issuer import FakeIssuer

PASSWORD = "admin-password-123"
REDIRECT = "https://gw.test:8443/v1/auth/oidc/callback"


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[FakeIssuer]:
    fake = FakeIssuer(tmp_path / "issuer")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def two(
    tmp_path: Path, issuer: FakeIssuer
) -> AsyncIterator[tuple[list[TestClient[Any, Any]], list[SQLiteStore]]]:
    stores = [await SQLiteStore(tmp_path / "db").open() for _ in range(2)]
    oidc = OIDCSettings(
        enabled=True,
        issuer_url=issuer.url,
        client_id=issuer.client_id,
        client_secret=issuer.client_secret,
        ca_file=issuer.ca_file,
        redirect_uri=REDIRECT,
        request_timeout_s=5.0,
    )
    settings = dataclasses.replace(
        GatewaySettings(),
        auth=dataclasses.replace(
            AuthSettings(), login_failures_per_user=5, login_failures_per_address=8, oidc=oidc
        ),
    )
    clients = []
    for index, store in enumerate(stores):
        directory = Directory(store)
        await directory.load()
        if index == 0:
            await directory.put(
                USER,
                User("u-admin", "admin", hashing.hash_password(PASSWORD), 0.0, admin=True,
                     principal_ids=("local://u-admin",)),
            )  # fmt: skip
        providers = Providers(oidc=OIDCProvider(oidc))
        app = build_app(
            settings, directory, Runtime("https://gw.test:8443", "CA", "test"), providers
        )
        client = TestClient(FrontServer(app))
        await client.start_server()
        clients.append(client)
    try:
        yield clients, stores
    finally:
        for client in clients:
            await client.app[PROVIDERS].close()
            await client.close()
        for store in stores:
            await store.close()


async def _login(client: TestClient[Any, Any], username: str, password: str) -> int:
    resp = await client.post(
        "/v3-public/localProviders/local?action=login",
        json={"username": username, "password": password},
    )
    return resp.status


async def test_failed_logins_spread_over_two_apps_lock_as_on_one(two: Any) -> None:
    (a, b), stores = two
    for attempt in range(5):  # a, b, a, b, a: five failures in all
        assert await _login((a, b)[attempt % 2], "admin", "wrong-password") == 401
    for client in (a, b):  # locked on both, even with the right password
        assert await _login(client, "ADMIN", PASSWORD) == 429
    names = [d["id"] for d in await stores[0].list(LOGIN_FAILURE)]
    assert names and all("admin" not in name for name in names)  # keys are hashes
    # Another user from the same address: the address's 8 is not yet reached.
    assert await _login(b, "nobody", "x") == 401
    assert await _login(a, "nobody", "x") == 401
    assert await _login(b, "nobody", "x") == 401
    assert await _login(a, "someone", "x") == 429  # 5 + 3 failures from 127.0.0.1


async def test_a_browser_login_started_on_one_app_finishes_on_the_other(
    two: Any, issuer: FakeIssuer
) -> None:
    (a, b), stores = two
    start = await a.get("/v1/auth/oidc/login", allow_redirects=False)
    assert start.status == 302
    cookie = start.cookies[oauth_login.LOGIN_COOKIE].value
    authorize = start.headers["Location"]
    state = parse_qs(urlsplit(authorize).query)["state"][0]
    stored = await stores[1].list(BROWSER_LOGIN)
    assert stored and all(state not in str(doc) and cookie not in str(doc) for doc in stored)
    ctx = client_context(ca_file=issuer.ca_file)
    async with (
        aiohttp.ClientSession() as http,
        http.get(authorize, allow_redirects=False, ssl=ctx) as approved,
    ):
        assert approved.status == 302
        back = urlsplit(approved.headers["Location"])
    assert back.path == "/v1/auth/oidc/callback"
    # Without the browser's cookie: refused (and the login stays for its browser).
    refused = await b.get(f"{back.path}?{back.query}")
    assert refused.status == 400
    finished = await b.get(
        f"{back.path}?{back.query}", headers={"Cookie": f"{oauth_login.LOGIN_COOKIE}={cookie}"}
    )
    assert finished.status == 200, await finished.text()
    assert "token-" in await finished.text()
    # Once only, whichever app it comes back to.
    again = await a.get(
        f"{back.path}?{back.query}", headers={"Cookie": f"{oauth_login.LOGIN_COOKIE}={cookie}"}
    )
    assert again.status == 400


class _BalancedFrontServer(FrontServer):
    """The front as behind a balancer on 127.0.0.1 that speaks HTTP."""

    async def start_server(
        self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        assert self.runner.server is not None
        front = Front(self.app, self.runner.server, trusted=TrustedProxies(["127.0.0.1/32"]))
        self._listener = await asyncio.get_running_loop().create_server(front, self.host, 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_for_counts_per_client_only_from_a_trusted_peer(
    tmp_path: Path, trusted: bool
) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    directory = Directory(store)
    await directory.load()
    settings = dataclasses.replace(
        GatewaySettings(),
        auth=dataclasses.replace(AuthSettings(), login_failures_per_address=2),
    )
    app = build_app(settings, directory, Runtime("https://gw.test:8443", "CA", "test"))
    client = TestClient(_BalancedFrontServer(app) if trusted else FrontServer(app))
    await client.start_server()
    try:

        async def attempt(forwarded: str) -> int:
            resp = await client.post(
                "/v3-public/localProviders/local?action=login",
                json={"username": f"u{forwarded}", "password": "x"},
                headers={"X-Forwarded-For": forwarded},
            )
            return resp.status

        # A client's own entry first, the balancer's last: the last one is the client.
        assert await attempt("6.6.6.6, 198.51.100.1") == 401
        assert await attempt("7.7.7.7, 198.51.100.1") == 401
        third = await attempt("8.8.8.8, 198.51.100.1")
        other = await attempt("198.51.100.2")
        if trusted:
            assert (third, other) == (429, 401)  # per client behind the balancer
        else:
            assert (third, other) == (429, 429)  # all one peer: 127.0.0.1
    finally:
        await client.close()
        await store.close()


async def test_expired_login_state_is_swept_from_the_store(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    now = [1_800_000_000.0]
    try:
        limiter = LoginLimiter(store, Limit(5, 60), Limit(20, 60))
        await limiter.failed("local", "alice", "192.0.2.1", now[0])
        logins = oauth_login.BrowserLogins(store, clock=lambda: now[0])
        state = await logins.add("oidc", "cookie", "192.0.2.1")
        assert len(await store.list(LOGIN_FAILURE)) == 2
        assert await limiter.sweep(now[0] + 30) == 0  # still in the window
        assert await logins.sweep() == 0
        now[0] += oauth_login.STATE_TTL_S + 1
        assert await logins.take(state, "oidc", "cookie") is None  # expired, even unswept
        await logins.add("oidc", "cookie", "192.0.2.1")
        now[0] += oauth_login.STATE_TTL_S + 1
        assert await limiter.sweep(now[0]) == 2
        assert await logins.sweep() == 2  # the login and the address's index
        assert await store.list(LOGIN_FAILURE) == [] and await store.list(BROWSER_LOGIN) == []
    finally:
        await store.close()
