"""HTTP/2 conformance of gateway.front.h2_protocol, written from RFC 9113 (and RFC 7541 for HPACK).

h2spec's case list is the index (its ids, in RFC 7540 numbering, are in the comments:
``h2spec http2/6.5.2/1``); each test is named after the RFC 9113 section it checks, with
the cases h2spec does not have (RFC 9113's field validity, ``:authority``, the closed
stream rules) beside them. Sans I/O: a client made of hand-built frames talks to a
``ServerConnection``; a connection error is a ``Terminated`` event and a GOAWAY frame
with the code, after which nothing more is read; a stream error is a RST_STREAM frame
with the code, the connection going on.

Where the gateway deliberately differs, the test says so and asserts what it does: no
server push (a client's PUSH_PROMISE is a connection error, as RFC 9113 says), no
extended CONNECT (``:protocol`` is malformed: SETTINGS_ENABLE_CONNECT_PROTOCOL is never
sent), RFC 7540's priority signals read only for their errors (a stream depending on
itself is a stream error, as RFC 7540 5.3.1, h2 and h2spec have it; RFC 9113 dropped
the rule), no 400 answer to a malformed request (8.1.1: a stream error; the answer is a
MAY), DATA above 16,384 octets a connection error (4.2 allows it).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import hpack
import pytest

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

Header = tuple[bytes, bytes]

(
    DATA,
    HEADERS,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    PUSH_PROMISE,
    PING,
    GOAWAY,
    WINDOW_UPDATE,
    CONTINUATION,
) = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0x0, 0x1, 0x3, 0x5
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB

GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"gw.example:8443"),
    (b":path", b"/k8s/clusters/c-1/api/v1/pods"),
]
POST = [(b":method", b"POST"), *GET[1:]]


class Frame(NamedTuple):
    kind: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def code(self) -> int:
        """The error code of a RST_STREAM or GOAWAY."""
        return int.from_bytes(self.payload[4:8] if self.kind == GOAWAY else self.payload[:4])


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def ping(flags: int = 0, stream_id: int = 0, payload: bytes = b"12345678") -> bytes:
    return frame(PING, flags, stream_id, payload)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst(stream_id: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def priority(stream_id: int, depends_on: int = 0) -> bytes:
    return frame(PRIORITY, 0, stream_id, struct.pack(">IB", depends_on, 15))


def parse(out: bytes) -> list[Frame]:
    frames = []
    while out:
        length = int.from_bytes(out[:3])
        frames.append(
            Frame(out[3], out[4], int.from_bytes(out[5:9]) & 0x7FFFFFFF, out[9 : 9 + length])
        )
        out = out[9 + length :]
    return frames


class Client:
    """The peer: a conformance tester's frames, an HPACK encoder with its state."""

    def __init__(self, handshake: bool = True) -> None:
        self.server = ServerConnection()
        self.encoder = hpack.Encoder()
        self.events: list[Event] = []
        self.out: list[Frame] = []
        if handshake:
            self.send(PREFACE + settings())
            self.frames()

    def block(self, fields: list[Header]) -> bytes:
        return self.encoder.encode(fields, huffman=False)

    def headers(
        self, stream_id: int, fields: list[Header], flags: int = END_HEADERS | END_STREAM
    ) -> bytes:
        return frame(HEADERS, flags, stream_id, self.block(fields))

    def send(self, *data: bytes) -> list[Event]:
        events = self.server.receive(b"".join(data))
        self.events += events
        return events

    def request(self, stream_id: int, fields: list[Header], end_stream: bool = True) -> list[Event]:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return self.send(self.headers(stream_id, fields, flags))

    def frames(self) -> list[Frame]:
        """What the server queued since last asked."""
        got = parse(b"".join(self.server.data_to_send()))
        self.out += got
        return got

    def answer(self, stream_id: int, body: bytes = b"") -> None:
        self.server.send_headers(stream_id, 200, [], end_stream=not body)
        if body:
            self.server.send_data(stream_id, body, end_stream=True)

    # verdicts

    def connection_error(self, code: int) -> None:
        terminated = [e for e in self.events if isinstance(e, Terminated)]
        assert terminated and terminated[-1].code == code, self.events
        goaways = [f for f in self.frames() if f.kind == GOAWAY]
        assert goaways and goaways[-1].code == code, goaways
        assert self.server.receive(ping()) == []  # nothing more is read
        assert self.server.data_to_send() == []

    def stream_error(self, stream_id: int, code: int) -> None:
        frames = self.frames()
        assert (stream_id, code) in [
            (f.stream_id, f.code) for f in frames if f.kind == RST_STREAM
        ], (
            frames,
            self.events,
        )
        assert not any(f.kind == GOAWAY for f in frames)
        assert not self.server.terminated

    def alive(self) -> None:
        """The connection still works: a PING is answered."""
        assert not self.server.terminated
        self.frames()
        self.send(ping(payload=b"still-up"))
        assert Frame(PING, ACK, 0, b"still-up") in self.frames()

    def malformed(self, fields: list[Header], end_stream: bool = True, stream_id: int = 1) -> None:
        self.request(stream_id, fields, end_stream)
        self.stream_error(stream_id, PROTOCOL_ERROR)
        # A malformed request never reaches the gateway's proxy: no event at all.
        assert not [e for e in self.events if getattr(e, "stream_id", 0) == stream_id]
        self.alive()

    def accepted(self, stream_id: int = 1) -> RequestReceived:
        requests = [
            e for e in self.events if isinstance(e, RequestReceived) and e.stream_id == stream_id
        ]
        assert requests, (self.events, self.frames())
        assert not any(isinstance(e, Reset | Terminated) for e in self.events)
        return requests[-1]


def _of(kind: type, events: list[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


# 3.4 HTTP/2 Connection Preface


def test_3_4_the_server_preface_is_a_settings_frame_first() -> None:  # h2spec http2/3.5/1
    client = Client(handshake=False)
    first = client.frames()[0]
    assert (first.kind, first.flags, first.stream_id) == (SETTINGS, 0, 0)
    assert 0x8 not in [
        struct.unpack_from(">H", first.payload, i)[0] for i in range(0, len(first.payload), 6)
    ]
    client.send(PREFACE + settings())
    assert Frame(SETTINGS, ACK, 0, b"") in client.frames()


def test_3_4_an_invalid_preface_is_a_connection_error() -> None:  # h2spec http2/3.5/2
    client = Client(handshake=False)
    client.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    client.connection_error(PROTOCOL_ERROR)


def test_3_4_the_preface_is_followed_by_settings() -> None:
    client = Client(handshake=False)
    client.send(PREFACE + ping())
    client.connection_error(PROTOCOL_ERROR)


# 4.1 Frame Format


def test_4_1_a_frame_of_unknown_type_is_ignored() -> None:  # h2spec http2/4.1/1
    client = Client()
    assert client.send(frame(0xFE, 0xFF, 1, b"whatever")) == []
    client.alive()


def test_4_1_undefined_flags_are_ignored() -> None:  # h2spec http2/4.1/2
    client = Client()
    client.send(ping(flags=0x16))
    assert Frame(PING, ACK, 0, b"12345678") in client.frames()


def test_4_1_the_reserved_bit_is_ignored() -> None:  # h2spec http2/4.1/3
    client = Client()
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 0x80000001, client.block(GET)))
    assert client.accepted(1).stream_id == 1


