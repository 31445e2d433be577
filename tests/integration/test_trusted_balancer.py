"""haproxy (TCP mode, ``send-proxy-v2``) in front of a real gateway: the failed-login
limits and the audit log see the client's address, not haproxy's; a PROXY header from
a peer that is not a trusted balancer is refused, and so is a trusted balancer's
connection without one; an agent through haproxy is seen at its own address."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import pytest
import yaml

from gateway.front.proxy_protocol import v1_header, v2_header
from tests.binaries import kubectl, require
from tests.integration.conftest import AGENT_SA_USER, World, start_world, stop_world
from tests.integration.env import free_port, kubectl_run, wait_until, write_kubeconfig
from tests.integration.test_hostile_requests import (
    _SMUGGLED_NAMES,
    SMUGGLED_IDENTITY,
    _fields,
    _h2_get,
    received,
)
from tests.integration.test_shared_login_state import call, password_login

pytestmark = pytest.mark.integration

BALANCER = "127.0.0.2"
"""haproxy's source address towards the gateway: the one trusted balancer."""
CLIENT = "127.0.0.5"
OTHER_CLIENT = "127.0.0.6"
STRANGER = "127.0.0.7"


@dataclass
class Haproxy:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_haproxy(directory: Path, backend_port: int, send: str = "send-proxy-v2") -> Haproxy:
    binary = require(shutil.which("haproxy"), "haproxy")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "haproxy.cfg"
    config.write_text(
        "defaults\n"
        "  mode tcp\n"
        "  timeout connect 5s\n"
        "  timeout client 60s\n"
        "  timeout server 60s\n"
        "frontend gateway\n"
        f"  bind 127.0.0.1:{port}\n"
        "  default_backend replicas\n"
        "backend replicas\n"
        f"  server gw 127.0.0.1:{backend_port} {send} source {BALANCER}\n"
    )
    log = directory / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
        )

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(listening, 15, "haproxy did not listen")
    return Haproxy(port, process, log)


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Haproxy]]:
    tmp = tmp_path_factory.mktemp("balancer")
    config = {
        "server": {"trusted_proxies": [f"{BALANCER}/32"], "proxy_protocol": True},
        "auth": {"login_failures_per_address": 3, "login_failures_per_user": 100},
    }
    world = start_world(tmp, name="behind", gateway_config=yaml.safe_dump(config))
    haproxy = start_haproxy(tmp / "haproxy", world.gateway.port)
    try:
        yield world, haproxy
    finally:
        haproxy.stop()
        stop_world(world)


def _audit(world: World) -> list[dict[str, object]]:
    path = world.gateway.state_dir / "audit.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_the_limiter_and_the_audit_log_see_the_client_behind_haproxy(
    balanced: tuple[World, Haproxy],
) -> None:
    world, haproxy = balanced
    via = f"https://127.0.0.1:{haproxy.port}"
    ca = world.gateway.ca_file
    for index in range(3):  # three users, one address: the address's limit
        assert password_login(via, ca, f"nobody-{index}", "wrong-password", CLIENT) == 401
    assert password_login(via, ca, "nobody-3", "wrong-password", CLIENT) == 429
    # Another client through the same haproxy is not limited: haproxy's own address
    # (every connection's peer) is not what is counted.
    assert password_login(via, ca, "nobody-4", "wrong-password", OTHER_CLIENT) == 401
    expected = {"nobody-0", "nobody-1", "nobody-2"}

    def client_logins() -> list[dict[str, object]] | None:
        # Every record is written as its request ends: wait for all of them, not the first.
        found = [
            r for r in _audit(world) if r.get("sourceIP") == CLIENT and r.get("kind") == "login"
        ]
        names = {r.get("loginName") for r in found}
        statuses = {r.get("status") for r in found}
        return found if names >= expected and 429 in statuses else None

    logins = wait_until(client_logins, 10, "not every login's audit record has the address")
    assert {r.get("loginName") for r in logins} >= expected
    assert {r.get("status") for r in logins} == {401, 429}
    assert not [r for r in _audit(world) if r.get("sourceIP") == BALANCER]


