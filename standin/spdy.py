"""A sans-I/O codec for SPDY/3.1 framing, as spoken by kubectl, the kube-apiserver and the kubelet.

Kubernetes uses SPDY (through ``github.com/moby/spdystream``) as a stream multiplexer for
``exec``/``attach``/``port-forward``: every frame type of the SPDY/3 draft may appear, header
blocks are zlib-compressed with the SPDY/3 dictionary over one compression context per
direction, and DATA frames carry the streams' bytes.  No flow control is enforced by
spdystream (it never sends WINDOW_UPDATE), so this codec only encodes and decodes frames; the
policy lives in the caller.

Usage::

    decoder = FrameDecoder()
    decoder.receive_data(chunk)          # any split of the byte stream
    for frame in decoder:                # complete frames, in order
        ...                              # SpdyError is raised at the first bad frame

    encoder = FrameEncoder()
    wire = encoder.encode(SynReplyFrame(stream_id=1, headers=()))

Both sides keep state (the zlib contexts), so frames must be encoded in the order they are sent
and decoded in the order they arrive.  Every decoding failure raises :class:`SpdyError` (and
only that); after an error the decoder refuses further input.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

SPDY_VERSION: Final = 3
"""The version field of every control frame (SPDY/3.1 keeps 3 on the wire)."""

MAX_FRAME_LENGTH: Final = (1 << 24) - 1
"""The 24-bit length field's largest value."""
MAX_STREAM_ID: Final = (1 << 31) - 1
MAX_WINDOW_DELTA: Final = (1 << 31) - 1
DEFAULT_MAX_HEADER_BLOCK: Final = 256 * 1024
"""Default bound on one decompressed header block (a decompression-bomb guard)."""

FLAG_FIN: Final = 0x01
FLAG_UNIDIRECTIONAL: Final = 0x02
FLAG_SETTINGS_CLEAR_SETTINGS: Final = 0x01

_FRAME_HEAD = struct.Struct(">II")
_CONTROL_HEAD = struct.Struct(">HHI")
_U32 = struct.Struct(">I")
_U32_PAIR = struct.Struct(">II")
_SYN_STREAM_HEAD = struct.Struct(">IIBB")

