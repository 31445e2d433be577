"""Fuzzing gateway.front.h2_protocol's frame reader and gateway.front.hpack's decoder (hypothesis).

Whatever arrives (random bytes after the preface, random frame sequences with real and
hostile header blocks, the server answering or resetting streams in between), the
connection gives events or ends cleanly in ``Terminated``: no other exception, nothing
after ``Terminated``, its own state consistent, what it writes well-framed, and no
``RequestReceived`` that RFC 9113 section 8.2.1 would call malformed (checked here on its own).
The HPACK decoder, fed random blocks, returns fields or raises ``HPACKError``, its table
consistent. Crashes found are kept below as named regression tests.
"""

from __future__ import annotations

import contextlib
import re
import struct

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.front import h2_protocol as http2
from gateway.front.h2_protocol import (
    PREFACE,
    Data,
    Drained,
    End,
    Event,
    GoAway,
    RequestReceived,
    Reset,
    ServerConnection,
    Terminated,
)
from gateway.front.hpack import ENTRY_OVERHEAD, Decoder, HPACKError

Header = tuple[bytes, bytes]

LOWER_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
EVENTS = (RequestReceived, Data, End, Reset, Drained, GoAway, Terminated)
GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"gw:8443"),
    (b":path", b"/k8s/clusters/c-1/api/v1/pods"),
]


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


def started() -> ServerConnection:
    server = ServerConnection()
    assert server.receive(PREFACE + frame(http2.SETTINGS, 0, 0, b"")) == []
    server.data_to_send()
    return server


def well_framed(out: bytes) -> None:
    """What the server writes is whole frames, none longer than the peer allows."""
    while out:
        assert len(out) >= 9
        length = int.from_bytes(out[:3])
        assert length <= http2.MIN_FRAME or out[3] not in (http2.DATA, http2.HEADERS)
        assert len(out) >= 9 + length
        out = out[9 + length :]


def request_is_well_formed(request: RequestReceived) -> None:
    """RFC 9113 section 8.2.1 and 8.3.1, written out independently of the gateway."""
    assert request.method and not any(c <= 0x20 or c >= 0x7F for c in request.method)
    if request.method != b"CONNECT":
        assert request.path[:1] == b"/" or request.path == b"*"
        assert not any(c <= 0x20 or c >= 0x7F or c == 0x23 for c in request.path)
    assert request.authority and not any(
        c <= 0x20 or c >= 0x7F or c == 0x40 for c in request.authority
    )
    for name, value in request.headers:
        assert LOWER_TOKEN.fullmatch(name), name
        assert not any((c < 0x20 and c != 0x09) or c == 0x7F for c in value), value
        assert value[:1] not in (b" ", b"\t") and value[-1:] not in (b" ", b"\t")
        assert name not in (b"connection", b"transfer-encoding", b"upgrade", b"keep-alive")


def consistent(server: ServerConnection) -> None:
    assert server.open_streams <= http2.MAX_CONCURRENT_STREAMS
    assert set(server._closed) == set(server._closed_order)
    assert len(server._closed) <= http2.CLOSED_STREAMS_KEPT
    assert server.conn_recv_window >= 0
    assert all(stream_id <= server.last_stream_id for stream_id in server._closed)


def feed(server: ServerConnection, data: bytes) -> list[Event]:
    """``receive`` under the fuzz invariants."""
    was_terminated = server.terminated
    events = server.receive(data)
    if was_terminated:
        assert events == []
    assert all(isinstance(e, EVENTS) for e in events)
    terminated = [e for e in events if isinstance(e, Terminated)]
    assert len(terminated) <= 1 and (not terminated or events[-1] is terminated[0])
    for event in events:
        if isinstance(event, RequestReceived):
            request_is_well_formed(event)
    if not server.terminated:
        consistent(server)
    well_framed(b"".join(server.data_to_send()))
    return events


# Random bytes after the preface


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_random_bytes_after_the_preface(data: bytes, step: int) -> None:
    server = started()
    for offset in range(0, len(data), step):
        feed(server, data[offset : offset + step])


# Random frame sequences

NAMES = [b"x-a", b"X-A", b"x a", b"x\r\na", b"", b":path", b":method", b":x", b"te", b"host"]
NAMES += [b"content-length", b"connection", b"cookie", b"authorization", b"x(y)"]
names = st.sampled_from(NAMES) | st.binary(max_size=5)
values = st.sampled_from(
    [b"", b"a", b" a", b"a\r\nb", b"\x00", b"trailers", b"5", b"0", b"gw:8443", b"/", b"GET"]
) | st.binary(max_size=8)


@st.composite
def field_lists(draw: st.DrawFn) -> list[Header]:
    base = list(GET) if draw(st.booleans()) else []
    extra = draw(st.lists(st.tuples(names, values), max_size=4))
    fields = base + extra
    return draw(st.permutations(fields)) if draw(st.integers(0, 4)) == 0 else fields


