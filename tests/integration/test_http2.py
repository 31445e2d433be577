"""HTTP/2 to the gateway over real TLS: kubectl's connections, many streams on one
connection (cluster requests, a watch, the management API through the bridge), resets,
limits, and curl."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import urllib.request
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests.binaries import kubectl
from tests.integration.conftest import World
from tests.integration.env import kubectl_run, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.request_path]


class Client:
    """A blocking HTTP/2 client (the ``h2`` package) on one TLS connection."""

    def __init__(self, world: World) -> None:
        ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.authority = f"127.0.0.1:{world.gateway.port}".encode()
        self.statuses: dict[int, int] = {}
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None

    def start(
        self,
        method: str,
        path: str,
        token: str = "",
        body: bytes | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", self.authority),
            (b":path", path.encode()),
            (b"accept", b"application/json"),
        ]
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        if body is not None:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        headers += extra or []
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.bodies[stream_id] = b""
        return stream_id

    def pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the gateway closed the connection")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                fields = dict(event.headers)
                self.statuses[event.stream_id] = int(fields[b":status"])
                self.headers[event.stream_id] = fields
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event
        self.sock.sendall(self.conn.data_to_send())

    def has(self, stream_id: int, needle: bytes) -> bool:
        """``needle`` is in the stream's body; reads more first only if it is not yet
        (it may have come in with earlier answers: reading would then wait for nothing)."""
        if needle not in self.bodies[stream_id]:
            self.pump()
        return needle in self.bodies[stream_id]

    def wait(self, *stream_ids: int) -> None:
        while not all(s in self.ended or s in self.resets for s in stream_ids):
            self.pump()

    def json(self, stream_id: int) -> Any:
        return json.loads(self.bodies[stream_id])

    def close(self) -> None:
        self.sock.close()


def _h2_connections(world: World) -> float:
    request = urllib.request.Request(
        world.gateway.url + "/metrics", headers={"Authorization": f"Bearer {world.admin.token}"}
    )
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    with urllib.request.urlopen(request, context=ctx, timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(r'herdgate_client_connections_total\{protocol="h2"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("version", ["1.27", "1.30", "1.32", "1.33"])
def test_kubectl_uses_http2(world: World, version: str) -> None:
    kc = world.kubeconfig_for(world.admin, "admin-h2")
    before = _h2_connections(world)
    out = kubectl_run(kubectl(version), kc, "get", "configmaps", "-A", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kind"] == "List"
    assert _h2_connections(world) > before


def test_many_streams_share_one_connection(world: World) -> None:
    client = Client(world)
    token = world.admin.token
    base = f"/k8s/clusters/{world.cluster_id}"
    try:
        gets = [
            client.start("GET", f"{base}/api/v1/namespaces/default/configmaps", token)
            for _ in range(30)
        ]
        watch = client.start(
            "GET", f"{base}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0", token
        )
        created = client.start(
            "POST",
            f"{base}/api/v1/namespaces/default/configmaps",
            token,
            body=json.dumps(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "over-h2"}}
            ).encode(),
        )
        users = client.start("GET", "/v3/users", token)  # the management API: aiohttp
        health = client.start("HEAD", "/healthz")
        missing = client.start("GET", "/no/such/path", token)
        unauthenticated = client.start("GET", f"{base}/api/v1/pods", "not-a-token")
        client.wait(*gets, created, users, health, missing, unauthenticated)
        assert {client.statuses[s] for s in gets} == {200}
        assert all(client.json(s)["kind"] == "ConfigMapList" for s in gets)
        assert client.statuses[created] == 201
        assert client.json(created)["metadata"]["name"] == "over-h2"
        assert client.statuses[users] == 200 and "data" in client.json(users)
        assert client.statuses[health] == 200 and client.bodies[health] == b""
        assert client.statuses[missing] == 404
        assert client.statuses[unauthenticated] == 401
        assert client.json(unauthenticated)["kind"] == "Status"
        assert client.headers[gets[0]].get(b"x-request-id")
        # The watch is still open and saw the ConfigMap created beside it.
        wait_until(lambda: client.has(watch, b"over-h2"), 10, "the watch event over HTTP/2")
        assert watch not in client.ended
        client.conn.reset_stream(watch)
        client.sock.sendall(client.conn.data_to_send())
        after = client.start("GET", f"{base}/version", token)
        client.wait(after)
        assert client.statuses[after] == 200 and "gitVersion" in client.json(after)
    finally:
        client.close()


def test_a_management_api_post_with_a_body_over_http2(world: World) -> None:
    client = Client(world)
    try:
        login = client.start(
            "POST",
            "/v3-public/localProviders/local?action=login",
            body=json.dumps({"username": "admin", "password": "wrong password"}).encode(),
        )
        client.wait(login)
        assert client.statuses[login] == 401
    finally:
        client.close()


def test_too_large_headers_get_431(world: World) -> None:
    client = Client(world)
    try:
        big = [(b"x-filler-%d" % i, b"v" * 8000) for i in range(10)]
        stream = client.start("GET", f"/k8s/clusters/{world.cluster_id}/version", extra=big)
        client.wait(stream)
        assert client.statuses[stream] == 431
        assert client.json(stream)["reason"] == "RequestHeaderFieldsTooLarge"
    finally:
        client.close()


def test_curl_reaches_the_management_api_over_http2(world: World) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "--cacert",
            str(world.gateway.ca_file),
            "-H",
            f"Authorization: Bearer {world.admin.token}",
            "-w",
            "\n%{http_version} %{http_code}",
            world.gateway.url + "/v3/users",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, _, tail = out.stdout.rpartition("\n")
    assert tail == "2 200", out.stderr
    assert "data" in json.loads(body)
