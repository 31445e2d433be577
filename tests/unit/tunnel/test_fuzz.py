"""Fuzzing the tunnel's readers (hypothesis, bounded budget): the frame parser and
protocol (``tunnel.protocol``), the gateway's reading of an agent's HELLO metadata
(``gateway.clusters.tunnels.AgentInfo``), the WebSocket frame reader and the client handshake
reader (``tunnel.websocket``).

Whatever arrives, in whatever pieces, each reader gives its items or fails with its own
error (``ProtocolError`` with a GOAWAY queued, ``BadAgentInfo``, ``WebSocketError``,
``HandshakeError``): never another exception, nothing read after the failure, its state
consistent. Crashes found are kept below as named regression tests.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clusters.tunnels import AgentInfo, BadAgentInfo
from tunnel import frames
from tunnel.errors import ProtocolError
from tunnel.events import (
    ConnectionTerminated,
    DataReceived,
    HelloReceived,
    InfoReceived,
    PingAcknowledged,
    PingReceived,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from tunnel.frames import ErrorCode, FrameType
from tunnel.protocol import Limits, Side, TunnelProtocol
from tunnel.websocket import (
    ClientHandshake,
    Close,
    FrameReader,
    HandshakeError,
    Ping,
    Pong,
    WebSocketError,
    accept_key,
)

EVENTS = (
    ConnectionTerminated,
    DataReceived,
    HelloReceived,
    InfoReceived,
    PingAcknowledged,
    PingReceived,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
LIMITS = Limits(window=64 * 1024, max_frame=16 * 1024, max_streams=8)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in pieces at the given offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """What a side wrote, read back: it must be whole, well-framed frames."""
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= frames.HEADER_SIZE, "a cut frame header was written"
        kind, flags, stream_id, length = frames.HEADER.unpack_from(data, pos)
        pos += frames.HEADER_SIZE
        assert pos + length <= len(data), "a cut frame was written"
        out.append((kind, flags, stream_id, data[pos : pos + length]))
        pos += length
    return out


def feed_all(proto: TunnelProtocol, pieces: list[bytes]) -> bool:
    """Feed ``pieces``; True if the protocol failed (as it may, only with ProtocolError)."""
    for piece in pieces:
        try:
            events = proto.receive_data(piece)
        except ProtocolError:
            assert proto.is_terminated
            written = parse_frames(proto.data_to_send())
            assert written and written[-1][0] == FrameType.GOAWAY
            assert proto.receive_data(b"\x00" * 20) == []  # nothing read after the end
            return True
        for event in events:
            assert isinstance(event, EVENTS)
        parse_frames(proto.data_to_send())
        assert proto.stream_count <= LIMITS.max_streams + 64
    return False


# -- the frame parser and protocol ---------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    feed_all(TunnelProtocol(Side.SERVER, LIMITS), cut(data, cuts))


def _hello(window: int, max_frame: int, max_streams: int, metadata: bytes) -> bytes:
    return frames.encode_hello(frames.Hello(1, window, max_frame, max_streams, metadata))


FRAME = st.tuples(
    st.sampled_from([*range(10), 200]),  # every type, and one unknown
    st.sampled_from([0, 1, 0xFF]),
    st.sampled_from([0, 1, 2, 3, 4, 5, 7, 2**31 - 1, 2**32 - 1]),
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                struct.pack(">I", 1),
                struct.pack(">I", 2**31 - 1),
                struct.pack(">I", 0),
                b"12345678",
                struct.pack(">II", 0, 1),
                struct.pack(">I", 6) + b"why",
            ]
        ),
    ),
)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(1, 2**32 - 1),
    st.sampled_from([512, 1024, 16 * 1024, 2**24, 2**24 + 1]),
    st.integers(0, 10),
    st.binary(max_size=30),
    st.lists(FRAME, max_size=30),
    st.lists(st.integers(0, 2000), max_size=5),
    st.lists(st.sampled_from(["open", "send", "reset", "ack", "ping", "end"]), max_size=8),
)
def test_mostly_valid_frame_sequences(
    window: int,
    max_frame: int,
    max_streams: int,
    metadata: bytes,
    sequence: list[tuple[int, int, int, bytes]],
    cuts: list[int],
    commands: list[str],
) -> None:
    """A HELLO with any limits, then frames of every type on likely stream ids, the
    local side opening, sending and resetting in between."""
    proto = TunnelProtocol(Side.SERVER, LIMITS)
    proto.data_to_send()
    data = _hello(window, max_frame, max_streams, metadata) + b"".join(
        struct.pack(">BBII", kind, flags, sid, len(payload)) + payload
        for kind, flags, sid, payload in sequence
    )
    pieces = cut(data, cuts)
    failed = feed_all(proto, pieces[:1])
    for command, piece in zip(commands + [""] * len(pieces), pieces[1:], strict=False):
        if failed:
            break
        _command(proto, command)
        failed = feed_all(proto, [piece])


def _command(proto: TunnelProtocol, command: str) -> None:
    if not proto.is_ready:
        return
    ids = [i for i in proto.stream_ids() if i % 2 == 0]
    try:
        if command == "open":
            proto.open_stream(b"")
        elif command == "send" and ids:
            room = proto.send_window(ids[0])
            if room:
                proto.send_data(ids[0], b"x" * min(room, 3000))
        elif command == "reset" and ids:
            proto.reset_stream(ids[-1], ErrorCode.CANCEL, "fuzz")
        elif command == "ack" and proto.stream_ids():
            proto.acknowledge_received_data(proto.stream_ids()[0], 40000)
        elif command == "ping":
            proto.ping(b"abcdefgh")
        elif command == "end" and ids:
            proto.end_stream(ids[0])
    except ProtocolError:
        return  # too many streams, or a stream already closed: refused, not a crash
    except Exception as exc:  # noqa: BLE001 - the only other refusals are these
        assert type(exc).__name__ in {"TooManyStreams", "StreamClosed"}, exc
    parse_frames(proto.data_to_send())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1100))
def test_refused_opens_end_the_session_past_the_limit(count: int) -> None:
    proto = TunnelProtocol(Side.SERVER, Limits(window=1024, max_frame=1024, max_streams=1))
    proto.receive_data(_hello(1024, 1024, 1, b""))
    proto.data_to_send()
    opens = b"".join(frames.encode_open(2 * i + 1) for i in range(count))
    # One is accepted; the rest are refused: more than 1,000 refusals is a flood.
    if count - 1 > 1000:
        with pytest.raises(ProtocolError, match="refused"):
            proto.receive_data(opens)
    else:
        events = proto.receive_data(opens)
        assert sum(isinstance(e, StreamOpened) for e in events) == 1


# -- the agent's HELLO metadata, as the gateway reads it ---------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda value: json.dumps(value).encode()),
        st.dictionaries(
            st.sampled_from(["apiHost", "authorization", "node", "version", "caCert"]),
            JSON | st.text(),
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_agent_metadata(raw: bytes) -> None:
    try:
        info = AgentInfo.parse(raw)
    except BadAgentInfo:
        return
    assert info.api_host and b"\r" not in info.api_host and b"\n" not in info.api_host
    assert b"\r" not in info.authorization and b"\n" not in info.authorization
    info.updated(raw)


def test_regression_hello_metadata_nested_deep_is_bad_agent_info() -> None:
    """Found by fuzzing: ``[[[[...`` 16,000 deep raised RecursionError out of
    ``AgentInfo.parse``: the agents' endpoint answered 500 and left the session open."""
    with pytest.raises(BadAgentInfo):
        AgentInfo.parse(b"[" * 16000)
    info = AgentInfo.parse(b'{"apiHost": "h:1"}')
    assert info.updated(b"[" * 16000) is info


# -- the WebSocket reader ---------------------------------------------------------------


def ws_frame(opcode: int, payload: bytes, fin: bool, mask: bytes | None, rsv: int = 0) -> bytes:
    size = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head = bytes((first, bit | size))
    elif size < 65536:
        head = struct.pack(">BBH", first, bit | 126, size)
    else:
        head = struct.pack(">BBQ", first, bit | 127, size)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


WS_FRAME = st.builds(
    ws_frame,
    st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11, 15]),
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"\x03\xe8", b"\x03\xe8bye", b"\x00", b"\x03\xe8\xff", b"p" * 126]),
    ),
    st.booleans(),
    st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
    st.sampled_from([0, 0, 0, 0x40]),
)