# 4.2 Frame Size


def test_4_2_data_of_16384_octets_is_received() -> None:  # h2spec http2/4.2/1
    client = Client()
    client.request(1, [*POST, (b"content-length", b"16384")], end_stream=False)
    client.send(frame(DATA, END_STREAM, 1, b"x" * 16384))
    assert sum(len(e.data) for e in _of(Data, client.events)) == 16384
    assert _of(End, client.events)


def test_4_2_data_above_the_max_frame_size_is_a_frame_size_error() -> None:  # http2/4.2/2
    """A stream error would do for DATA; the gateway ends the connection (4.2 allows it)."""
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(frame(DATA, END_STREAM, 1, b"x" * 16385))
    client.connection_error(FRAME_SIZE_ERROR)


def test_4_2_headers_above_the_max_frame_size_is_a_connection_error() -> None:  # 4.2/3
    client = Client()
    client.send(frame(HEADERS, END_HEADERS, 1, client.block([*GET, (b"x-big", b"x" * 16400)])))
    client.connection_error(FRAME_SIZE_ERROR)


# 4.3 Field Section Compression and Decompression


def test_4_3_an_invalid_field_block_is_a_compression_error() -> None:  # h2spec http2/4.3/1
    client = Client()
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x40"))
    client.connection_error(COMPRESSION_ERROR)


def test_4_3_a_priority_frame_inside_a_field_block_is_a_connection_error() -> None:  # 4.3/2
    client = Client()
    block = client.block(GET)
    client.send(frame(HEADERS, END_STREAM, 1, block[:5]), priority(1))
    client.connection_error(PROTOCOL_ERROR)


def test_4_3_headers_of_another_stream_inside_a_field_block_is_a_connection_error() -> None:
    client = Client()  # h2spec http2/4.3/3
    block = client.block(GET)
    client.send(frame(HEADERS, END_STREAM, 1, block[:5]), frame(HEADERS, END_HEADERS, 3, block[5:]))
    client.connection_error(PROTOCOL_ERROR)


def test_4_3_1_a_malformed_request_still_updates_the_compression_state() -> None:
    """The block is decoded before it is judged: its indexed fields stay in step."""
    client = Client()
    client.malformed([*GET, (b"x-shared", b"kept"), (b"Upper", b"x")])
    client.request(3, [*GET, (b"x-shared", b"kept")])  # refers to the entries added above
    assert (b"x-shared", b"kept") in client.accepted(3).headers


# 5.1 Stream States


@pytest.mark.parametrize(
    "data",
    [
        frame(DATA, 0, 1, b"x"),  # h2spec http2/5.1/1
        rst(1),  # http2/5.1/2
        window_update(1, 100),  # http2/5.1/3
        frame(CONTINUATION, END_HEADERS, 1, b"\x82"),  # http2/5.1/4
    ],
    ids=["data", "rst-stream", "window-update", "continuation"],
)
def test_5_1_idle_any_frame_but_headers_or_priority_is_a_connection_error(data: bytes) -> None:
    client = Client()
    client.send(data)
    client.connection_error(PROTOCOL_ERROR)


def test_5_1_idle_priority_is_allowed() -> None:
    client = Client()
    client.send(priority(7, depends_on=3))
    client.alive()
    client.request(1, GET)  # stream 7 stayed idle: 1 still opens
    client.accepted(1)


def _half_closed_remote(client: Client) -> None:
    client.request(1, GET)  # END_STREAM: half-closed (remote) until we answer
    assert client.accepted(1)


def test_5_1_half_closed_remote_data_is_a_stream_error() -> None:  # h2spec http2/5.1/5
    client = Client()
    _half_closed_remote(client)
    client.send(frame(DATA, 0, 1, b"x"))
    client.stream_error(1, STREAM_CLOSED)
    assert _of(Reset, client.events)  # the gateway drops its answer


def test_5_1_half_closed_remote_headers_is_a_stream_error() -> None:  # h2spec http2/5.1/6
    client = Client()
    _half_closed_remote(client)
    client.send(client.headers(1, [(b"x-trailer", b"1")]))
    client.stream_error(1, STREAM_CLOSED)


def test_5_1_half_closed_remote_window_update_priority_and_rst_stream_are_allowed() -> None:
    client = Client()
    _half_closed_remote(client)
    client.send(window_update(1, 10), priority(1, 0))
    client.alive()
    client.send(rst(1))
    assert _of(Reset, client.events)[0].stream_id == 1


@pytest.mark.parametrize("state", ["half-closed", "reset by the client", "ended"])
def test_5_1_continuation_without_headers_is_a_connection_error(state: str) -> None:
    client = Client()  # h2spec http2/5.1/7, 5.1/10, 5.1/13
    _half_closed_remote(client)
    if state == "reset by the client":
        client.send(rst(1))
    elif state == "ended":
        client.answer(1)
    client.send(frame(CONTINUATION, END_HEADERS, 1, client.block([(b"x", b"y")])))
    client.connection_error(PROTOCOL_ERROR)


def _reset_by_the_client(client: Client) -> None:
    client.request(1, POST, end_stream=False)
    client.send(rst(1))
    assert _of(Reset, client.events)[0].code == CANCEL


def test_5_1_closed_by_the_clients_rst_stream_data_is_a_stream_error() -> None:  # 5.1/8
    client = Client()
    _reset_by_the_client(client)
    client.send(frame(DATA, END_STREAM, 1, b"test"))
    client.frames()
    assert not client.server.terminated
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, STREAM_CLOSED)
    ]


def test_5_1_closed_by_the_clients_rst_stream_headers_is_a_stream_error() -> None:  # 5.1/9
    client = Client()
    _reset_by_the_client(client)
    client.send(client.headers(1, GET))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, STREAM_CLOSED)
    ]
    client.alive()


def _ended(client: Client) -> None:
    _half_closed_remote(client)
    client.answer(1, b"done")
    client.frames()
    assert client.server.open_streams == 0


def test_5_1_closed_after_end_stream_data_is_a_connection_error() -> None:  # h2spec 5.1/11
    client = Client()
    _ended(client)
    client.send(frame(DATA, END_STREAM, 1, b"test"))
    client.connection_error(STREAM_CLOSED)


def test_5_1_closed_after_end_stream_headers_is_a_connection_error() -> None:  # 5.1/12
    """The 2026 finding: a new request on a finished stream's id was ignored."""
    client = Client()
    _ended(client)
    client.request(1, GET)
    client.connection_error(STREAM_CLOSED)
    assert len(_of(RequestReceived, client.events)) == 1


