"""HTTP/2 (RFC 9113) for the gateway's client connections, without I/O: bytes in, events out.

``ServerConnection`` is the server side of one connection: ``receive`` takes bytes and
returns events (``RequestReceived``, ``Data``, ``End``, ``Reset``, ``GoAway``, ``Drained``,
``Terminated``); ``send_headers``, ``send_data``, ``reset`` and ``goaway`` queue frames;
``data_to_send`` hands them out. It keeps both directions' flow control: answers wait
in a per-stream queue until the peer's windows allow them (``Drained`` says a stream's
queue emptied), and request bodies are granted window as ``acknowledge`` reports them
consumed, so a slow upstream holds back one stream's sender, not the connection.

Why not the ``h2`` package: its server side costs several times the CPU per small
request of the gateway's HTTP/1.1 path (``python -m bench.h2_requests``; the
figures are in docs/design.md section 9 and docs/benchmarks.md, "HTTP/2 towards
clients"); this module keeps to what a server of kubectl and client-go needs (no push,
no priorities, no extended CONNECT) and does that for a fraction of it. Errors follow
RFC 9113 section 5.4: connection errors queue a GOAWAY and end in ``Terminated``; stream
errors queue a RST_STREAM.

Requests are validated as RFC 9113 sections 8.1.1, 8.2 and 8.3 require before a
``RequestReceived`` is emitted (the gateway writes them into HTTP/1.1 heads): field names are
lower-case tokens, values carry no control character but HTAB and no whitespace at
either end (``gateway.front.hpack`` checks those as it decodes), pseudo-headers are the
request ones, each once, before the regular fields; ``:method`` is a token, ``:scheme``
a scheme, ``:path`` origin-form (``*`` for OPTIONS) without spaces, controls or ``#``,
``:authority`` (or ``host``, and they agree) a host and port; no connection-specific
field, ``te`` only ``trailers``, ``content-length`` up to 18 digits (repeated only with the same
value) and equal to the DATA received, trailers without pseudo-headers. A malformed
request is a stream error PROTOCOL_ERROR, and the client's stream errors count towards
``MAX_STREAM_ERRORS``. A new stream must have an id above the last (RFC 9113 section
5.1.1); frames on closed streams are told apart by how each closed (section 5.1), for
the last ``CLOSED_STREAMS_KEPT`` of them.
"""

from __future__ import annotations

import re
import struct

from gateway.front.hpack import TABLE_SIZE_ZERO, Decoder, HPACKError, encode

Header = tuple[bytes, bytes]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
SETTINGS_NO_RFC7540_PRIORITIES = 0x9

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
MIN_FRAME = 16_384
MAX_FRAME = 2**24 - 1

MAX_CONCURRENT_STREAMS = 1000
"""What kube-apiserver allows by default (``--http2-max-streams-per-connection``)."""
STREAM_WINDOW = 1024 * 1024
"""Request body bytes a client may send on one stream before we consume them."""
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_HEADER_LIST = 64 * 1024
"""Decoded request header size (RFC 9113 counting) answered, like HTTP/1.1's limit."""
MAX_HEADER_BLOCK = 2 * MAX_HEADER_LIST
"""Encoded header block bytes (HEADERS + CONTINUATION) held before giving up on the
connection: a bound on what one request can make us buffer."""
MAX_CLOSED_RESETS = 1000
"""Streams a client may open and reset itself before the connection is refused as
abusive (``ENHANCE_YOUR_CALM``; the 2023 "rapid reset" pattern) — per 1000 requests."""
MAX_STREAM_ERRORS = 100
"""Malformed requests and other stream errors of the client's making beyond which, if
they are more than half its requests, the connection is refused as abusive
(``ENHANCE_YOUR_CALM``)."""
CLOSED_STREAMS_KEPT = 256
"""Closed streams whose end (reset by us, reset by the client, or ended) is remembered,
to ignore the frames in flight on a stream we reset and to refuse others (RFC 9113
section 5.1). An older one is treated as unknown: HEADERS on it is a connection error,
DATA is ignored."""

