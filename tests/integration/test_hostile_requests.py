"""Hostile requests end to end (gateway, tunnel, agent, stand-in API server): identity
and path attacks, asserted on what the API server received, not only on status codes.

Every request carries a unique ``X-Probe`` header; ``received(world, probe)`` is what the
stand-in API server logged for it (its audit log records every header line as it
arrived). The stand-in writes that line before it answers, so once the gateway's answer
is in, whatever reached the API server has been logged.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import yaml

from tests.integration.conftest import AGENT_SA_USER, World

pytestmark = [pytest.mark.integration, pytest.mark.request_path]


# a raw HTTP/1.1 client: the exact bytes given, one answer read back


def _tls(world: World, alpn: list[str] | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


class Answer:
    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status = status
        self.head = head
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


def send_raw(world: World, data: bytes) -> Answer:
    """Send ``data`` on a new TLS connection and read one answer (to its length, or to
    the connection's end)."""
    with _tls(world, ["http/1.1"]) as sock:
        sock.sendall(data)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed without an answer: {buffer!r}")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if status == 101:
            return Answer(status, head, body)
        while length is None or len(body) < length:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            body += chunk
        return Answer(status, head, body if length is None else body[:length])


def request(
    world: World,
    method: str,
    target: str,
    token: str | None,
    headers: list[tuple[str, str]] | None = None,
    probe: str | None = None,
) -> tuple[Answer, str]:
    probe = probe or uuid.uuid4().hex
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{world.gateway.port}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    lines += [f"X-Probe: {probe}", "Connection: close"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return send_raw(world, raw), probe


def received(world: World, probe: str) -> list[dict[str, Any]]:
    """The stand-in API server's audit events of requests that carried ``probe``."""
    return [
        event
        for event in world.standin.audit_events()
        if any(name.lower() == "x-probe" and probe in value for name, value in _fields(event))
    ]


def _fields(event: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(n), str(v)) for n, v in event.get("requestHeaders", [])]


def assert_status(answer: Answer, code: int) -> None:
    assert answer.status == code, answer
    body = answer.json()
    assert body["kind"] == "Status" and body["code"] == code, body


@pytest.fixture(scope="module")
def reader(world: World) -> tuple[str, str]:
    user_id, api = world.user("hostile-reader", role="read-only")
    return user_id, api.token


@pytest.fixture(scope="module")
def member(world: World) -> tuple[str, str]:
    user_id, api = world.user("hostile-member", role="cluster-member")
    return user_id, api.token


# finding 2: the read-only role and every spelling of exec, attach, port-forward, proxy

POD = "api/v1/namespaces/default/pods/demo"
ACTIVE_SPELLINGS = [
    f"{POD}/ex%65c?command=id&stdout=true",
    f"{POD}/%65%78%65%63?command=id&stdout=true",
    f"{POD}/exec/?command=id",
    f"{POD}/att%61ch?stdout=true",
    f"{POD}/port%66orward?ports=80",
    f"{POD}/portforward?ports=80",
    f"{POD}/pr%6fxy/",
    f"{POD}/proxy",
    "api/v1/namespaces/default/services/web/pr%6Fxy/x",
]
WEBSOCKET_UPGRADE = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
    ("Sec-WebSocket-Protocol", "v5.channel.k8s.io"),
]


@pytest.mark.parametrize("upgrade", [False, True], ids=["plain", "websocket"])
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("spelling", ACTIVE_SPELLINGS)
def test_read_only_cannot_reach_an_active_subresource_by_any_spelling(
    world: World, reader: tuple[str, str], spelling: str, method: str, upgrade: bool
) -> None:
    _, token = reader
    headers = WEBSOCKET_UPGRADE if upgrade else []
    answer, probe = request(
        world, method, f"/k8s/clusters/{world.cluster_id}/{spelling}", token, headers
    )
    assert_status(answer, 403)
    assert received(world, probe) == []


def test_fragments_and_nul_in_paths_are_refused_before_the_api_server(
    world: World, reader: tuple[str, str]
) -> None:
    _, token = reader
    base = f"/k8s/clusters/{world.cluster_id}/"
    for target in (
        f"{base}{POD}/proxy#x",
        f"{base}{POD}/exec#frag?command=id",
        f"{base}api/v1/pods%00",
        f"{base}api/v1/namespaces/default/pods%0d%0aImpersonate-User:%20admin",
        f"{base}api/v1/pods?x=1#frag",
    ):
        answer, probe = request(world, "GET", target, token)
        assert answer.status == 400, (target, answer)
        assert received(world, probe) == [], target


