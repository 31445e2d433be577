"""Client connection limits end to end: per source address and in total, TLS handshake,
head, body and keep-alive timeouts, against slowloris, slow bodies, thousands of idle
TLS connections and half-done handshakes. Under each, a normal user's request (from
another address) must still be answered; how long it took is printed (no timed
assertions). The gateway runs with short timeouts and small limits (``LIMITS``).

Attackers connect from other loopback addresses (127.0.0.2 ...): the bystander's
127.0.0.1 is a different source for the per-address limit.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import rss_kib, wait_until
from tests.integration.test_hostile_http1 import (
    _connect,
    _metrics,
    _read_answer,
    _socket_states,
    assert_status,
    head,
)

pytestmark = pytest.mark.integration

PER_ADDRESS = 600
MAX_CONNECTIONS = 1500
TIMEOUT_S = 2
SWEEP_S = 5  # gateway.front.connection.SWEEP_S: timeouts are checked this often
LIMITS = f"""
limits:
  max_connections: {MAX_CONNECTIONS}
  per_address: {PER_ADDRESS}
  handshake_timeout: {TIMEOUT_S}s
  head_timeout: {TIMEOUT_S}s
  body_timeout: {TIMEOUT_S}s
  keepalive: {TIMEOUT_S}s
"""
SETTLE_S = TIMEOUT_S + SWEEP_S + 5
"""Long enough for any timeout to have acted."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world(tmp_path_factory.mktemp("limits"), gateway_config=LIMITS)
    try:
        yield w
    finally:
        stop_world(w)


@pytest.fixture(scope="module")
def member(world: World) -> str:
    return world.user("limits-member", role="cluster-member")[1].token


def bystander(world: World, token: str, label: str) -> float:
    """A normal user's GET from 127.0.0.1: must be answered 200; returns seconds."""
    started = time.monotonic()
    with _connect(world) as sock:
        sock.settimeout(20)
        sock.sendall(head(world, token, "Connection: close"))
        answer = _read_answer(sock)
    took = time.monotonic() - started
    assert answer is not None and answer.status == 200, answer
    print(f"\nbystander GET under {label}: 200 in {took * 1000:.0f} ms")
    return took


