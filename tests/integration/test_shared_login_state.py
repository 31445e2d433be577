"""Login state in the store, through real gateway processes: two replicas on one SQLite
store (one state directory, two ports), an OIDC browser login started on one and
finished on the other, failed logins counted across both."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from gateway.api.oauth_login import BrowserLogins
from gateway.identity.ratelimit import Limit, LoginLimiter
from gateway.store.base import Store
from tests.fakes.oidc_issuer import FakeIssuer
from tests.fakes.threaded import BackgroundLoop
from tests.fixtures.etcd import Etcd, etcd  # noqa: F401 - the fixture
from tests.fixtures.stores import two_stores  # noqa: F401 - the fixture
from tests.integration.env import ADMIN_PASSWORD, Gateway, free_port

pytestmark = pytest.mark.integration


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def call(
    url: str,
    ca_file: Path | str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "",
) -> Reply:
    """One HTTPS request, redirects not followed; ``source``: the local address."""
    parts = urlsplit(url)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    conn = http.client.HTTPSConnection(
        parts.hostname or "",
        parts.port,
        context=ctx,
        timeout=15,
        source_address=(source, 0) if source else None,
    )
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def password_login(
    gateway_url: str, ca_file: Path, username: str, password: str, source: str = ""
) -> int:
    body = json.dumps({"username": username, "password": password}).encode()
    return call(
        gateway_url + "/v3-public/localProviders/local?action=login",
        ca_file,
        "POST",
        body,
        {"Content-Type": "application/json"},
        source,
    ).status


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gateway, Gateway, FakeIssuer]]:
    tmp = tmp_path_factory.mktemp("shared-login")
    loop = BackgroundLoop()
    issuer = FakeIssuer(tmp / "issuer")
    loop.run(issuer.start())
    port_a, port_b = free_port(), free_port()
    config = {
        "auth": {
            "login_failures_per_user": 5,
            "oidc": {
                "enabled": True,
                "issuer_url": issuer.url,
                "client_id": issuer.client_id,
                "client_secret": issuer.client_secret,
                "ca_file": issuer.ca_file,
                "username_claim": "email",
                # The provider sends the browser back to replica B.
                "redirect_uri": f"https://127.0.0.1:{port_b}/v1/auth/oidc/callback",
            },
        }
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp / "gateway.yaml")]
    a = Gateway(tmp / "state", port_a, tmp / "a.log", extra_args=args)
    b = Gateway(tmp / "state", port_b, tmp / "b.log", extra_args=args)
    a.start()
    b.start()  # the same state directory: one SQLite store, two replicas
    try:
        yield a, b, issuer
    finally:
        b.stop()
        a.stop()
        loop.run(issuer.stop())
        loop.close()


def test_a_browser_login_started_on_one_replica_finishes_on_the_other(
    replicas: tuple[Gateway, Gateway, FakeIssuer],
) -> None:
    a, b, issuer = replicas
    start = call(a.url + "/v1/auth/oidc/login", a.ca_file)
    assert start.status == 302, start.body
    cookie = start.headers["Set-Cookie"].split(";")[0]  # herdgate_login=...
    approved = call(start.headers["Location"], issuer.ca_file)
    assert approved.status == 302
    back = approved.headers["Location"]
    assert back.startswith(b.url + "/v1/auth/oidc/callback?")
    assert "state" in parse_qs(urlsplit(back).query)
    assert call(back, b.ca_file).status == 400  # another browser (no cookie): refused
    finished = call(back, b.ca_file, headers={"Cookie": cookie})
    assert finished.status == 200, finished.body
    token = finished.body.split(b"<pre>")[1].split(b"</pre>")[0].decode()
    me = call(a.url + "/v3/users?me=true", a.ca_file, headers={"Authorization": f"Bearer {token}"})
    assert me.status == 200 and b"alice@example.com" in me.body  # valid on replica A too
    assert call(back, a.ca_file, headers={"Cookie": cookie}).status == 400  # used once


def test_failed_logins_count_across_both_replicas(
    replicas: tuple[Gateway, Gateway, FakeIssuer],
) -> None:
    a, b, _ = replicas
    for attempt in range(5):  # a b a b a: five failures spread over both
        target = (a, b)[attempt % 2]
        assert password_login(target.url, target.ca_file, "admin", "wrong-password") == 401
    for target in (a, b):  # locked on both, even with the right password
        assert password_login(target.url, target.ca_file, "admin", ADMIN_PASSWORD) == 429


# -- the same on both store backends (SQLite file, a real etcd) ------------------------


async def test_guesses_sent_at_once_to_two_replicas_are_limited_as_one_after_another(
    two_stores: list[Store],  # noqa: F811 - the fixture
) -> None:
    limiters = [LoginLimiter(s, Limit(5, 900), Limit(100, 900)) for s in two_stores]
    waits = await asyncio.gather(
        *(limiters[i % 2].begin("local", "alice", f"10.0.0.{i}", 1.0) for i in range(30))
    )
    assert sum(1 for w in waits if w == 0) == 5
    assert await limiters[1].retry_after("local", "ALICE", "10.9.9.9", 2.0) > 0


async def test_a_browser_login_is_taken_once_by_racing_replicas(
    two_stores: list[Store],  # noqa: F811 - the fixture
) -> None:
    a, b = (BrowserLogins(s) for s in two_stores)
    for _ in range(5):
        state = await a.add("oidc", "cookie", "192.0.2.1")
        taken = await asyncio.gather(
            a.take(state, "oidc", "cookie"), b.take(state, "oidc", "cookie")
        )
        assert sum(1 for t in taken if t is not None) == 1
