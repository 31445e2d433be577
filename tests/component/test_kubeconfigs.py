"""``POST /v3/kubeconfigs`` in process: the answers, the token's scope as the proxy and the
management API see it, and the refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from config.schema import GatewaySettings, KubeconfigSettings, TokenSettings
from gateway.identity import hashing
from gateway.identity.directory import Directory
from gateway.operations.app import build_app
from gateway.runtime import Runtime
from gateway.store.records import USER, User
from gateway.store.sqlite import SQLiteStore
from tests.component.front_server import FrontServer

PASSWORD = "admin-password-123"
NOW = 1_800_000_000.0
DAY = 86400.0
EXEC_COMMAND = "/opt/herdgate/.venv/bin/herdgate"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    client: TestClient[Any, Any]
    directory: Directory
    clock: Clock
    admin: str
    ann: str
    """A user bound to clusters a and b (b has a direct endpoint), not to c."""
    ids: dict[str, str]
    bindings: dict[str, str]

    async def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        resp = await self.client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        return resp.status, await resp.json(content_type=None)

    async def kubeconfig(self, token: str, body: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v3/kubeconfigs", token, body)

    async def k8s(self, cluster: str, token: str) -> int:
        resp = await self.client.get(
            f"/k8s/clusters/{self.ids[cluster]}/api",
            headers={"Authorization": f"Bearer {token}"},
        )
        return resp.status


async def _login(client: TestClient[Any, Any], username: str, password: str) -> str:
    resp = await client.post(
        "/v3-public/localProviders/local?action=login",
        json={"username": username, "password": password},
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["token"])


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await SQLiteStore(tmp_path / "db").open()
    clock = Clock()
    directory = Directory(store, clock=clock)
    await directory.load()
    await directory.put(
        USER,
        User("u-admin", "admin", hashing.hash_password(PASSWORD), clock.now, admin=True,
             principal_ids=("local://u-admin",)),
    )  # fmt: skip
    settings = dataclasses.replace(
        GatewaySettings(),
        tokens=dataclasses.replace(TokenSettings(), kubeconfig_ttl_s=DAY, max_ttl_s=7 * DAY),
        kubeconfig=KubeconfigSettings(exec_command=EXEC_COMMAND),
    )
    app = build_app(settings, directory, Runtime("https://gw.test:8443", "CA-PEM", "test"))
    client = TestClient(FrontServer(app))
    await client.start_server()
    try:
        admin = await _login(client, "admin", PASSWORD)
        h = {"Authorization": f"Bearer {admin}"}
        ids = {}
        for name in ("a", "b", "c"):
            body: dict[str, Any] = {"name": name}
            if name == "b":
                body["localClusterAuthEndpoint"] = {"enabled": True, "fqdn": "b.example:6443"}
            resp = await client.post("/v3/clusters", json=body, headers=h)
            ids[name] = (await resp.json())["id"]
        resp = await client.post(
            "/v3/users", json={"username": "ann", "password": "ann-password-1"}, headers=h
        )
        ann_id = (await resp.json())["id"]
        bindings = {}
        for name in ("a", "b"):
            resp = await client.post(
                "/v3/clusterroletemplatebindings",
                json={"clusterId": ids[name], "userId": ann_id, "roleTemplateId": "cluster-member"},
                headers=h,
            )
            bindings[name] = (await resp.json())["id"]
        ann = await _login(client, "ann", "ann-password-1")
        yield Env(client, directory, clock, admin, ann, ids, bindings)
    finally:
        await client.close()
        await store.close()


async def test_star_is_every_cluster_the_caller_may_use_with_one_token(env: Env) -> None:
    status, answer = await env.kubeconfig(env.ann, {"clusters": ["*"]})
    assert status == 201, answer
    doc = yaml.safe_load(answer["config"])
    assert [c["name"] for c in doc["contexts"]] == ["a", "b", "b@fqdn"]
    assert answer["contexts"] == ["a", "b", "b@fqdn"]
    assert answer["clusters"] == [{"id": env.ids[n], "name": n} for n in ("a", "b")]
    assert doc["current-context"] == answer["currentContext"] == "a"
    servers = {c["name"]: c["cluster"]["server"] for c in doc["clusters"]}
    assert servers["a"] == f"https://gw.test:8443/k8s/clusters/{env.ids['a']}"
    assert servers["b@fqdn"] == "https://b.example:6443"
    tokens = {u["user"]["token"] for u in doc["users"]}
    assert len(tokens) == 1 and [u["name"] for u in doc["users"]] == ["a", "b"]
    token = tokens.pop()
    assert token.startswith(answer["tokenId"] + ":") and answer["id"] == answer["tokenId"]
    assert answer["expiresAt"] == "2027-01-16T08:00:00Z"  # NOW + kubeconfig_ttl (1 day)
    # The token: valid on a and b (no agent: 503, past authentication and access), not c.
    assert await env.k8s("a", token) == 503
    assert await env.k8s("b", token) == 503
    assert await env.k8s("c", token) == 401
    # Not for the management API, even to make another kubeconfig.
    assert (await env.call("GET", "/v3/clusters", token))[0] == 401
    assert (await env.kubeconfig(token, {"clusters": ["*"]}))[0] == 401
    # What the owner sees of it.
    status, view = await env.call("GET", f"/v3/tokens/{answer['tokenId']}", env.ann)
    assert view["clusterIds"] == [env.ids["a"], env.ids["b"]] and view["kind"] == "kubeconfig"
    assert view["clusterId"] == env.ids["a"]
    # Bound to c later: the token still is not valid there (its scope, not the role).
    me = (await env.call("GET", "/v3/users?me=true", env.ann))[1]["data"][0]["id"]
    binding = {"clusterId": env.ids["c"], "userId": me, "roleTemplateId": "read-only"}
    assert (await env.call("POST", "/v3/clusterroletemplatebindings", env.admin, binding))[0] == 201
    assert await env.k8s("c", token) == 401
    assert await env.k8s("c", env.ann) == 503  # her session token is not scoped
    # Losing b: refused there (404, as if b did not exist), still valid on a.
    await env.call("DELETE", f"/v3/clusterroletemplatebindings/{env.bindings['b']}", env.admin)
    assert await env.k8s("b", token) == 404
    assert await env.k8s("a", token) == 503


async def test_clusters_by_id_or_name_in_the_order_asked(env: Env) -> None:
    status, answer = await env.kubeconfig(env.ann, {"clusters": ["b", env.ids["a"], env.ids["b"]]})
    assert status == 201, answer
    assert answer["contexts"] == ["b", "b@fqdn", "a"] and answer["currentContext"] == "b"
    status, answer = await env.kubeconfig(env.admin, {"clusters": ["*"]})
    assert [c["name"] for c in answer["clusters"]] == ["a", "b", "c"]  # admins: every cluster


async def test_a_cluster_the_caller_may_not_see_is_one_that_does_not_exist(env: Env) -> None:
    hidden = await env.kubeconfig(env.ann, {"clusters": ["a", "c"]})
    hidden_id = await env.kubeconfig(env.ann, {"clusters": ["a", env.ids["c"]]})
    absent = await env.kubeconfig(env.ann, {"clusters": ["a", "nope"]})
    assert hidden == hidden_id == absent
    assert absent[0] == 404 and absent[1]["message"] == "clusters[1]: no such cluster"
    user = {"username": "nobody", "password": "nobody-password-1"}
    assert (await env.call("POST", "/v3/users", env.admin, user))[0] == 201
    nobody = await _login(env.client, "nobody", "nobody-password-1")
    status, answer = await env.kubeconfig(nobody, {"clusters": ["*"]})
    assert status == 404 and answer["message"] == "you may use no cluster"
    before = set(env.directory.tokens)
    assert (await env.kubeconfig(env.ann, {"clusters": ["nope"]}))[0] == 404
    assert set(env.directory.tokens) == before  # no token made for a refusal


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"clusters": "*"}, 422),
        ({"clusters": []}, 422),
        ({"clusters": ["*", "a"]}, 422),
        ({"clusters": [1]}, 422),
        ({"clusters": [""]}, 422),
        ({"clusters": ["a\nb"]}, 422),
        ({"clusters": ["a"] * 1001}, 422),
        ({"clusters": ["a"], "cluster": "a"}, 422),
        ({"clusters": ["a"], "credential": "password"}, 422),
        ({"clusters": ["a"], "provider": "local"}, 422),
        ({"clusters": ["a"], "credential": "exec", "provider": "saml"}, 422),
        ({"clusters": ["a"], "credential": "exec", "ttl": 60}, 422),
        ({"clusters": ["a"], "ttl": "1h"}, 422),
        ({"clusters": ["a"], "ttl": -5}, 422),
        ({"clusters": ["a"], "ttl": True}, 422),
        ({"clusters": ["a"], "ttl": 1e300}, 422),
        ([], 400),
    ],
)
async def test_bad_bodies_get_clear_errors(env: Env, body: Any, status: int) -> None:
    got, answer = await env.kubeconfig(env.ann, body)
    assert got == status, answer
    assert answer["type"] == "error" and answer["status"] == status and answer["message"]


async def test_not_json_is_a_400(env: Env) -> None:
    resp = await env.client.post(
        "/v3/kubeconfigs", data=b"{clusters: *}", headers={"Authorization": f"Bearer {env.ann}"}
    )
    assert resp.status == 400 and (await resp.json())["type"] == "error"


async def test_ttl_in_seconds_bounded_by_the_maximum(env: Env) -> None:
    status, answer = await env.kubeconfig(env.ann, {"clusters": ["a"], "ttl": 3600})
    assert status == 201 and answer["expiresAt"] == "2027-01-15T09:00:00Z"  # NOW + 1 h
    status, answer = await env.kubeconfig(env.ann, {"clusters": ["a"], "ttl": 10**9})
    assert status == 201 and answer["expiresAt"] == "2027-01-22T08:00:00Z"  # NOW + max 7 days
    token = yaml.safe_load(answer["config"])["users"][0]["user"]["token"]
    env.clock.now += 7 * DAY
    assert await env.k8s("a", token) == 401  # expired


async def test_exec_credential_runs_the_configured_command_for_all_clusters(env: Env) -> None:
    before = set(env.directory.tokens)
    status, answer = await env.kubeconfig(env.ann, {"clusters": ["*"], "credential": "exec"})
    assert status == 201, answer
    assert set(env.directory.tokens) == before and answer["tokenId"] is None
    doc = yaml.safe_load(answer["config"])
    execs = [u["user"]["exec"] for u in doc["users"]]
    assert len(execs) == 2 and execs[0] == execs[1]
    assert execs[0]["command"] == EXEC_COMMAND
    assert execs[0]["args"] == ["login", "--server", "https://gw.test:8443", "--provider", "local",
                                "--cluster", env.ids["a"], "--cluster", env.ids["b"]]  # fmt: skip
    assert "PATH" in execs[0]["installHint"] and EXEC_COMMAND in execs[0]["installHint"]


async def test_a_login_for_several_clusters_is_scoped_to_them(env: Env) -> None:
    """What ``herdgate login --cluster a --cluster b`` asks for."""
    resp = await env.client.post(
        "/v3-public/localProviders/local?action=login",
        json={"username": "ann", "password": "ann-password-1",
              "clusterIds": [env.ids["a"], env.ids["b"]]},
    )  # fmt: skip
    body = await resp.json()
    assert resp.status == 201 and body["clusterIds"] == [env.ids["a"], env.ids["b"]]
    assert await env.k8s("b", body["token"]) == 503
    assert await env.k8s("c", body["token"]) == 401
    resp = await env.client.post(
        "/v3-public/localProviders/local?action=login",
        json={"username": "ann", "password": "ann-password-1",
              "clusterIds": [env.ids["a"], env.ids["c"]]},
    )  # fmt: skip
    assert resp.status == 404


async def test_generate_kubeconfig_is_the_same_kubeconfig_for_one_cluster(env: Env) -> None:
    status, answer = await env.call(
        "POST", f"/v3/clusters/{env.ids['b']}?action=generateKubeconfig", env.ann
    )
    assert status == 200 and answer["type"] == "generateKubeConfigOutput"
    doc = yaml.safe_load(answer["config"])
    assert [c["name"] for c in doc["contexts"]] == ["b", "b@fqdn"]
    token = doc["users"][0]["user"]["token"]
    assert await env.k8s("b", token) == 503 and await env.k8s("a", token) == 401


async def test_deleting_a_cluster_narrows_the_token(env: Env) -> None:
    _, answer = await env.kubeconfig(env.ann, {"clusters": ["*"]})
    token = yaml.safe_load(answer["config"])["users"][0]["user"]["token"]
    status, _ = await env.call("DELETE", f"/v3/clusters/{env.ids['a']}", env.admin)
    assert status == 200
    _, view = await env.call("GET", f"/v3/tokens/{answer['tokenId']}", env.ann)
    assert view["clusterIds"] == [env.ids["b"]] and view["clusterId"] == env.ids["b"]
    assert await env.k8s("b", token) == 503
