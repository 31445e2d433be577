"""The v3 management API in process (aiohttp test server, SQLite in a temp dir)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from config.schema import AuthSettings, GatewaySettings
from gateway.identity import hashing
from gateway.identity.directory import Directory
from gateway.operations.app import build_app
from gateway.runtime import Runtime
from gateway.store.records import USER, User
from gateway.store.sqlite import SQLiteStore

PASSWORD = "admin-password-123"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Directory, Clock]]:
    store = await SQLiteStore(tmp_path / "db").open()
    clock = Clock()
    directory = Directory(store, clock=clock)
    await directory.load()
    admin_hash = hashing.hash_password(PASSWORD)
    await directory.put(
        USER,
        User("u-admin", "admin", admin_hash, clock.now, admin=True,
             principal_ids=("local://u-admin",)),
    )  # fmt: skip
    settings = dataclasses.replace(
        GatewaySettings(),
        auth=dataclasses.replace(AuthSettings(), login_failures_per_user=3),
    )
    app = build_app(settings, directory, Runtime("https://gw.test:8443", "CA-PEM", "test"))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, directory, clock
    finally:
        await client.close()
        await store.close()


async def login(client: TestClient[Any, Any], username: str, password: str) -> Any:
    resp = await client.post(
        "/v3-public/localProviders/local?action=login",
        json={"username": username, "password": password},
    )
    return resp.status, await resp.json()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_login_and_token_lifecycle(env: Any) -> None:
    client, _, clock = env
    status, body = await login(client, "admin", PASSWORD)
    assert status == 201
    token = body["token"]
    assert body["userId"] == "u-admin" and token.startswith("token-")
    resp = await client.get("/v3/tokens", headers=auth(token))
    tokens = (await resp.json())["data"]
    assert [t["current"] for t in tokens] == [True]
    assert tokens[0]["lastUsedAt"] is not None
    assert "token" not in tokens[0]  # the secret is shown once, at creation
    # A second, expiring API token; revoking it works on the next request.
    resp = await client.post("/v3/tokens", json={"ttl": 60_000}, headers=auth(token))
    api_token = (await resp.json())["token"]
    assert (await client.get("/v3/users?me=true", headers=auth(api_token))).status == 200
    clock.now += 61
    assert (await client.get("/v3/users?me=true", headers=auth(api_token))).status == 401
    resp = await client.post("/v3/tokens?action=logout", headers=auth(token))
    assert resp.status == 200
    assert (await client.get("/v3/tokens", headers=auth(token))).status == 401


async def test_wrong_password_and_unknown_user_get_the_same_answer(env: Any) -> None:
    client, _, _ = env
    a = await login(client, "admin", "wrong-password-x")
    b = await login(client, "nobody", "wrong-password-x")
    assert a == b
    assert a[0] == 401 and "invalid username or password" in a[1]["message"]


async def test_failed_logins_are_limited_per_user(env: Any) -> None:
    client, _, clock = env
    for _ in range(3):
        assert (await login(client, "admin", "nope-nope-nope"))[0] == 401
    resp = await client.post(
        "/v3-public/localProviders/local?action=login",
        json={"username": "admin", "password": PASSWORD},
    )
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    clock.now += 15 * 60 + 1
    assert (await login(client, "admin", PASSWORD))[0] == 201


async def test_users_crud_and_disable(env: Any) -> None:
    client, _, _ = env
    admin = (await login(client, "admin", PASSWORD))[1]["token"]
    resp = await client.post(
        "/v3/users", json={"username": "bob", "password": "bob-password-1"}, headers=auth(admin)
    )
    assert resp.status == 201
    bob = await resp.json()
    assert bob["principalIds"] == [f"local://{bob['id']}"] and "password" not in str(bob)
    dup = await client.post(
        "/v3/users", json={"username": "bob", "password": "bob-password-1"}, headers=auth(admin)
    )
    assert dup.status == 409
    short = await client.post(
        "/v3/users", json={"username": "eve", "password": "short"}, headers=auth(admin)
    )
    assert short.status == 422
    bob_token = (await login(client, "bob", "bob-password-1"))[1]["token"]
    assert (await client.get("/v3/users", headers=auth(bob_token))).status == 403
    resp = await client.put(f"/v3/users/{bob['id']}", json={"enabled": False}, headers=auth(admin))
    assert (await resp.json())["enabled"] is False
    assert (await client.get("/v3/users?me=true", headers=auth(bob_token))).status == 401
    assert (await login(client, "bob", "bob-password-1"))[0] == 401
    resp = await client.delete(f"/v3/users/{bob['id']}", headers=auth(admin))
    assert resp.status == 200
    assert (await client.get(f"/v3/users/{bob['id']}", headers=auth(admin))).status == 404


async def test_admin_revokes_all_tokens_of_a_user(env: Any) -> None:
    client, _, _ = env
    admin = (await login(client, "admin", PASSWORD))[1]["token"]
    bob = await (
        await client.post("/v3/users", json={"username": "bob", "password": "bob-password-1"},
                          headers=auth(admin))
    ).json()  # fmt: skip
    tokens = [(await login(client, "bob", "bob-password-1"))[1]["token"] for _ in range(3)]
    resp = await client.delete(f"/v3/tokens?userId={bob['id']}", headers=auth(admin))
    assert len((await resp.json())["data"]) == 3
    for token in tokens:
        assert (await client.get("/v3/users?me=true", headers=auth(token))).status == 401


async def test_clusters_bindings_and_kubeconfig(env: Any) -> None:
    client, _, _ = env
    admin = (await login(client, "admin", PASSWORD))[1]["token"]
    resp = await client.post("/v3/clusters", json={"name": "prod"}, headers=auth(admin))
    cluster = await resp.json()
    assert resp.status == 201 and cluster["state"] == "pending" and cluster["id"].startswith("c-")
    for bad in ({"name": "Prod!"}, {"name": ""}, {}):
        assert (await client.post("/v3/clusters", json=bad, headers=auth(admin))).status == 422
    assert (await client.post("/v3/clusters", json={"name": "prod"},
                              headers=auth(admin))).status == 409  # fmt: skip
    reg = await (
        await client.post("/v3/clusterregistrationtokens", json={"clusterId": cluster["id"]},
                          headers=auth(admin))
    ).json()  # fmt: skip
    assert reg["command"].startswith("herdgate agent --server https://gw.test:8443 --token crt-")
    assert "--ca-checksum" in reg["command"]
    listed = await (await client.get("/v3/clusterregistrationtokens", headers=auth(admin))).json()
    assert listed["data"] and "token" not in listed["data"][0]

    await client.post("/v3/users", json={"username": "carol", "password": "carol-password-1"},
                      headers=auth(admin))  # fmt: skip
    carol_token = (await login(client, "carol", "carol-password-1"))[1]["token"]
    assert (await (await client.get("/v3/clusters", headers=auth(carol_token))).json())[
        "data"
    ] == []
    me = await (await client.get("/v3/users?me=true", headers=auth(carol_token))).json()
    carol_id = me["data"][0]["id"]
    for bad in (
        {"clusterId": cluster["id"], "userId": carol_id, "roleTemplateId": "god"},
        {"clusterId": cluster["id"], "roleTemplateId": "read-only"},
        {"clusterId": cluster["id"], "userId": "u-ghost", "roleTemplateId": "read-only"},
    ):
        resp = await client.post("/v3/clusterroletemplatebindings", json=bad, headers=auth(admin))
        assert resp.status == 422, bad
    resp = await client.post(
        "/v3/clusterroletemplatebindings",
        json={"clusterId": cluster["id"], "userId": carol_id, "roleTemplateId": "read-only"},
        headers=auth(admin),
    )
    binding = await resp.json()
    assert resp.status == 201 and binding["id"].startswith(f"{cluster['id']}:crtb-")
    visible = await (await client.get("/v3/clusters", headers=auth(carol_token))).json()
    assert [c["id"] for c in visible["data"]] == [cluster["id"]]
    # Read-only may not manage the cluster.
    assert (await client.post("/v3/clusterregistrationtokens", json={"clusterId": cluster["id"]},
                              headers=auth(carol_token))).status == 403  # fmt: skip
    resp = await client.post(
        f"/v3/clusters/{cluster['id']}?action=generateKubeconfig", headers=auth(carol_token)
    )
    config = yaml.safe_load((await resp.json())["config"])
    assert config["clusters"][0]["cluster"]["server"] == (
        f"https://gw.test:8443/k8s/clusters/{cluster['id']}"
    )
    scoped = config["users"][0]["user"]["token"]
    # The kubeconfig token is scoped to the cluster: not valid for the management API.
    assert (await client.get("/v3/clusters", headers=auth(scoped))).status == 401
    resp = await client.delete(f"/v3/clusterroletemplatebindings/{binding['id']}",
                               headers=auth(admin))  # fmt: skip
    assert resp.status == 200
    assert (await (await client.get("/v3/clusters", headers=auth(carol_token))).json())[
        "data"
    ] == []


async def test_bad_input_gets_clear_errors(env: Any) -> None:
    client, _, _ = env
    admin = (await login(client, "admin", PASSWORD))[1]["token"]
    resp = await client.post("/v3/users", data=b"{not json", headers=auth(admin))
    assert resp.status == 400 and (await resp.json())["type"] == "error"
    resp = await client.post("/v3/users", data=b"[1,2]", headers=auth(admin))
    assert resp.status == 400
    resp = await client.post("/v3/tokens", json={"ttl": "soon"}, headers=auth(admin))
    assert resp.status == 422
    resp = await client.get("/v3/nothing", headers=auth(admin))
    assert resp.status == 404 and (await resp.json())["type"] == "error"
    big = io.BytesIO(b"x" * 2_000_000)
    resp = await client.post("/v3-public/localProviders/local?action=login", data=big)
    assert resp.status in (400, 413)
    resp = await client.post("/v3-public/nopeProviders/x?action=login", json={})
    assert resp.status == 404


async def test_tunnel_endpoint_refuses_bad_tokens_and_bad_upgrades(env: Any) -> None:
    client, _, _ = env
    admin = (await login(client, "admin", PASSWORD))[1]["token"]
    cluster = await (
        await client.post("/v3/clusters", json={"name": "edge"}, headers=auth(admin))
    ).json()
    reg = await (
        await client.post("/v3/clusterregistrationtokens", json={"clusterId": cluster["id"]},
                          headers=auth(admin))
    ).json()  # fmt: skip
    token = reg["command"].split("--token ")[1].split()[0]
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    resp = await client.get("/v3/connect", headers={**upgrade, **auth("crt-x:wrong")})
    assert resp.status == 401 and (await resp.json())["code"] == "Unauthorized"
    resp = await client.get("/v3/connect", headers=auth(token))  # not an upgrade
    assert resp.status == 400 and "Upgrade" in (await resp.json())["message"]
    resp = await client.get(
        "/v3/connect", headers={**upgrade, "Sec-WebSocket-Version": "8", **auth(token)}
    )
    assert resp.status == 426 and resp.headers["Sec-WebSocket-Version"] == "13"
    assert (await resp.json())["code"] == "UpgradeRequired"
