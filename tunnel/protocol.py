"""Sans-I/O tunnel protocol: bytes in, events out; commands in, bytes out.

The shape follows h2's ``H2Connection``: commands (``open_stream``, ``send_data``,
``reset_stream`` ...) change state and append frames to an outbound buffer;
``receive_data`` parses whatever bytes arrived and returns events. The caller must
send ``data_to_send()`` after every command and every ``receive_data``.

Flow control is credit based and per stream: each side announces in HELLO how many
DATA bytes it will buffer per stream (its window). A sender never exceeds the credit
it holds; the receiver returns credit with WINDOW frames as its application consumes
the bytes (``acknowledge_received_data``). A slow reader therefore holds back only
its own stream.

Stream ids have parity, as in HTTP/2: the side that dialled the WebSocket (the
agent, ``Side.CLIENT``) opens odd ids, the gateway (``Side.SERVER``) even ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tunnel import frames
from tunnel.errors import (
    FlowControlError,
    FrameTooLarge,
    ProtocolError,
    StreamClosed,
    TooManyStreams,
    UnsupportedVersion,
)
from tunnel.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
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
from tunnel.frames import HEADER, HEADER_SIZE, ErrorCode, FrameType

_MIN_MAX_FRAME = 1024
_MAX_MAX_FRAME = 16 * 1024 * 1024
MAX_REFUSED_STREAMS = 1000
"""OPENs refused (over the stream limit, or no handler) before the peer is cut off: a
peer that keeps opening streams it is refused is flooding."""


class Side(Enum):
    CLIENT = "client"
    """Dialled the WebSocket (the agent). Opens odd stream ids."""
    SERVER = "server"
    """Accepted the WebSocket (the gateway). Opens even stream ids."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What this side announces to its peer in HELLO."""

    window: int = frames.DEFAULT_WINDOW
    """Bytes per stream the peer may send before it needs more credit."""
    max_frame: int = frames.DEFAULT_MAX_FRAME
    """Largest DATA payload accepted."""
    max_streams: int = frames.DEFAULT_MAX_STREAMS
    """Concurrent streams the peer may open towards this side."""

    def __post_init__(self) -> None:
        if not 1 <= self.window <= frames.MAX_WINDOW:
            raise ValueError("window out of range")
        if not _MIN_MAX_FRAME <= self.max_frame <= _MAX_MAX_FRAME:
            raise ValueError("max_frame out of range")
        if self.max_streams < 1:
            raise ValueError("max_streams must be positive")


class _Stream:
    __slots__ = (
        "accepted",
        "local_closed",
        "local_open",
        "recv_window",
        "remote_closed",
        "send_window",
        "unacked",
    )

    def __init__(self, send_window: int, recv_window: int, local_open: bool) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.local_open = local_open
        self.accepted = not local_open
        self.local_closed = False
        self.remote_closed = False


