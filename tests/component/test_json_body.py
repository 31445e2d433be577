"""Every management-API body goes through one strict JSON parser: hostile bodies get a
v3 error (400, 413 or 422), never a 5xx, and a refused request changes nothing stored.

The fuzz test drives the real application (aiohttp test server, SQLite in a temporary
directory) with hypothesis-made bodies on every endpoint that reads one, and compares
the stored documents before and after each refused request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from config.schema import GatewaySettings
from gateway.identity import hashing
from gateway.identity.directory import Directory
from gateway.operations.app import build_app
from gateway.runtime import Runtime
from gateway.store.records import LEASE, REPLICA, USER, User
from gateway.store.sqlite import SQLiteStore

PASSWORD = "admin-password-123"
_HASH = hashing.hash_password(PASSWORD)


@dataclasses.dataclass
class Env:
    loop: asyncio.AbstractEventLoop
    client: TestClient[Any, Any]
    db: Path
    admin: str
    """The admin's session token."""
    ids: dict[str, str]

    def call(self, method: str, path: str, body: bytes, token: str | None) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            resp = await self.client.request(method, path, data=io.BytesIO(body), headers=headers)
            raw = await resp.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw
            return resp.status, parsed

        return self.loop.run_until_complete(go())

    def stored(self) -> dict[tuple[str, str], Any]:
        """Every stored document, without the records and fields that change by
        themselves: a token's ``last_used``, the process's replica heartbeat, and leases
        (renewed on a timer, whatever the requests)."""
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT kind, key, value FROM objects").fetchall()
        out = {}
        for kind, key, value in rows:
            if kind == LEASE:
                continue
            doc = json.loads(value)
            doc.pop("last_used", None)
            if kind == REPLICA:
                doc.pop("heartbeat", None)
            out[kind, key] = doc
        return out


async def _start(tmp: Path) -> tuple[TestClient[Any, Any], SQLiteStore, dict[str, str], str]:
    store = await SQLiteStore(tmp / "db").open()
    directory = Directory(store)
    await directory.load()
    await directory.put(
        USER,
        User("u-admin", "admin", _HASH, 1.0, admin=True, principal_ids=("local://u-admin",)),
    )
    await directory.put(
        USER, User("u-victim", "victim", _HASH, 1.0, principal_ids=("local://u-victim",))
    )
    app = build_app(GatewaySettings(), directory, Runtime("https://gw.test:8443", "CA", "test"))
    client = TestClient(TestServer(app))
    await client.start_server()
    resp = await client.post(
        "/v3-public/localProviders/local?action=login",
        json={"username": "admin", "password": PASSWORD},
    )
    admin = (await resp.json())["token"]
    h = {"Authorization": f"Bearer {admin}"}
    cluster = await (await client.post("/v3/clusters", json={"name": "fuzz"}, headers=h)).json()
    binding = await (
        await client.post(
            "/v3/clusterroletemplatebindings",
            json={"clusterId": cluster["id"], "userId": "u-victim", "roleTemplateId": "read-only"},
            headers=h,
        )
    ).json()
    reg = await (
        await client.post(
            "/v3/clusterregistrationtokens", json={"clusterId": cluster["id"]}, headers=h
        )
    ).json()
    template = await (
        await client.post(
            "/v3/roletemplates", json={"name": "t", "context": "cluster", "rules": []}, headers=h
        )
    ).json()
    project = await (
        await client.post("/v3/projects", json={"clusterId": cluster["id"], "name": "p"}, headers=h)
    ).json()
    ids = {
        "cluster": cluster["id"],
        "binding": binding["id"],
        "registration": reg["id"],
        "template": template["id"],
        "project": project["id"],
    }
    return client, store, ids, admin


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("json")
    loop = asyncio.new_event_loop()
    client, store, ids, admin = loop.run_until_complete(_start(tmp))
    try:
        yield Env(loop, client, tmp / "db", admin, ids)
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(store.close())
        loop.close()