_ENDED, _RESET_BY_US, _RESET_BY_CLIENT = 1, 2, 3

_HEAD_OUT = struct.Struct(">HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream
_U32 = struct.Struct(">I")
_U16U32 = struct.Struct(">HI")
_II = struct.Struct(">II")

_SPECIFIC, _TE, _COOKIE, _CONTENT_LENGTH, _HOST = 1, 2, 3, 4, 5
MAX_CONTENT_LENGTH_DIGITS = 18
"""A ``content-length`` of more digits is malformed: below 10**18 it fits the API
server's int64, and ``int()`` of thousands of digits raises (Python's 4,300-digit
limit) or costs quadratic time. Leading zeros count: no client sends them."""

_SPECIAL: dict[bytes, int] = {
    b"connection": _SPECIFIC,
    b"keep-alive": _SPECIFIC,
    b"proxy-connection": _SPECIFIC,
    b"transfer-encoding": _SPECIFIC,
    b"upgrade": _SPECIFIC,
    b"te": _TE,
    b"cookie": _COOKIE,
    b"content-length": _CONTENT_LENGTH,
    b"host": _HOST,
}
"""Regular fields a request's validation looks at (RFC 9113 section 8.2.2: the
connection-specific ones make it malformed)."""
_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""RFC 9110 section 5.6.2: what ``:method`` must be."""
_SCHEMES = frozenset({b"https", b"http"})
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*")
"""RFC 3986 section 3.1."""
_REG_NAME_AND_PORT = re.compile(rb"[0-9A-Za-z\-._~!$&'()*+,;=]+(?::[0-9]*)?")
"""The common authority (a name or IPv4 address, a port): tried before ``_AUTHORITY``."""
_AUTHORITY = re.compile(
    rb"(?:\[[0-9A-Za-z\-._~!$&'()*+,;=:%]+\]|(?:[0-9A-Za-z\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)"
    rb"(?::[0-9]*)?"
)
"""RFC 3986 section 3.2 without userinfo (RFC 9113 section 8.3.1 forbids it): an
IP-literal, or a non-empty IPv4 address or reg-name; then an optional port."""
_PATH_MARKS = bytes(0 if 0x21 <= c <= 0x7E and c != 0x23 else 1 for c in range(256))
"""``path.translate`` to this has a 1 for a byte no origin-form target may carry: controls,
SP, DEL, non-ASCII (RFC 3986 wants them percent-encoded) and ``#`` (a fragment is not
part of ``:path``). The printable ASCII RFC 3986 leaves out (``"<>\\^`{|}``) is let
through: browsers send some of it raw (the WHATWG URL standard's encode sets), and it
cannot end a request line."""


class RequestReceived:
    """A request's header block arrived (``end_stream``: it has no body)."""

    __slots__ = (
        "authority",
        "content_length",
        "end_stream",
        "headers",
        "method",
        "path",
        "scheme",
        "stream_id",
        "too_large",
    )

    def __init__(
        self,
        stream_id: int,
        method: bytes,
        path: bytes,
        scheme: bytes,
        authority: bytes,
        headers: list[Header],
        end_stream: bool,
        too_large: bool,
        content_length: int = -1,
    ) -> None:
        self.stream_id = stream_id
        self.method = method
        self.path = path
        """Origin-form (``*`` for OPTIONS); empty for CONNECT."""
        self.scheme = scheme
        self.authority = authority
        """``:authority``, else the ``host`` field (they agree when both are sent)."""
        self.headers = headers
        """Regular fields (no pseudo-headers), names lower case, ``cookie`` joined, a
        repeated ``content-length`` (same value) kept once."""
        self.end_stream = end_stream
        self.too_large = too_large
        """The fields exceeded ``MAX_HEADER_LIST``: answer 431; ``headers`` is partial."""
        self.content_length = content_length
        """The ``content-length`` field's value, -1 without one."""


class Data:
    __slots__ = ("data", "stream_id")

    def __init__(self, stream_id: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.data = data


class End:
    """The client finished sending the stream's request (END_STREAM)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class Reset:
    """The stream is gone: the client reset it, or it broke a rule (we reset it)."""

    __slots__ = ("code", "stream_id")

    def __init__(self, stream_id: int, code: int) -> None:
        self.stream_id = stream_id
        self.code = code


class Drained:
    """A stream whose answer had to wait for window has framed all it queued."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class GoAway:
    """The client will open no more streams."""

    __slots__ = ("code", "last_stream_id")

    def __init__(self, last_stream_id: int, code: int) -> None:
        self.last_stream_id = last_stream_id
        self.code = code


class Terminated:
    """A connection error: a GOAWAY is queued; send it, then close."""

    __slots__ = ("code", "message")

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message


Event = RequestReceived | Data | End | Reset | Drained | GoAway | Terminated


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    __slots__ = (
        "blocked",
        "expected_length",
        "local_closed",
        "pending",
        "pending_bytes",
        "pending_end",
        "received",
        "recv_window",
        "remote_closed",
        "send_window",
        "unacked",
    )

    def __init__(self, send_window: int, recv_window: int, end_stream: bool) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.remote_closed = end_stream
        self.local_closed = False
        self.pending: list[bytes | bytearray] = []  # short: a writer waits above STREAM_HIGH_WATER
        self.pending_bytes = 0
        self.pending_end = False
        self.unacked = 0
        self.received = 0
        self.expected_length = -1
        self.blocked = False
        """Queued bytes waited for window: ``Drained`` is due when they have left."""


def _pack(kind: int, flags: int, stream_id: int, payload: bytes | bytearray) -> bytes:
    length = len(payload)
    return _HEAD_OUT.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


class ServerConnection:
    """One client connection's HTTP/2 state (the server side)."""

    __slots__ = (
        "_authority",
        "_buffer",
        "_closed",
        "_closed_next",
        "_closed_order",
        "_conn_unacked",
        "_continuing",
        "_decoder",
        "_events",
        "_goaway_last",
        "_header_block",
        "_header_end_stream",
        "_header_refused",
        "_out",
        "_preface_seen",
        "_requests",
        "_resets",
        "_sendable",
        "_settings_seen",
        "_stream_errors",
        "_streams",
        "_table_update_due",
        "conn_recv_window",
        "conn_send_window",
        "going_away",
        "last_stream_id",
        "peer_initial_window",
        "peer_max_frame",
        "pending_total",
        "terminated",
    )

    def __init__(self) -> None:
        self._buffer = b""
        self._preface_seen = False
        self._settings_seen = False
        self._decoder = Decoder()
        self._streams: dict[int, _Stream] = {}
        self._sendable: dict[int, None] = {}
        """Streams with queued DATA, in the order they queued it."""
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._continuing = 0
        """The stream whose header block awaits CONTINUATION frames (0: none)."""
        self._header_block = b""
        self._header_end_stream = False
        self._header_refused = False
        """The header block being continued is a stream error (its stream depends on
        itself): decoded, to keep the table in step, but not a request."""
        self._table_update_due = True
        self._conn_unacked = 0
        self._resets = 0
        self._stream_errors = 0
        self._requests = 0
        self._closed: dict[int, int] = {}
        """How each recently closed stream ended (``_ENDED``, ``_RESET_BY_US``,
        ``_RESET_BY_CLIENT``), for the last ``CLOSED_STREAMS_KEPT`` of them."""
        self._closed_order: list[int] = []
        """The ids in ``_closed``, a ring: ``_closed_next`` is the oldest's place."""
        self._closed_next = 0
        self._goaway_last = MAX_WINDOW
        """The last stream id our GOAWAY announced: streams above it are ignored."""
        self._authority = b""
        """The last request's authority, known valid (a client sends the same one);
        empty before the first."""
        self.last_stream_id = 0
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = MIN_FRAME
        self.conn_send_window = DEFAULT_WINDOW
        self.conn_recv_window = CONNECTION_WINDOW
        self.going_away = False
        self.terminated = False
        self.pending_total = 0
        """Answer bytes of all streams waiting for the client's windows."""
        settings = b"".join(
            _U16U32.pack(key, value)
            for key, value in (
                (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
                (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            )
        )
        self._out.append(_pack(SETTINGS, 0, 0, settings))
        self._out.append(_pack(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))

    # reading

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def receive(self, data: bytes) -> list[Event]:
        if self.terminated:
            return []
        buffer = self._buffer + data if self._buffer else data
        try:
            if not self._preface_seen:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self._buffer = buffer
                    return []
                if not buffer.startswith(PREFACE):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._preface_seen = True
                buffer = buffer[len(PREFACE) :]
            pos = 0
            size = len(buffer)
            while size - pos >= 9:
                word = _U32.unpack_from(buffer, pos)[0]  # length (24 bits), type (8)
                length = word >> 8
                kind = word & 0xFF
                flags = buffer[pos + 4]
                stream_id = _U32.unpack_from(buffer, pos + 5)[0] & 0x7FFFFFFF
                if length > MIN_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = pos + 9 + length
                if end > size:
                    break
                payload = buffer[pos + 9 : end]
                pos = end
                self._frame(kind, flags, stream_id, payload)
            self._buffer = buffer[pos:]
        except _ConnectionError as exc:
            self._terminate(exc.code, str(exc))
        except HPACKError as bad_block:  # its own name: the compiled build types ``exc``
            self._terminate(COMPRESSION_ERROR, str(bad_block))
        events = self._events
        self._events = []
        return events

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._settings_seen:
            if kind != SETTINGS or flags & FLAG_ACK:
                raise _ConnectionError(PROTOCOL_ERROR, "the first frame must be SETTINGS")
            self._settings_seen = True
        if self._continuing and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == PING:
            if stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING of the wrong size")
            if not flags & FLAG_ACK:
                self._out.append(_pack(PING, FLAG_ACK, 0, payload))
        elif kind == RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == PRIORITY:
            if not stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(stream_id, FRAME_SIZE_ERROR)
            elif _U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
                self._stream_error(stream_id, PROTOCOL_ERROR)  # RFC 9113 5.3.1: on itself
        elif kind == GOAWAY:
            if stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "GOAWAY too short")
            last, code = _II.unpack_from(payload)
            self._events.append(GoAway(last & 0x7FFFFFFF, code))
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients cannot push")
        # other frame types are ignored (RFC 9113 section 4.1)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for offset in range(0, len(payload), 6):
            key, value = _U16U32.unpack_from(payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "stream window too large")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not MIN_FRAME <= value <= MAX_FRAME:
                    raise _ConnectionError(PROTOCOL_ERROR, f"max frame size {value}")
                self.peer_max_frame = value
            elif key == SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise _ConnectionError(PROTOCOL_ERROR, f"enable push {value}")
            elif key == SETTINGS_HEADER_TABLE_SIZE:
                self._table_update_due = True
            elif key == SETTINGS_NO_RFC7540_PRIORITIES and value > 1:  # RFC 9218 2.1
                raise _ConnectionError(PROTOCOL_ERROR, f"no RFC 7540 priorities {value}")
        self._out.append(_pack(SETTINGS, FLAG_ACK, 0, b""))
        self._flush()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.conn_send_window += increment
            if self.conn_send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window too large")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                if stream_id > self.last_stream_id:
                    raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return  # a stream that closed meanwhile
            if not increment:
                self._stream_error(stream_id, PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._stream_error(stream_id, FLOW_CONTROL_ERROR)
                return
        self._flush()

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if stream_id > self.last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return  # closed already: a reset of ours crossed theirs, or it had ended
        self.pending_total -= stream.pending_bytes
        self._sendable.pop(stream_id, None)
        self._remember_closed(stream_id, _RESET_BY_CLIENT)
        if not stream.local_closed:
            self._resets += 1
            if self._resets > MAX_CLOSED_RESETS and self._resets * 2 > self._requests:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "too many streams reset by the client")
        self._events.append(Reset(stream_id, _U32.unpack(payload)[0]))

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id or not stream_id & 1:
            raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        start = 0
        end = len(payload)
        if flags & FLAG_PADDED:
            if not payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "padded HEADERS without a pad length")
            end -= payload[0]
            start = 1
        refused = False
        if flags & FLAG_PRIORITY:
            if end - start >= 4 and _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == stream_id:
                refused = True  # depends on itself (RFC 9113 section 5.3.1): a stream error
            start += 5
        if end < start:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        block = payload[start:end]
        end_stream = bool(flags & FLAG_END_STREAM)
        if flags & FLAG_END_HEADERS:
            self._header_block_done(stream_id, block, end_stream, refused)
        else:
            self._continuing = stream_id
            self._header_block = block
            self._header_end_stream = end_stream
            self._header_refused = refused

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._continuing or stream_id != self._continuing:
            raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION out of place")
        self._header_block += payload
        if len(self._header_block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
        if flags & FLAG_END_HEADERS:
            block, self._header_block = self._header_block, b""
            self._continuing = 0
            self._header_block_done(stream_id, block, self._header_end_stream, self._header_refused)

    def _header_block_done(
        self, stream_id: int, block: bytes, end_stream: bool, refused: bool
    ) -> None:
        # Decoded first, whatever becomes of it: the table must stay in step.
        fields, within, valid = self._decoder.decode(block, MAX_HEADER_LIST)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers
            if stream.remote_closed:
                self._stream_error(stream_id, STREAM_CLOSED)
            elif (
                refused
                or not end_stream  # RFC 9113 section 8.1: a second block ends the stream
                or not _trailers_valid(fields, valid)
                or 0 <= stream.expected_length != stream.received
            ):
                self._stream_error(stream_id, PROTOCOL_ERROR)
            else:
                self._remote_end(stream_id, stream)
            return
        if stream_id <= self.last_stream_id:
            self._on_closed_stream(stream_id, True)
            return
        self.last_stream_id = stream_id
        if self.going_away:
            return  # after our GOAWAY: not processed (the client may retry elsewhere)
        self._requests += 1
        if refused:
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        if len(self._streams) >= MAX_CONCURRENT_STREAMS:
            self._stream_error(stream_id, REFUSED_STREAM)  # RFC 9113 section 5.1.2
            return
        request = _request(stream_id, fields, end_stream, within, valid, self._authority)
        if request is None:
            self._stream_error(stream_id, PROTOCOL_ERROR)  # malformed: RFC 9113 8.1.1
            return
        self._authority = request.authority
        stream = _Stream(self.peer_initial_window, STREAM_WINDOW, end_stream)
        stream.expected_length = request.content_length
        self._streams[stream_id] = stream
        self._events.append(request)
        if end_stream:
            self._events.append(End(stream_id))

    def _on_closed_stream(self, stream_id: int, headers: bool) -> None:
        """HEADERS (``headers``) or DATA on a stream that is closed (RFC 9113 5.1)."""
        how = self._closed.get(stream_id, 0)
        if how == _RESET_BY_US or stream_id > self._goaway_last:
            return  # frames in flight when our RST_STREAM or GOAWAY left: ignored
        if how == _RESET_BY_CLIENT:
            self._stream_error(stream_id, STREAM_CLOSED)
        elif how == _ENDED:
            raise _ConnectionError(STREAM_CLOSED, f"a frame on stream {stream_id}, which ended")
        elif headers:
            raise _ConnectionError(
                PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, not above {self.last_stream_id}"
            )
        # DATA on a stream closed long ago (or never opened: closed by a higher one)
        # is ignored: it may be in flight on a stream we reset and have since forgotten.

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flow > self.conn_recv_window:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "the client overran the connection window")
        self.conn_recv_window -= flow
        data = payload
        if flags & FLAG_PADDED:
            if not payload or payload[0] >= flow:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
            data = payload[1 : flow - payload[0]]
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            self._acknowledge_connection(flow)  # counted all the same (RFC 9113 6.9)
            if stream is not None:
                self._stream_error(stream_id, STREAM_CLOSED)  # half-closed (remote)
            else:
                self._on_closed_stream(stream_id, False)
            return
        if flow > stream.recv_window:
            self._acknowledge_connection(flow)
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= flow
        stream.received += len(data)
        if 0 <= stream.expected_length < stream.received:
            self._acknowledge_connection(flow)
            self._stream_error(stream_id, PROTOCOL_ERROR)  # RFC 9113 8.1.1
            return
        padding = flow - len(data)
        if padding:
            self.acknowledge(stream_id, padding)
        if data:
            self._events.append(Data(stream_id, data))
        if flags & FLAG_END_STREAM:
            if 0 <= stream.expected_length != stream.received:
                self._stream_error(stream_id, PROTOCOL_ERROR)  # RFC 9113 8.1.1
                return
            self._remote_end(stream_id, stream)

    def _remote_end(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_closed = True
        self._events.append(End(stream_id))
        if stream.local_closed and not stream.pending:
            del self._streams[stream_id]
            self._remember_closed(stream_id, _ENDED)

    # flow control of request bodies

    def acknowledge(self, stream_id: int, consumed: int) -> None:
        """``consumed`` body bytes of the stream were used: the client may send more."""
        self._acknowledge_connection(consumed)
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        stream.unacked += consumed
        if stream.unacked >= STREAM_WINDOW // 4:
            self._out.append(_pack(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacked)))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def _acknowledge_connection(self, consumed: int) -> None:
        self._conn_unacked += consumed
        if self._conn_unacked >= CONNECTION_WINDOW // 4:
            self._out.append(_pack(WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_unacked)))
            self.conn_recv_window += self._conn_unacked
            self._conn_unacked = 0

    # writing

    def send_headers(
        self, stream_id: int, status: int, headers: list[Header], end_stream: bool = False
    ) -> None:
        """The answer's head (header names lower case, no connection-specific ones)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return  # reset meanwhile
        block = encode(status, headers)
        if self._table_update_due:
            self._table_update_due = False
            block = TABLE_SIZE_ZERO + block
        out = self._out
        limit = self.peer_max_frame
        end_flag = FLAG_END_STREAM if end_stream else 0
        if len(block) <= limit:
            out.append(_pack(HEADERS, FLAG_END_HEADERS | end_flag, stream_id, block))
        else:
            out.append(_pack(HEADERS, end_flag, stream_id, block[:limit]))
            for offset in range(limit, len(block), limit):
                last = offset + limit >= len(block)
                out.append(
                    _pack(
                        CONTINUATION,
                        FLAG_END_HEADERS if last else 0,
                        stream_id,
                        block[offset : offset + limit],
                    )
                )
        if end_stream:
            self._local_end(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes | bytearray, end_stream: bool = False) -> None:
        """Queue answer bytes; they leave as the client's windows allow."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed or stream.pending_end:
            return
        if data:
            stream.pending.append(data)
            stream.pending_bytes += len(data)
            self.pending_total += len(data)
        if end_stream:
            stream.pending_end = True
        self._sendable[stream_id] = None
        self._flush()

    def buffered(self, stream_id: int) -> int:
        """Answer bytes of the stream still waiting for window."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.pending_bytes

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        """Abandon a stream (the answer failed, or the request is not wanted)."""
        if stream_id in self._streams:
            self._reset_stream(stream_id, code, notify=False)

    def goaway(self, code: int = NO_ERROR, message: str = "") -> None:
        """No new streams: those opened so far are still served."""
        if not self.going_away:
            self.going_away = True
            self._goaway_last = self.last_stream_id
            self._out.append(
                _pack(GOAWAY, 0, 0, _II.pack(self.last_stream_id, code) + message.encode()[:256])
            )

    @property
    def queued(self) -> int:
        """Frames waiting for ``data_to_send``."""
        return len(self._out)

    def data_to_send(self) -> list[bytes]:
        out = self._out
        self._out = []
        return out

    def _flush(self) -> None:
        if not self._sendable:
            return
        for stream_id in list(self._sendable):
            if self.conn_send_window <= 0:
                break
            stream = self._streams.get(stream_id)
            if stream is None:
                del self._sendable[stream_id]
                continue
            self._send_pending(stream_id, stream)
        # A stream that has only its end left needs no window.
        for stream_id in list(self._sendable):
            stream = self._streams.get(stream_id)
            if stream is not None and not stream.pending and stream.pending_end:
                self._send_pending(stream_id, stream)

    def _send_pending(self, stream_id: int, stream: _Stream) -> None:
        out = self._out
        pending = stream.pending
        limit = self.peer_max_frame
        ended = False
        while pending:
            window = min(self.conn_send_window, stream.send_window, limit)
            if window <= 0:
                stream.blocked = True
                return
            chunk = pending[0]
            if len(chunk) > window:
                pending[0] = chunk[window:]
                chunk = chunk[:window]
            else:
                del pending[0]
            size = len(chunk)
            self.conn_send_window -= size
            stream.send_window -= size
            stream.pending_bytes -= size
            self.pending_total -= size
            ended = stream.pending_end and not pending
            out.append(_pack(DATA, FLAG_END_STREAM if ended else 0, stream_id, chunk))
        del self._sendable[stream_id]
        if stream.pending_end:
            if not ended:
                out.append(_pack(DATA, FLAG_END_STREAM, stream_id, b""))
            self._local_end(stream_id, stream)
        elif stream.blocked:
            stream.blocked = False
            self._events.append(Drained(stream_id))

    def _local_end(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        self._sendable.pop(stream_id, None)
        if stream.remote_closed:
            self._streams.pop(stream_id, None)
            self._remember_closed(stream_id, _ENDED)

    def _stream_error(self, stream_id: int, code: int) -> None:
        """The client broke a rule on one stream (RFC 9113 section 5.4.2): it is reset.
        Many of these, more than half the client's requests, end the connection."""
        self._stream_errors += 1
        if self._stream_errors > MAX_STREAM_ERRORS and self._stream_errors * 2 > self._requests:
            raise _ConnectionError(
                ENHANCE_YOUR_CALM, "too many malformed requests or stream errors"
            )
        self._reset_stream(stream_id, code)

    def _reset_stream(self, stream_id: int, code: int, notify: bool = True) -> None:
        self._out.append(_pack(RST_STREAM, 0, stream_id, _U32.pack(code)))
        stream = self._streams.pop(stream_id, None)
        self._sendable.pop(stream_id, None)
        if stream is not None:
            self.pending_total -= stream.pending_bytes
        if stream_id <= self.last_stream_id:  # not an idle one (a PRIORITY's)
            self._remember_closed(stream_id, _RESET_BY_US)
        if stream is not None and notify:
            self._events.append(Reset(stream_id, code))

    def _remember_closed(self, stream_id: int, how: int) -> None:
        closed = self._closed
        if stream_id not in closed:
            order = self._closed_order
            if len(order) < CLOSED_STREAMS_KEPT:
                order.append(stream_id)
            else:
                place = self._closed_next
                del closed[order[place]]
                order[place] = stream_id
                self._closed_next = (place + 1) % CLOSED_STREAMS_KEPT
        closed[stream_id] = how

    def _terminate(self, code: int, message: str) -> None:
        self.going_away = True
        self._out.append(
            _pack(GOAWAY, 0, 0, _II.pack(self.last_stream_id, code) + message.encode()[:256])
        )
        self.terminated = True
        self._streams.clear()
        self.pending_total = 0
        self._sendable.clear()
        self._events.append(Terminated(code, message))


def _same_authority(host: bytes, authority: bytes, scheme: bytes) -> bool:
    """Whether ``host`` and ``:authority`` name the same server once normalised as RFC
    9113 section 8.3.1 asks (scheme-based, RFC 3986 section 6.2.3: the host's letter
    case, an empty port and the scheme's default one do not matter)."""
    default = b":443" if scheme == b"https" else b":80" if scheme == b"http" else b":"
    return _normal_authority(host, default) == _normal_authority(authority, default)


def _normal_authority(value: bytes, default_port: bytes) -> bytes:
    value = value.lower()
    if value.endswith(default_port):
        return value[: -len(default_port)]
    return value[:-1] if value.endswith(b":") else value


def _trailers_valid(fields: list[Header], valid: bool) -> bool:
    """Trailers as RFC 9113 allows them: well-formed fields (section 8.2.1), no
    pseudo-header (8.3), no connection-specific field (8.2.2)."""
    if not valid:
        return False
    for name, value in fields:
        if name[0] == 0x3A:
            return False
        kind = _SPECIAL.get(name, 0)
        if kind == _SPECIFIC or (kind == _TE and value.lower() != b"trailers"):
            return False
    return True


def _request(
    stream_id: int,
    fields: list[Header],
    end_stream: bool,
    within: bool,
    valid: bool,
    known_authority: bytes,
) -> RequestReceived | None:
    """The request in a decoded header block, or None if it is malformed (RFC 9113
    8.1.1): ``valid`` says whether every field line was well-formed (8.2.1);
    ``known_authority`` is one checked before."""
    if not valid:
        return None
    method: bytes | None = None
    path: bytes | None = None
    scheme: bytes | None = None
    authority: bytes | None = None
    host: bytes | None = None
    length: bytes | None = None
    headers: list[Header] = []
    cookies: list[bytes] = []
    regular = False
    for field in fields:
        name = field[0]
        if name[0] == 0x3A:  # a pseudo-header (names are not empty: ``valid``)
            if regular:
                return None  # after a regular field (8.3)
            if name == b":method":
                if method is not None:
                    return None
                method = field[1]
            elif name == b":path":
                if path is not None:
                    return None
                path = field[1]
            elif name == b":scheme":
                if scheme is not None:
                    return None
                scheme = field[1]
            elif name == b":authority":
                if authority is not None:
                    return None
                authority = field[1]
            else:
                return None  # :status, unknown ones, :protocol (no extended CONNECT)
            continue
        regular = True
        kind = _SPECIAL.get(name, 0)
        if not kind:
            headers.append(field)
            continue
        value = field[1]
        if kind == _SPECIFIC:
            return None  # 8.2.2
        if kind == _TE:
            if value.lower() != b"trailers":
                return None  # 8.2.2
        elif kind == _COOKIE:
            if value:  # an empty crumb would leave "; " at an end of the joined value
                cookies.append(value)  # 8.2.3: crumbs joined below
            continue
        elif kind == _CONTENT_LENGTH:
            if length is not None:
                if value != length:
                    return None  # RFC 9110 8.6: values that disagree
                continue  # the same value again: kept once
            if not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS:
                return None  # RFC 9110 8.6: 1*DIGIT (and a number we can hold)
            length = value
        elif host is not None:
            return None  # a second host (RFC 9110 7.2)
        else:
            host = value
        headers.append(field)
    if method is None or not (method in _METHODS or _TOKEN.fullmatch(method)):
        return None
    if method == b"CONNECT":  # 8.5: host and port only (answered 405 by the gateway)
        if scheme is not None or path is not None or not authority:
            return None
        path = scheme = b""
    else:
        if scheme is None or path is None:
            return None  # 8.3.1
        if not (scheme in _SCHEMES or _SCHEME.fullmatch(scheme)):
            return None
        if path[:1] == b"/":
            if path.translate(_PATH_MARKS).find(1) >= 0:
                return None
        elif path != b"*" or method != b"OPTIONS":
            return None  # 8.3.1: origin-form, or ``*`` for OPTIONS; not empty
        if authority is None:
            if host is None:
                return None  # 8.3.1: :authority or host
            authority = host
        elif (
            host is not None and host != authority and not _same_authority(host, authority, scheme)
        ):
            return None  # 8.3.1: they must name the same server
    if (
        (authority != known_authority or not known_authority)
        and _REG_NAME_AND_PORT.fullmatch(authority) is None
        and _AUTHORITY.fullmatch(authority) is None
    ):
        return None
    content_length = -1
    if length is not None:
        content_length = int(length)
        if end_stream and content_length:
            return None  # 8.1.1: no DATA will come
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    return RequestReceived(
        stream_id, method, path, scheme, authority, headers, end_stream, not within, content_length
    )