def test_5_1_closed_after_end_stream_window_update_and_rst_stream_are_ignored() -> None:
    """In flight before the client saw our END_STREAM: allowed (5.1, "closed")."""
    client = Client()
    _ended(client)
    client.send(window_update(1, 100), rst(1), priority(1))
    client.alive()


def _reset_by_us(client: Client) -> None:
    client.request(1, [*POST, (b"content-length", b"100")], end_stream=False)
    client.server.reset(1, CANCEL)  # the gateway abandons it (say, answered already)
    assert client.frames() == [Frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL))]


def test_5_1_after_our_rst_stream_data_is_ignored_but_counted_for_flow_control() -> None:
    client = Client()
    _reset_by_us(client)
    window = client.server.conn_recv_window
    assert client.send(frame(DATA, 0, 1, b"x" * 1000)) == []
    assert client.server.conn_recv_window + client.server._conn_unacked == window
    client.alive()


def test_5_1_after_our_rst_stream_headers_are_decoded_and_ignored() -> None:
    """Minimally processed: the compression state is updated, nothing else happens."""
    client = Client()
    _reset_by_us(client)
    assert client.send(client.headers(1, [(b"x-trailer", b"in-flight")])) == []
    client.alive()
    client.request(3, [*GET, (b"x-trailer", b"in-flight")])
    assert (b"x-trailer", b"in-flight") in client.accepted(3).headers


def test_5_1_after_our_rst_stream_of_a_malformed_request_its_body_is_ignored() -> None:
    client = Client()
    client.malformed([*POST, (b"Upper", b"x")], end_stream=False)
    assert client.send(frame(DATA, END_STREAM, 1, b"body in flight")) == []
    client.alive()