# Every endpoint that reads a body: (method, path, the fields it reads, authenticated).
ENDPOINTS: list[tuple[str, str, tuple[str, ...], bool]] = [
    ("POST", "/v3-public/localProviders/local?action=login",
     ("username", "password", "ttl", "description", "clusterId", "clusterIds"), False),
    ("POST", "/v3-public/openLdapProviders/openldap?action=login", ("username", "password"), False),
    ("POST", "/v3-public/oidcProviders/oidc?action=deviceToken", ("deviceCode",), False),
    ("POST", "/v3/users", ("username", "password", "name", "enabled", "admin"), True),
    ("PUT", "/v3/users/u-victim", ("name", "enabled", "admin", "password"), True),
    ("PUT", "/v3/users/u-admin", ("name", "enabled", "admin", "password"), True),
    ("POST", "/v3/users/u-victim?action=setpassword", ("newPassword",), True),
    ("POST", "/v3/users?action=changepassword", ("currentPassword", "newPassword"), True),
    ("POST", "/v3/tokens", ("ttl", "description", "clusterId"), True),
    ("POST", "/v3/clusters", ("name", "description", "localClusterAuthEndpoint"), True),
    ("PUT", "/v3/clusters/{cluster}", ("description", "localClusterAuthEndpoint"), True),
    ("POST", "/v3/clusters/{cluster}?action=generateKubeconfig", ("credential", "provider"), True),
    ("POST", "/v3/kubeconfigs", ("clusters", "ttl", "credential", "provider"), True),
    ("POST", "/v3/clusterregistrationtokens", ("clusterId", "ttl", "expiresAt"), True),
    ("POST", "/v3/clusterregistrationtokens/{registration}?action=rotate",
     ("previousValidFor",), True),
    ("POST", "/v3/clusterroletemplatebindings",
     ("clusterId", "userId", "userPrincipalId", "groupPrincipalId", "roleTemplateId"), True),
    ("POST", "/v3/roletemplates",
     ("name", "context", "description", "rules", "roleTemplateNames", "locked", "external"), True),
    ("PUT", "/v3/roletemplates/{template}",
     ("name", "context", "description", "rules", "roleTemplateNames", "locked"), True),
    ("POST", "/v3/projects", ("clusterId", "name", "description"), True),
    ("PUT", "/v3/projects/{project}", ("clusterId", "name", "description"), True),
    ("POST", "/v3/projectroletemplatebindings",
     ("projectId", "userId", "userPrincipalId", "groupPrincipalId", "roleTemplateId"), True),
]  # fmt: skip

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e308, -1e308, 5e-324, 2**63, 10**30, 86400000 * 10**9]),
    st.text(max_size=40),
    st.sampled_from(
        ["", " ", "admin", "ADMIN", "\uff41\uff44\uff4d\uff49\uff4e", "read-only", "cluster-owner",
         "a\x00b", "a\r\nb",
         "x" * 5000, "\ud800", "exec", "fuzz", "c-nope", "local://u-victim", "openldap_group://",
         "openldap_group://cn=x,dc=y", "-----BEGIN CERTIFICATE-----", "a-long-enough-password", "*"]
    ),
)  # fmt: skip
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"name":' + b"[" * depth + b"]" * depth + b"}"


_raw_tricks = st.sampled_from(
    [
        b"",
        b" ",
        b"null",
        b"[]",
        b'"a string"',
        b"1",
        b"{",
        b"{}}",
        b'{"name": NaN}',
        b'{"ttl": Infinity}',
        b'{"ttl": -Infinity}',
        b'{"ttl": 1e999}',
        b'{"ttl": ' + b"9" * 5000 + b"}",
        b'{"name": "a", "name": "b"}',
        b'{"username": "x", "username": "admin"}',
        b"\xef\xbb\xbf{}",
        '{"name": "x"}'.encode("utf-16"),
        b'{"name": "\xff\xfe"}',
        b'{"name": "\\ud800"}',
        b"{'name': 'x'}",
        b'{"name": "x"} trailing',
        b'{"a":1}{"a":2}',
        b"\x00\x01\x02",
    ]
)
_bodies = st.one_of(
    st.binary(max_size=64),
    _raw_tricks,
    st.builds(_deep, st.integers(min_value=20, max_value=100_000),
              st.sampled_from(["array", "object", "field"])),
    _json.map(lambda v: json.dumps(v).encode()),
)  # fmt: skip


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, bool, bytes]:
    method, path, fields, authed = draw(st.sampled_from(ENDPOINTS))
    if draw(st.booleans()):
        body = draw(_bodies)
    else:  # an object with the endpoint's own fields, holding values of any type
        obj = draw(st.dictionaries(st.sampled_from(fields), _json, min_size=1))
        body = json.dumps(obj).encode()
    return method, path, authed, body


