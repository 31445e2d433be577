"""Finding 4, "unbounded memory", end to end: the gateway's RSS before, during and after.

A. An HTTP/2 client sets its windows to 0 and asks for big LISTs on many streams. Each
   stream could hold the tunnel's stream window (4 MiB) plus what waits for the client's
   window: `limits.http2_buffer` bounds what one connection holds for a peer that does
   not read, all streams together (the largest stream is reset, ENHANCE_YOUR_CALM).
B. An agent with a valid registration token advertises a huge window and never reads,
   while clients send it big request bodies: `tunnel.send_buffer` bounds what waits for
   the tunnel (writers wait), and after `tunnel.send_timeout` without progress the
   tunnel is closed.
C. An agent that never reads floods WebSocket and tunnel PINGs: their answers pile up
   for a socket that is not read (the Pong backlog is capped, the tunnel's queued
   answers count towards its send buffer).

Memory must come back after close (the gateway trims the heap once a close freed a
lot). Assertions are on the caps with generous margins, never on time; the figures are
printed (`pytest -s`) for docs/security.md.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import rogue
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import wait_until
from tests.integration.test_hostile_h2_floods import (
    END_HEADERS,
    END_STREAM,
    HEADERS,
    RST_STREAM,
    SETTINGS,
    Raw,
    frame,
    gateway_pid,
    rss_kib,
    served,
)

pytestmark = pytest.mark.integration

MIB = 1024
"""KiB per MiB (RSS is read in KiB)."""
HTTP2_BUFFER_MIB = 64
SEND_BUFFER_MIB = 8
ENHANCE_YOUR_CALM = 0xB
MARGIN_MIB = 64
"""Allocator noise, caches warmed by the first requests, TLS buffers of the flood's own
connections: what the gateway may hold beyond a cap."""
RETURNED_MIB = 48
"""After close, RSS must come back to within this of where it was before."""

CONFIG = f"""
tunnel:
  send_buffer: {SEND_BUFFER_MIB}MiB
  send_timeout: 2s
limits:
  http2_buffer: {HTTP2_BUFFER_MIB}MiB
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world(tmp_path_factory.mktemp("memory"), gateway_config=CONFIG)
    try:
        yield w
    finally:
        stop_world(w)


@pytest.fixture(scope="module")
def bystander(world: World) -> str:
    _, api = world.user("memory-bystander", role="cluster-member")
    return api.token