def test_5_1_a_forgotten_closed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Of the last ``CLOSED_STREAMS_KEPT`` closed streams the end is remembered; on an
    older one HEADERS is a connection error (5.1.1), DATA is ignored (it may be in flight
    on a stream we reset)."""
    monkeypatch.setattr(http2, "CLOSED_STREAMS_KEPT", 4)
    client = Client()
    for stream_id in range(1, 20, 2):
        client.request(stream_id, [*POST, (b"content-length", b"5")], end_stream=False)
        client.server.reset(stream_id, CANCEL)
    assert len(client.server._closed) == 4
    assert client.send(frame(DATA, 0, 1, b"x")) == []
    client.alive()
    client.request(1, GET)
    client.connection_error(PROTOCOL_ERROR)


# 5.1.1 Stream Identifiers


def test_5_1_1_an_even_stream_id_is_a_connection_error() -> None:  # h2spec http2/5.1.1/1
    client = Client()
    client.request(2, GET)
    client.connection_error(PROTOCOL_ERROR)


def test_5_1_1_a_stream_id_below_the_last_is_a_connection_error() -> None:  # 5.1.1/2
    client = Client()
    client.request(5, GET)
    client.request(3, GET)
    client.connection_error(PROTOCOL_ERROR)
    assert [e.stream_id for e in _of(RequestReceived, client.events)] == [5]


def test_5_1_1_stream_ids_may_be_skipped() -> None:
    client = Client()
    client.request(1, GET)
    client.request(9, GET)
    assert [e.stream_id for e in _of(RequestReceived, client.events)] == [1, 9]


# 5.1.2 Stream Concurrency


def test_5_1_2_streams_above_the_advertised_limit_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http2, "MAX_CONCURRENT_STREAMS", 2)  # h2spec http2/5.1.2/1
    client = Client()
    for stream_id in (1, 3, 5):
        client.request(stream_id, GET)
    client.stream_error(5, REFUSED_STREAM)
    client.answer(1)
    client.request(7, GET)  # room again
    assert [e.stream_id for e in _of(RequestReceived, client.events)] == [1, 3, 7]


# 5.3 Prioritization (RFC 7540's signals: deprecated, read only for their errors)


def test_5_3_1_headers_depending_on_itself_is_a_stream_error() -> None:  # h2spec 5.3.1/1
    client = Client()
    payload = struct.pack(">IB", 1, 15) + client.block([*GET, (b"x-seen", b"1")])
    client.send(frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, payload))
    client.stream_error(1, PROTOCOL_ERROR)
    client.request(3, [*GET, (b"x-seen", b"1")])  # its block was decoded all the same
    assert (b"x-seen", b"1") in client.accepted(3).headers


def test_5_3_1_priority_depending_on_itself_is_a_stream_error() -> None:  # h2spec 5.3.1/2
    client = Client()
    client.send(priority(1, depends_on=1))
    client.stream_error(1, PROTOCOL_ERROR)


def test_5_3_2_priority_signals_are_otherwise_ignored() -> None:
    client = Client()
    payload = struct.pack(">IB", 0x80000000, 200) + client.block(GET)
    client.send(frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, payload))
    client.accepted(1)


# 5.4 Error Handling


def test_5_4_1_a_connection_error_sends_goaway_with_the_last_stream_and_stops() -> None:
    client = Client()  # h2spec http2/5.4.1/1-2
    client.request(1, GET)
    client.send(ping(stream_id=1))
    client.connection_error(PROTOCOL_ERROR)
    goaway = [f for f in client.out if f.kind == GOAWAY][-1]
    assert int.from_bytes(goaway.payload[:4]) == 1


def test_5_4_2_a_stream_error_leaves_the_other_streams_alone() -> None:
    client = Client()
    client.request(1, GET)
    client.request(3, [*GET, (b"Bad", b"x")])
    client.stream_error(3, PROTOCOL_ERROR)
    client.answer(1, b"ok")
    assert [f.kind for f in client.frames()] == [HEADERS, DATA]


# 5.5 Extending HTTP/2


def test_5_5_an_unknown_extension_frame_is_ignored() -> None:  # h2spec http2/5.5/1
    client = Client()
    client.send(frame(0x16, 0, 0, b"ext"), frame(0x16, 0, 99, b"ext"))
    client.alive()


def test_5_5_an_unknown_extension_frame_inside_a_field_block_is_a_connection_error() -> None:
    client = Client()  # h2spec http2/5.5/2
    block = client.block(GET)
    client.send(frame(HEADERS, END_STREAM, 1, block[:4]), frame(0x16, 0, 1, b"ext"))
    client.connection_error(PROTOCOL_ERROR)


# 6.1 DATA


def test_6_1_data_on_stream_0_is_a_connection_error() -> None:  # h2spec http2/6.1/1
    client = Client()
    client.send(frame(DATA, 0, 0, b"x"))
    client.connection_error(PROTOCOL_ERROR)


def test_6_1_data_on_a_stream_not_open_is_stream_closed() -> None:  # h2spec http2/6.1/2
    client = Client()
    _half_closed_remote(client)
    client.send(frame(DATA, END_STREAM, 1, b"x"))
    client.stream_error(1, STREAM_CLOSED)


def test_6_1_padding_as_long_as_the_payload_is_a_connection_error() -> None:  # 6.1/3
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(frame(DATA, PADDED | END_STREAM, 1, bytes((6,)) + b"x" * 5))
    client.connection_error(PROTOCOL_ERROR)


def test_6_1_padding_is_removed_and_counted_for_flow_control() -> None:
    client = Client()
    client.request(1, [*POST, (b"content-length", b"4")], end_stream=False)
    window = client.server.conn_recv_window
    client.send(frame(DATA, PADDED | END_STREAM, 1, bytes((10,)) + b"body" + b"\0" * 10))
    assert [e.data for e in _of(Data, client.events)] == [b"body"]
    assert _of(End, client.events)
    assert client.server.conn_recv_window == window - 15


# 6.2 HEADERS


def test_6_2_a_priority_frame_after_headers_without_end_headers_is_a_connection_error() -> None:
    client = Client()  # h2spec http2/6.2/1
    block = client.block(GET)
    client.send(frame(HEADERS, END_STREAM, 1, block), priority(1))
    client.connection_error(PROTOCOL_ERROR)


def test_6_2_headers_to_another_stream_inside_a_field_block_is_a_connection_error() -> None:
    client = Client()  # h2spec http2/6.2/2
    client.send(frame(HEADERS, END_STREAM, 1, client.block(GET)), client.headers(3, GET))
    client.connection_error(PROTOCOL_ERROR)


def test_6_2_headers_on_stream_0_is_a_connection_error() -> None:  # h2spec http2/6.2/3
    client = Client()
    client.request(0, GET)
    client.connection_error(PROTOCOL_ERROR)


def test_6_2_padding_longer_than_the_payload_is_a_connection_error() -> None:  # 6.2/4
    client = Client()
    block = client.block(GET)
    client.send(frame(HEADERS, END_HEADERS | PADDED, 1, bytes((len(block) + 1,)) + block))
    client.connection_error(PROTOCOL_ERROR)


def test_6_2_padded_headers_with_priority_fields_are_read() -> None:
    client = Client()
    payload = bytes((3,)) + struct.pack(">IB", 0, 10) + client.block(GET) + b"\0\0\0"
    client.send(frame(HEADERS, END_HEADERS | END_STREAM | PADDED | PRIORITY_FLAG, 1, payload))
    assert client.accepted(1).path == GET[3][1]


# 6.3 PRIORITY


def test_6_3_priority_on_stream_0_is_a_connection_error() -> None:  # h2spec http2/6.3/1
    client = Client()
    client.send(priority(0))
    client.connection_error(PROTOCOL_ERROR)


def test_6_3_priority_of_the_wrong_length_is_a_stream_error() -> None:  # h2spec http2/6.3/2
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(frame(PRIORITY, 0, 1, b"\0" * 4))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, FRAME_SIZE_ERROR)
    ]
    client.alive()


# 6.4 RST_STREAM


def test_6_4_rst_stream_on_stream_0_is_a_connection_error() -> None:  # h2spec http2/6.4/1
    client = Client()
    client.send(rst(0))
    client.connection_error(PROTOCOL_ERROR)


def test_6_4_rst_stream_on_an_idle_stream_is_a_connection_error() -> None:  # 6.4/2
    client = Client()
    client.send(rst(1))
    client.connection_error(PROTOCOL_ERROR)


def test_6_4_rst_stream_of_the_wrong_length_is_a_connection_error() -> None:  # 6.4/3
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(frame(RST_STREAM, 0, 1, b"\0\0\0"))
    client.connection_error(FRAME_SIZE_ERROR)


# 6.5 SETTINGS


def test_6_5_settings_ack_with_a_payload_is_a_connection_error() -> None:  # h2spec 6.5/1
    client = Client()
    client.send(frame(SETTINGS, ACK, 0, b"\0" * 6))
    client.connection_error(FRAME_SIZE_ERROR)


def test_6_5_settings_on_a_stream_is_a_connection_error() -> None:  # h2spec http2/6.5/2
    client = Client()
    client.send(frame(SETTINGS, 0, 1, b""))
    client.connection_error(PROTOCOL_ERROR)


def test_6_5_settings_not_a_multiple_of_6_octets_is_a_connection_error() -> None:  # 6.5/3
    client = Client()
    client.send(frame(SETTINGS, 0, 0, b"\0" * 3))
    client.connection_error(FRAME_SIZE_ERROR)


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        (0x2, 2, PROTOCOL_ERROR),  # ENABLE_PUSH: h2spec http2/6.5.2/1
        (0x4, 2**31, FLOW_CONTROL_ERROR),  # INITIAL_WINDOW_SIZE: 6.5.2/2
        (0x5, 16383, PROTOCOL_ERROR),  # MAX_FRAME_SIZE below 2**14: 6.5.2/3
        (0x5, 2**24, PROTOCOL_ERROR),  # MAX_FRAME_SIZE above 2**24-1: 6.5.2/4
        (0x9, 2, PROTOCOL_ERROR),  # NO_RFC7540_PRIORITIES (RFC 9218 section 2.1)
    ],
)
def test_6_5_2_a_setting_out_of_range_is_a_connection_error(
    setting: int, value: int, code: int
) -> None:
    client = Client()
    client.send(settings((setting, value)))
    client.connection_error(code)


def test_6_5_2_an_unknown_setting_is_ignored() -> None:  # h2spec http2/6.5.2/5
    client = Client()
    client.send(settings((0xFF, 1), (0x8, 1)))
    assert Frame(SETTINGS, ACK, 0, b"") in client.frames()
    client.alive()


def test_6_5_3_settings_values_are_processed_in_order() -> None:  # h2spec http2/6.5.3/1
    client = Client()
    client.send(settings((0x4, 100), (0x4, 1)))
    client.request(1, GET)
    client.answer(1, b"abc")
    data = [f for f in client.frames() if f.kind == DATA]
    assert [len(f.payload) for f in data] == [1]


def test_6_5_3_settings_are_acknowledged() -> None:  # h2spec http2/6.5.3/2
    client = Client()
    client.send(settings((0x3, 100)))
    assert client.frames() == [Frame(SETTINGS, ACK, 0, b"")]


# 6.7 PING


def test_6_7_ping_is_answered_with_its_payload() -> None:  # h2spec http2/6.7/1
    client = Client()
    client.send(ping(payload=b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"))
    assert client.frames() == [Frame(PING, ACK, 0, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")]


def test_6_7_a_ping_ack_is_not_answered() -> None:  # h2spec http2/6.7/2
    client = Client()
    client.send(ping(flags=ACK))
    assert client.frames() == []


def test_6_7_ping_on_a_stream_is_a_connection_error() -> None:  # h2spec http2/6.7/3
    client = Client()
    client.send(ping(stream_id=1))
    client.connection_error(PROTOCOL_ERROR)


def test_6_7_ping_of_the_wrong_length_is_a_connection_error() -> None:  # h2spec http2/6.7/4
    client = Client()
    client.send(ping(payload=b"123456"))
    client.connection_error(FRAME_SIZE_ERROR)


# 6.8 GOAWAY


def test_6_8_goaway_on_a_stream_is_a_connection_error() -> None:  # h2spec http2/6.8/1
    client = Client()
    client.send(frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0)))
    client.connection_error(PROTOCOL_ERROR)


def test_6_8_the_clients_goaway_leaves_its_streams_served() -> None:
    client = Client()
    client.request(1, GET)
    client.send(frame(GOAWAY, 0, 0, struct.pack(">II", 1, NO_ERROR)))
    assert [(e.last_stream_id, e.code) for e in _of(GoAway, client.events)] == [(1, NO_ERROR)]
    client.answer(1, b"still answered")
    assert [f.kind for f in client.frames()] == [HEADERS, DATA]


def test_6_8_after_our_goaway_newer_streams_are_ignored() -> None:
    client = Client()
    client.request(1, [*POST, (b"content-length", b"2")], end_stream=False)
    client.server.goaway()
    assert int.from_bytes(client.frames()[0].payload[:4]) == 1
    assert client.send(client.headers(3, [*POST, (b"x-in", b"flight")], END_HEADERS)) == []
    assert client.send(frame(DATA, END_STREAM, 3, b"xy")) == []
    client.send(frame(DATA, END_STREAM, 1, b"ok"))  # stream 1 is still served
    assert [e.data for e in _of(Data, client.events)] == [b"ok"]
    client.alive()


# 6.9 WINDOW_UPDATE


def test_6_9_a_zero_increment_on_the_connection_is_a_connection_error() -> None:  # 6.9/1
    client = Client()
    client.send(window_update(0, 0))
    client.connection_error(PROTOCOL_ERROR)


def test_6_9_a_zero_increment_on_a_stream_is_a_stream_error() -> None:  # h2spec 6.9/2
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(window_update(1, 0))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, PROTOCOL_ERROR)
    ]


def test_6_9_window_update_of_the_wrong_length_is_a_connection_error() -> None:  # 6.9/3
    client = Client()
    client.send(frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\1\0"))
    client.connection_error(FRAME_SIZE_ERROR)


def test_6_9_1_data_never_exceeds_the_window() -> None:  # h2spec http2/6.9.1/1
    client = Client()
    client.send(settings((0x4, 1)))
    client.request(1, GET)
    client.answer(1, b"abc")
    assert [len(f.payload) for f in client.frames() if f.kind == DATA] == [1]
    client.send(window_update(1, 5))
    data = [f for f in client.frames() if f.kind == DATA]
    assert [(f.payload, f.flags) for f in data] == [(b"bc", END_STREAM)]


def test_6_9_1_the_connection_window_above_2_31_1_is_a_connection_error() -> None:  # 6.9.1/2
    client = Client()
    client.send(window_update(0, 2**31 - 1))
    client.connection_error(FLOW_CONTROL_ERROR)


def test_6_9_1_a_stream_window_above_2_31_1_is_a_stream_error() -> None:  # h2spec 6.9.1/3
    client = Client()
    client.request(1, GET)
    client.send(window_update(1, 2**31 - 1))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, FLOW_CONTROL_ERROR)
    ]


def test_6_9_2_a_new_initial_window_applies_to_open_streams() -> None:  # h2spec 6.9.2/1
    client = Client()
    client.send(settings((0x4, 0)))
    client.request(1, GET)
    client.answer(1, b"abcd")
    assert not [f for f in client.frames() if f.kind == DATA]
    client.send(settings((0x4, 2)))
    assert [f.payload for f in client.frames() if f.kind == DATA] == [b"ab"]


def test_6_9_2_a_window_can_go_negative() -> None:  # h2spec http2/6.9.2/2
    client = Client()
    client.send(settings((0x4, 3)))
    client.request(1, GET)
    client.answer(1, b"abcdef")
    assert [f.payload for f in client.frames() if f.kind == DATA] == [b"abc"]
    client.send(settings((0x4, 0)))  # the stream's window: 0 - 3 = -3
    client.send(window_update(1, 3))
    assert not [f for f in client.frames() if f.kind == DATA]
    client.send(window_update(1, 1))
    assert [f.payload for f in client.frames() if f.kind == DATA] == [b"d"]
    assert _of(Drained, client.events) == []


def test_6_9_2_an_initial_window_above_the_maximum_is_a_connection_error() -> None:  # 6.9.2/3
    client = Client()
    client.send(settings((0x4, 2**31)))
    client.connection_error(FLOW_CONTROL_ERROR)


# 6.10 CONTINUATION


def test_6_10_continuation_frames_complete_a_field_block() -> None:  # h2spec http2/6.10/1
    client = Client()
    block = client.block([*GET, (b"x-long", b"v" * 100)])
    client.send(
        frame(HEADERS, END_STREAM, 1, block[:10]),
        frame(CONTINUATION, 0, 1, block[10:50]),
        frame(CONTINUATION, 0, 1, b""),
        frame(CONTINUATION, END_HEADERS, 1, block[50:]),
    )
    assert (b"x-long", b"v" * 100) in client.accepted(1).headers


@pytest.mark.parametrize(
    "after",
    [
        "data",  # h2spec http2/6.10/2: a field block interrupted
        "stream-0",  # 6.10/3
        "end-headers",  # 6.10/4: CONTINUATION after HEADERS with END_HEADERS
        "continuation-end-headers",  # 6.10/5
        "after-data",  # 6.10/6
    ],
)
def test_6_10_continuation_out_of_place_is_a_connection_error(after: str) -> None:
    client = Client()
    block = client.block(POST)
    more = frame(CONTINUATION, END_HEADERS, 1, client.block([(b"x", b"y")]))
    if after == "data":
        client.send(frame(HEADERS, 0, 1, block), frame(DATA, END_STREAM, 1, b"x"))
    elif after == "stream-0":
        client.send(frame(HEADERS, 0, 1, block), frame(CONTINUATION, END_HEADERS, 0, b""))
    elif after == "end-headers":
        client.send(frame(HEADERS, END_HEADERS, 1, block), more)
    elif after == "continuation-end-headers":
        client.send(
            frame(HEADERS, 0, 1, block[:3]), frame(CONTINUATION, END_HEADERS, 1, block[3:]), more
        )
    else:
        client.send(frame(HEADERS, END_HEADERS, 1, block), frame(DATA, 0, 1, b"x"), more)
    client.connection_error(PROTOCOL_ERROR)


# 7 Error Codes


def test_7_an_unknown_error_code_in_goaway_is_nothing_special() -> None:  # h2spec http2/7/1
    client = Client()
    client.send(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0xDEAD)))
    assert _of(GoAway, client.events)[0].code == 0xDEAD
    client.alive()


def test_7_an_unknown_error_code_in_rst_stream_is_nothing_special() -> None:  # 7/2
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(rst(1, 0xDEAD))
    assert _of(Reset, client.events)[0].code == 0xDEAD
    client.alive()


# 8.1 HTTP Message Framing


def test_8_1_a_second_headers_without_end_stream_is_a_stream_error() -> None:  # h2spec 8.1/1
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(frame(DATA, 0, 1, b"x"))
    client.send(client.headers(1, [(b"x-trailer", b"1")], END_HEADERS))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, PROTOCOL_ERROR)
    ]


def test_8_1_trailers_end_the_request() -> None:
    client = Client()
    client.request(1, [*POST, (b"te", b"trailers")], end_stream=False)
    client.send(frame(DATA, 0, 1, b"body"), client.headers(1, [(b"x-checksum", b"abc")]))
    request = client.accepted(1)
    assert (b"x-checksum", b"abc") not in request.headers
    assert [type(e) for e in client.events] == [RequestReceived, Data, End]


@pytest.mark.parametrize(
    ("length", "frames"),
    [
        (b"3", [b"four"]),  # h2spec http2/8.1.2.6/1
        (b"10", [b"four", b"five!"]),  # h2spec http2/8.1.2.6/2
        (b"10", [b"four", b"fivefive!!", b""]),
    ],
)
def test_8_1_1_content_length_not_the_data_received_is_malformed(
    length: bytes, frames: list[bytes]
) -> None:
    client = Client()
    client.request(1, [*POST, (b"content-length", length)], end_stream=False)
    for i, data in enumerate(frames):
        client.send(frame(DATA, END_STREAM if i == len(frames) - 1 else 0, 1, data))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, PROTOCOL_ERROR)
    ]
    assert _of(Reset, client.events) and not _of(End, client.events)


def test_8_1_1_content_length_with_no_data_to_come_is_malformed() -> None:
    client = Client()
    client.malformed([*GET, (b"content-length", b"12")])


def test_8_1_1_content_length_short_when_trailers_end_the_stream_is_malformed() -> None:
    """Accepted, the proxy would send a head promising 10 bytes and give 5: the API
    server would read the next request on its connection as the rest."""
    client = Client()
    client.request(1, [*POST, (b"content-length", b"10")], end_stream=False)
    client.send(frame(DATA, 0, 1, b"x" * 5), client.headers(1, [(b"x-t", b"1")]))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, PROTOCOL_ERROR)
    ]
    assert not _of(End, client.events)


@pytest.mark.parametrize("value", [b"", b"+5", b"5, 5", b"0x5", b"-1", b"5 ", b"\xd9\xa5"])
def test_8_1_1_content_length_not_digits_is_malformed(value: bytes) -> None:
    client = Client()
    client.malformed([*POST, (b"content-length", value)], end_stream=False)


def test_8_1_1_content_length_repeated_with_the_same_value_is_kept_once() -> None:
    client = Client()
    client.request(
        1, [*POST, (b"content-length", b"2"), (b"content-length", b"2")], end_stream=False
    )
    client.send(frame(DATA, END_STREAM, 1, b"ab"))
    request = client.accepted(1)
    assert request.headers.count((b"content-length", b"2")) == 1
    assert request.content_length == 2


def test_8_1_1_content_length_repeated_with_other_values_is_malformed() -> None:
    client = Client()
    client.malformed(
        [*POST, (b"content-length", b"2"), (b"content-length", b"3")], end_stream=False
    )


# 8.2 HTTP Fields


def test_8_2_an_uppercase_field_name_is_malformed() -> None:  # h2spec http2/8.1.2/1
    client = Client()
    client.malformed([*GET, (b"X-Upper", b"x")])


@pytest.mark.parametrize(
    "name",
    [b"x\x00y", b"x\ty", b"x y", b"x\r\ny", b"\x7f", b"x\xc3\xa9", b"x:y", b"", b"\x01"],
)
def test_8_2_1_a_name_with_a_forbidden_character_is_malformed(name: bytes) -> None:
    client = Client()
    client.malformed([*GET, (name, b"v")])


@pytest.mark.parametrize("name", [b"x(y)", b"x/y", b"x@y", b'x"y', b"x{y}", b"x;y", b"x=y"])
def test_8_2_1_a_name_that_is_not_a_token_is_malformed(name: bytes) -> None:
    """RFC 9110 section 5.1 (field-name = token), which 8.2.1 says to validate (SHOULD)."""
    client = Client()
    client.malformed([*GET, (name, b"v")])


@pytest.mark.parametrize(
    "value",
    [
        b"a\r\nImpersonate-User: admin",  # the 2026 finding
        b"a\nb",
        b"a\rb",
        b"a\x00b",
        b" a",
        b"a ",
        b"\ta",
        b"a\t",
        b"a\x01b",  # RFC 9110 5.5: the other controls are invalid too
        b"a\x1fb",
        b"a\x7fb",
    ],
)
def test_8_2_1_a_value_with_a_forbidden_character_is_malformed(value: bytes) -> None:
    client = Client()
    client.malformed([*GET, (b"x-note", value)])


@pytest.mark.parametrize("field", [b":method", b":path", b":authority", b":scheme"])
def test_8_2_1_a_pseudo_header_value_with_cr_lf_is_malformed(field: bytes) -> None:
    client = Client()
    client.malformed([(n, v + b"\r\nImpersonate-User: admin" if n == field else v) for n, v in GET])


@pytest.mark.parametrize("value", [b"", b"a\tb c", b"caf\xc3\xa9", b"!~", b'"quoted"'])
def test_8_2_1_values_with_htab_space_inside_and_obs_text_are_accepted(value: bytes) -> None:
    client = Client()
    client.request(1, [*GET, (b"x-note", value)])
    assert (b"x-note", value) in client.accepted(1).headers


def test_8_2_1_trailers_are_validated_too() -> None:
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(frame(DATA, 0, 1, b"x"), client.headers(1, [(b"x-t", b"a\r\nb")]))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, PROTOCOL_ERROR)
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"connection", b"keep-alive"),  # h2spec http2/8.1.2.2/1
        (b"keep-alive", b"300"),
        (b"proxy-connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),  # 8.6: no upgrade in HTTP/2
        (b"te", b"gzip"),  # h2spec http2/8.1.2.2/2
        (b"te", b"trailers, gzip"),
    ],
)
def test_8_2_2_connection_specific_fields_are_malformed(name: bytes, value: bytes) -> None:
    client = Client()
    client.malformed([*GET, (name, value)])


def test_8_2_2_te_trailers_is_accepted() -> None:
    client = Client()
    client.request(1, [*GET, (b"te", b"trailers")])
    client.accepted(1)


def test_8_2_2_connection_specific_fields_in_trailers_are_malformed() -> None:
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(client.headers(1, [(b"transfer-encoding", b"chunked")]))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, PROTOCOL_ERROR)
    ]


def test_8_2_3_cookie_crumbs_are_joined() -> None:
    client = Client()
    client.request(1, [*GET, (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")])
    assert client.accepted(1).headers == [(b"accept", b"*/*"), (b"cookie", b"a=1; b=2")]


# 8.3 HTTP Control Data


@pytest.mark.parametrize(
    "fields",
    [
        [*GET, (b":foo", b"bar")],  # h2spec http2/8.1.2.1/1
        [*GET, (b":status", b"200")],  # 8.1.2.1/2 (8.3.2: a response's)
        [GET[0], (b"x-a", b"b"), *GET[1:]],  # 8.1.2.1/4: after a regular field
        [*GET, (b":protocol", b"websocket")],  # extended CONNECT is not offered
    ],
    ids=["unknown", "response", "after-regular", "protocol"],
)
def test_8_3_pseudo_headers_out_of_place_are_malformed(fields: list[Header]) -> None:
    client = Client()
    client.malformed(fields)


def test_8_3_pseudo_headers_in_trailers_are_malformed() -> None:  # h2spec http2/8.1.2.1/3
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(client.headers(1, [(b":path", b"/x")]))
    client.frames()
    assert [(f.kind, f.code) for f in client.out if f.stream_id == 1] == [
        (RST_STREAM, PROTOCOL_ERROR)
    ]


@pytest.mark.parametrize(
    "fields",
    [
        [(n, b"" if n == b":path" else v) for n, v in GET],  # h2spec http2/8.1.2.3/1
        GET[1:],  # 8.1.2.3/2: no :method
        [f for f in GET if f[0] != b":scheme"],  # 8.1.2.3/3
        GET[:3],  # 8.1.2.3/4: no :path
        [*GET, (b":method", b"GET")],  # 8.1.2.3/5
        [*GET, (b":scheme", b"https")],  # 8.1.2.3/6
        [*GET, (b":path", b"/")],  # 8.1.2.3/7
        [*GET, (b":authority", b"gw.example:8443")],
    ],
    ids=[
        "empty-path",
        "no-method",
        "no-scheme",
        "no-path",
        "two-methods",
        "two-schemes",
        "two-paths",
        "two-authorities",
    ],
)
def test_8_3_1_missing_empty_or_repeated_pseudo_headers_are_malformed(fields: list[Header]) -> None:
    client = Client()
    client.malformed(fields)


def _with(name: bytes, value: bytes, fields: list[Header] = GET) -> list[Header]:
    return [(n, value if n == name else v) for n, v in fields]


@pytest.mark.parametrize(
    "path",
    [
        b"pods",  # not origin-form
        b"http://gw/x",  # absolute-form
        b"*",  # only for OPTIONS
        b"/a b",
        b"/a\tb",
        b"/a#fragment",
        b"/\xc3\xa9",
        b"/x HTTP/1.1\r\nHost: x\r\n\r\nDELETE /api/v1/namespaces/default/pods/victim",
    ],
)
def test_8_3_1_a_path_not_in_origin_form_is_malformed(path: bytes) -> None:
    client = Client()
    client.malformed(_with(b":path", path))


@pytest.mark.parametrize("path", [b"/", b"/a/b?c=d&e", b"//x", b"/a|b^{}", b"/%41%zz"])
def test_8_3_1_origin_form_paths_are_accepted(path: bytes) -> None:
    """The printable ASCII RFC 3986 leaves out is let through (browsers send it); what
    percent-encoding means is for the gateway's path checks, not the framing."""
    client = Client()
    client.request(1, _with(b":path", path))
    assert client.accepted(1).path == path