def _assert_clean(status: int, body: Any, label: str) -> None:
    assert status < 500, f"{label}: {status} {body!r}"[:2000]
    if status >= 400:
        assert isinstance(body, dict) and body.get("type") == "error", (label, status, body)
        assert body["status"] == status and isinstance(body["message"], str), body


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(_requests())
def test_hostile_bodies_never_get_a_5xx_and_refusals_change_nothing(
    env: Env, req: tuple[str, str, bool, bytes]
) -> None:
    method, path, authed, body = req
    path = path.format(**env.ids)
    before = env.stored()
    status, answer = env.call(method, path, body, env.admin if authed else None)
    event(f"status {status}")
    _assert_clean(status, answer, f"{method} {path} {body[:200]!r}")
    if status >= 400:
        assert env.stored() == before, f"{method} {path} {body[:200]!r} -> {status}"


LOGIN = "/v3-public/localProviders/local?action=login"


@pytest.mark.parametrize("kind", ["array", "object", "field"])
@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deeply_nested_json_is_a_400_not_a_500(env: Env, kind: str, depth: int) -> None:
    status, answer = env.call("POST", LOGIN, _deep(depth, kind), None)
    assert status == 400, answer
    assert answer["type"] == "error" and "deep" in answer["message"], answer


def test_nesting_up_to_the_limit_is_read(env: Env) -> None:
    # 32 levels: the body object and 31 more (a field nobody reads).
    body = b'{"username":"admin","password":"x","extra":' + _deep(31, "array") + b"}"
    status, answer = env.call("POST", LOGIN, body, None)
    assert status in (401, 429), answer


@pytest.mark.parametrize(
    "body",
    [
        b'{"username": "admin", "username": "x", "password": "p"}',
        b'{"username": "admin", "password": NaN}',
        b'{"ttl": Infinity, "username": "admin", "password": "p"}',
        b'{"ttl": 1e999, "username": "admin", "password": "p"}',
        '{"username": "admin", "password": "p"}'.encode("utf-16"),
        b'{"username": "adm\xffin", "password": "p"}',
        b"\xef\xbb\xbf{}",
        b'{"username": "admin"} {"password": "p"}',
        b"[1, 2]",
        b'"string"',
    ],
)
def test_not_strict_json_is_a_400(env: Env, body: bytes) -> None:
    status, answer = env.call("POST", LOGIN, body, None)
    assert status == 400, answer
    assert answer["type"] == "error" and answer["status"] == 400, answer


def test_too_big_is_a_413(env: Env) -> None:
    body = b'{"description":"' + b"x" * (1024 * 1024) + b'"}'
    status, answer = env.call("POST", "/v3/tokens", body, env.admin)
    assert status == 413 and answer["type"] == "error", answer


def test_a_big_body_sent_in_pieces_is_read_whole(env: Env) -> None:
    """A body under the limit that arrives over many reads is parsed whole (it used to be
    whatever the first read held)."""
    pem = "-----BEGIN CERTIFICATE-----\n" + "A" * 60000 + "\n-----END CERTIFICATE-----\n"
    body = json.dumps({"localClusterAuthEndpoint": {"caCerts": pem}}).encode()

    async def chunks() -> Any:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]
            await asyncio.sleep(0)

    async def go() -> int:
        resp = await env.client.put(
            f"/v3/clusters/{env.ids['cluster']}",
            data=chunks(),
            headers={"Authorization": f"Bearer {env.admin}"},
        )
        return resp.status

    assert env.loop.run_until_complete(go()) == 200


async def test_a_huge_ttl_is_refused_when_tokens_have_no_maximum(tmp_path: Path) -> None:
    """With ``tokens.max_ttl: 0`` a ttl of 1e300 ms was kept as is and its expiry could
    not be shown as a time (a 500 on every later listing of the user's tokens)."""
    store = await SQLiteStore(tmp_path / "db").open()
    directory = Directory(store)
    await directory.load()
    await directory.put(
        USER, User("u-admin", "admin", _HASH, 1.0, admin=True, principal_ids=("local://u-admin",))
    )
    base = GatewaySettings()
    settings_ = dataclasses.replace(base, tokens=dataclasses.replace(base.tokens, max_ttl_s=0))
    client = TestClient(TestServer(build_app(settings_, directory, Runtime("https://gw", "", "t"))))
    await client.start_server()
    try:
        resp = await client.post(LOGIN, json={"username": "admin", "password": PASSWORD})
        h = {"Authorization": f"Bearer {(await resp.json())['token']}"}
        for ttl in (1e300, 10**30, 2**63):
            resp = await client.post("/v3/tokens", json={"ttl": ttl}, headers=h)
            assert resp.status == 422, await resp.text()
        resp = await client.post("/v3/tokens", json={"ttl": 86400_000}, headers=h)
        assert resp.status == 201
        assert (await client.get("/v3/tokens", headers=h)).status == 200
    finally:
        await client.close()
        await store.close()
