"""Behaviour of the sans-I/O tunnel protocol, two ends back to back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.tunnel.pair import Pair
from tunnel import frames
from tunnel.errors import (
    FrameTooLarge,
    ProtocolError,
    StreamClosed,
    TooManyStreams,
    UnsupportedVersion,
)
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
)
from tunnel.frames import ErrorCode
from tunnel.protocol import Limits, Side, TunnelProtocol


def _limits(limits: Limits) -> tuple[int, int, int]:
    return limits.window, limits.max_frame, limits.max_streams


def test_hello_exchange_reports_metadata_and_version():
    client = TunnelProtocol(Side.CLIENT, metadata=b"agent")
    server = TunnelProtocol(Side.SERVER, metadata=b"gw")
    assert not client.is_ready
    events = server.receive_data(client.data_to_send())
    assert events == [HelloReceived(frames.VERSION, b"agent")]
    assert client.receive_data(server.data_to_send()) == [HelloReceived(frames.VERSION, b"gw")]
    assert client.is_ready and server.is_ready
    # The peer's limits are kept; its metadata was handed on, not kept for the
    # connection's life (an agent's HELLO carries its cluster's CA).
    assert server.peer == frames.Hello(frames.VERSION, *_limits(Limits()), b"")


def test_open_accept_data_fin_both_ways_closes_stream():
    p = Pair()
    sid = p.server.open_stream(b"api")
    assert sid == 2
    p.server.send_data(sid, b"GET / HTTP/1.1\r\n\r\n")
    assert p.to_client() == [StreamOpened(2, b"api"), DataReceived(2, b"GET / HTTP/1.1\r\n\r\n")]
    p.client.accept_stream(sid)
    p.client.send_data(sid, b"HTTP/1.1 200 OK\r\n\r\n", end_stream=True)
    assert p.to_server() == [
        StreamAccepted(2),
        DataReceived(2, b"HTTP/1.1 200 OK\r\n\r\n"),
        StreamEnded(2),
    ]
    p.server.end_stream(sid)
    assert p.to_client() == [StreamEnded(2)]
    assert p.client.stream_count == 0
    assert p.server.stream_count == 0


def test_stream_ids_have_parity_and_grow():
    p = Pair()
    assert [p.client.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [p.server.open_stream() for _ in range(2)] == [2, 4]


def test_open_before_peer_hello_is_refused():
    client = TunnelProtocol(Side.CLIENT)
    with pytest.raises(ProtocolError):
        client.open_stream()


def test_first_frame_must_be_hello():
    server = TunnelProtocol(Side.SERVER)
    server.data_to_send()
    with pytest.raises(ProtocolError):
        server.receive_data(frames.encode_open(1))
    goaway = server.data_to_send()
    assert goaway[0] == frames.FrameType.GOAWAY
    assert server.is_terminated
    assert server.receive_data(b"anything") == []


def test_old_version_is_rejected_with_goaway():
    server = TunnelProtocol(Side.SERVER)
    server.data_to_send()
    hello = frames.encode_hello(frames.Hello(0, 1024, 4096, 1))
    with pytest.raises(UnsupportedVersion):
        server.receive_data(hello)
    sent = server.data_to_send()
    assert frames.decode_goaway(sent[10:])[1] == ErrorCode.UNSUPPORTED_VERSION


def test_newer_version_negotiates_down():
    server = TunnelProtocol(Side.SERVER)
    events = server.receive_data(frames.encode_hello(frames.Hello(9, 1024, 4096, 1)))
    assert events == [HelloReceived(frames.VERSION, b"")]


@pytest.mark.parametrize(
    "hello",
    [
        frames.Hello(1, 0, 4096, 1),
        frames.Hello(1, 1024, 10, 1),
        frames.Hello(1, 1024, 4096, 0),
    ],
)
def test_hello_limits_are_validated(hello):
    server = TunnelProtocol(Side.SERVER)
    with pytest.raises(ProtocolError):
        server.receive_data(frames.encode_hello(hello))


def test_second_hello_is_a_protocol_error():
    p = Pair()
    with pytest.raises(ProtocolError):
        p.server.receive_data(frames.encode_hello(frames.Hello(1, 1024, 4096, 1)))


def test_peer_may_not_open_with_our_parity_or_reuse_ids():
    p = Pair()
    with pytest.raises(ProtocolError):
        p.server.receive_data(frames.encode_open(2))
    p = Pair()
    p.server.receive_data(frames.encode_open(5))
    with pytest.raises(ProtocolError):
        p.server.receive_data(frames.encode_open(3))


def test_frames_for_never_opened_streams_are_protocol_errors():
    p = Pair()
    with pytest.raises(ProtocolError):
        p.server.receive_data(frames.encode_data_header(9, 0, fin=True))
    p = Pair()
    with pytest.raises(ProtocolError):
        p.server.receive_data(frames.encode_window(4, 10))


def test_frames_for_reset_streams_are_ignored():
    p = Pair()
    sid = p.server.open_stream()
    p.to_client()
    p.server.reset_stream(sid)
    p.client.send_data(sid, b"late")  # the client has not seen the reset yet
    assert p.to_server() == []
    assert p.to_client() == [StreamReset(sid, ErrorCode.CANCEL, "")]
    assert p.client.stream_count == 0


def test_reset_carries_code_and_reason():
    p = Pair()
    sid = p.client.open_stream()
    p.to_server()
    p.server.reset_stream(sid, ErrorCode.CONNECT_FAILED, "connection refused")
    assert p.to_client() == [StreamReset(sid, ErrorCode.CONNECT_FAILED, "connection refused")]
    with pytest.raises(StreamClosed):
        p.client.send_data(sid, b"x")
    p.client.reset_stream(sid)  # no-op once gone
    assert p.client.data_to_send() == b""


def test_send_after_fin_is_refused():
    p = Pair()
    sid = p.server.open_stream()
    p.server.end_stream(sid)
    with pytest.raises(StreamClosed):
        p.server.send_data(sid, b"x")
    assert p.server.send_window(sid) == 0


def test_data_after_fin_resets_the_stream():
    p = Pair()
    sid = p.server.open_stream()
    p.to_client()
    raw = (
        frames.encode_data_header(sid, 1, fin=True)
        + b"a"
        + frames.encode_data_header(sid, 1, False)
        + b"b"
    )
    events = p.client.receive_data(raw)
    assert events[-1] == StreamReset(sid, ErrorCode.STREAM_CLOSED, "data after FIN")


def test_max_streams_refuses_extra_opens_from_peer():
    p = Pair(server_limits=Limits(max_streams=2))
    ids = [p.client.open_stream() for _ in range(2)]
    with pytest.raises(TooManyStreams):
        p.client.open_stream()
    assert len(p.to_server()) == 2
    # A peer that ignores the limit gets REFUSED_STREAM, not a new stream.
    events = p.server.receive_data(frames.encode_open(99))
    assert events == []
    sent = p.server.data_to_send()
    assert frames.HEADER.unpack_from(sent)[:3] == (frames.FrameType.RESET, 0, 99)
    assert frames.decode_reset(sent[10:]) == (ErrorCode.REFUSED_STREAM, "too many streams")
    p.client.reset_stream(ids[0])
    p.to_server()
    assert p.client.open_stream() == 5


def test_ping_is_answered_automatically():
    p = Pair()
    p.client.ping(b"12345678")
    assert p.to_server() == [PingReceived(b"12345678")]
    assert p.to_client() == [PingAcknowledged(b"12345678")]
    with pytest.raises(ValueError):
        p.client.ping(b"short")


def test_malformed_ping_is_a_protocol_error():
    p = Pair()
    with pytest.raises(ProtocolError):
        p.server.receive_data(frames.encode_ping(b"123"))


def test_goaway_stops_new_streams():
    p = Pair()
    p.server.close(ErrorCode.NO_ERROR, "restart")
    assert p.to_client() == [ConnectionTerminated(ErrorCode.NO_ERROR, 0, "restart")]
    with pytest.raises(TooManyStreams):
        p.client.open_stream()
    with pytest.raises(ProtocolError):
        p.server.open_stream()


def test_info_frames_carry_metadata():
    p = Pair()
    p.client.send_info(b'{"token": "x"}')
    assert p.to_server() == [InfoReceived(b'{"token": "x"}')]


def test_unknown_frame_types_are_ignored():
    p = Pair()
    assert p.server.receive_data(frames.HEADER.pack(200, 0, 0, 3) + b"abc") == []


def test_oversized_frames_are_rejected_before_buffering():
    p = Pair(server_limits=Limits(max_frame=4096))
    with pytest.raises(FrameTooLarge):
        p.server.receive_data(frames.encode_data_header(1, 4097, fin=False))
    p = Pair()
    with pytest.raises(FrameTooLarge):
        p.server.receive_data(frames.HEADER.pack(frames.FrameType.INFO, 0, 0, 10**6))


def merged(events):
    """Events with consecutive DATA of one stream joined: DATA payload is handed over in
    whatever pieces the input brings."""
    out = []
    for event in events:
        if (
            isinstance(event, DataReceived)
            and out
            and isinstance(out[-1], DataReceived)
            and out[-1].stream_id == event.stream_id
        ):
            out[-1] = DataReceived(event.stream_id, out[-1].data + event.data)
        else:
            out.append(event)
    return out


def test_input_split_at_every_byte_gives_the_same_events():
    p = Pair()
    sid = p.server.open_stream(b"t")
    p.server.send_data(sid, b"hello world", end_stream=True)
    p.server.ping(b"abcdefgh")
    raw = p.server.data_to_send()
    events = []
    for i in range(len(raw)):
        events += p.client.receive_data(raw[i : i + 1])
    assert merged(events) == [
        StreamOpened(sid, b"t"),
        DataReceived(sid, b"hello world"),
        StreamEnded(sid),
        PingReceived(b"abcdefgh"),
    ]


def test_a_buffer_of_payload_only_is_handed_on_without_a_copy():
    p = Pair()
    sid = p.server.open_stream(b"t")
    p.to_client()
    p.server.send_data(sid, b"x" * 100)
    raw = p.server.data_to_send()
    head, payload = raw[: frames.HEADER.size], bytearray(raw[frames.HEADER.size :])
    assert p.client.receive_data(head) == []
    [event] = p.client.receive_data(payload)
    assert isinstance(event, DataReceived) and event.data is payload
    # Headers and payloads in one call (a big answer's DATA frames arrive so): the
    # payload that ends the buffer is the buffer, its start cut off in place; a payload
    # followed by more bytes is copied out.
    p.server.send_data(sid, b"y" * 10)
    p.server.send_data(sid, b"z" * 10)
    raw = bytearray(p.server.data_to_send())
    events = p.client.receive_data(raw)
    assert [e.data for e in events] == [b"y" * 10, b"z" * 10]
    assert events[1].data is raw and type(events[0].data) is bytes
    # The caller's bytes (immutable) are sliced, never cut.
    p.server.send_data(sid, b"w" * 10)
    raw_bytes = p.server.data_to_send()
    [event] = p.client.receive_data(raw_bytes)
    assert event.data == b"w" * 10 and len(raw_bytes) == frames.HEADER.size + 10


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(blob):
    p = Pair()
    try:
        p.server.receive_data(blob)
    except ProtocolError:
        assert p.server.is_terminated


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*list(frames.FrameType), 77]),
            st.integers(0, 3),
            st.integers(0, 12),
            st.binary(max_size=24),
        ),
        max_size=20,
    )
)
def test_arbitrary_frame_sequences_raise_only_protocol_errors(seq):
    p = Pair()
    raw = b"".join(frames.HEADER.pack(t, f, s, len(b)) + b for t, f, s, b in seq)
    try:
        p.server.receive_data(raw)
    except ProtocolError:
        assert p.server.is_terminated


@settings(max_examples=200, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.integers(0, 2), st.binary(max_size=3000), st.booleans()), max_size=12
    ),
    cuts=st.lists(st.integers(0, 40000), max_size=10),
)
def test_data_arrives_whole_and_in_order_however_the_input_is_cut(writes, cuts):
    def run(pieces_of):
        p = Pair(client_limits=Limits(max_frame=1024))
        sids = [p.server.open_stream(b"") for _ in range(3)]
        ended = set()
        for which, data, fin in writes:
            sid = sids[which]
            if sid in ended:
                continue
            p.server.send_data(sid, data, end_stream=fin)
            if fin:
                ended.add(sid)
        p.server.ping(b"12345678")
        raw = p.server.data_to_send()
        events = []
        for piece in pieces_of(raw):
            events += p.client.receive_data(piece)
        return merged(events)

    def cut(raw):
        last = 0
        for c in sorted({min(c, len(raw)) for c in cuts} | {len(raw)}):
            yield raw[last:c]
            last = c

    assert run(cut) == run(lambda raw: [raw])
