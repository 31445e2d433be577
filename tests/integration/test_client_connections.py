"""Client connections over real TLS: the lean cluster path, the hand-over to aiohttp on the
same connection, pipelining, 100-continue and the limits on request heads."""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import pytest

from tests.integration.conftest import World

pytestmark = [pytest.mark.integration, pytest.mark.request_path]


def _tls(world: World) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_answers(sock: ssl.SSLSocket, count: int) -> list[tuple[int, bytes]]:
    """``count`` answers with a Content-Length, in order, as (status, body)."""
    data = b""
    answers: list[tuple[int, bytes]] = []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return answers
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(data) < length:
            data += sock.recv(65536)
        answers.append((status, data[:length]))
        data = data[length:]
    return answers


def test_one_connection_serves_the_cluster_then_the_api_then_the_cluster(world: World) -> None:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", world.gateway.port, context=ctx, timeout=10)
    auth = {"Authorization": f"Bearer {world.admin.token}"}
    try:
        conn.request("GET", f"/k8s/clusters/{world.cluster_id}/api", headers=auth)
        first = conn.getresponse()
        assert first.status == 200 and json.loads(first.read())["kind"] == "APIVersions"
        sock = conn.sock
        conn.request("GET", "/v3/users", headers=auth)  # handed over to aiohttp here
        users = conn.getresponse()
        assert users.status == 200 and "data" in json.loads(users.read())
        conn.request("GET", f"/k8s/clusters/{world.cluster_id}/version", headers=auth)
        again = conn.getresponse()
        assert again.status == 200 and "gitVersion" in json.loads(again.read())
        assert conn.sock is sock  # all three on one connection
    finally:
        conn.close()


def test_pipelined_cluster_requests_are_answered_in_order(world: World) -> None:
    auth = f"Authorization: Bearer {world.admin.token}\r\n"
    one = f"GET /k8s/clusters/{world.cluster_id}/api HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
    two = f"GET /k8s/clusters/{world.cluster_id}/version HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
    with _tls(world) as sock:
        sock.sendall((one + two).encode())
        answers = _read_answers(sock, 2)
    assert [status for status, _ in answers] == [200, 200]
    assert json.loads(answers[0][1])["kind"] == "APIVersions"
    assert "gitVersion" in json.loads(answers[1][1])


def test_expect_continue_gets_100_before_the_body(world: World) -> None:
    body = json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "expect-100"}}
    ).encode()
    head = (
        f"POST /k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/configmaps HTTP/1.1\r\n"
        f"Host: gw\r\nAuthorization: Bearer {world.admin.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    with _tls(world) as sock:
        sock.sendall(head)
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        ((status, answer),) = _read_answers(sock, 1)
    assert status == 201, answer
    assert json.loads(answer)["metadata"]["name"] == "expect-100"


def test_a_chunked_request_body_goes_up_intact(world: World) -> None:
    """A body without Content-Length is read as it arrives and sent up chunked."""
    blob = "z" * 300_000
    body = json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "chunked-up"},
         "data": {"blob": blob}}
    ).encode()  # fmt: skip
    head = (
        f"POST /k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/configmaps HTTP/1.1\r\n"
        f"Host: gw\r\nAuthorization: Bearer {world.admin.token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    pieces = [body[i : i + 70_000] for i in range(0, len(body), 70_000)]
    with _tls(world) as sock:
        sock.sendall(head)
        for piece in pieces:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        ((status, answer),) = _read_answers(sock, 1)
    assert status == 201, answer[:300]
    assert json.loads(answer)["data"]["blob"] == blob


def test_malformed_and_oversized_heads_get_a_status_and_a_closed_connection(
    world: World,
) -> None:
    with _tls(world) as sock:
        broken = f"GET /k8s/clusters/{world.cluster_id}/api HTTP/1.1\r\nBroken\r\n\r\n"
        sock.sendall(broken.encode())
        ((status, body),) = _read_answers(sock, 1)
        assert status == 400 and json.loads(body)["kind"] == "Status"
        assert sock.recv(1) == b""  # closed
    with _tls(world) as sock:
        filler = "X-Filler: " + "a" * 8000 + "\r\n"
        sock.sendall(
            (f"GET /k8s/clusters/{world.cluster_id}/api HTTP/1.1\r\n" + filler * 10).encode()
        )
        ((status, body),) = _read_answers(sock, 1)
        assert status == 431 and json.loads(body)["code"] == 431