def _handshake(source: str, port: int, ca: Path, first: bytes) -> str:
    """Connect from ``source``, send ``first``, try TLS: ``ok`` or why it failed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    try:
        if first:
            raw.sendall(first)
        ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return "ok" if tls.recv(64).startswith(b"HTTP/1.1 200") else "no answer"
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {type(exc).__name__}"
    finally:
        raw.close()


def test_proxy_headers_are_believed_from_the_trusted_balancer_only(
    balanced: tuple[World, Haproxy],
) -> None:
    world, _ = balanced
    port, ca = world.gateway.port, world.gateway.ca_file
    forged = v2_header("198.51.100.1", "127.0.0.1", 1234, port)
    # A client that is not a trusted balancer: its PROXY header ends the connection.
    assert _handshake(STRANGER, port, ca, forged).startswith("refused")
    assert _handshake(STRANGER, port, ca, v1_header("198.51.100.1", "127.0.0.1", 1, 2)).startswith(
        "refused"
    )
    # ... and without one it is an ordinary client.
    assert _handshake(STRANGER, port, ca, b"") == "ok"
    # The trusted balancer must send one; with one it is believed.
    assert _handshake(BALANCER, port, ca, b"").startswith("refused")
    assert _handshake(BALANCER, port, ca, forged) == "ok"


def test_an_agent_through_haproxy_is_seen_at_its_own_address(
    balanced: tuple[World, Haproxy],
) -> None:
    world, haproxy = balanced
    assert world.agent is not None
    world.agent.stop()
    world.agent = world.start_agent("--server", f"https://127.0.0.1:{haproxy.port}")

    def remotes() -> list[str] | None:
        agents = world.cluster().get("agents")
        listed = agents if isinstance(agents, list) else []
        seen = [str(a.get("remote")) for a in listed if isinstance(a, dict)]
        return seen if len(seen) == 1 else None

    # The agent dials haproxy from 127.0.0.1; haproxy dials the gateway from BALANCER.
    assert wait_until(remotes, 30, "the agent never connected through haproxy") == ["127.0.0.1"]
    world.wait_state("active", 30)


def _h2_connections(world: World) -> float:
    reply = call(
        world.gateway.url + "/metrics",
        world.gateway.ca_file,
        headers={"Authorization": f"Bearer {world.admin.token}"},
    )
    assert reply.status == 200
    for line in reply.body.decode().splitlines():
        if line.startswith('herdgate_client_connections_total{protocol="h2"}'):
            return float(line.split()[-1])
    return 0.0


def test_kubectl_through_haproxy_is_audited_at_its_own_address(
    balanced: tuple[World, Haproxy],
) -> None:
    world, haproxy = balanced
    _, api = world.user("behind-haproxy", role="cluster-member")
    direct = world.kubeconfig_for(api, "behind-haproxy")
    doc = yaml.safe_load(direct.read_text())
    for cluster in doc["clusters"]:
        server = cluster["cluster"]["server"]
        cluster["cluster"]["server"] = server.replace(
            f":{world.gateway.port}/", f":{haproxy.port}/"
        )
    via = write_kubeconfig(world.tmp / "kubeconfig-via-haproxy", yaml.safe_dump(doc))
    assert f":{haproxy.port}/" in via.read_text()
    h2_before = _h2_connections(world)
    out = kubectl_run(kubectl("1.32"), via, "get", "namespaces")
    assert out.returncode == 0, out.stderr
    assert _h2_connections(world) > h2_before  # kubectl chose HTTP/2, through haproxy
    proxied = wait_until(
        lambda: [
            r for r in _audit(world) if r.get("kind") == "request"
            and r.get("username") == "behind-haproxy" and r.get("resource") == "namespaces"
        ] or None,
        10,
        "no audit record of kubectl's request",
    )  # fmt: skip
    assert {r.get("sourceIP") for r in proxied} == {"127.0.0.1"}  # kubectl's, not haproxy's


def _tls_via(haproxy: Haproxy, ca: Path, source: str, alpn: list[str]) -> ssl.SSLSocket:
    raw = socket.create_connection(
        ("127.0.0.1", haproxy.port), timeout=10, source_address=(source, 0)
    )
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _gateway_fds(world: World) -> int:
    assert world.gateway.process is not None
    return len(os.listdir(f"/proc/{world.gateway.process.pid}/fd"))


def test_a_hostile_client_behind_the_trusted_balancer_cannot_change_who_or_where(
    balanced: tuple[World, Haproxy],
) -> None:
    """Behind a trusted balancer, a member's client (HTTP/1.1 and HTTP/2) sends every
    identity and address claim it can, and a forged PROXY header of its own inside the
    balancer's connection. The API server sees the member, impersonated by the agent,
    and one ``X-Forwarded-For``: the client's real address as the balancer named it;
    none of the claims; the forged header is not believed; descriptors come back."""
    world, haproxy = balanced
    user_id, api = world.user("hostile-behind", role="cluster-member")
    ca = world.gateway.ca_file
    path = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces"
    fds = _gateway_fds(world)

    # HTTP/1.1
    probe = uuid.uuid4().hex
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{haproxy.port}",
             f"Authorization: Bearer {api.token}",
             *(f"{n}: {v}" for n, v in SMUGGLED_IDENTITY),
             f"X-Probe: {probe}", "Connection: close"]  # fmt: skip
    with _tls_via(haproxy, ca, CLIENT, ["http/1.1"]) as tls:
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while chunk := tls.recv(65536):
            head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:200]

    # HTTP/2
    with _tls_via(haproxy, ca, CLIENT, ["h2"]) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        status, _, h2_probe = _h2_get(
            world, tls, conn, path, api.token,
            [(n.lower().encode(), v.encode()) for n, v in SMUGGLED_IDENTITY],
        )  # fmt: skip
    assert status == 200

    for seen in (probe, h2_probe):
        (event,) = received(world, seen)
        assert event["user"]["username"] == AGENT_SA_USER
        assert event["impersonatedUser"]["username"] == user_id
        assert "system:masters" not in event["impersonatedUser"].get("groups", [])
        names = {name.lower() for name, _ in _fields(event)}
        assert not _SMUGGLED_NAMES & names, names
        forwarded = [v for n, v in _fields(event) if n.lower() == "x-forwarded-for"]
        assert forwarded == [CLIENT], forwarded

    # A PROXY header of the client's own, after the balancer's: not believed (it is
    # where TLS must begin), the connection ends.
    forged = v1_header("198.51.100.1", "127.0.0.1", 1, 2)
    raw = socket.create_connection(
        ("127.0.0.1", haproxy.port), timeout=10, source_address=(CLIENT, 0)
    )
    with raw:
        raw.sendall(forged)
        ctx = ssl.create_default_context(cafile=str(ca))
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()
    wait_until(lambda: _gateway_fds(world) <= fds + 2, 10, "descriptors not given back")