def test_8_3_1_an_asterisk_path_is_accepted_for_options() -> None:
    client = Client()
    client.request(1, _with(b":path", b"*", _with(b":method", b"OPTIONS")))
    assert client.accepted(1).path == b"*"


@pytest.mark.parametrize("method", [b"G T", b"GET\r\n", b"", b"G(T", b"\xc3\xa9", b"GET/1"])
def test_8_3_1_a_method_that_is_not_a_token_is_malformed(method: bytes) -> None:
    client = Client()
    client.malformed(_with(b":method", method))


@pytest.mark.parametrize("method", [b"M-SEARCH", b"get", b"PROPFIND"])
def test_8_3_1_any_token_is_a_method(method: bytes) -> None:
    client = Client()
    client.request(1, _with(b":method", method))
    assert client.accepted(1).method == method


@pytest.mark.parametrize("scheme", [b"", b"1http", b"ht tp", b"https:"])
def test_8_3_1_a_scheme_that_is_not_a_scheme_is_malformed(scheme: bytes) -> None:
    client = Client()
    client.malformed(_with(b":scheme", scheme))


def test_8_3_1_the_scheme_is_not_restricted_to_http() -> None:
    client = Client()
    client.request(1, _with(b":scheme", b"web+k8s"))
    assert client.accepted(1).scheme == b"web+k8s"


