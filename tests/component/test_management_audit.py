"""The management API's audit records, in process: logins (success and failure, with
provider, name tried and source address) and every change to users, tokens, clusters,
bindings and registration tokens with its caller, in the same audit log as proxied
requests; never a password or a token's secret; client-chosen fields capped."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from config.schema import AuditSettings, GatewaySettings
from gateway.identity import hashing
from gateway.identity.directory import Directory
from gateway.operations.app import build_app
from gateway.runtime import Runtime
from gateway.store.records import USER, User
from gateway.store.sqlite import SQLiteStore
from gateway.telemetry.audit import MAX_AGENT_CHARS, MAX_PATH_CHARS, AuditLog

PASSWORD = "admin-password-123"
BOB_PASSWORD = "bob-password-0123"
NEW_PASSWORD = "a-brand-new-password"


@dataclasses.dataclass
class Env:
    client: TestClient[Any, Any]
    log: AuditLog
    path: Path

    def records(self) -> list[dict[str, Any]]:
        self.log.flush()
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def raw(self) -> str:
        self.log.flush()
        return self.path.read_text()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await SQLiteStore(tmp_path / "db").open()
    directory = Directory(store)
    await directory.load()
    await directory.put(
        USER,
        User("u-admin", "admin", hashing.hash_password(PASSWORD), 1.0, admin=True,
             principal_ids=("local://u-admin",)),
    )  # fmt: skip
    path = tmp_path / "audit.log"
    log = AuditLog(AuditSettings(path=str(path)), tmp_path)
    app = build_app(
        GatewaySettings(), directory, Runtime("https://gw.test", "CA", "t"), auditor=log
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Env(client, log, path)
    finally:
        await client.close()
        log.close()
        await store.close()


LOGIN = "/v3-public/localProviders/local?action=login"


async def _call(env: Env, method: str, path: str, body: Any = None, token: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await env.client.request(method, path, json=body, headers=headers)
    return resp.status, await resp.json()


async def test_logins_and_every_change_are_recorded_with_their_caller(env: Env) -> None:
    assert (await _call(env, "POST", LOGIN, {"username": "admin", "password": "wrong-one"}))[
        0
    ] == 401
    status, login = await _call(env, "POST", LOGIN, {"username": "ADMIN", "password": PASSWORD})
    assert status == 201
    admin = login["token"]
    _, bob = await _call(
        env, "POST", "/v3/users", {"username": "bob", "password": BOB_PASSWORD}, admin
    )
    await _call(env, "PUT", f"/v3/users/{bob['id']}", {"name": "Bob"}, admin)
    await _call(env, "POST", f"/v3/users/{bob['id']}?action=setpassword",
                {"newPassword": NEW_PASSWORD}, admin)  # fmt: skip
    _, api_token = await _call(env, "POST", "/v3/tokens", {"description": "ci"}, admin)
    await _call(env, "DELETE", f"/v3/tokens/{api_token['id']}", None, admin)
    _, cluster = await _call(env, "POST", "/v3/clusters", {"name": "prod"}, admin)
    await _call(env, "PUT", f"/v3/clusters/{cluster['id']}", {"description": "d"}, admin)
    _, binding = await _call(env, "POST", "/v3/clusterroletemplatebindings",
                             {"clusterId": cluster["id"], "userId": bob["id"],
                              "roleTemplateId": "read-only"}, admin)  # fmt: skip
    await _call(env, "DELETE", f"/v3/clusterroletemplatebindings/{binding['id']}", None, admin)
    _, reg = await _call(env, "POST", "/v3/clusterregistrationtokens",
                         {"clusterId": cluster["id"]}, admin)  # fmt: skip
    rotate = f"/v3/clusterregistrationtokens/{reg['id']}?action=rotate"
    _, rotated = await _call(env, "POST", rotate, {}, admin)
    await _call(env, "DELETE", f"/v3/clusterregistrationtokens/{rotated['id']}", None, admin)
    generate = f"/v3/clusters/{cluster['id']}?action=generateKubeconfig"
    _, kubeconfig = await _call(env, "POST", generate, None, admin)
    await _call(env, "DELETE", f"/v3/users/{bob['id']}", None, admin)
    await _call(env, "DELETE", f"/v3/clusters/{cluster['id']}", None, admin)
    await _call(env, "POST", "/v3/users", {"username": "eve", "password": "x" * 20})  # no token
    await _call(env, "GET", "/v3/users", None, admin)  # a read: not recorded

    records = env.records()
    got = [(r["kind"], r["resource"], r["action"], r["status"]) for r in records]
    assert got == [
        ("login", "login", "login", 401),
        ("login", "login", "login", 201),
        ("management", "users", "create", 201),
        ("management", "users", "update", 200),
        ("management", "users", "setpassword", 200),
        ("management", "tokens", "create", 201),
        ("management", "tokens", "delete", 200),
        ("management", "clusters", "create", 201),
        ("management", "clusters", "update", 200),
        ("management", "clusterroletemplatebindings", "create", 201),
        ("management", "clusterroletemplatebindings", "delete", 200),
        ("management", "clusterregistrationtokens", "create", 201),
        ("management", "clusterregistrationtokens", "rotate", 201),
        ("management", "clusterregistrationtokens", "delete", 200),
        ("management", "clusters", "generateKubeconfig", 200),
        ("management", "users", "delete", 200),
        ("management", "clusters", "delete", 200),
        ("management", "users", "create", 401),
    ], got
    failed, succeeded = records[0], records[1]
    assert failed["user"] is None and failed["provider"] == "local"
    assert failed["loginName"] == "admin" and failed["result"] == "invalid"
    assert failed["sourceIP"] == "127.0.0.1"
    assert succeeded["result"] == "success" and succeeded["userId"] == "u-admin"
    assert succeeded["loginName"] == "ADMIN" and succeeded["objectId"] == login["id"]
    changes = records[2:-1]
    assert {r["user"] for r in changes} == {"u-admin"}
    assert {r["username"] for r in changes} == {"admin"}
    by_action: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        by_action.setdefault((r["resource"], r["action"]), r)
    assert by_action["users", "create"]["objectId"] == bob["id"]
    assert by_action["clusters", "create"]["objectId"] == cluster["id"]
    assert by_action["clusterregistrationtokens", "rotate"]["objectId"] == reg["id"]
    assert records[-1]["user"] is None  # refused: recorded without a caller
    # Never a secret: passwords, session/API/kubeconfig token secrets, registration tokens.
    text = env.raw()
    secrets = [PASSWORD, BOB_PASSWORD, NEW_PASSWORD, "x" * 20,
               admin.split(":")[1], api_token["token"].split(":")[1],
               reg["token"].split(":")[1], rotated["token"].split(":")[1]]  # fmt: skip
    config_token = kubeconfig["config"].split("token: ")[1].split()[0]
    secrets.append(config_token.split(":")[1])
    for secret in secrets:
        assert secret not in text


async def test_client_chosen_fields_are_capped(env: Env) -> None:
    long_agent = "A" * 6000
    long_path = "/v3/" + "p" * 7000
    resp = await env.client.post(
        long_path + "?x=" + "q" * 500, data=b"{}", headers={"User-Agent": long_agent}
    )
    assert resp.status == 404
    resp = await env.client.post(
        LOGIN,
        json={"username": "n" * 250, "password": "p" * 20},
        headers={"User-Agent": long_agent},
    )
    assert resp.status == 401
    for record in env.records():
        assert len(record["userAgent"]) <= MAX_AGENT_CHARS + 20
        assert len(record["path"]) <= MAX_PATH_CHARS + 20
        assert len(json.dumps(record)) < 4096, record


async def test_a_browser_login_callback_is_recorded_without_its_code(env: Env) -> None:
    resp = await env.client.get("/v1/auth/github/callback?code=one-time-CODE-123&state=s")
    assert resp.status >= 400  # GitHub is not configured here
    [record] = env.records()
    assert record["kind"] == "login" and record["provider"] == "github"
    assert record["path"] == "/v1/auth/github/callback" and record["result"] != "success"
    assert "one-time-CODE-123" not in env.raw()
