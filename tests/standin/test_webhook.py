"""TokenReview webhook authentication, with a tiny webhook served by the test itself."""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from config.tls import issue_server_cert, make_ca, write_cert, write_key
from standin.harness import StandInProcess, kubectl_env

from .conftest import need_kubectl

pytestmark = pytest.mark.integration

USERS = {
    "good-token": {
        "username": "wendy",
        "uid": "uid-wendy",
        "groups": ["web-devs"],
        "extra": {"example.com/team": ["blue"]},
    },
}


@dataclass
class Webhook:
    url: str
    ca_file: Path
    reviews: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def tokens_seen(self) -> list[str]:
        return [r["spec"]["token"] for r in self.reviews]


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[Webhook]:
    ca_cert, ca_key = make_ca("webhook-ca")
    cert, key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1", "localhost", "::1"])
    write_cert(tmp_path / "wh.crt", cert)
    write_key(tmp_path / "wh.key", key)
    write_cert(tmp_path / "wh-ca.crt", ca_cert)
    hook = Webhook("", tmp_path / "wh-ca.crt")

    async def review(request: web.Request) -> web.Response:
        body = await request.json()
        hook.reviews.append(body)
        hook.content_types.append(request.headers.get("Content-Type", ""))
        token = body["spec"]["token"]
        status: dict[str, Any] = {"authenticated": False}
        if token in USERS:
            status = {"authenticated": True, "user": USERS[token]}
        elif token == "error-token":
            status = {"authenticated": False, "error": "backend exploded"}
        elif token == "http-error-token":
            return web.Response(status=403, text="no")
        return web.json_response(
            {"apiVersion": body["apiVersion"], "kind": "TokenReview", "status": status}
        )

    app = web.Application()
    app.router.add_post("/review", review)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "wh.crt", tmp_path / "wh.key")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    hook.url = f"https://127.0.0.1:{port}/review"
    yield hook
    await runner.cleanup()


def _webhook_kubeconfig(path: Path, hook: Webhook) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "hook",
                "cluster": {"server": hook.url, "certificate-authority": str(hook.ca_file)},
            }
        ],
        "users": [{"name": "apiserver", "user": {}}],
        "contexts": [{"name": "hook", "context": {"cluster": "hook", "user": "apiserver"}}],
        "current-context": "hook",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


async def _start_standin(tmp_path: Path, hook: Webhook, *args: str) -> StandInProcess:
    config = _webhook_kubeconfig(tmp_path / "webhook.kubeconfig", hook)
    # the webhook's users (group web-devs) may read namespaces: the default `view` role
    view = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "web-devs-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [
            {"kind": "Group", "name": "web-devs", "apiGroup": "rbac.authorization.k8s.io"}
        ],
    }
    return await asyncio.to_thread(
        functools.partial(
            StandInProcess.start,
            tmp_path / "apiserver",
            args=["--authentication-token-webhook-config-file", str(config), *args],
            objects=[view],
        )
    )


def _client(server: StandInProcess) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    return aiohttp.ClientSession(
        base_url=server.url,
        connector=aiohttp.TCPConnector(ssl=ctx),
        timeout=aiohttp.ClientTimeout(total=10),
    )


async def _get(session: aiohttp.ClientSession, token: str) -> tuple[int, Any]:
    async with session.get("/api/v1/namespaces", headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def test_webhook_user_and_cache(tmp_path: Path, webhook: Webhook) -> None:
    server = await _start_standin(
        tmp_path,
        webhook,
        "--authentication-token-webhook-version",
        "v1",
        "--authentication-token-webhook-cache-ttl",
        "1s",
    )
    try:
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", token="good-token")
        proc = await asyncio.create_subprocess_exec(
            need_kubectl("1.32"),
            "--kubeconfig",
            str(kubeconfig),
            "auth",
            "whoami",
            "-o",
            "json",
            env=kubectl_env(tmp_path / "home"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, stderr.decode()
        info = json.loads(stdout)["status"]["userInfo"]
        assert info == {
            "username": "wendy",
            "uid": "uid-wendy",
            "groups": ["web-devs", "system:authenticated"],
            "extra": {"example.com/team": ["blue"]},
        }
        review = webhook.reviews[0]
        assert review == {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {
                "token": "good-token",
                "audiences": ["https://kubernetes.default.svc.cluster.local"],
            },
            "status": {"user": {}},
        }
        assert webhook.content_types[0] == "application/json"

        async with _client(server) as session:
            # cached: no new review within the TTL
            seen = len(webhook.reviews)
            assert (await _get(session, "good-token"))[0] == 200
            assert len(webhook.reviews) == seen
            await asyncio.sleep(1.2)
            assert (await _get(session, "good-token"))[0] == 200
            assert len(webhook.reviews) == seen + 1

            # rejected tokens are cached too
            status, body = await _get(session, "bad-token")
            assert status == 401
            assert body == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }
            assert (await _get(session, "bad-token"))[0] == 401
            assert webhook.tokens_seen().count("bad-token") == 1

            # errors are not cached
            assert (await _get(session, "error-token"))[0] == 401
            assert (await _get(session, "error-token"))[0] == 401
            assert webhook.tokens_seen().count("error-token") == 2
            assert (await _get(session, "http-error-token"))[0] == 401
    finally:
        await asyncio.to_thread(server.stop)
    audit = server.audit_events()
    wendy = [e for e in audit if e["user"].get("username") == "wendy"]
    assert wendy
    assert wendy[0]["user"]["extra"] == {"example.com/team": ["blue"]}


async def test_webhook_default_version_is_v1beta1(tmp_path: Path, webhook: Webhook) -> None:
    server = await _start_standin(tmp_path, webhook, "--api-audiences", "")
    try:
        async with _client(server) as session:
            assert (await _get(session, "good-token"))[0] == 200
    finally:
        await asyncio.to_thread(server.stop)
    assert webhook.reviews[0]["apiVersion"] == "authentication.k8s.io/v1beta1"
    assert webhook.reviews[0]["spec"] == {"token": "good-token"}