@pytest.mark.parametrize(
    "authority",
    [b"", b"user@gw", b"gw x", b"gw:port", b"%zz", b"gw/x", b"gw?x", b"[::1", b"gw\r\nx"],
)
def test_8_3_1_an_authority_that_is_not_a_host_and_port_is_malformed(authority: bytes) -> None:
    client = Client()
    client.malformed(_with(b":authority", authority))


@pytest.mark.parametrize(
    "authority", [b"gw", b"gw:", b"GW.Example:8443", b"10.0.0.1:443", b"[::1]:8443", b"%41pi"]
)
def test_8_3_1_hosts_and_ports_are_accepted(authority: bytes) -> None:
    client = Client()
    client.request(1, _with(b":authority", authority))
    assert client.accepted(1).authority == authority


def test_8_3_1_without_authority_host_is_the_authority() -> None:
    client = Client()
    client.request(1, [*GET[:2], GET[3], (b"host", b"gw.example")])
    assert client.accepted(1).authority == b"gw.example"


def test_8_3_1_without_authority_or_host_is_malformed() -> None:
    client = Client()
    client.malformed([*GET[:2], GET[3]])


@pytest.mark.parametrize("host", [b"other:8443", b"gw.example", b"gw.example:443", b""])
def test_8_3_1_host_naming_another_server_than_authority_is_malformed(host: bytes) -> None:
    client = Client()
    client.malformed([*GET, (b"host", host)])


