"""Hostile requests to the management API end to end (gateway, agent, stand-in API
server), over HTTP/1.1 and HTTP/2 (the bridge): malformed and mistyped JSON, huge
bodies, path spellings towards ``/v3``, duplicate names. Each gets a v3 error (never a
5xx), nothing stored changes, and the gateway keeps serving.

"Nothing stored changes" is read from the gateway's own SQLite file: every document
but replica heartbeats, and without the fields that change by themselves.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests.integration.conftest import USER_PASSWORD, World
from tests.integration.env import ApiError

pytestmark = pytest.mark.integration

LOGIN = "/v3-public/localProviders/local?action=login"
_VOLATILE = ("last_used", "connected_at", "ca_cert", "heartbeat", "last_login")


def stored(world: World) -> dict[tuple[str, str], Any]:
    with sqlite3.connect(Path(world.gateway.state_dir) / "herdgate.db") as db:
        rows = db.execute(
            "SELECT kind, key, value FROM objects WHERE kind NOT IN ('replicas', 'leases')"
        )
        out = {}
        for kind, key, value in rows.fetchall():
            doc = json.loads(value)
            for name in _VOLATILE:
                doc.pop(name, None)
            out[kind, key] = doc
    return out


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


def _tls(world: World, alpn: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    ctx.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=15)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def http1(
    world: World, method: str, target: str, body: bytes | None, token: str = "",
    chunked: bool = False,
) -> Answer:  # fmt: skip
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             "Content-Type: application/json"]  # fmt: skip
    if token:
        lines.append(f"Authorization: Bearer {token}")
    payload = body or b""
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        pieces = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(payload)}")
    with _tls(world, "http/1.1") as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        with contextlib.suppress(OSError):  # a 413 may come, and the close, before the end
            sock.sendall(payload)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (OSError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body_out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body_out, rest = body_out + rest[:size], rest[size + 2 :]
        rest = body_out
    return Answer(status, rest)


def http2(world: World, method: str, path: str, body: bytes, token: str = "") -> Answer:
    with _tls(world, "h2") as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        headers = [(":method", method), (":scheme", "https"), (":authority", "127.0.0.1"),
                   (":path", path), ("content-type", "application/json"),
                   ("content-length", str(len(body)))]  # fmt: skip
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        conn.send_headers(1, headers)
        size = conn.max_outbound_frame_size
        for at in range(0, len(body), size):
            conn.send_data(1, body[at : at + size])
        conn.end_stream(1)
        sock.sendall(conn.data_to_send())
        status, out = 0, b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    out += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return Answer(status, out)
                elif isinstance(event, h2.events.StreamReset):
                    return Answer(-event.error_code, out)
            sock.sendall(conn.data_to_send())


def assert_v3_error(answer: Answer, *codes: int) -> None:
    assert answer.status in codes, answer
    body = answer.json()
    assert body["type"] == "error" and body["status"] == answer.status, body


@pytest.fixture(scope="module")
def ids(world: World) -> dict[str, str]:
    reader, api = world.user("hostile-reader", role="read-only")
    kubeconfig = world.kubeconfig_for(api, "hostile-reader")
    cluster_token = kubeconfig.read_text().split("token: ")[1].split()[0]
    return {
        "cluster": world.cluster_id,
        "reader": reader,
        "reader_token": api.token,
        "cluster_token": cluster_token,
    }


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    world.wait_settled()  # a young world's first status writes are not the test's doing
    before = stored(world)
    yield
    after = stored(world)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, changed
    assert world.admin.get("/v3/users")["data"]  # still serving


# Every endpoint that reads a body: (method, path, authenticated, {field: its type}).
ENDPOINTS = [
    ("POST", LOGIN, False, {"username": str, "password": str, "ttl": float}),
    ("POST", "/v3/users", True, {"username": str, "password": str, "name": str,
                                 "enabled": bool, "admin": bool}),
    ("PUT", "/v3/users/{reader}", True, {"name": str, "enabled": bool, "admin": bool,
                                         "password": str}),
    ("POST", "/v3/users/{reader}?action=setpassword", True, {"newPassword": str}),
    ("POST", "/v3/tokens", True, {"ttl": float, "description": str, "clusterId": str}),
    ("POST", "/v3/clusters", True, {"name": str, "description": str,
                                    "localClusterAuthEndpoint": dict}),
    ("PUT", "/v3/clusters/{cluster}", True, {"description": str,
                                             "localClusterAuthEndpoint": dict}),
    ("POST", "/v3/clusters/{cluster}?action=generateKubeconfig", True,
     {"credential": str, "provider": str}),
    ("POST", "/v3/clusterroletemplatebindings", True,
     {"clusterId": str, "userId": str, "groupPrincipalId": str, "roleTemplateId": str}),
    ("POST", "/v3/clusterregistrationtokens", True,
     {"clusterId": str, "ttl": float, "expiresAt": str}),
]  # fmt: skip
WRONG: dict[type, list[Any]] = {
    str: [["admin"], {"$ne": None}, 12, True],
    bool: ["yes", 1, [True]],
    float: ["soon", [1], {"ms": 1}, True, -1],
    dict: ["on", [1], 3],
}

BAD_JSON = [  # under 64 KiB: the HTTP/2 client sends within the initial window
    b"[" * 60_000,
    b'{"a":' * 12_000,
    b'{"username": "admin", "username": "x", "password": "p"}',
    b'{"name": NaN}',
    b'{"ttl": 1e999}',
    '{"name": "x"}'.encode("utf-16"),
    b"\xef\xbb\xbf{}",
    b'{"name": "x"} {"name": "y"}',
    b"[]",
    b'{"name": "unterminated',
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("protocol", ["http1", "http2"])
@pytest.mark.parametrize("body", BAD_JSON, ids=lambda b: repr(b[:24]))
def test_bad_json_is_a_400_on_every_endpoint(
    world: World, ids: dict[str, str], body: bytes, protocol: str
) -> None:
    for method, path, authed, _ in ENDPOINTS:
        target = path.format(**ids)
        token = world.admin.token if authed else ""
        send = http1 if protocol == "http1" else http2
        answer = send(world, method, target, body, token)
        assert_v3_error(answer, 400)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e[0]} {e[1]}")
def test_a_field_of_the_wrong_type_is_refused_on_every_endpoint(
    world: World, ids: dict[str, str], endpoint: tuple[str, str, bool, dict[str, type]]
) -> None:
    method, path, authed, fields = endpoint
    for field, kind in fields.items():
        for wrong in WRONG[kind]:
            body = json.dumps({field: wrong}).encode()
            answer = http1(world, method, path.format(**ids), body,
                           world.admin.token if authed else "")  # fmt: skip
            assert_v3_error(answer, 400, 401, 404, 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("chunked", [False, True])
def test_huge_bodies_are_a_413(world: World, chunked: bool) -> None:
    body = b'{"description": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    for method, path in (("POST", LOGIN), ("POST", "/v3/tokens"), ("POST", "/v3/clusters")):
        answer = http1(world, method, path, body, world.admin.token, chunked=chunked)
        assert_v3_error(answer, 413)


# Spellings of management paths: whatever reaches a handler is authorised there.
PATH_TRICKS = [
    "/v3-public/../v3/users",
    "/v3-public/%2e%2e/v3/users",
    "/v3//users",
    "/V3/users",
    "/v3/./users",
    "/v3/users;x=1",
    "/v3/users%2f",
    "/v3/users/..%2f..%2fv3/users",
    "/k8s/clusters/{cluster}/../../v3/users",
    "/k8s/clusters/{cluster}/%2e%2e/%2e%2e/v3/users",
    "/k8s/clusters/{cluster}/..%2f..%2fv3/users",
    "/k8s/../v3/users",
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("trick", PATH_TRICKS)
def test_path_spellings_never_let_a_reader_or_a_cluster_token_create_a_user(
    world: World, ids: dict[str, str], trick: str
) -> None:
    cluster_token = ids["cluster_token"]
    body = json.dumps({"username": "tricked", "password": USER_PASSWORD, "admin": True}).encode()
    for token in ("", ids["reader_token"], cluster_token):
        answer = http1(world, "POST", trick.format(**ids), body, token)
        assert 400 <= answer.status < 500, (trick, answer)
    assert world.admin.get("/v3/users?username=tricked")  # the list works; no such user:
    assert "tricked" not in json.dumps(world.admin.get("/v3/users"))


def test_duplicate_names_are_refused(world: World, ids: dict[str, str]) -> None:
    before = stored(world)
    for username in ("admin", "ADMIN", "\uff41\uff44\uff4d\uff49\uff4e", "hostile-reader",
                     "HOSTILE-READER"):  # fmt: skip
        with pytest.raises(ApiError) as err:
            world.admin.post("/v3/users", {"username": username, "password": USER_PASSWORD})
        assert err.value.status == 409, (username, err.value.body)
    with pytest.raises(ApiError) as err:
        world.admin.post("/v3/clusters", {"name": world.cluster_name})
    assert err.value.status == 409
    with pytest.raises(ApiError) as err:
        world.admin.post("/v3/clusters", {"name": world.cluster_name.upper()})
    assert err.value.status == 422
    with pytest.raises(ApiError) as err:
        world.admin.post(
            "/v3/clusterroletemplatebindings",
            {"clusterId": world.cluster_id, "userId": ids["reader"], "roleTemplateId": "read-only"},
        )
    assert err.value.status == 409
    assert stored(world) == before


def test_one_name_created_at_once_by_many_gives_one_user(world: World) -> None:
    """Twelve POSTs racing for one name in several spellings: one 201, the rest 409."""
    spellings = ["racer", "RACER", "Racer", "\uff52\uff41\uff43\uff45\uff52"] * 3
    results: list[int] = []

    def create(name: str) -> None:
        try:
            world.admin.post("/v3/users", {"username": name, "password": USER_PASSWORD})
            results.append(201)
        except ApiError as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=create, args=(name,)) for name in spellings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [201] + [409] * 11, results
    users = [u for u in world.admin.get("/v3/users")["data"] if u["username"].lower() == "racer"
             or u["username"].startswith("\uff52")]  # fmt: skip
    assert len(users) == 1, users
