"""HTTP/2 floods end to end against a real gateway: rapid reset, CONTINUATION flood,
an HPACK header-list bomb, SETTINGS and PING floods from a client that does not read.

Each must end in the answer RFC 9113 and the 2023 HTTP/2 advisories call for (GOAWAY
ENHANCE_YOUR_CALM or a stream error, a 431), the gateway's memory must stay bounded
(RSS measured before and after), and another user must still be served meanwhile. Every
loop is bounded in count and time.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator

import hpack
import pytest

from tests.integration.conftest import World
from tests.integration.env import rss_kib, wait_until

pytestmark = pytest.mark.integration

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
END_STREAM, END_HEADERS = 0x1, 0x4
ENHANCE_YOUR_CALM = 0xB
RSS_GROWTH_LIMIT_KIB = 64 * 1024
"""What a flood may leave behind in the gateway (it holds nothing per flood frame; the
allowance covers allocator noise and caches warmed by the first requests)."""


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return struct.pack(">HBBBI", length >> 8, length & 0xFF, kind, flags, stream_id) + payload


def gateway_pid(world: World) -> int:
    assert world.gateway.process is not None
    return world.gateway.process.pid


class Raw:
    """An HTTP/2 connection driven frame by frame."""

    def __init__(self, world: World) -> None:
        ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.authority = f"127.0.0.1:{world.gateway.port}".encode()
        self.encoder = hpack.Encoder()
        self.buffer = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def request_block(self, path: str, token: str) -> bytes:
        return bytes(
            self.encoder.encode(
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", self.authority),
                    (b":path", path.encode()),
                    (b"authorization", f"Bearer {token}".encode()),
                ]
            )
        )

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frames(self, timeout: float = 10.0) -> Iterator[tuple[int, int, int, bytes]]:
        """Frames from the gateway until it closes or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                kind, flags = self.buffer[3], self.buffer[4]
                stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                payload = self.buffer[9 : 9 + length]
                self.buffer = self.buffer[9 + length :]
                yield kind, flags, stream_id, payload
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                return
            if not data:
                return
            self.buffer += data

    def goaway(self, timeout: float = 10.0) -> int:
        """The error code of the GOAWAY the gateway sends."""
        for kind, _, _, payload in self.frames(timeout):
            if kind == GOAWAY:
                return int.from_bytes(payload[4:8], "big")
        raise AssertionError("no GOAWAY")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def bystander(world: World) -> str:
    """Another user, who must be served while the floods go on."""
    _, api = world.user("flood-bystander", role="cluster-member")
    return api.token


@pytest.fixture(scope="module")
def flooder(world: World) -> str:
    _, api = world.user("flooder", role="read-only")
    return api.token