@pytest.mark.parametrize("host", [b"gw.example:8443", b"GW.EXAMPLE:8443"])
def test_8_3_1_host_naming_the_same_server_is_accepted(host: bytes) -> None:
    client = Client()
    client.request(1, [*GET, (b"host", host)])
    assert client.accepted(1).authority == b"gw.example:8443"


def test_8_3_1_host_with_the_schemes_default_port_is_the_same_server() -> None:
    client = Client()
    client.request(1, [*_with(b":authority", b"gw"), (b"host", b"gw:443")])
    client.accepted(1)
    client.request(3, [*_with(b":authority", b"gw"), (b"host", b"gw:80")])
    client.stream_error(3, PROTOCOL_ERROR)


def test_8_3_1_two_hosts_are_malformed() -> None:
    client = Client()
    client.malformed([*GET[:2], GET[3], (b"host", b"gw"), (b"host", b"gw")])


# 8.4 Server Push


def test_8_4_a_clients_push_promise_is_a_connection_error() -> None:  # h2spec http2/8.2/1
    client = Client()
    client.request(1, POST, end_stream=False)
    client.send(frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 2) + client.block(GET)))
    client.connection_error(PROTOCOL_ERROR)


# 8.5 The CONNECT Method


def test_8_5_connect_is_a_request_the_gateway_answers_itself() -> None:
    """A valid CONNECT arrives as a request (``gateway.front.h2`` answers 405)."""
    client = Client()
    client.request(1, [(b":method", b"CONNECT"), (b":authority", b"kube:443")], end_stream=False)
    request = client.accepted(1)
    assert (request.method, request.authority, request.path, request.scheme) == (
        b"CONNECT",
        b"kube:443",
        b"",
        b"",
    )