@settings(max_examples=500, deadline=None)
@given(
    st.booleans(),
    st.one_of(st.binary(max_size=400), st.lists(WS_FRAME, max_size=12).map(b"".join)),
    st.lists(st.integers(0, 3000), max_size=6),
)
def test_websocket_reader(masked: bool, data: bytes, cuts: list[int]) -> None:
    reader = FrameReader(masked=masked, max_frame=1024)
    for piece in cut(data, cuts):
        try:
            items = reader.feed(piece)
        except WebSocketError as exc:
            assert 1000 <= exc.code <= 1011
            return
        for item in items:
            assert isinstance(item, (bytes, bytearray, Ping, Pong, Close))
            if isinstance(item, (bytes, bytearray)):
                assert len(item) <= 1024
        if reader.closed:
            assert reader.feed(b"\x82\x00") == []  # nothing after a Close
            return


# -- the client handshake reader (the agent reading the gateway's 101) -------------------

STATUS = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["101", "²", "1O1", "٣٠١", "-1", " 101", "9" * 40, "101\x00"]),
)


@settings(max_examples=300, deadline=None)
@given(
    STATUS,
    st.lists(
        st.tuples(
            st.sampled_from(["Upgrade", "Connection", "Sec-WebSocket-Accept", "X"]),
            st.text(max_size=30),
        ),
        max_size=5,
    ),
    st.lists(st.integers(0, 400), max_size=4),
)
def test_client_handshake_reader(
    status: str, fields: list[tuple[str, str]], cuts: list[int]
) -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    lines = [f"HTTP/1.1 {status} Switching"] + [f"{name}: {value}" for name, value in fields]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    handshake = ClientHandshake(key)
    for piece in cut(raw, cuts):
        try:
            rest = handshake.feed(piece)
        except HandshakeError as exc:
            assert 100 <= exc.status <= 999
            return
        if rest is not None:
            break


def test_regression_a_status_of_superscript_two_is_a_handshake_error() -> None:
    """Found by fuzzing: the head is read as latin-1, where byte 0xB2 is "²";
    ``"²".isdigit()`` is true and ``int("²")`` raises ValueError, which escaped the
    agent's handshake reader (it expected HandshakeError). Also: a status of 40 digits
    was taken as one."""
    for status in (b"\xb2", b"\xb9\xb2\xb3", b"1\xb2", b"9" * 40):
        handshake = ClientHandshake("dGhlIHNhbXBsZSBub25jZQ==")
        with pytest.raises(HandshakeError) as caught:
            handshake.feed(b"HTTP/1.1 " + status + b" OK\r\n\r\n")
        assert caught.value.status == 502


def test_a_valid_101_is_read() -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    handshake = ClientHandshake(key)
    rest = handshake.feed(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n\r\nxy"
        ).encode()
    )
    assert rest == b"xy"