class TunnelProtocol:
    """One end of a tunnel session. Not thread-safe; drive it from one task."""

    def __init__(self, side: Side, limits: Limits | None = None, metadata: bytes = b"") -> None:
        self.side = side
        self.limits = limits or Limits()
        self.peer: frames.Hello | None = None
        self._out: list[bytes | memoryview] = []
        self._buf = bytearray()
        self._data_left = 0
        """Payload bytes still to come of the DATA frame being received."""
        self._data_id = 0
        self._data_fin = False
        self._data_keep = False
        """Whether that frame's stream takes its payload (else it is skipped)."""
        self._streams: dict[int, _Stream] = {}
        self._local_parity = 1 if side is Side.CLIENT else 0
        self._next_id = 1 if side is Side.CLIENT else 2
        self._last_peer_id = 0
        self._local_open_count = 0
        self._peer_open_count = 0
        self._refused = 0
        self._terminated: ErrorCode | None = None
        self._goaway_received = False
        self.bytes_sent = 0
        """Bytes handed out by ``data_to_send`` (frames, headers included)."""
        self.bytes_received = 0
        if len(metadata) > frames.MAX_CONTROL_PAYLOAD - 16:
            raise ValueError("HELLO metadata too large")
        self._out.append(
            frames.encode_hello(
                frames.Hello(
                    frames.VERSION,
                    self.limits.window,
                    self.limits.max_frame,
                    self.limits.max_streams,
                    metadata,
                )
            )
        )

    # -- queries ---------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        """The peer's HELLO has arrived and the session is not terminated."""
        return self.peer is not None and self._terminated is None

    @property
    def is_terminated(self) -> bool:
        return self._terminated is not None

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        """Bytes that may be sent on the stream now (0 if the stream is gone)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        return stream.send_window

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    # -- output ----------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Frames (or frame parts) waiting for ``data_to_send``."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport. Does no I/O itself."""
        parts = self.parts_to_send()
        if not parts:
            return b""
        first = parts[0]
        return first if len(parts) == 1 and isinstance(first, bytes) else b"".join(parts)

    def parts_to_send(self) -> list[bytes | memoryview]:
        """What ``data_to_send`` would join, not joined: a transport that copies anyway
        (a masked WebSocket frame) joins it there, once."""
        out = self._out
        if not out:
            return []
        self._out = []
        self.bytes_sent += sum(map(len, out))
        return out

    # -- commands --------------------------------------------------------------

    def open_stream(self, target: bytes = b"") -> int:
        self._check_usable()
        peer = self.peer
        if peer is None:
            raise ProtocolError("peer HELLO not received yet")
        if self._goaway_received:
            raise TooManyStreams("peer is going away")
        if self._local_open_count >= peer.max_streams:
            raise TooManyStreams(f"peer allows {peer.max_streams} concurrent streams")
        if len(target) > frames.MAX_CONTROL_PAYLOAD:
            raise ValueError("target too long")
        stream_id = self._next_id
        if stream_id > frames.MAX_STREAM_ID:
            raise TooManyStreams("stream ids exhausted; open a new session")
        self._next_id += 2
        self._streams[stream_id] = _Stream(peer.window, self.limits.window, local_open=True)
        self._local_open_count += 1
        self._out.append(frames.encode_open(stream_id, target))
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_open:
            raise StreamClosed(stream_id, f"stream {stream_id} is not a pending peer stream")
        self._out.append(frames.encode_accept(stream_id))

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        """Queue DATA within the stream's credit (see ``send_window``)."""
        self._check_usable()
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosed(stream_id, f"stream {stream_id} is closed for sending")
        size = len(data)
        if size > stream.send_window:
            raise FlowControlError(
                f"{size} bytes exceed the send window {stream.send_window} of stream {stream_id}"
            )
        stream.send_window -= size
        assert self.peer is not None
        max_frame = self.peer.max_frame
        if size <= max_frame:
            self._out.append(frames.encode_data_header(stream_id, size, end_stream))
            if size:
                self._out.append(data)
        else:
            view = memoryview(data)
            for start in range(0, size, max_frame):
                chunk = view[start : start + max_frame]
                last = start + max_frame >= size
                self._out.append(
                    frames.encode_data_header(stream_id, len(chunk), end_stream and last)
                )
                self._out.append(chunk)  # a view: data_to_send copies it once, when joining
        if end_stream:
            stream.local_closed = True
            if stream.remote_closed:
                self._forget(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(
        self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL, reason: str = ""
    ) -> None:
        """Abort the stream. A no-op if it is already gone."""
        stream = self._streams.get(stream_id)
        if stream is None or self._terminated is not None:
            return
        self._forget(stream_id, stream)
        self._out.append(frames.encode_reset(stream_id, code, reason))

    def refuse_stream(self, stream_id: int, reason: str) -> None:
        """Reset a stream the peer opened that this side will not serve; raises
        ``ProtocolError`` (GOAWAY queued) once the peer has been refused too often."""
        self.reset_stream(stream_id, ErrorCode.REFUSED_STREAM, reason)
        try:
            self._count_refused()
        except ProtocolError as exc:
            self.close(exc.error_code, str(exc))
            raise

    def acknowledge_received_data(self, stream_id: int, size: int) -> None:
        """Return credit for ``size`` bytes the application has consumed."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed or size <= 0:
            return
        stream.unacked += size
        if stream.unacked >= self.limits.window // 2:
            stream.recv_window += stream.unacked
            self._out.append(frames.encode_window(stream_id, stream.unacked))
            stream.unacked = 0

    def ping(self, opaque: bytes) -> None:
        if len(opaque) != 8:
            raise ValueError("ping payload must be 8 bytes")
        self._check_usable()
        self._out.append(frames.encode_ping(opaque))

    def send_info(self, metadata: bytes) -> None:
        self._check_usable()
        if len(metadata) > frames.MAX_CONTROL_PAYLOAD:
            raise ValueError("INFO metadata too large")
        self._out.append(frames.encode_info(metadata))

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Queue GOAWAY and stop; later calls fail fast."""
        if self._terminated is None:
            self._out.append(frames.encode_goaway(self._last_peer_id, code, reason))
            self._terminated = code
            self._streams.clear()

    # -- input -----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Parse bytes from the peer. Raises ``ProtocolError`` (GOAWAY queued) on bad input.

        DATA payload is handed over as it arrives, in the pieces ``data`` brings, never
        gathered into whole frames first: a big frame costs no extra copy. Only a frame
        header, or a control frame (≤ 16 KiB), cut across calls waits for the rest.
        A ``data`` that ends in payload is itself the ``DataReceived.data``: a bytearray
        passed in is handed on, not copied (what precedes the payload cut off in place),
        so the caller must not use it afterwards (the WebSocket reader gives each piece a
        buffer of its own). The DATA frames of a big answer arrive that way: a frame
        header and its payload in one WebSocket message.
        """
        if self._terminated is not None:
            return []
        self.bytes_received += len(data)
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        events: list[Event] = []
        pos = 0
        end_of_data = len(buf)
        try:
            while pos < end_of_data:
                if self._data_left:
                    take = min(self._data_left, end_of_data - pos)
                    self._data_piece(buf, pos, take, events)
                    pos += take
                    continue
                if end_of_data - pos < HEADER_SIZE:
                    break
                ftype, flags, stream_id, length = HEADER.unpack_from(buf, pos)
                if ftype == FrameType.DATA and self.peer is not None:
                    if length > self.limits.max_frame:
                        raise FrameTooLarge(
                            f"frame of {length} bytes exceeds the limit {self.limits.max_frame}"
                        )
                    pos += HEADER_SIZE
                    self._start_data(flags, stream_id, length, events)
                    continue
                if length > frames.MAX_CONTROL_PAYLOAD:
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds the limit {frames.MAX_CONTROL_PAYLOAD}"
                    )
                end = pos + HEADER_SIZE + length
                if end > end_of_data:
                    break
                payload = buf[pos + HEADER_SIZE : end]
                pos = end
                self._handle(ftype, flags, stream_id, bytes(payload), events)
        except ProtocolError as exc:
            self.close(exc.error_code, str(exc))
            self._buf = bytearray()
            raise
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < end_of_data:
            self._buf = bytearray(buf[pos:])
        return events

    def _start_data(self, flags: int, stream_id: int, size: int, events: list[Event]) -> None:
        """A DATA header: checks and credit for the whole frame; the payload follows."""
        self._data_id = stream_id
        self._data_left = size
        self._data_fin = bool(flags & frames.FLAG_FIN)
        self._data_keep = False
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_known(stream_id)  # else a stream reset while its data was in flight
        elif stream.remote_closed:
            self._forget(stream_id, stream)
            self._out.append(
                frames.encode_reset(stream_id, ErrorCode.STREAM_CLOSED, "data after FIN")
            )
            events.append(StreamReset(stream_id, ErrorCode.STREAM_CLOSED, "data after FIN"))
        elif size > stream.recv_window:
            raise FlowControlError(f"stream {stream_id} sent {size} bytes beyond its window")
        else:
            stream.recv_window -= size
            self._data_keep = True
        if not size:
            self._data_done(events)

    def _data_piece(self, buf: bytes | bytearray, pos: int, size: int, events: list[Event]) -> None:
        if self._data_keep:
            if pos + size == len(buf) and buf is not self._buf and type(buf) is bytearray:
                # The rest of the caller's own buffer (see ``receive_data``): handed on,
                # with what came before it cut off (a bytearray drops a prefix in place).
                if pos:
                    del buf[:pos]
                piece: bytes | bytearray = buf
            elif pos == 0 and size == len(buf) and buf is not self._buf:
                piece = buf
            else:
                piece = bytes(memoryview(buf)[pos : pos + size])  # one copy, not two
            events.append(DataReceived(self._data_id, piece))
        self._data_left -= size
        if not self._data_left:
            self._data_done(events)

    def _data_done(self, events: list[Event]) -> None:
        if not (self._data_keep and self._data_fin):
            return
        stream_id = self._data_id
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # reset locally while the frame arrived
        stream.remote_closed = True
        events.append(StreamEnded(stream_id))
        if stream.local_closed:
            self._forget(stream_id, stream)

    def _handle(
        self, ftype: int, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self.peer is None and ftype != FrameType.HELLO:
            raise ProtocolError("the first frame must be HELLO")
        if ftype == FrameType.WINDOW:
            self._on_window(stream_id, payload, events)
        elif ftype == FrameType.OPEN:
            self._on_open(stream_id, payload, events)
        elif ftype == FrameType.ACCEPT:
            stream = self._streams.get(stream_id)
            if stream is not None and stream.local_open and not stream.accepted:
                stream.accepted = True
                events.append(StreamAccepted(stream_id))
            elif stream is None:
                self._check_known(stream_id)
        elif ftype == FrameType.RESET:
            self._on_reset(stream_id, payload, events)
        elif ftype == FrameType.PING:
            self._on_ping(flags, stream_id, payload, events)
        elif ftype == FrameType.HELLO:
            self._on_hello(stream_id, payload, events)
        elif ftype == FrameType.GOAWAY:
            parsed = frames.decode_goaway(payload)
            if parsed is None or stream_id != 0:
                raise ProtocolError("malformed GOAWAY")
            self._goaway_received = True
            events.append(ConnectionTerminated(parsed[1], parsed[0], parsed[2]))
        elif ftype == FrameType.INFO:
            if stream_id != 0:
                raise ProtocolError("INFO on a stream")
            events.append(InfoReceived(payload))
        # Unknown frame types are ignored so that newer peers can add optional frames.

    def _on_hello(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if self.peer is not None:
            raise ProtocolError("second HELLO")
        hello = frames.decode_hello(payload)
        if hello is None or stream_id != 0:
            raise ProtocolError("malformed HELLO")
        if hello.version < frames.MIN_VERSION:
            raise UnsupportedVersion(f"peer speaks version {hello.version}")
        if not (
            1 <= hello.window <= frames.MAX_WINDOW
            and _MIN_MAX_FRAME <= hello.max_frame <= _MAX_MAX_FRAME
            and hello.max_streams >= 1
        ):
            raise ProtocolError("HELLO limits out of range")
        # Its limits are kept; its metadata goes to the session, not kept for the
        # connection's life.
        self.peer = frames.Hello(hello.version, hello.window, hello.max_frame, hello.max_streams)
        events.append(HelloReceived(min(hello.version, frames.VERSION), hello.metadata))

    def _on_open(self, stream_id: int, target: bytes, events: list[Event]) -> None:
        if stream_id == 0 or stream_id % 2 == self._local_parity:
            raise ProtocolError(f"peer may not open stream {stream_id}")
        if stream_id <= self._last_peer_id:
            raise ProtocolError(f"stream id {stream_id} reused")
        self._last_peer_id = stream_id
        if self._peer_open_count >= self.limits.max_streams:
            self._count_refused()
            self._out.append(
                frames.encode_reset(stream_id, ErrorCode.REFUSED_STREAM, "too many streams")
            )
            return
        assert self.peer is not None
        self._streams[stream_id] = _Stream(self.peer.window, self.limits.window, local_open=False)
        self._peer_open_count += 1
        events.append(StreamOpened(stream_id, target))

    def _on_window(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        increment = frames.decode_u32(payload)
        if increment is None or increment == 0:
            raise ProtocolError("malformed WINDOW")
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_known(stream_id)
            return
        stream.send_window += increment
        if stream.send_window > frames.MAX_WINDOW:
            raise FlowControlError(f"window of stream {stream_id} overflowed")
        events.append(WindowUpdated(stream_id, increment))

    def _on_reset(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        parsed = frames.decode_reset(payload)
        if parsed is None:
            raise ProtocolError("malformed RESET")
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_known(stream_id)
            return
        self._forget(stream_id, stream)
        events.append(StreamReset(stream_id, parsed[0], parsed[1]))

    def _on_ping(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id != 0 or len(payload) != 8:
            raise ProtocolError("malformed PING")
        if flags & frames.FLAG_ACK:
            events.append(PingAcknowledged(payload))
        else:
            self._out.append(frames.encode_ping(payload, ack=True))
            events.append(PingReceived(payload))

    # -- helpers ---------------------------------------------------------------

    def _check_known(self, stream_id: int) -> None:
        """Frames for streams that never existed are a protocol error."""
        if stream_id == 0:
            raise ProtocolError("stream frame on stream 0")
        if stream_id % 2 == self._local_parity:
            if stream_id >= self._next_id:
                raise ProtocolError(f"frame for stream {stream_id}, never opened here")
        elif stream_id > self._last_peer_id:
            raise ProtocolError(f"frame for stream {stream_id}, never opened by the peer")

    def _count_refused(self) -> None:
        self._refused += 1
        if self._refused > MAX_REFUSED_STREAMS:
            raise ProtocolError(f"more than {MAX_REFUSED_STREAMS} streams refused")

    def _forget(self, stream_id: int, stream: _Stream) -> None:
        del self._streams[stream_id]
        if stream.local_open:
            self._local_open_count -= 1
        else:
            self._peer_open_count -= 1

    def _check_usable(self) -> None:
        if self._terminated is not None:
            raise ProtocolError("the session is closed", self._terminated)