def served(world: World, token: str) -> bool:
    """One GET by ``token`` on a new connection is answered 200."""
    conn = Raw(world)
    try:
        conn.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, conn.request_block(
            f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces", token)))  # fmt: skip
        for kind, _, stream_id, payload in conn.frames():
            if kind == HEADERS and stream_id == 1:
                status = dict(hpack.Decoder().decode(payload, raw=True))[b":status"]
                return status == b"200"
        return False
    finally:
        conn.close()


def test_rapid_reset_ends_in_enhance_your_calm(world: World, flooder: str, bystander: str) -> None:
    before = rss_kib(gateway_pid(world))
    conn = Raw(world)
    path = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces"
    batch = b""
    code = None
    for index in range(4000):  # bounded: the gateway cuts it off after ~2,000
        stream_id = 2 * index + 1
        batch += frame(
            HEADERS, END_HEADERS | END_STREAM, stream_id, conn.request_block(path, flooder)
        )
        batch += frame(RST_STREAM, 0, stream_id, struct.pack(">I", 0x8))
        if index % 100 == 99:
            try:
                conn.send(batch)
            except (ConnectionError, ssl.SSLError):
                break
            batch = b""
    code = conn.goaway()
    conn.close()
    assert code == ENHANCE_YOUR_CALM
    assert served(world, bystander)
    after = rss_kib(gateway_pid(world))
    print(f"rapid reset: {index + 1} streams opened and reset; RSS {before} -> {after} KiB")
    assert after - before < RSS_GROWTH_LIMIT_KIB


def test_continuation_flood_is_cut_off(world: World, flooder: str, bystander: str) -> None:
    before = rss_kib(gateway_pid(world))
    conn = Raw(world)
    conn.send(frame(HEADERS, 0, 1, conn.request_block("/k8s/clusters/x/api", flooder)))
    sent = 0
    try:
        for _ in range(2000):  # 32 MB if it were all taken; the gateway stops at 128 KiB
            conn.send(frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b" * 3000))
            sent += 1
    except (ConnectionError, ssl.SSLError):
        pass
    code = conn.goaway()
    conn.close()
    assert code == ENHANCE_YOUR_CALM
    assert served(world, bystander)
    after = rss_kib(gateway_pid(world))
    print(f"CONTINUATION flood: {sent} frames of 18 KB taken; RSS {before} -> {after} KiB")
    assert after - before < RSS_GROWTH_LIMIT_KIB


def test_hpack_header_list_bomb_gets_431_without_decoding_it_all(
    world: World, flooder: str, bystander: str
) -> None:
    """One 4 KB entry put in the dynamic table, then referenced 4,000 times at one byte
    each: an 8 KB block that would decode to 16 MB."""
    before = rss_kib(gateway_pid(world))
    conn = Raw(world)
    block = conn.request_block(f"/k8s/clusters/{world.cluster_id}/api", flooder)
    # Literal with incremental indexing, new name "x-bomb", 4,000-byte value.
    value = b"v" * 4000
    literal = b"\x40" + bytes([6]) + b"x-bomb" + b"\x7f" + _hpack_int(len(value) - 127) + value
    # The entry is the newest in the dynamic table: index 62.
    block += literal + b"\xbe" * 4000
    pieces = [block[i : i + 16000] for i in range(0, len(block), 16000)]
    for index, piece in enumerate(pieces):
        flags = END_HEADERS if index == len(pieces) - 1 else 0
        if index == 0:
            conn.send(frame(HEADERS, END_STREAM | flags, 1, piece))
        else:
            conn.send(frame(CONTINUATION, flags, 1, piece))
    status = None
    for kind, _, stream_id, payload in conn.frames():
        if kind == HEADERS and stream_id == 1:
            status = dict(hpack.Decoder().decode(payload, raw=True))[b":status"]
            break
        if kind in (GOAWAY, RST_STREAM):
            status = b"reset"
            break
    conn.close()
    assert status in (b"431", b"reset")
    assert served(world, bystander)
    assert rss_kib(gateway_pid(world)) - before < RSS_GROWTH_LIMIT_KIB


def _hpack_int(value: int) -> bytes:
    out = b""
    while value >= 128:
        out += bytes([(value % 128) + 128])
        value //= 128
    return out + bytes([value])


@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_settings_and_ping_floods_from_a_client_that_does_not_read(
    world: World, bystander: str, kind: str
) -> None:
    """Each frame asks for an answer; a client that never reads them gets no more read
    from it once its answers back up (the gateway pauses reading), so its flood costs the
    gateway a socket buffer, not memory per frame."""
    before = rss_kib(gateway_pid(world))
    conn = Raw(world)
    one = (
        frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100))
        if kind == "settings"
        else frame(PING, 0, 0, b"12345678")
    )
    conn.sock.settimeout(2.0)
    sent = 0
    try:
        # Up to 1,500 x 1,000 frames (25 MB of answers: more than loopback's socket
        # buffers hold), stopped when the socket blocks.
        for _ in range(1500):
            conn.send(one * 1000)
            sent += 1000
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    during = rss_kib(gateway_pid(world))
    assert served(world, bystander)
    conn.close()
    wait_until(lambda: served(world, bystander), 10, "the bystander is not served")
    print(f"{kind} flood: reading stopped after {sent:,} frames; RSS {before} -> {during} KiB")
    assert during - before < RSS_GROWTH_LIMIT_KIB, (sent, before, during)
    assert sent < 1_500_000, "the gateway read all of an unread flood"