@pytest.mark.parametrize(
    "fields",
    [
        [(b":method", b"CONNECT"), (b":authority", b"kube:443"), (b":path", b"/")],
        [(b":method", b"CONNECT"), (b":authority", b"kube:443"), (b":scheme", b"https")],
        [(b":method", b"CONNECT"), (b"host", b"kube:443")],
        [(b":method", b"CONNECT"), (b":authority", b"kube:443"), (b":protocol", b"websocket")],
    ],
    ids=["path", "scheme", "no-authority", "extended"],
)
def test_8_5_a_malformed_connect_is_reset(fields: list[Header]) -> None:
    client = Client()
    client.malformed(fields, end_stream=False)


# 10.5 Denial-of-Service Considerations


def test_10_5_many_malformed_requests_end_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http2, "MAX_STREAM_ERRORS", 5)
    client = Client()
    for stream_id in range(1, 30, 2):
        client.request(stream_id, [*GET, (b"x-note", b"a\r\nb")])
        if client.server.terminated:
            break
    client.connection_error(ENHANCE_YOUR_CALM)
    assert stream_id == 11  # the sixth


def test_10_5_malformed_requests_among_many_good_ones_are_only_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http2, "MAX_STREAM_ERRORS", 5)
    client = Client()
    for stream_id in range(1, 80, 2):
        bad = stream_id % 6 == 1  # one in three
        client.request(stream_id, [*GET, (b"x-note", b"a\r\nb")] if bad else GET)
        if not bad:
            client.answer(stream_id)
    client.alive()
    assert len(_of(RequestReceived, client.events)) == 26


def test_10_5_other_stream_errors_count_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http2, "MAX_STREAM_ERRORS", 3)
    client = Client()
    client.request(1, GET)
    for _ in range(4):
        client.send(priority(1, depends_on=1))
    client.connection_error(ENHANCE_YOUR_CALM)


def test_10_5_rapid_reset_ends_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http2, "MAX_CLOSED_RESETS", 10)
    client = Client()
    for stream_id in range(1, 60, 2):
        client.send(client.headers(stream_id, POST, END_HEADERS), rst(stream_id))
        if client.server.terminated:
            break
    client.connection_error(ENHANCE_YOUR_CALM)


def test_10_5_1_a_field_section_too_large_is_flagged_for_431() -> None:
    client = Client()
    big = [(b"x-filler-%d" % i, b"v" * 8000) for i in range(10)]
    client.send(
        frame(HEADERS, END_STREAM, 1, (block := client.block([*GET, *big]))[:16000]),
        *[frame(CONTINUATION, 0, 1, block[i : i + 16000]) for i in range(16000, len(block), 16000)],
        frame(CONTINUATION, END_HEADERS, 1, b""),
    )
    assert client.accepted(1).too_large


def test_10_5_1_a_field_block_too_large_ends_the_connection() -> None:
    client = Client()
    client.send(frame(HEADERS, 0, 1, client.block(GET)))
    for _ in range(9):
        client.send(frame(CONTINUATION, 0, 1, b"\x00" * 16000))
    client.connection_error(ENHANCE_YOUR_CALM)


# RFC 7541 (HPACK), as h2spec's hpack cases: each a COMPRESSION_ERROR


@pytest.mark.parametrize(
    "block",
    [
        b"\xbe",  # 2.3.3: an indexed field beyond the tables (h2spec hpack/2.3.3/1)
        b"\x7e\x01a",  # 2.3.3: a literal whose name index is beyond them (hpack/2.3.3/2)
        b"\x82\x3f\xe1\x1f",  # 4.2: a table size update at the end (hpack/4.2/1)
        b"\x00\x01x\x82\x1f\xff",  # 5.2: Huffman padding longer than 7 bits (hpack/5.2/1)
        b"\x00\x01x\x81\x18",  # 5.2: Huffman padded with zeros (hpack/5.2/2)
        b"\x00\x01x\x84\xff\xff\xff\xff",  # 5.2: Huffman with EOS (hpack/5.2/3)
        b"\x80",  # 6.1: index 0 (hpack/6.1/1)
        b"\x3f\xe2\x1f\x82",  # 6.3: a size update above SETTINGS_HEADER_TABLE_SIZE (6.3/1)
        b"\x82\xff\xff\xff\xff\xff\xff",  # 5.1: an integer that does not end
        b"\x00\x7f\xff\xff\xff\x7f",  # 5.2: a string longer than the block
    ],
    ids=[
        "2.3.3-index",
        "2.3.3-name-index",
        "4.2-size-update-at-end",
        "5.2-long-padding",
        "5.2-zero-padding",
        "5.2-eos",
        "6.1-index-0",
        "6.3-size-above-setting",
        "5.1-integer",
        "5.2-truncated",
    ],
)
def test_rfc7541_a_block_that_cannot_be_decoded_is_a_compression_error(block: bytes) -> None:
    client = Client()
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    client.connection_error(COMPRESSION_ERROR)


def test_rfc7541_4_4_eviction_and_6_3_size_updates_keep_the_tables_in_step() -> None:
    client = Client()
    client.encoder.header_table_size = 256
    for stream_id in range(1, 40, 2):
        fields = [*GET, (b"x-n", b"%d" % stream_id * 20), (b"x-fixed", b"same")]
        client.request(stream_id, fields)
        assert client.accepted(stream_id).headers == fields[4:]


def test_rfc7541_6_2_literal_forms_are_all_read() -> None:
    client = Client()
    block = client.block(GET)
    block += b"\x40\x03x-a\x01a"  # 6.2.1 with incremental indexing, new name
    block += b"\x00\x03x-b\x01b"  # 6.2.2 without indexing
    block += b"\x10\x03x-c\x01c"  # 6.2.3 never indexed
    block += b"\x0f\x2b\x01d"  # 6.2.2 with an indexed name (user-agent, index 58)
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    assert client.accepted(1).headers == [
        (b"x-a", b"a"),
        (b"x-b", b"b"),
        (b"x-c", b"c"),
        (b"user-agent", b"d"),
    ]