class Peer:
    """What the fuzzing client remembers: streams it opened, a field block it is sending."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()
        self.opened: list[int] = []
        self.continuing = 0
        self.rest = b""


@st.composite
def actions(draw: st.DrawFn, peer: Peer) -> tuple[str, object]:
    """One step: mostly what a client may send (a new request, a body, trailers, a
    field block's CONTINUATION, control frames) or what the server does; one in seven
    anything at all."""
    next_id = (peer.opened[-1] + 2) if peer.opened else 1
    known = peer.opened[-4:] or [1]
    if not draw(st.integers(0, 6)):
        kind = draw(st.integers(0, 255))
        stream_id = draw(st.sampled_from([0, 2, next_id, *known]) | st.integers(0, 2**31 - 1))
        flags = draw(st.integers(0, 255))
        return "frame", frame(kind, flags, stream_id, draw(st.binary(max_size=40)))
    if peer.continuing:
        piece = draw(st.integers(0, len(peer.rest)))
        last = piece == len(peer.rest)
        stream_id, chunk = peer.continuing, peer.rest[:piece]
        peer.rest = peer.rest[piece:]
        if last:
            peer.continuing = 0
        return "frame", frame(
            http2.CONTINUATION, http2.FLAG_END_HEADERS if last else 0, stream_id, chunk
        )
    step = draw(
        st.sampled_from(["request"] * 4 + ["trailers", "data", "data", "rst", "window"])
        | st.sampled_from(["ping", "settings", "priority", "goaway", "server", "server"])
    )
    if step in ("request", "trailers"):
        stream_id = next_id if step == "request" else draw(st.sampled_from(known))
        block = peer.encoder.encode(draw(field_lists()), huffman=draw(st.booleans()))
        flags = draw(st.sampled_from([0x5, 0x4, 0x1, 0x0, 0x25]))
        if flags & http2.FLAG_PRIORITY:
            block = struct.pack(">IB", draw(st.sampled_from([0, *known])), 16) + block
        if not flags & http2.FLAG_END_HEADERS:
            cut = draw(st.integers(0, len(block)))
            peer.continuing, peer.rest, block = stream_id, block[cut:], block[:cut]
        if step == "request":
            peer.opened.append(stream_id)
        return "frame", frame(http2.HEADERS, flags, stream_id, block)
    stream_id = draw(st.sampled_from(known))
    if step == "data":
        flags = draw(st.sampled_from([0, 1, 8, 9]))
        payload = draw(st.binary(max_size=30))
        if flags & http2.FLAG_PADDED:
            payload = bytes((draw(st.integers(0, 8)),)) + payload + b"\0" * 8
        return "frame", frame(http2.DATA, flags, stream_id, payload)
    if step == "rst":
        return "frame", frame(
            http2.RST_STREAM, 0, stream_id, struct.pack(">I", draw(st.integers(0, 15)))
        )
    if step == "window":
        target = draw(st.sampled_from([0, stream_id]))
        return "frame", frame(
            http2.WINDOW_UPDATE, 0, target, struct.pack(">I", draw(st.integers(0, 2**20)))
        )
    if step == "ping":
        return "frame", frame(http2.PING, draw(st.sampled_from([0, 1])), 0, b"p" * 8)
    if step == "settings":
        keys = st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 0x77])
        pairs = draw(st.lists(st.tuples(keys, st.integers(0, 2**24)), max_size=3))
        return "frame", frame(
            http2.SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs)
        )
    if step == "priority":
        dependency = draw(st.sampled_from([0, 1, stream_id, next_id]))
        return "frame", frame(
            http2.PRIORITY,
            0,
            draw(st.sampled_from([next_id + 4, *known])),
            struct.pack(">IB", dependency, 1),
        )
    if step == "goaway":
        return "frame", frame(
            http2.GOAWAY, 0, 0, struct.pack(">II", stream_id, draw(st.integers(0, 12)))
        )
    op = draw(st.sampled_from(["answer", "data", "end", "reset", "goaway", "acknowledge"]))
    return op, (stream_id, draw(st.integers(0, 40_000)))


def _server_does(server: ServerConnection, op: str, stream_id: int, size: int) -> None:
    if op == "answer":
        server.send_headers(stream_id, 200, [(b"content-type", b"text/plain")])
    elif op == "data":
        server.send_data(stream_id, b"d" * size)
    elif op == "end":
        server.send_data(stream_id, b"", end_stream=True)
    elif op == "reset":
        server.reset(stream_id, http2.CANCEL)
    elif op == "goaway":
        server.goaway()
    else:
        server.acknowledge(stream_id, size)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_random_frame_sequences(data: st.DataObject) -> None:
    server = started()
    peer = Peer()
    for _ in range(data.draw(st.integers(1, 30))):
        op, arg = data.draw(actions(peer))
        if op == "frame":
            assert isinstance(arg, bytes)
            feed(server, arg)
        else:
            stream_id, size = arg  # type: ignore[misc]
            _server_does(server, op, stream_id, size)
            consistent(server)
            well_framed(b"".join(server.data_to_send()))
        if server.terminated:
            assert server.receive(b"\x00" * 9) == []
            break


@settings(max_examples=300, deadline=None)
@given(st.lists(field_lists(), min_size=1, max_size=6), st.lists(st.integers(1, 9), max_size=4))
def test_requests_cut_anywhere(blocks: list[list[Header]], cuts: list[int]) -> None:
    """Header blocks of random fields, each as HEADERS and CONTINUATION frames cut at
    random sizes, on consecutive streams: every request is judged, none crashes."""
    server = started()
    encoder = hpack.Encoder()
    for i, fields in enumerate(blocks):
        block = encoder.encode(fields)
        size = cuts[i % len(cuts)] if cuts else len(block) or 1
        pieces = [block[j : j + size] for j in range(0, len(block), size)] or [b""]
        wire = frame(http2.HEADERS, http2.FLAG_END_STREAM, 2 * i + 1, pieces[0])
        for piece in pieces[1:]:
            wire += frame(http2.CONTINUATION, 0, 2 * i + 1, piece)
        wire += frame(http2.CONTINUATION, http2.FLAG_END_HEADERS, 2 * i + 1, b"")
        feed(server, wire)
        if server.terminated:
            break


# The HPACK decoder


def table_consistent(decoder: Decoder) -> None:
    entries = decoder._entries
    assert len(entries) == len(decoder._valid)
    assert decoder._size == sum(len(n) + len(v) + ENTRY_OVERHEAD for n, v in entries)
    assert decoder._size <= decoder._max <= decoder.max_allowed


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=5))
def test_random_blocks_decode_or_fail_cleanly(blocks: list[bytes]) -> None:
    decoder = Decoder()
    for block in blocks:
        try:
            fields, _, _ = decoder.decode(block, 4096)
        except HPACKError:
            return  # a connection error: this decoder is not used again
        assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in fields)
        table_consistent(decoder)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(field_lists(), st.booleans()), min_size=1, max_size=6),
    st.integers(0, 4096),
    st.binary(max_size=8),
)
def test_encoded_blocks_with_garbage_appended(
    blocks: list[tuple[list[Header], bool]], table_size: int, garbage: bytes
) -> None:
    """Real blocks decode to what was encoded, the table shrinking as the encoder asks;
    trailing garbage is an error or more fields, never a crash."""
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size
    decoder = Decoder()
    for fields, huffman in blocks:
        block = encoder.encode(fields, huffman=huffman)
        assert decoder.decode(block, 1 << 20)[0] == fields
        table_consistent(decoder)
    with contextlib.suppress(HPACKError):
        decoder.decode(encoder.encode(blocks[0][0]) + garbage, 1 << 20)
        table_consistent(decoder)


# Regressions, found by review and by the differential test (campaigns of 20,000
# examples of each test above found no crash); each failed on the code before its fix.


def test_regression_headers_depending_on_itself_was_still_delivered() -> None:
    """The stream was reset for depending on itself, then its request was emitted."""
    server = started()
    payload = struct.pack(">IB", 1, 16) + hpack.Encoder().encode(GET)
    events = server.receive(frame(http2.HEADERS, 0x25, 1, payload))
    assert not [e for e in events if isinstance(e, RequestReceived)]


def test_regression_an_empty_authority_passed_on_a_new_connection() -> None:
    """The connection's known-valid authority started as b"": an empty one matched it."""
    server = started()
    fields = [(n, b"" if n == b":authority" else v) for n, v in GET]
    events = server.receive(frame(http2.HEADERS, 0x5, 1, hpack.Encoder().encode(fields)))
    assert not [e for e in events if isinstance(e, RequestReceived)]


def test_regression_trailers_ended_a_body_shorter_than_its_content_length() -> None:
    server = started()
    encoder = hpack.Encoder()
    fields = [(b":method", b"POST"), *GET[1:], (b"content-length", b"10")]
    server.receive(frame(http2.HEADERS, 0x4, 1, encoder.encode(fields)))
    server.receive(frame(http2.DATA, 0, 1, b"x" * 5))
    events = server.receive(frame(http2.HEADERS, 0x5, 1, encoder.encode([(b"x-t", b"1")])))
    assert not [e for e in events if isinstance(e, End)]


def test_regression_a_new_request_on_a_finished_streams_id_was_ignored() -> None:
    server = started()
    encoder = hpack.Encoder()
    server.receive(frame(http2.HEADERS, 0x5, 1, encoder.encode(GET)))
    server.send_headers(1, 200, [], end_stream=True)
    events = server.receive(frame(http2.HEADERS, 0x5, 1, encoder.encode(GET)))
    assert [type(e) for e in events] == [Terminated]
