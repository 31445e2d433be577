"""Hostile HTTP/2 clients against the whole gateway (gateway, tunnel, agent, stand-in API
server): what the API server received is the verdict, not only the status codes.

A user bound ``read-only`` sends requests that RFC 9113 (sections 8.2, 8.3) calls
malformed: CR, LF or NUL in a field value, a field name, ``:path`` or ``:method`` (the
2026 finding: the bytes reached the HTTP/1.1 head the agent sends with its own
credential, so the API server acted as ``system:masters`` and ran a ``DELETE`` smuggled
in ``:path``), connection-specific fields, duplicate or missing pseudo-headers, a body
shorter than its ``content-length`` ended by trailers, and streams that reuse a closed
stream id. Each must end in RST_STREAM(PROTOCOL_ERROR) or, where RFC 9113 says
connection error, GOAWAY; the API server must receive nothing from them; another user on
a new connection must be served correctly afterwards.

The client is built by hand (frames and HPACK literals, no indexing) so that it can send
what no HTTP/2 library would.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import uuid
from collections.abc import Callable
from typing import Any

import hpack
import pytest

from tests.integration.conftest import World
from tests.integration.test_hostile_http1 import assert_given_back, resources

pytestmark = [pytest.mark.integration, pytest.mark.request_path]

Header = tuple[bytes, bytes]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
PROTOCOL_ERROR, STREAM_CLOSED = 0x1, 0x5


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_block(fields: list[Header]) -> bytes:
    """RFC 7541 6.2.3 (literal never indexed, new name, no Huffman) for every field: the
    bytes arrive exactly as given and no table state is shared across blocks."""
    out = bytearray()
    for name, value in fields:
        out += b"\x10" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value
    return bytes(out)


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    head = struct.pack(">I", len(payload))[1:] + bytes((kind, flags))
    return head + struct.pack(">I", stream_id) + payload


class RawClient:
    """One TLS connection (ALPN h2) speaking frames built by hand."""

    def __init__(self, world: World) -> None:
        ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=15)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.authority = f"127.0.0.1:{world.gateway.port}".encode()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.statuses: dict[int, int] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway: tuple[int, int] | None = None
        self.closed = False
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))

    def request(self, stream_id: int, fields: list[Header], end_stream: bool = True) -> None:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self.sock.sendall(frame(HEADERS, flags, stream_id, literal_block(fields)))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get_fields(self, path: bytes, token: str) -> list[Header]:
        return [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", self.authority),
            (b":path", path),
            (b"authorization", b"Bearer " + token.encode()),
            (b"accept", b"application/json"),
        ]

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            data = b""
        if not data:
            self.closed = True
            return
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                break
            kind, flags = self.buffer[3], self.buffer[4]
            stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            payload = self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            self._frame(kind, flags, stream_id, payload)

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == HEADERS:
            fields = dict(self.decoder.decode(payload, raw=True))
            status = int(fields[b":status"])
            if status >= 200:
                self.statuses[stream_id] = status
            if flags & END_STREAM:
                self.ended.add(stream_id)
        elif kind == DATA:
            self.bodies[stream_id] = self.bodies.get(stream_id, b"") + payload
            if payload:
                increment = struct.pack(">I", len(payload))
                self.sock.sendall(frame(WINDOW_UPDATE, 0, 0, increment))
            if flags & END_STREAM:
                self.ended.add(stream_id)
        elif kind == RST_STREAM:
            self.resets[stream_id] = int.from_bytes(payload, "big")
        elif kind == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = (last & 0x7FFFFFFF, code)
        elif kind == SETTINGS and not flags & ACK:
            self.sock.sendall(frame(SETTINGS, ACK, 0, b""))
        elif kind == PING and not flags & ACK:
            self.sock.sendall(frame(PING, ACK, 0, payload))

    def wait(self, done: Callable[[], bool]) -> None:
        """Read until ``done()``, the connection closes, or the socket times out."""
        while not done() and not self.closed:
            self._read()

    def wait_stream(self, stream_id: int) -> None:
        self.wait(lambda: stream_id in self.ended or stream_id in self.resets or bool(self.goaway))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def mallory_user(world: World) -> tuple[str, str]:
    """(user id, token) of a user bound ``read-only``: the attacker."""
    user_id, api = world.user("mallory-h2", "read-only")
    return user_id, api.token


@pytest.fixture(scope="module")
def mallory(mallory_user: tuple[str, str]) -> str:
    return mallory_user[1]


@pytest.fixture(scope="module")
def alice(world: World) -> tuple[str, str]:
    """(user id, token) of an honest user who comes after the attacker."""
    user_id, api = world.user("alice-h2", "cluster-member")
    return user_id, api.token


def _pods(world: World) -> bytes:
    return f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/pods".encode()


def _smuggled(marker: bytes) -> bytes:
    return b"Impersonate-User: smuggled-" + marker + b"\r\nImpersonate-Group: system:masters"


def _second_request(marker: bytes) -> bytes:
    return (
        b"DELETE /api/v1/namespaces/default/pods/"
        + marker
        + b" HTTP/1.1\r\nHost: x\r\nImpersonate-User: system:admin\r\n"
        b"Impersonate-Group: system:masters\r\n\r\n"
    )


def _replace(fields: list[Header], name: bytes, value: bytes) -> list[Header]:
    return [(n, value if n == name else v) for n, v in fields]


MALFORMED: dict[str, Callable[[list[Header], bytes], list[Header]]] = {
    # RFC 9113 8.2.1: no CR, LF or NUL in a value, a name, or a pseudo-header's value.
    "crlf-in-a-value": lambda f, m: [*f, (b"x-note", b"a\r\n" + _smuggled(m))],
    "lf-in-a-value": lambda f, m: [*f, (b"x-note", b"a\n" + _smuggled(m))],
    "cr-in-a-value": lambda f, m: [*f, (b"x-note", b"a\r" + _smuggled(m))],
    "nul-in-a-value": lambda f, m: [*f, (b"x-note", b"a\x00" + _smuggled(m))],
    "crlf-in-a-name": lambda f, m: [*f, (b"x-a\r\n" + _smuggled(m).lower() + b"\r\nx-b", b"c")],
    "crlf-in-path-with-a-second-request": lambda f, m: _replace(
        f, b":path", f[3][1] + b" HTTP/1.1\r\nHost: x\r\n\r\n" + _second_request(m)
    ),
    "crlf-in-method-with-a-second-request": lambda f, m: _replace(
        f, b":method", _second_request(m) + b"GET"
    ),
    "crlf-in-authority": lambda f, m: _replace(f, b":authority", b"x\r\n" + _smuggled(m)),
    "space-in-path": lambda f, m: _replace(f, b":path", f[3][1] + b"?" + m + b" HTTP/1.1"),
    # RFC 9113 8.2: names are lower case; 8.2.2: no connection-specific fields.
    "uppercase-impersonate-user": lambda f, m: [*f, (b"Impersonate-User", b"smuggled-" + m)],
    "transfer-encoding": lambda f, m: [*f, (b"transfer-encoding", b"chunked"), (b"x-m", m)],
    # RFC 9113 8.3: pseudo-headers once each, before regular fields; :scheme required.
    "duplicate-path": lambda f, m: [*f[:4], (b":path", f[3][1] + b"/" + m), *f[4:]],
    "pseudo-after-regular": lambda f, m: [*f[:3], *f[4:], (b":path", f[3][1] + b"/" + m)],
    "missing-scheme": lambda f, m: [x for x in f if x[0] != b":scheme"] + [(b"x-m", m)],
}


def _mentions(event: dict[str, Any], marker: bytes) -> bool:
    return marker.decode() in json.dumps(event)


def _since(world: World, count: int) -> list[dict[str, Any]]:
    return world.standin.audit_events()[count:]


def _an_honest_user_is_served(
    world: World, alice: tuple[str, str], before: int, earlier: list[tuple[str, str]] | None = None
) -> None:
    """Alice, on a new connection, gets her own answer; since ``before`` the API server
    saw, as users of the gateway, only the ``earlier`` (user, verb) requests and hers
    (besides the agent's own requests, not impersonated)."""
    user_id, token = alice
    client = RawClient(world)
    try:
        client.request(1, client.get_fields(_pods(world), token))
        client.wait_stream(1)
        assert client.statuses.get(1) == 200, (client.statuses, client.resets, client.goaway)
        assert json.loads(client.bodies[1])["kind"] == "PodList"
    finally:
        client.close()
    impersonated = [e for e in _since(world, before) if "impersonatedUser" in e]
    assert [(e["impersonatedUser"]["username"], e["verb"]) for e in impersonated] == [
        *(earlier or []),
        (user_id, "list"),
    ], impersonated


def _nothing_arrived(world: World, before: int, marker: bytes) -> None:
    events = _since(world, before)
    assert not [e for e in events if _mentions(e, marker)], events
    assert not [e for e in events if e["verb"] == "delete"], events
    for event in events:
        groups = event.get("impersonatedUser", {}).get("groups", [])
        assert "system:masters" not in groups, event
        for name, value in event.get("requestHeaders", []):
            assert "smuggled" not in value and "smuggled" not in name.lower(), event


def _send_malformed(world: World, token: str, case: str, marker: bytes) -> RawClient:
    """Send ``case`` as stream 1 on a connection of its own; the client, closed, with
    what it got back."""
    client = RawClient(world)
    try:
        client.request(1, MALFORMED[case](client.get_fields(_pods(world), token), marker))
        client.wait_stream(1)
    finally:
        client.close()
    return client


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_request_is_reset_and_reaches_nothing(
    world: World, mallory: str, alice: tuple[str, str], case: str
) -> None:
    marker = uuid.uuid4().hex[:12].encode()
    before = len(world.standin.audit_events())
    client = _send_malformed(world, mallory, case, marker)
    _nothing_arrived(world, before, marker)
    assert client.resets.get(1) == PROTOCOL_ERROR, (client.statuses, client.goaway)
    assert 1 not in client.statuses
    _an_honest_user_is_served(world, alice, before)


def test_a_body_shorter_than_its_content_length_ended_by_trailers_is_reset(
    world: World, mallory: str, alice: tuple[str, str]
) -> None:
    """RFC 9113 8.1.1: content-length must equal the DATA received. Were the stream
    ended by trailers accepted, the API server would wait for the missing bytes (and
    read whatever comes next on that connection as them)."""
    marker = uuid.uuid4().hex[:12].encode()
    before = len(world.standin.audit_events())
    client = RawClient(world)
    try:
        fields = [*client.get_fields(_pods(world) + b"?m=" + marker, mallory)]
        client.request(1, [*fields, (b"content-length", b"100")], end_stream=False)
        client.send(frame(DATA, 0, 1, b"x" * 10))
        client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, literal_block([(b"x-t", b"1")])))
        client.wait_stream(1)
    finally:
        client.close()
    _nothing_arrived(world, before, marker)
    assert client.resets.get(1) == PROTOCOL_ERROR, (client.statuses, client.goaway)
    _an_honest_user_is_served(world, alice, before)


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (1, 1, STREAM_CLOSED),  # RFC 9113 5.1: a frame after END_STREAM on a closed stream
        (5, 3, PROTOCOL_ERROR),  # RFC 9113 5.1.1: a new stream id must be above the last
    ],
)
def test_reusing_a_stream_id_is_a_connection_error(
    world: World,
    mallory_user: tuple[str, str],
    alice: tuple[str, str],
    first: int,
    second: int,
    code: int,
) -> None:
    mallory_id, mallory = mallory_user
    marker = uuid.uuid4().hex[:12].encode()
    before = len(world.standin.audit_events())
    client = RawClient(world)
    try:
        client.request(first, client.get_fields(_pods(world), mallory))
        client.wait_stream(first)
        assert client.statuses.get(first) == 200
        client.request(second, client.get_fields(_pods(world) + b"?m=" + marker, mallory))
        client.wait(lambda: client.goaway is not None)
        assert client.goaway is not None and client.goaway[1] == code, client.goaway
        assert second not in client.statuses or second == first
    finally:
        client.close()
    _an_honest_user_is_served(world, alice, before, earlier=[(mallory_id, "list")])
    _nothing_arrived(world, before, marker)


def test_rounds_of_malformed_requests_leave_nothing_behind(
    world: World, mallory: str, alice: tuple[str, str]
) -> None:
    """Every malformed case, three times each, on connections of their own: the API
    server receives none of them and nobody acts as ``system:masters``; the gateway's
    descriptors, tunnel streams and memory come back, and an honest user is served."""
    before_events = len(world.standin.audit_events())
    before = resources(world)
    markers = []
    for _ in range(3):
        for case in sorted(MALFORMED):
            marker = uuid.uuid4().hex[:12].encode()
            markers.append(marker)
            client = _send_malformed(world, mallory, case, marker)
            assert client.resets.get(1) == PROTOCOL_ERROR, (case, client.statuses, client.goaway)
    for marker in markers:
        _nothing_arrived(world, before_events, marker)
    assert_given_back(world, before)
    _an_honest_user_is_served(world, alice, len(world.standin.audit_events()))
