"""gateway.front.h2_protocol: the server side of HTTP/2 against the ``h2`` package's client."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
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

GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"gw:8443"),
    (b":path", b"/k8s/clusters/c-1/api/v1/pods"),
    (b"authorization", b"Bearer t"),
    (b"user-agent", b"kubectl/v1.32.0"),
]


class Pair:
    """An ``h2`` client connected to a ``ServerConnection`` in memory."""

    def __init__(self, client_window: int | None = None, **client_settings: int) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.client = h2.connection.H2Connection(config)
        if client_window is not None:
            self.client.local_settings = h2.settings.Settings(
                client=True,
                initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: client_window},
            )
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(
                {getattr(h2.settings.SettingCodes, k): v for k, v in client_settings.items()}
            )
        self.server = ServerConnection()
        self.client_events: list[h2.events.Event] = []
        self.exchange()

    def to_server(self) -> list[Event]:
        return self.server.receive(self.client.data_to_send())

    def to_client(self) -> list[h2.events.Event]:
        events = self.client.receive_data(b"".join(self.server.data_to_send()))
        self.client_events += events
        return events

    def exchange(self) -> list[Event]:
        events = self.to_server()
        self.to_client()
        events += self.to_server()
        return events


def _of(kind: type, events: list) -> list:
    return [e for e in events if isinstance(e, kind)]


def test_a_get_and_its_answer() -> None:
    pair = Pair()
    pair.client.send_headers(1, GET, end_stream=True)
    events = pair.to_server()
    request, end = events
    assert isinstance(request, RequestReceived) and isinstance(end, End)
    assert (request.method, request.path, request.authority) == (
        b"GET",
        b"/k8s/clusters/c-1/api/v1/pods",
        b"gw:8443",
    )
    assert request.headers == [(b"authorization", b"Bearer t"), (b"user-agent", b"kubectl/v1.32.0")]
    assert request.end_stream and not request.too_large
    pair.server.send_headers(1, 200, [(b"content-type", b"application/json")])
    pair.server.send_data(1, b'{"kind":"PodList"}', end_stream=True)
    got = pair.to_client()
    response = _of(h2.events.ResponseReceived, got)[0]
    assert response.headers == [(b":status", b"200"), (b"content-type", b"application/json")]
    assert b"".join(e.data for e in _of(h2.events.DataReceived, got)) == b'{"kind":"PodList"}'
    assert _of(h2.events.StreamEnded, got)
    assert pair.server.open_streams == 0


def test_many_requests_share_one_connection() -> None:
    pair = Pair()
    for stream_id in range(1, 400, 2):
        pair.client.send_headers(stream_id, GET, end_stream=True)
    requests = _of(RequestReceived, pair.to_server())
    assert [r.stream_id for r in requests] == list(range(1, 400, 2))
    for r in requests:
        pair.server.send_headers(r.stream_id, 200, [], end_stream=True)
    assert len(_of(h2.events.StreamEnded, pair.to_client())) == 200


def test_a_body_is_delivered_and_its_window_granted_as_it_is_consumed() -> None:
    pair = Pair()
    pair.client.send_headers(1, [(b":method", b"POST"), *GET[1:], (b"content-length", b"300000")])
    body = b"b" * 300_000
    sent = 0
    received = b""
    events: list[Event] = []
    while sent < len(body):
        window = min(pair.client.local_flow_control_window(1), len(body) - sent, 16384)
        assert window > 0, "the server never granted more window"
        pair.client.send_data(1, body[sent : sent + window], end_stream=sent + window == len(body))
        sent += window
        events = pair.to_server()
        for e in _of(Data, events):
            received += e.data
            pair.server.acknowledge(1, len(e.data))
        pair.to_client()
    assert received == body
    assert _of(End, events)


def test_an_answer_waits_for_the_clients_window() -> None:
    pair = Pair(client_window=1000)
    pair.client.send_headers(1, GET, end_stream=True)
    pair.to_server()
    pair.server.send_headers(1, 200, [])
    pair.server.send_data(1, b"x" * 5000, end_stream=True)
    assert pair.server.buffered(1) == 4000
    got = pair.to_client()
    assert sum(len(e.data) for e in _of(h2.events.DataReceived, got)) == 1000
    received = 1000
    drained = False
    while received < 5000:
        pair.client.acknowledge_received_data(1000, 1)
        events = pair.to_server()
        drained = drained or bool(_of(Drained, events))
        got = pair.to_client()
        received += sum(len(e.data) for e in _of(h2.events.DataReceived, got))
    assert received == 5000 and _of(h2.events.StreamEnded, got)


def test_drained_after_a_blocked_queue_empties() -> None:
    pair = Pair(client_window=100)
    pair.client.send_headers(1, GET, end_stream=True)
    pair.to_server()
    pair.server.send_headers(1, 200, [])
    pair.server.send_data(1, b"x" * 300)
    pair.to_client()
    pair.client.increment_flow_control_window(1000, stream_id=1)
    assert [e.stream_id for e in _of(Drained, pair.to_server())] == [1]
    pair.server.send_data(1, b"y", end_stream=True)
    assert _of(h2.events.StreamEnded, pair.to_client())


def test_the_client_resets_a_stream() -> None:
    pair = Pair()
    pair.client.send_headers(1, GET, end_stream=True)
    pair.to_server()
    pair.client.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    (reset,) = pair.to_server()
    assert isinstance(reset, Reset) and reset.code == h2.errors.ErrorCodes.CANCEL
    pair.server.send_data(1, b"late", end_stream=True)  # ignored
    assert pair.server.data_to_send() == []


def test_large_request_headers_arrive_through_continuation() -> None:
    pair = Pair()
    pair.client.send_headers(1, [*GET, (b"x-big", b"v" * 40_000)], end_stream=True)
    request = _of(RequestReceived, pair.to_server())[0]
    assert request.headers[-1] == (b"x-big", b"v" * 40_000)


def test_too_large_request_headers_are_flagged() -> None:
    pair = Pair()
    pair.client.send_headers(
        1, [*GET, (b"x-big", b"v" * 16_000)] + [(b"x-more", b"m" * 15_000)] * 4, end_stream=True
    )
    request = _of(RequestReceived, pair.to_server())[0]
    assert request.too_large


def test_large_answer_headers_are_split() -> None:
    pair = Pair()
    pair.client.send_headers(1, GET, end_stream=True)
    pair.to_server()
    pair.server.send_headers(1, 200, [(b"x-big", b"v" * 40_000)], end_stream=True)
    (response,) = _of(h2.events.ResponseReceived, pair.to_client())
    assert response.headers[1] == (b"x-big", b"v" * 40_000)


def test_ping_is_answered() -> None:
    pair = Pair()
    pair.client.ping(b"12345678")
    pair.to_server()
    (ack,) = _of(h2.events.PingAckReceived, pair.to_client())
    assert ack.ping_data == b"12345678"


def test_goaway_both_ways() -> None:
    pair = Pair()
    pair.client.send_headers(1, GET, end_stream=True)
    pair.to_server()
    pair.server.goaway()
    (terminated,) = _of(h2.events.ConnectionTerminated, pair.to_client())
    assert terminated.last_stream_id == 1
    pair.client.close_connection()
    (away,) = pair.to_server()
    assert isinstance(away, GoAway)


def test_streams_after_our_goaway_are_not_processed() -> None:
    pair = Pair()
    pair.server.goaway()
    pair.server.data_to_send()
    raw = hpack.Encoder().encode(GET)
    events = pair.server.receive(_frame(http2.HEADERS, 0x5, 1, raw))
    assert events == []


def test_refused_above_the_stream_limit(monkeypatch) -> None:
    monkeypatch.setattr(http2, "MAX_CONCURRENT_STREAMS", 2)
    server = _started()
    encoder = hpack.Encoder()
    wire = b"".join(_frame(http2.HEADERS, 0x5, i, encoder.encode(GET)) for i in (1, 3, 5))
    assert len(_of(RequestReceived, server.receive(wire))) == 2
    assert _resets(server) == [(5, http2.REFUSED_STREAM)]


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return http2._pack(kind, flags, stream_id, payload)


def _started() -> ServerConnection:
    server = ServerConnection()
    assert server.receive(PREFACE + _frame(http2.SETTINGS, 0, 0, b"")) == []
    server.data_to_send()
    return server


def _frames(server: ServerConnection) -> list[tuple[int, int, bytes]]:
    """(type, stream, payload) of each frame the server queued."""
    out = b"".join(server.data_to_send())
    found = []
    while out:
        length = int.from_bytes(out[:3], "big")
        found.append((out[3], int.from_bytes(out[5:9], "big"), out[9 : 9 + length]))
        out = out[9 + length :]
    return found


def _resets(server: ServerConnection) -> list[tuple[int, int]]:
    return [
        (stream, int.from_bytes(payload, "big"))
        for kind, stream, payload in _frames(server)
        if kind == http2.RST_STREAM
    ]


def test_malformed_requests_are_reset() -> None:
    encoder = hpack.Encoder()
    cases = [
        [(b":method", b"GET"), (b":path", b"/")],  # no :scheme
        [*GET, (b"Upper", b"x")],
        [*GET, (b"connection", b"keep-alive")],
        [*GET, (b"te", b"gzip")],
        [GET[0], (b"x", b"y"), *GET[1:]],  # pseudo-header after a regular one
        [*GET, (b":method", b"POST")],
        [*GET, (b":protocol", b"websocket")],
        [*GET, (b"content-length", b"12")],  # END_STREAM with a promised body
    ]
    server = _started()
    stream_id = 1
    for headers in cases:
        block = encoder.encode(headers, huffman=False)
        events = server.receive(_frame(http2.HEADERS, 0x5, stream_id, block))
        assert _of(RequestReceived, events) == [] or _of(Reset, events), headers
        assert _resets(server) == [(stream_id, http2.PROTOCOL_ERROR)], headers
        stream_id += 2


def test_a_body_longer_than_its_content_length_is_reset() -> None:
    server = _started()
    block = hpack.Encoder().encode([*GET, (b"content-length", b"3")])
    server.receive(_frame(http2.HEADERS, 0x4, 1, block))
    events = server.receive(_frame(http2.DATA, 0x1, 1, b"four"))
    assert _of(Reset, events)[0].code == http2.PROTOCOL_ERROR


def test_connection_errors_end_in_goaway() -> None:
    cases = [
        b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10,  # not a preface
        PREFACE + _frame(http2.PING, 0, 0, b"12345678"),  # SETTINGS must come first
        PREFACE + _frame(http2.SETTINGS, 0, 0, b"") + _frame(http2.DATA, 0, 1, b"x"),  # idle
        PREFACE + _frame(http2.SETTINGS, 0, 0, b"") + _frame(http2.HEADERS, 0x4, 2, b"\x82"),
        PREFACE + _frame(http2.SETTINGS, 0, 0, b"abc"),
        PREFACE + _frame(http2.SETTINGS, 0, 0, b"") + _frame(http2.PUSH_PROMISE, 4, 1, b"x" * 4),
        PREFACE + _frame(http2.SETTINGS, 0, 0, b"") + _frame(http2.HEADERS, 0x4, 1, b"\x80"),
        PREFACE
        + _frame(http2.SETTINGS, 0, 0, b"")
        + _frame(http2.HEADERS, 0x1, 1, hpack.Encoder().encode(GET))
        + _frame(http2.DATA, 0, 1, b"x"),  # CONTINUATION expected
        PREFACE + _frame(http2.SETTINGS, 0, 0, b"") + b"\x01\x00\x00" + b"\x00" * 6,  # too big
    ]
    for wire in cases:
        server = ServerConnection()
        server.data_to_send()
        events = server.receive(wire)
        assert isinstance(events[-1], Terminated), wire
        assert _frames(server)[-1][0] == http2.GOAWAY, wire
        assert server.receive(b"more") == []


def test_rapid_reset_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(http2, "MAX_CLOSED_RESETS", 10)
    pair = Pair()
    events: list[Event] = []
    for stream_id in range(1, 60, 2):
        pair.client.send_headers(stream_id, GET)
        pair.client.reset_stream(stream_id)
        events += pair.to_server()
    assert isinstance(events[-1], Terminated)
    assert events[-1].code == http2.ENHANCE_YOUR_CALM


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_any_bytes_after_the_preface_give_events_not_exceptions(data: bytes, step: int) -> None:
    server = _started()
    for offset in range(0, len(data), step):
        events = server.receive(data[offset : offset + step])
        assert all(
            isinstance(e, RequestReceived | Data | End | Reset | Drained | GoAway | Terminated)
            for e in events
        )
    server.data_to_send()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=20))
def test_split_points_do_not_matter(cuts: list[int]) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, GET, end_stream=stream_id != 3)
    client.send_data(3, b"body", end_stream=True)
    wire = client.data_to_send()
    whole = ServerConnection().receive(wire)
    server = ServerConnection()
    pieces: list[Event] = []
    pos = 0
    for cut in cuts:
        pieces += server.receive(wire[pos : pos + cut])
        pos += cut
    pieces += server.receive(wire[pos:])
    summary = lambda evs: [(type(e).__name__, e.stream_id, getattr(e, "data", None)) for e in evs]  # noqa: E731
    assert summary(pieces) == summary(whole)
