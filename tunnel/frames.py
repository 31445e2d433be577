"""Wire format of the herdgate tunnel (pure: no I/O, no clock).

Every frame is a 10-byte header followed by ``length`` payload bytes::

    +--------+--------+----------------+----------------+
    | type:8 | flags:8| stream_id:32   | length:32      |  payload ...
    +--------+--------+----------------+----------------+

Frames are concatenated into one byte stream; the transport (WebSocket binary
messages) may cut that stream anywhere. Each side's first frame is HELLO, which
carries the protocol version and that side's limits. See docs/design.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

VERSION = 1
"""The protocol version this code speaks."""
MIN_VERSION = 1
"""The oldest version this code still accepts."""

HEADER = struct.Struct(">BBII")
HEADER_SIZE = HEADER.size
_HELLO = struct.Struct(">HIII")
_U32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")

MAX_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**31 - 1
MAX_CONTROL_PAYLOAD = 16 * 1024
"""Upper bound for every non-DATA payload (HELLO metadata, INFO, reasons, targets)."""
MAX_REASON_BYTES = 256

DEFAULT_WINDOW = 256 * 1024
"""Default per-stream receive window: bytes a peer may send before a WINDOW frame."""
DEFAULT_MAX_FRAME = 64 * 1024
"""Default largest DATA payload a side accepts."""
DEFAULT_MAX_STREAMS = 4096
"""Default number of concurrent streams the peer may open."""


class FrameType(IntEnum):
    HELLO = 0
    """Stream 0. Version, receive window, max frame, max streams, metadata."""
    OPEN = 1
    """Opens a stream. Payload: target (application defined, may be empty)."""
    ACCEPT = 2
    """The opened stream's far end is connected (the open acknowledgement)."""
    DATA = 3
    """Stream bytes; flag FIN half-closes the sender's direction."""
    WINDOW = 4
    """Per-stream credit: the receiver may send that many more DATA bytes."""
    RESET = 5
    """Abort a stream. Payload: error code, reason."""
    PING = 6
    """Stream 0. Liveness; answered with the ACK flag and the same 8 bytes."""
    GOAWAY = 7
    """Stream 0. The session is closing. Payload: last stream id, error code, reason."""
    INFO = 8
    """Stream 0. Application metadata update (for example refreshed credentials)."""


FLAG_FIN = 0x1
"""DATA: the sender will send nothing more on this stream."""
FLAG_ACK = 0x1
"""PING: this is the answer."""


class ErrorCode(IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 4
    FRAME_TOO_LARGE = 5
    REFUSED_STREAM = 6
    CANCEL = 7
    CONNECT_FAILED = 8
    UNSUPPORTED_VERSION = 9
    TIMEOUT = 10

    @classmethod
    def parse(cls, value: int) -> ErrorCode:
        """Unknown codes from newer peers read as INTERNAL_ERROR."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL_ERROR


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    window: int
    max_frame: int
    max_streams: int
    metadata: bytes = b""


def _frame(ftype: FrameType, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(ftype, flags, stream_id, len(payload)) + payload


def encode_hello(hello: Hello) -> bytes:
    body = _HELLO.pack(hello.version, hello.window, hello.max_frame, hello.max_streams)
    return _frame(FrameType.HELLO, 0, 0, body + hello.metadata)


def decode_hello(payload: bytes) -> Hello | None:
    """Return the HELLO, or None if the payload is too short."""
    if len(payload) < _HELLO.size:
        return None
    version, window, max_frame, max_streams = _HELLO.unpack_from(payload)
    return Hello(version, window, max_frame, max_streams, bytes(payload[_HELLO.size :]))


def encode_open(stream_id: int, target: bytes = b"") -> bytes:
    return _frame(FrameType.OPEN, 0, stream_id, target)


def encode_accept(stream_id: int) -> bytes:
    return HEADER.pack(FrameType.ACCEPT, 0, stream_id, 0)


def encode_data_header(stream_id: int, length: int, fin: bool) -> bytes:
    """Header of a DATA frame; the caller appends the payload (avoids a copy)."""
    return HEADER.pack(FrameType.DATA, FLAG_FIN if fin else 0, stream_id, length)


def encode_window(stream_id: int, increment: int) -> bytes:
    return _frame(FrameType.WINDOW, 0, stream_id, _U32.pack(increment))


def decode_u32(payload: bytes) -> int | None:
    if len(payload) != _U32.size:
        return None
    value: int = _U32.unpack(payload)[0]
    return value


def _reason(reason: str) -> bytes:
    return reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]


def encode_reset(stream_id: int, code: ErrorCode, reason: str = "") -> bytes:
    return _frame(FrameType.RESET, 0, stream_id, _U32.pack(code) + _reason(reason))


def decode_reset(payload: bytes) -> tuple[ErrorCode, str] | None:
    if len(payload) < _U32.size:
        return None
    code = ErrorCode.parse(_U32.unpack_from(payload)[0])
    return code, bytes(payload[_U32.size :]).decode("utf-8", "replace")


def encode_ping(opaque: bytes, ack: bool = False) -> bytes:
    return _frame(FrameType.PING, FLAG_ACK if ack else 0, 0, opaque)


def encode_goaway(last_stream_id: int, code: ErrorCode, reason: str = "") -> bytes:
    return _frame(FrameType.GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code) + _reason(reason))


def decode_goaway(payload: bytes) -> tuple[int, ErrorCode, str] | None:
    if len(payload) < _GOAWAY.size:
        return None
    last, code = _GOAWAY.unpack_from(payload)
    reason = bytes(payload[_GOAWAY.size :]).decode("utf-8", "replace")
    return last, ErrorCode.parse(code), reason


def encode_info(metadata: bytes) -> bytes:
    return _frame(FrameType.INFO, 0, 0, metadata)