def test_a_case_changed_subresource_is_forwarded_as_written_and_is_not_exec(
    world: World, reader: tuple[str, str]
) -> None:
    """``EX%45C`` decodes to ``EXEC``: not a subresource the API server knows (paths are
    case-sensitive), so the read-only role may send it, and the API server gets
    ``EXEC`` (not a spelling it could read as ``exec``). Its RBAC then refuses it: no role
    names the subresource ``pods/EXEC`` (kube-apiserver authorises before it routes)."""
    _, token = reader
    answer, probe = request(
        world, "GET", f"/k8s/clusters/{world.cluster_id}/{POD}/EX%45C?command=id", token
    )
    assert answer.status == 403, answer
    assert "pods/EXEC" in answer.body.decode(), answer
    (event,) = received(world, probe)
    assert event["requestURI"].startswith(f"/{POD}/EXEC?")


# path tricks: nothing reaches another cluster or the management API


@pytest.fixture(scope="module")
def other_cluster(world: World) -> str:
    return str(world.admin.post("/v3/clusters", {"name": "hostile-other"})["id"])


@pytest.mark.parametrize(
    "suffix",
    [
        "/api/../../{other}/api",
        "/api/%2e%2e/%2E%2E/{other}/api",
        "/api/.%2e/.%2E/{other}/api",
        "/../../../v3/users",
        "/api/%2e%2e/%2e%2e/%2e%2e/v3/users",
        "%2F..%2F{other}/api",
        "/api/v1/namespaces%2Fkube-system/pods",
        "/api/v1/namespaces%252Fkube-system%252F..%252F..%252F..%252Fv3/pods",
        "//api",
        "/api//v1",
        "/api/v1/./pods",
        "/api\\..\\..\\v3",
        "./api",
        "/api;x=..;/../../v3/users",
    ],
)
def test_path_tricks_do_not_leave_the_cluster(
    world: World, member: tuple[str, str], other_cluster: str, suffix: str
) -> None:
    _, token = member
    target = f"/k8s/clusters/{world.cluster_id}" + suffix.format(other=other_cluster)
    answer, probe = request(world, "GET", target, token)
    assert answer.status in (400, 403, 404), answer
    assert answer.json()["kind"] == "Status", answer  # never a management-API answer
    events = received(world, probe)
    if answer.status == 403:
        # Only the API server's RBAC may refuse here (a resource named with an odd
        # literal has no rule), never the gateway: this member may use this cluster.
        assert events and events[0]["responseStatus"]["code"] == 403, (answer, events)
    for event in events:
        # Only a name with an odd literal in it, inside this cluster's API, may arrive.
        assert event["requestURI"].startswith("/api/v1/namespaces"), event
        assert "/v3" not in event["requestURI"].replace("%252F", "")


@pytest.mark.parametrize(
    "target",
    [
        "/K8S/clusters/{id}/api",
        "/k8s/Clusters/{id}/api",
        "/k8s/clusters/{id}./api",
        "/k8s/clusters/{id}%2e/api",
        "/k8s/clusters/{upper}/api",
        "/k8s/clusters/{id}:443/api",
        "/k8s//clusters/{id}/api",
        "/v3/../k8s/clusters/{id}/api",
    ],
)
def test_spellings_of_the_cluster_prefix_reach_nothing(
    world: World, member: tuple[str, str], target: str
) -> None:
    _, token = member
    path = target.format(id=world.cluster_id, upper=world.cluster_id.upper())
    answer, probe = request(world, "GET", path, token)
    assert answer.status in (400, 404), answer
    assert received(world, probe) == []


# identity: only the gateway states who the caller is