# The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1):
# length-prefixed words followed by a run of status codes, reason phrases, dates and types.
_DICTIONARY_WORDS: Final = (
    b"options",
    b"head",
    b"post",
    b"put",
    b"delete",
    b"trace",
    b"accept",
    b"accept-charset",
    b"accept-encoding",
    b"accept-language",
    b"accept-ranges",
    b"age",
    b"allow",
    b"authorization",
    b"cache-control",
    b"connection",
    b"content-base",
    b"content-encoding",
    b"content-language",
    b"content-length",
    b"content-location",
    b"content-md5",
    b"content-range",
    b"content-type",
    b"date",
    b"etag",
    b"expect",
    b"expires",
    b"from",
    b"host",
    b"if-match",
    b"if-modified-since",
    b"if-none-match",
    b"if-range",
    b"if-unmodified-since",
    b"last-modified",
    b"location",
    b"max-forwards",
    b"pragma",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"range",
    b"referer",
    b"retry-after",
    b"server",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"user-agent",
    b"vary",
    b"via",
    b"warning",
    b"www-authenticate",
    b"method",
    b"get",
    b"status",
    b"200 OK",
    b"version",
    b"HTTP/1.1",
    b"url",
    b"public",
    b"set-cookie",
    b"keep-alive",
    b"origin",
)
_DICTIONARY_TAIL: Final = (
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    b"203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    b"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    b"503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    b"Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    b"application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    b"gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
HEADER_DICTIONARY: Final[bytes] = (
    b"".join(_U32.pack(len(word)) + word for word in _DICTIONARY_WORDS) + _DICTIONARY_TAIL
)
"""The 1423-byte zlib dictionary (adler32 0xe3c6a7c2) both directions prime their context with."""


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingsId(IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


class SpdyError(Exception):
    """The byte stream is not valid SPDY/3; the session cannot continue.

    ``status`` is what a GOAWAY should carry; ``stream_id`` names the stream whose frame was
    bad (0 when the problem is not tied to one stream).
    """

    def __init__(
        self, message: str, *, stream_id: int = 0, status: int = GoAwayStatus.PROTOCOL_ERROR
    ) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status


HeaderBlock = tuple[tuple[str, str], ...]
"""Name/value pairs in wire order; names are lowercase, a value may join several values by NUL."""


@dataclass(frozen=True, slots=True)
class SynStreamFrame:
    stream_id: int
    headers: HeaderBlock
    associated_stream_id: int = 0
    priority: int = 0
    """3 bits, 0 is the highest priority."""
    slot: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class SynReplyFrame:
    stream_id: int
    headers: HeaderBlock = ()
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStreamFrame:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Setting:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class SettingsFrame:
    settings: tuple[Setting, ...] = ()
    clear_settings: bool = False


@dataclass(frozen=True, slots=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: HeaderBlock
    fin: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes = b""
    fin: bool = False
    flags: int = field(default=0, compare=False)
    """The raw flags byte as received (only FIN is defined); ignored when encoding."""


@dataclass(frozen=True, slots=True)
class UnknownControlFrame:
    """A control frame of a type SPDY/3 does not define (e.g. CREDENTIAL); receivers ignore it."""

    frame_type: int
    flags: int
    payload: bytes


Frame = (
    SynStreamFrame
    | SynReplyFrame
    | RstStreamFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | HeadersFrame
    | WindowUpdateFrame
    | DataFrame
    | UnknownControlFrame
)


def header_value(headers: HeaderBlock, name: str) -> str | None:
    """The first value of header ``name`` (like Go's ``http.Header.Get``), or None."""
    wanted = name.lower()
    for key, value in headers:
        if key == wanted:
            return value.split("\x00", 1)[0]
    return None


def header_values(headers: HeaderBlock, name: str) -> list[str]:
    """Every value of header ``name`` (NUL-separated on the wire)."""
    wanted = name.lower()
    return [v for key, value in headers if key == wanted for v in value.split("\x00")]


# --------------------------------------------------------------------------- encoding


def encode_header_block(headers: HeaderBlock) -> bytes:
    """The uncompressed SPDY/3 name/value block (32-bit counts and lengths)."""
    parts = [_U32.pack(len(headers))]
    for name, value in headers:
        raw_name = name.lower().encode("latin-1")
        raw_value = value.encode("latin-1")
        parts += (_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value)
    return b"".join(parts)


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError(f"control frame payload of {len(payload)} bytes is too large")
    return (
        _CONTROL_HEAD.pack(0x8000 | SPDY_VERSION, frame_type, flags << 24 | len(payload)) + payload
    )


def _check_stream_id(stream_id: int, *, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"invalid stream id {stream_id}")


class FrameEncoder:
    """Serialises frames; owns the sending side's header compression context."""

    def __init__(self, level: int = zlib.Z_BEST_COMPRESSION) -> None:
        self._deflate = zlib.compressobj(
            level, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY
        )

    def compress_headers(self, headers: HeaderBlock) -> bytes:
        """Compress one header block, ending with a sync flush as every SPDY peer expects."""
        block = encode_header_block(headers)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case DataFrame(stream_id=stream_id, data=data, fin=fin):
                _check_stream_id(stream_id)
                if len(data) > MAX_FRAME_LENGTH:
                    raise ValueError(f"DATA payload of {len(data)} bytes is too large")
                return (
                    _FRAME_HEAD.pack(stream_id, (FLAG_FIN if fin else 0) << 24 | len(data)) + data
                )
            case SynStreamFrame():
                _check_stream_id(frame.stream_id)
                _check_stream_id(frame.associated_stream_id, allow_zero=True)
                if not 0 <= frame.priority <= 7 or not 0 <= frame.slot <= 255:
                    raise ValueError("priority must fit 3 bits and slot 8 bits")
                flags = (FLAG_FIN if frame.fin else 0) | (
                    FLAG_UNIDIRECTIONAL if frame.unidirectional else 0
                )
                head = _SYN_STREAM_HEAD.pack(
                    frame.stream_id, frame.associated_stream_id, frame.priority << 5, frame.slot
                )
                return _control(
                    FrameType.SYN_STREAM, flags, head + self.compress_headers(frame.headers)
                )
            case SynReplyFrame(stream_id=stream_id, headers=headers, fin=fin):
                _check_stream_id(stream_id)
                return _control(
                    FrameType.SYN_REPLY,
                    FLAG_FIN if fin else 0,
                    _U32.pack(stream_id) + self.compress_headers(headers),
                )
            case HeadersFrame(stream_id=stream_id, headers=headers, fin=fin):
                _check_stream_id(stream_id)
                return _control(
                    FrameType.HEADERS,
                    FLAG_FIN if fin else 0,
                    _U32.pack(stream_id) + self.compress_headers(headers),
                )
            case RstStreamFrame(stream_id=stream_id, status=status):
                _check_stream_id(stream_id)
                return _control(FrameType.RST_STREAM, 0, _U32_PAIR.pack(stream_id, status))
            case SettingsFrame(settings=settings, clear_settings=clear):
                payload = _U32.pack(len(settings)) + b"".join(
                    _U32_PAIR.pack((s.flags & 0xFF) << 24 | (s.id & 0xFFFFFF), s.value)
                    for s in settings
                )
                return _control(
                    FrameType.SETTINGS, FLAG_SETTINGS_CLEAR_SETTINGS if clear else 0, payload
                )
            case PingFrame(ping_id=ping_id):
                return _control(FrameType.PING, 0, _U32.pack(ping_id))
            case GoAwayFrame(last_good_stream_id=last, status=status):
                _check_stream_id(last, allow_zero=True)
                return _control(FrameType.GOAWAY, 0, _U32_PAIR.pack(last, status))
            case WindowUpdateFrame(stream_id=stream_id, delta=delta):
                _check_stream_id(stream_id, allow_zero=True)
                if not 1 <= delta <= MAX_WINDOW_DELTA:
                    raise ValueError(f"invalid window delta {delta}")
                return _control(FrameType.WINDOW_UPDATE, 0, _U32_PAIR.pack(stream_id, delta))
            case UnknownControlFrame(frame_type=frame_type, flags=flags, payload=payload):
                return _control(frame_type, flags, payload)
        raise TypeError(f"not a SPDY frame: {frame!r}")


# --------------------------------------------------------------------------- decoding


def decode_header_block(block: bytes, stream_id: int = 0) -> HeaderBlock:
    """Parse an uncompressed name/value block, validating it as SPDY/3 section 2.6.10 demands."""
    end = len(block)
    if end < 4:
        raise SpdyError("header block too short", stream_id=stream_id)
    (count,) = _U32.unpack_from(block, 0)
    if count * 8 > end - 4:
        raise SpdyError(f"header block claims {count} pairs", stream_id=stream_id)
    pos = 4
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _ in range(count):
        raw: list[bytes] = []
        for _part in ("name", "value"):
            if pos + 4 > end:
                raise SpdyError("truncated header block", stream_id=stream_id)
            (length,) = _U32.unpack_from(block, pos)
            pos += 4
            if length > end - pos:
                raise SpdyError("header length beyond the block", stream_id=stream_id)
            raw.append(block[pos : pos + length])
            pos += length
        name_bytes, value_bytes = raw
        if not name_bytes:
            raise SpdyError("zero-length header name", stream_id=stream_id)
        if name_bytes != name_bytes.lower() or b"\x00" in name_bytes:
            raise SpdyError(f"header name {name_bytes!r} is not lowercase", stream_id=stream_id)
        if (
            value_bytes.startswith(b"\x00")
            or value_bytes.endswith(b"\x00")
            or (b"\x00\x00" in value_bytes)
        ):
            raise SpdyError(f"malformed value for header {name_bytes!r}", stream_id=stream_id)
        name = name_bytes.decode("latin-1")
        if name in seen:
            raise SpdyError(f"duplicate header {name!r}", stream_id=stream_id)
        seen.add(name)
        pairs.append((name, value_bytes.decode("latin-1")))
    if pos != end:
        raise SpdyError("trailing bytes after the header block", stream_id=stream_id)
    return tuple(pairs)


class FrameDecoder:
    """Turns a byte stream into frames; owns the receiving side's header decompression context."""

    def __init__(
        self,
        *,
        max_frame_length: int = MAX_FRAME_LENGTH,
        max_header_block: int = DEFAULT_MAX_HEADER_BLOCK,
    ) -> None:
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._max_frame_length = max_frame_length
        self._max_header_block = max_header_block
        self._failed: SpdyError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed is not None:
            raise SpdyError(f"decoder already failed: {self._failed}")
        self._buffer += data

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def decode(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """``receive_data`` then every complete frame (raises at the first bad one)."""
        self.receive_data(data)
        return list(self)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed."""
        if self._failed is not None:
            raise SpdyError(f"decoder already failed: {self._failed}")
        buffer = self._buffer
        if len(buffer) < 8:
            return None
        first, flags_length = _FRAME_HEAD.unpack_from(buffer, 0)
        flags, length = flags_length >> 24, flags_length & 0xFFFFFF
        try:
            if length > self._max_frame_length:
                raise SpdyError(
                    f"frame of {length} bytes exceeds {self._max_frame_length}",
                    status=GoAwayStatus.PROTOCOL_ERROR,
                )
            if len(buffer) < 8 + length:
                return None
            payload = bytes(buffer[8 : 8 + length])
            del buffer[: 8 + length]
            if first & 0x80000000:
                return self._control(first, flags, payload)
            stream_id = first & MAX_STREAM_ID
            if stream_id == 0:
                raise SpdyError("DATA frame on stream 0")
            return DataFrame(stream_id, payload, bool(flags & FLAG_FIN), flags)
        except SpdyError as exc:
            self._failed = exc
            raise

    def _headers(self, compressed: bytes, stream_id: int) -> HeaderBlock:
        inflate = self._inflate
        if inflate.eof:
            raise SpdyError("header compression stream already ended", stream_id=stream_id)
        try:
            block = inflate.decompress(compressed, self._max_header_block + 1)
        except zlib.error as exc:
            raise SpdyError(f"header decompression failed: {exc}", stream_id=stream_id) from None
        if len(block) > self._max_header_block or inflate.unconsumed_tail:
            raise SpdyError("header block too large", stream_id=stream_id)
        if inflate.unused_data:
            raise SpdyError("bytes after the end of the header stream", stream_id=stream_id)
        return decode_header_block(block, stream_id)

    def _control(self, first: int, flags: int, payload: bytes) -> Frame:
        version = (first >> 16) & 0x7FFF
        frame_type = first & 0xFFFF
        if version != SPDY_VERSION:
            raise SpdyError(f"unsupported SPDY version {version}")
        length = len(payload)
        if frame_type == FrameType.SYN_STREAM:
            if length < 10:
                raise SpdyError("short SYN_STREAM")
            stream_id, associated, priority, slot = _SYN_STREAM_HEAD.unpack_from(payload, 0)
            stream_id &= MAX_STREAM_ID
            if stream_id == 0:
                raise SpdyError("SYN_STREAM for stream 0")
            return SynStreamFrame(
                stream_id=stream_id,
                headers=self._headers(payload[10:], stream_id),
                associated_stream_id=associated & MAX_STREAM_ID,
                priority=priority >> 5,
                slot=slot,
                fin=bool(flags & FLAG_FIN),
                unidirectional=bool(flags & FLAG_UNIDIRECTIONAL),
            )
        if frame_type in (FrameType.SYN_REPLY, FrameType.HEADERS):
            if length < 4:
                raise SpdyError(f"short {FrameType(frame_type).name}")
            stream_id = _U32.unpack_from(payload, 0)[0] & MAX_STREAM_ID
            if stream_id == 0:
                raise SpdyError(f"{FrameType(frame_type).name} for stream 0")
            headers = self._headers(payload[4:], stream_id)
            if frame_type == FrameType.SYN_REPLY:
                return SynReplyFrame(stream_id, headers, bool(flags & FLAG_FIN))
            return HeadersFrame(stream_id, headers, bool(flags & FLAG_FIN))
        if frame_type == FrameType.RST_STREAM:
            if length != 8:
                raise SpdyError("RST_STREAM length must be 8")
            stream_id, status = _U32_PAIR.unpack(payload)
            stream_id &= MAX_STREAM_ID
            if stream_id == 0 or status == 0:
                raise SpdyError("RST_STREAM needs a stream and a status")
            return RstStreamFrame(stream_id, status)
        if frame_type == FrameType.SETTINGS:
            if length < 4:
                raise SpdyError("short SETTINGS")
            (count,) = _U32.unpack_from(payload, 0)
            if length != 4 + 8 * count:
                raise SpdyError("SETTINGS length does not match its entry count")
            settings = tuple(
                Setting(id=flags_id & 0xFFFFFF, value=value, flags=flags_id >> 24)
                for flags_id, value in _U32_PAIR.iter_unpack(payload[4:])
            )
            return SettingsFrame(settings, bool(flags & FLAG_SETTINGS_CLEAR_SETTINGS))
        if frame_type == FrameType.PING:
            if length != 4:
                raise SpdyError("PING length must be 4")
            return PingFrame(_U32.unpack(payload)[0])
        if frame_type == FrameType.GOAWAY:
            if length != 8:
                raise SpdyError("GOAWAY length must be 8")
            last, status = _U32_PAIR.unpack(payload)
            return GoAwayFrame(last & MAX_STREAM_ID, status)
        if frame_type == FrameType.WINDOW_UPDATE:
            if length != 8:
                raise SpdyError("WINDOW_UPDATE length must be 8")
            stream_id, delta = _U32_PAIR.unpack(payload)
            delta &= MAX_WINDOW_DELTA
            if delta == 0:
                raise SpdyError(
                    "WINDOW_UPDATE with a zero delta", status=GoAwayStatus.PROTOCOL_ERROR
                )
            return WindowUpdateFrame(stream_id & MAX_STREAM_ID, delta)
        return UnknownControlFrame(frame_type, flags, payload)