def rogue_cluster(world: World, name: str) -> tuple[str, str]:
    """A cluster of its own for a rogue agent; its id and registration token."""
    cluster = world.admin.post("/v3/clusters", {"name": name})
    reg = world.admin.post("/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
    return str(cluster["id"]), rogue.registration_token(str(reg["command"]))


def settle(pid: int, seconds: float) -> int:
    """The highest RSS seen over ``seconds`` (sampled)."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.1)
    return peak


def returned(pid: int, before: int) -> int:
    """RSS once it has come back near ``before`` (or what it is after 15 s)."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: rss_kib(pid) - before < RETURNED_MIB * MIB, 15, "", interval=0.25)
    return rss_kib(pid)


def test_a_http2_zero_window_flood_is_bounded_per_connection(world: World, bystander: str) -> None:
    pid = gateway_pid(world)
    before = rss_kib(pid)
    conn = Raw(world)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    # Windows 0: the gateway may send nothing but HEADERS.
    conn.send(frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x00\x00"))
    path = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/herdgate-bulk/configmaps"
    streams = 64  # 64 x (4 MiB of tunnel window + 256 KiB queued) = 272 MiB uncapped
    for index in range(streams):
        conn.send(
            frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                2 * index + 1,
                conn.request_block(path, world.admin.token),
            )
        )
    during = settle(pid, 6.0)
    assert served(world, bystander)
    calm = 0
    for kind, _, _, payload in conn.frames(timeout=2.0):
        if kind == RST_STREAM and int.from_bytes(payload, "big") == ENHANCE_YOUR_CALM:
            calm += 1
    conn.close()
    after = returned(pid, before)
    print(
        f"\nA. HTTP/2 zero window, {streams} big LISTs: RSS {before // MIB} -> "
        f"{during // MIB} MiB peak -> {after // MIB} MiB after close; "
        f"{calm} streams reset ENHANCE_YOUR_CALM (cap {HTTP2_BUFFER_MIB} MiB)"
    )
    assert during - before < (HTTP2_BUFFER_MIB + MARGIN_MIB) * MIB
    assert calm > 0
    assert after - before < RETURNED_MIB * MIB


def _post_body(port: int, ca_file: Path, path: str, token: str, size: int) -> str:
    """Send a ``size``-byte body until the gateway stops taking it or answers."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        sock.settimeout(5)
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
        )
        piece = b"x" * (1024 * 1024)
        sent = 0
        while sent < size:
            sock.sendall(piece[: size - sent])
            sent += len(piece)
        answer = sock.recv(4096)
        sock.close()
        return answer.split(b"\r\n", 1)[0].decode(errors="replace")
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__


def test_b_agent_that_never_reads_is_bounded_per_tunnel(world: World, bystander: str) -> None:
    cluster_id, token = rogue_cluster(world, "never-reads")
    agent = rogue.RogueAgent(world.gateway.port, world.gateway.ca_file, token, rcvbuf=65536)
    assert agent.connect() == 101
    agent.handshake(window=2**31 - 1, max_streams=4096)
    wait_until(
        lambda: any(  # Connected: its state would need an API server answering /readyz
            c["type"] == "Connected" and c["status"] == "True"
            for c in world.admin.get(f"/v3/clusters/{cluster_id}")["conditions"]
        ),
        10,
        "the rogue is not connected",
    )
    pid = gateway_pid(world)
    before = rss_kib(pid)
    path = f"/k8s/clusters/{cluster_id}/api/v1/namespaces/default/configmaps"
    bodies, size = 20, 50 * 1024 * 1024  # 1,000 MiB offered to an agent that never reads
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                _post_body(world.gateway.port, world.gateway.ca_file, path, world.admin.token, size)
            )
        )
        for _ in range(bodies)
    ]
    for thread in threads:
        thread.start()
    during = settle(pid, 4.0)
    closed = agent.closed_by_gateway(timeout=20.0)
    for thread in threads:
        thread.join(30)
    agent.close()
    assert served(world, bystander)
    after = returned(pid, before)
    print(
        f"\nB. agent that never reads, {bodies} x {size // 2**20} MiB bodies: RSS "
        f"{before // MIB} -> {during // MIB} MiB peak -> {after // MIB} MiB after close; "
        f"tunnel closed: {closed}; answers: {sorted(set(results))}"
    )
    assert closed
    # A tunnel lost while sending is a 502 (compiled, it was a 500: mypyc typed the
    # proxy's ``exc`` by an earlier ``except UnsafeHead as exc``).
    assert not [answer for answer in results if " 500 " in answer], results
    assert during - before < (2 * SEND_BUFFER_MIB + 1 + MARGIN_MIB) * MIB
    assert after - before < RETURNED_MIB * MIB


def test_c_ping_floods_from_an_agent_that_never_reads(world: World, bystander: str) -> None:
    _, token = rogue_cluster(world, "ping-flood")
    agent = rogue.RogueAgent(world.gateway.port, world.gateway.ca_file, token, rcvbuf=65536)
    assert agent.connect() == 101
    agent.handshake()
    pid = gateway_pid(world)
    before = rss_kib(pid)
    ws_ping = rogue.ws_frame(b"p" * 125, opcode=0x9)  # answered with a 127-byte Pong
    tunnel_pings = rogue.ws_frame(rogue.tunnel_frame(rogue.PING, 0, 0, b"12345678") * 4000)
    assert agent.sock is not None
    agent.sock.settimeout(2.0)
    sent = 0
    started = time.monotonic()
    try:
        while sent < 2_000_000 and time.monotonic() - started < 20:
            agent.send_raw(ws_ping * 1000 + tunnel_pings)
            sent += 1000
    except (OSError, ssl.SSLError):
        pass
    during = rss_kib(pid)
    closed = agent.closed_by_gateway(timeout=10.0)
    agent.close()
    assert served(world, bystander)
    after = returned(pid, before)
    print(
        f"\nC. agent flooding pings, never reading: {sent:,} WebSocket pings and "
        f"{sent * 4:,} tunnel PINGs sent; RSS {before // MIB} -> {during // MIB} MiB -> "
        f"{after // MIB} MiB after close; connection cut: {closed}"
    )
    assert during - before < (2 * SEND_BUFFER_MIB + 1 + MARGIN_MIB) * MIB
    assert after - before < RETURNED_MIB * MIB