SMUGGLED_IDENTITY = [
    ("X-Remote-User", "system:admin"),
    ("X-Remote-Group", "system:masters"),
    ("X-Remote-Extra-Scopes", "all"),
    ("X-Forwarded-For", "10.9.8.7"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Client-Cert", "By=spiffe://x;URI=spiffe://admin"),
    ("X-Real-Ip", "10.9.8.7"),
    ("Forwarded", "for=10.9.8.7;by=evil"),
    ("Sec-WebSocket-Protocol", "base64url.bearer.authorization.k8s.io.c2VjcmV0"),
]
_SMUGGLED_NAMES = {name.lower() for name, _ in SMUGGLED_IDENTITY} - {"x-forwarded-for"}


def test_front_proxy_identity_and_address_claims_never_reach_the_api_server(
    world: World, member: tuple[str, str]
) -> None:
    user_id, token = member
    answer, probe = request(
        world,
        "GET",
        f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces",
        token,
        SMUGGLED_IDENTITY,
    )
    assert answer.status == 200, answer
    (event,) = received(world, probe)
    assert event["user"]["username"] == AGENT_SA_USER
    assert event["impersonatedUser"]["username"] == user_id
    assert "system:masters" not in event["impersonatedUser"].get("groups", [])
    names = [name.lower() for name, _ in _fields(event)]
    assert not _SMUGGLED_NAMES & set(names), names
    # The gateway states the client's address itself, once.
    assert [v for n, v in _fields(event) if n.lower() == "x-forwarded-for"] == ["127.0.0.1"]


@pytest.mark.parametrize("strong_first", [False, True])
def test_two_authorization_fields_are_refused(
    world: World, reader: tuple[str, str], member: tuple[str, str], strong_first: bool
) -> None:
    """Which one did the gateway check? Neither is used: 400, and nothing is sent."""
    _, weak = reader
    _, strong = member
    first, second = (strong, weak) if strong_first else (weak, strong)
    answer, probe = request(
        world,
        "GET",
        f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces",
        first,
        [("Authorization", f"Bearer {second}")],
    )
    assert_status(answer, 400)
    assert received(world, probe) == []


def test_two_host_fields_are_refused(world: World, member: tuple[str, str]) -> None:
    _, token = member
    answer, probe = request(
        world, "GET", f"/k8s/clusters/{world.cluster_id}/api", token, [("Host", "evil.example")]
    )
    assert answer.status == 400, answer
    assert received(world, probe) == []


def test_basic_authorization_with_a_token_acts_as_its_user(
    world: World, member: tuple[str, str]
) -> None:
    user_id, token = member
    basic = base64.b64encode(token.encode()).decode()
    answer, probe = request(
        world,
        "GET",
        f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces",
        None,
        [("Authorization", f"Basic {basic}")],
    )
    assert answer.status == 200, answer
    (event,) = received(world, probe)
    assert event["user"]["username"] == AGENT_SA_USER  # the caller's credential stayed here
    assert event["impersonatedUser"]["username"] == user_id


def test_a_token_in_the_query_string_is_not_a_credential(
    world: World, member: tuple[str, str]
) -> None:
    _, token = member
    for param in ("access_token", "token", "authorization"):
        target = f"/k8s/clusters/{world.cluster_id}/api?{param}={token}"
        answer, probe = request(world, "GET", target, None)
        assert_status(answer, 401)
        assert received(world, probe) == []


def test_a_token_for_one_cluster_is_refused_on_another(
    world: World, member: tuple[str, str], other_cluster: str
) -> None:
    _, token = member
    scoped_kc = world.kubeconfig_for(world.gateway.api(token), "hostile-scoped")
    scoped = yaml.safe_load(scoped_kc.read_text())["users"][0]["user"]["token"]
    answer, probe = request(world, "GET", f"/k8s/clusters/{other_cluster}/api", scoped)
    assert_status(answer, 401)
    assert received(world, probe) == []
    answer, probe = request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", scoped)
    assert answer.status == 200, answer


# the same attacks over HTTP/2 (kubectl's protocol)


@pytest.fixture
def h2conn(world: World) -> Iterator[tuple[ssl.SSLSocket, h2.connection.H2Connection]]:
    sock = _tls(world, ["h2"])
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    try:
        yield sock, conn
    finally:
        sock.close()


def _h2_get(
    world: World,
    sock: ssl.SSLSocket,
    conn: h2.connection.H2Connection,
    path: str,
    token: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, bytes, str]:
    probe = uuid.uuid4().hex
    stream_id = conn.get_next_available_stream_id()
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", f"127.0.0.1:{world.gateway.port}".encode()),
        (b":path", path.encode()),
        (b"authorization", f"Bearer {token}".encode()),
        (b"x-probe", probe.encode()),
        *(extra or []),
    ]
    conn.send_headers(stream_id, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, body = 0, b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                sock.sendall(conn.data_to_send())
                return status, body, probe
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                return -event.error_code, body, probe
        sock.sendall(conn.data_to_send())


@pytest.mark.parametrize("spelling", ACTIVE_SPELLINGS)
def test_read_only_over_http2_cannot_reach_an_active_subresource(
    world: World,
    reader: tuple[str, str],
    h2conn: tuple[ssl.SSLSocket, h2.connection.H2Connection],
    spelling: str,
) -> None:
    _, token = reader
    sock, conn = h2conn
    status, body, probe = _h2_get(
        world, sock, conn, f"/k8s/clusters/{world.cluster_id}/{spelling}", token
    )
    assert status == 403, body
    assert received(world, probe) == []


def test_identity_claims_over_http2_never_reach_the_api_server(
    world: World,
    member: tuple[str, str],
    h2conn: tuple[ssl.SSLSocket, h2.connection.H2Connection],
) -> None:
    user_id, token = member
    sock, conn = h2conn
    extra = [(n.lower().encode(), v.encode()) for n, v in SMUGGLED_IDENTITY]
    status, body, probe = _h2_get(
        world, sock, conn, f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces", token, extra
    )
    assert status == 200, body
    (event,) = received(world, probe)
    assert event["impersonatedUser"]["username"] == user_id
    names = {name.lower() for name, _ in _fields(event)}
    assert not _SMUGGLED_NAMES & names, names