def _raw(world: World, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", world.gateway.port))
    return sock


def _closed_by_peer(sock: socket.socket, wait_s: float = 0.0) -> bool:
    sock.settimeout(wait_s or 0.001)
    try:
        return sock.recv(4096) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def _metric(world: World, pattern: str) -> float:
    match = re.search(pattern, _metrics(world), re.M)
    return float(match.group(1)) if match else 0.0


def _rss_mib(world: World) -> float:
    assert world.gateway.process is not None
    return rss_kib(world.gateway.process.pid) / 1024


def _gateway_fds(world: World) -> int:
    assert world.gateway.process is not None
    return sum(_socket_states(world.gateway.process.pid).values())


def test_half_done_handshakes_are_bounded_per_address_and_cut(world: World, member: str) -> None:
    before = _metric(world, r'^herdgate_client_connections_refused_total\{limit="address"\} (\S+)')
    socks = [_raw(world, "127.0.0.2") for _ in range(PER_ADDRESS + 50)]
    try:
        time.sleep(0.5)
        refused = [s for s in socks if _closed_by_peer(s)]
        print(f"\n{len(socks)} raw connections from one address: {len(refused)} closed at once")
        assert len(refused) >= 50
        refused_metric = _metric(
            world, r'^herdgate_client_connections_refused_total\{limit="address"\} (\S+)'
        )
        assert refused_metric - before >= 50
        bystander(world, member, f"{PER_ADDRESS} half-done handshakes from one address")
        held = [s for s in socks if s not in refused]
        wait_until(
            lambda: all(_closed_by_peer(s) for s in held),
            SETTLE_S,
            "half-done handshakes were not cut",
            interval=0.5,
        )
    finally:
        for s in socks:
            s.close()
    wait_until(
        lambda: _metric(world, r"^herdgate_client_connections_open (\S+)") <= 2,
        SETTLE_S,
        "connections still counted",
    )


def test_the_total_limit_refuses_then_recovers(world: World, member: str) -> None:
    sources = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
    socks: list[socket.socket] = []
    try:
        for source in sources:
            socks += [_raw(world, source) for _ in range(PER_ADDRESS - 10)]
        time.sleep(0.5)
        refused = sum(1 for s in socks if _closed_by_peer(s))
        print(f"\n{len(socks)} raw connections from 3 addresses: {refused} refused at once")
        assert refused >= len(socks) - MAX_CONNECTIONS
        assert _metric(world, r'^herdgate_client_connections_refused_total\{limit="total"\} (\S+)')
        # the listener is full: the bystander gets in once the handshake timeout frees it
        started = time.monotonic()
        wait_until(lambda: _try_get(world, member), SETTLE_S, "never served again", interval=0.5)
        print(f"bystander served again {time.monotonic() - started:.1f} s after the flood")
    finally:
        for s in socks:
            s.close()


def _try_get(world: World, token: str) -> bool:
    try:
        with _connect(world) as sock:
            sock.settimeout(10)
            sock.sendall(head(world, token, "Connection: close"))
            answer = _read_answer(sock)
    except OSError:
        return False
    return answer is not None and answer.status == 200


def _tls_from(world: World, source: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(_raw(world, source), server_hostname="127.0.0.1")


def test_thousands_of_idle_tls_connections_are_closed_after_keepalive(
    world: World, member: str
) -> None:
    socks: list[ssl.SSLSocket] = []
    fds_before, rss_before = _gateway_fds(world), _rss_mib(world)
    try:
        for source in ("127.0.0.6", "127.0.0.7"):
            socks += [_tls_from(world, source) for _ in range(PER_ADDRESS - 10)]
        print(
            f"\n{len(socks)} idle TLS connections: gateway sockets {fds_before} -> "
            f"{_gateway_fds(world)}, RSS {rss_before:.0f} -> {_rss_mib(world):.0f} MiB"
        )
        bystander(world, member, f"{len(socks)} idle TLS connections")
        wait_until(
            lambda: all(_closed_by_peer(s) for s in socks),
            SETTLE_S,
            "idle connections were not closed",
            interval=0.5,
        )
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: _gateway_fds(world) <= fds_before + 2, SETTLE_S, "sockets not released")
    print(f"after they closed: RSS {_rss_mib(world):.0f} MiB")


def test_slowloris_heads_are_cut_after_the_head_timeout(world: World, member: str) -> None:
    data = head(world, member)
    socks = [_tls_from(world, "127.0.0.8") for _ in range(100)]
    try:
        deadline = time.monotonic() + SETTLE_S
        sent = 0
        while time.monotonic() < deadline and sent < len(data) - 4:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(data[sent : sent + 1])
            sent += 1
            time.sleep(0.2)
            if sent == 5:
                bystander(world, member, "100 slowloris heads")
        assert sent < len(data) - 4, "the heads were never cut"
        closed = 0
        for s in socks:
            s.settimeout(1)
            try:
                closed += s.recv(100) == b""
            except (OSError, ssl.SSLError):
                closed += 1
        print(f"slowloris: all {closed} cut after {sent} bytes")
        assert closed == len(socks)
    finally:
        for s in socks:
            s.close()


def test_slow_bodies_fail_with_408(world: World, member: str) -> None:
    socks = [_tls_from(world, "127.0.0.9") for _ in range(100)]
    try:
        for s in socks:
            s.sendall(head(world, member, "Content-Length: 1000", method="POST") + b"{")
        bystander(world, member, "100 stalled request bodies")
        for s in socks:
            s.settimeout(SETTLE_S)
            assert_status(_read_answer(s), 408)
        print("slow bodies: each answered 408")
    finally:
        for s in socks:
            s.close()


def test_http2_stalled_bodies_are_reset_after_the_body_timeout(world: World, member: str) -> None:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(_raw(world, "127.0.0.10"), server_hostname="127.0.0.1")
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    streams = []
    for _ in range(20):
        stream_id = conn.get_next_available_stream_id()
        streams.append(stream_id)
        conn.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", f"127.0.0.1:{world.gateway.port}".encode()),
                (b":path", f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces".encode()),
                (b"authorization", f"Bearer {member}".encode()),
                (b"content-length", b"100"),
            ],
        )
        conn.send_data(stream_id, b"{")
    sock.sendall(conn.data_to_send())
    bystander(world, member, "20 stalled HTTP/2 request bodies")
    reset: set[int] = set()
    sock.settimeout(SETTLE_S)
    with sock:
        while len(reset) < len(streams):
            data = sock.recv(65536)
            assert data, f"closed with streams {set(streams) - reset} not reset"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamReset):
                    reset.add(event.stream_id)
            sock.sendall(conn.data_to_send())
    print(f"HTTP/2: all {len(reset)} stalled streams reset")


# the same on a connection handed to aiohttp (gateway.front.relay): a first request for
# /healthz hands it over, then the second request is slow


def _handed_off(world: World) -> ssl.SSLSocket:
    sock = _connect(world)
    sock.settimeout(10)
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{world.gateway.port}\r\n\r\n".encode())
    answer = _read_answer(sock)
    assert answer is not None and answer.status == 200, answer
    return sock


def _closed_within(sock: ssl.SSLSocket, wait_s: float) -> bool:
    """Reads until the gateway closes (True) or ``wait_s`` passes (False)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            return True
    return False


def test_a_slowloris_head_after_a_handoff_is_cut(world: World, member: str) -> None:
    data = f"GET /v3/users HTTP/1.1\r\nHost: 127.0.0.1:{world.gateway.port}\r\n".encode()
    data += b"X-Slow: " + b"a" * 200
    with _handed_off(world) as sock:
        sent = 0
        deadline = time.monotonic() + SETTLE_S
        closed = False
        while not closed and sent < len(data) and time.monotonic() < deadline:
            try:
                sock.sendall(data[sent : sent + 1])
            except (ConnectionError, ssl.SSLError):
                closed = True
                break
            sent += 1
            closed = _closed_within(sock, 0.5)
        assert closed or _closed_within(sock, 1), f"still open after {sent} bytes"
    print(f"slowloris after a hand-off: cut after {sent} bytes")
    bystander(world, member, "a slowloris head after a hand-off")


def test_a_stalled_body_after_a_handoff_is_cut(world: World, member: str) -> None:
    with _handed_off(world) as sock:
        sock.sendall(
            f"POST /v3/tokens HTTP/1.1\r\nHost: 127.0.0.1:{world.gateway.port}\r\n"
            f"Authorization: Bearer {member}\r\nContent-Type: application/json\r\n"
            'Content-Length: 100\r\n\r\n{"ttl": '.encode()
        )
        assert _closed_within(sock, SETTLE_S), "a stalled body kept its connection"
    bystander(world, member, "a stalled body after a hand-off")
