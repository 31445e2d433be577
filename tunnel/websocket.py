"""RFC 6455 WebSocket for the tunnel, sans-I/O: the opening handshake and the framing.

The tunnel carries one byte stream in binary messages (its own frames may be cut
across messages anywhere, see :mod:`tunnel.protocol`), so the reader hands over message
payload as it arrives, piece by piece, never waiting for a whole message; message
boundaries mean nothing here. Text messages and extensions are refused (the tunnel
offers none), control frames are answered by the layer above (:mod:`tunnel.wsconn`).

Why not aiohttp's WebSocket (used before): its reader copies each payload three to four
times and wakes a task per message, so this one costs the gateway less CPU per MB of a
big answer. Why not ``wsproto``: its masking runs in Python, far slower than aiohttp's C
helper used here. docs/design.md section 9 ("Own WebSocket layer for the tunnel") has
the measurements of both.

Masking (RFC 6455 5.3) is a function passed in (:data:`Masker`), so this module imports
no I/O library: the I/O layer (:mod:`tunnel.wsconn`) passes aiohttp's C loop when it is
as tested (:mod:`config.compat.aiohttp_internals`); the default, :func:`mask_pure`, is the
same XOR in Python, much slower (docs/design.md section 3, "Frames").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Protocol

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION: Final = "13"
MAX_CONTROL_PAYLOAD: Final = 125
MAX_HEADER: Final = 14

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class Opcode(IntEnum):
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_PAYLOAD = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class WebSocketError(Exception):
    """The peer broke the framing; close the connection with ``code``."""

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class HandshakeError(Exception):
    """The opening handshake failed; ``status`` is the HTTP status (given or to give)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        """The answer's header fields (lower-case names), when the server answered."""


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Item = bytes | bytearray | Ping | Pong | Close
"""What the reader yields: message payload (in order, any piece size) or a control frame."""


# -- handshake ------------------------------------------------------------------------


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_key(key: str) -> str:
    digest = hashlib.sha1(key.encode("ascii") + GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _has_token(value: str, token: str) -> bool:
    return token in (part.strip().lower() for part in value.split(","))


class Fields(Protocol):
    """Request header fields, looked up by name (case-insensitive)."""

    def get(self, name: str, default: str, /) -> str: ...


def server_accept(headers: Fields) -> dict[str, str]:
    """Check a client's opening handshake; the 101 answer's headers, or HandshakeError."""
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        raise HandshakeError(400, "not a WebSocket upgrade (Upgrade: websocket expected)")
    if not _has_token(headers.get("Connection", ""), "upgrade"):
        raise HandshakeError(400, "not a WebSocket upgrade (Connection: Upgrade expected)")
    if headers.get("Sec-WebSocket-Version", "").strip() != VERSION:
        raise HandshakeError(426, f"WebSocket version {VERSION} is the one supported")
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HandshakeError(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": accept_key(key),
    }


@dataclass(frozen=True, slots=True)
class Target:
    secure: bool
    host: str
    port: int
    host_header: str
    path: str
    """Path and query, as sent in the request line."""


def parse_url(url: str) -> Target:
    """Where to dial for ``url`` (``https``/``wss`` or ``http``/``ws``); ValueError if
    it is not such a URL."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "wss", "http", "ws") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url}")
    secure = scheme in ("https", "wss")
    default = 443 if secure else 80
    port = parts.port or default  # ValueError for a port out of range
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if port != default:
        host_header += f":{port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(secure, host, port, host_header, path)


def client_request(host: str, path: str, key: str, headers: Mapping[str, str]) -> bytes:
    """The client's opening handshake: an HTTP/1.1 GET asking to upgrade."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {VERSION}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError("line breaks in a handshake header")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


MAX_RESPONSE_HEAD: Final = 16 * 1024


class ClientHandshake:
    """Reads the server's answer to :func:`client_request`.

    ``feed`` returns None until the head is complete, then the bytes that followed it
    (the first WebSocket frames); raises HandshakeError for anything but a valid 101.
    """

    def __init__(self, key: str) -> None:
        self._expected = accept_key(key)
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> bytes | None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_RESPONSE_HEAD:
                raise HandshakeError(502, "the handshake answer's head is too large")
            return None
        head = bytes(self._buf[:end]).decode("latin-1")
        rest = bytes(self._buf[end + 4 :])
        self._buf = bytearray()
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        code = parts[1] if len(parts) >= 2 else ""
        # Three ASCII digits: str.isdigit() alone takes "²" (latin-1 0xB2), which int()
        # refuses with ValueError (found by fuzzing), and any number of digits.
        if not parts[0].startswith("HTTP/1.") or not (
            len(code) == 3 and code.isascii() and code.isdigit()
        ):
            raise HandshakeError(502, f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        fields: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        if status != 101:
            reason = parts[2] if len(parts) > 2 else ""
            raise HandshakeError(status, f"HTTP {status} {reason[:300]}", fields)
        if fields.get("upgrade", "").lower() != "websocket" or not _has_token(
            fields.get("connection", ""), "upgrade"
        ):
            raise HandshakeError(502, "the 101 answer does not upgrade to websocket")
        if fields.get("sec-websocket-accept") != self._expected:
            raise HandshakeError(502, "wrong Sec-WebSocket-Accept")
        if fields.get("sec-websocket-extensions"):
            raise HandshakeError(502, "the server chose an extension that was not offered")
        return rest


# -- framing --------------------------------------------------------------------------

Masker = Callable[[bytes, bytearray], None]
"""``mask_in_place(key, data)``: XOR ``data`` in place with the 4-byte ``key`` repeated
(RFC 6455 5.3); masking twice gives the data back."""

_XOR_TABLES: list[bytes] = []
"""``_XOR_TABLES[k]`` maps each octet to itself XOR ``k`` (built on first use)."""


def mask_pure(key: bytes, data: bytearray) -> None:
    """The :data:`Masker` in Python: each of the four key octets applied to every fourth
    octet with ``bytes.translate`` (much slower than aiohttp's C loop; docs/design.md
    section 3, "Frames")."""
    if not _XOR_TABLES:
        _XOR_TABLES.extend(bytes(b ^ k for b in range(256)) for k in range(256))
    for i in range(4):
        data[i::4] = data[i::4].translate(_XOR_TABLES[key[i]])


def _rotated(mask: bytes, offset: int) -> bytes:
    """The key that masks byte ``offset`` of a payload with ``mask[0]`` at position 0."""
    shift = offset % 4
    return mask[shift:] + mask[:shift] if shift else mask


Buffer = bytes | bytearray | memoryview


def encode_frame(
    opcode: Opcode,
    payload: Buffer = b"",
    mask: bytes | None = None,
    mask_in_place: Masker = mask_pure,
) -> bytes | bytearray:
    """One final frame; ``mask`` (4 bytes) for client frames."""
    return encode_parts(opcode, (payload,), mask, mask_in_place)


def encode_parts(
    opcode: Opcode,
    parts: Sequence[Buffer],
    mask: bytes | None = None,
    mask_in_place: Masker = mask_pure,
) -> bytes | bytearray:
    """One final frame whose payload is ``parts`` joined: the parts are copied once, into
    the frame, and a client frame (``mask``) is masked in place there."""
    size = sum(map(len, parts))
    first = 0x80 | opcode
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head = bytes((first, size | bit))
    elif size < 65536:
        head = _LEN16.pack(first, 126 | bit, size)
    else:
        head = _LEN64.pack(first, 127 | bit, size)
    if mask is None:
        return b"".join((head, *parts))
    head += mask
    frame = bytearray().join((head, *parts))
    # Masking the whole frame with the key turned by the head's length masks the payload
    # exactly as RFC 6455 5.3 says; the head, masked along, is then written back.
    mask_in_place(_rotated(mask, -len(head) % 4), frame)
    frame[: len(head)] = head
    return frame


def split_parts(parts: Sequence[Buffer], limit: int) -> list[list[Buffer]]:
    """``parts`` in groups of at most ``limit`` bytes each (parts cut where needed)."""
    groups: list[list[Buffer]] = [[]]
    room = limit
    for part in parts:
        view = memoryview(part) if len(part) > room else part
        while len(view) > room:
            if room:
                groups[-1].append(view[:room])
                view = view[room:]
            groups.append([])
            room = limit
        if len(view):
            groups[-1].append(view)
            room -= len(view)
    return [group for group in groups if group]


def encode_close(
    code: int, reason: str = "", mask: bytes | None = None, mask_in_place: Masker = mask_pure
) -> bytes | bytearray:
    text = reason.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore")
    payload = _U16.pack(code) + text.encode("utf-8")  # cut on a character boundary
    return encode_frame(Opcode.CLOSE, payload, mask, mask_in_place)


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or (3000 <= code <= 4999)


class FrameReader:
    """Parses frames from the peer.

    ``masked``: frames must be masked (a server reading a client) or must not be (a
    client reading a server), RFC 6455 5.1. ``max_frame`` bounds one frame's payload.
    ``mask_in_place`` unmasks what a client sent.
    """

    __slots__ = (
        "_control",
        "_fragmented",
        "_head",
        "_left",
        "_mask",
        "_mask_in_place",
        "_masked",
        "_max_frame",
        "_offset",
        "_opcode",
        "closed",
    )

    def __init__(self, masked: bool, max_frame: int, mask_in_place: Masker = mask_pure) -> None:
        self._masked = masked
        self._mask_in_place = mask_in_place
        self._max_frame = max_frame
        self._head = bytearray()
        self._left = -1
        """Payload bytes still to come of the current frame; -1 between frames."""
        self._opcode = 0
        self._mask: bytes | None = None
        self._offset = 0
        self._control = bytearray()
        self._fragmented = False
        self.closed = False
        """A Close frame arrived: nothing after it is read."""

    def feed(self, data: bytes | bytearray | memoryview) -> list[Item]:
        """Items in ``data`` (copied out: ``data`` may be reused once this returns)."""
        items: list[Item] = []
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end and not self.closed:
            if self._left < 0:
                pos = self._read_head(view, pos, end)
                if self._left < 0:
                    break  # the head is incomplete
                if self._left == 0:
                    self._frame_done(items)
                continue
            take = min(self._left, end - pos)
            piece = view[pos : pos + take]
            pos += take
            self._left -= take
            if self._opcode >= Opcode.CLOSE:
                self._control += piece
            elif self._mask is not None:
                chunk = bytearray(piece)
                self._mask_in_place(_rotated(self._mask, self._offset), chunk)
                self._offset += take
                items.append(chunk)
            else:
                items.append(bytes(piece))
            if self._left == 0:
                self._frame_done(items)
        return items

    def _read_head(self, view: memoryview, pos: int, end: int) -> int:
        head = self._head
        if head:
            # A head cut across reads: gather at most what a head can be, parse, and give
            # back what belongs to the payload.
            before = len(head)
            head += view[pos : pos + MAX_HEADER - before]
            used = self._parse_head(head, 0, len(head))
            if used == 0:
                return end
            head.clear()
            return pos + used - before
        used = self._parse_head(view, pos, end)
        if used == 0:
            head += view[pos:end]
            return end
        return pos + used

    def _parse_head(self, buf: bytes | bytearray | memoryview, pos: int, end: int) -> int:
        """Bytes of the head at ``pos`` (0 if incomplete); sets the frame's state."""
        if end - pos < 2:
            return 0
        first, second = buf[pos], buf[pos + 1]
        size = second & 0x7F
        masked = bool(second & 0x80)
        length = 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if masked else 0)
        if end - pos < length:
            return 0
        if size == 126:
            size = _U16.unpack_from(buf, pos + 2)[0]
        elif size == 127:
            size = _U64.unpack_from(buf, pos + 2)[0]
            if size >> 63:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "payload length above 2^63")
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        if first & 0x70:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension)")
        if masked != self._masked:
            raise WebSocketError(
                CloseCode.PROTOCOL_ERROR,
                "unmasked client frame" if self._masked else "masked server frame",
            )
        if opcode >= Opcode.CLOSE:
            if opcode not in (Opcode.CLOSE, Opcode.PING, Opcode.PONG):
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if not fin or size > MAX_CONTROL_PAYLOAD:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "fragmented or long control frame")
        elif opcode == Opcode.TEXT:
            raise WebSocketError(CloseCode.UNSUPPORTED_DATA, "text message on a binary tunnel")
        elif opcode == Opcode.BINARY:
            if self._fragmented:
                raise WebSocketError(
                    CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one"
                )
            self._fragmented = not fin
        elif opcode == Opcode.CONTINUATION:
            if not self._fragmented:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "continuation without a message")
            self._fragmented = not fin
        else:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if size > self._max_frame and opcode < Opcode.CLOSE:
            raise WebSocketError(
                CloseCode.TOO_BIG, f"frame of {size} bytes exceeds the limit {self._max_frame}"
            )
        self._opcode = opcode
        self._left = size
        self._offset = 0
        self._mask = bytes(buf[pos + length - 4 : pos + length]) if masked else None
        return length

    def _frame_done(self, items: list[Item]) -> None:
        self._left = -1
        if self._opcode < Opcode.CLOSE:
            return
        payload = bytearray(self._control)
        self._control.clear()
        if self._mask is not None:
            self._mask_in_place(self._mask, payload)
        if self._opcode == Opcode.PING:
            items.append(Ping(bytes(payload)))
        elif self._opcode == Opcode.PONG:
            items.append(Pong(bytes(payload)))
        else:
            items.append(self._close(bytes(payload)))
            self.closed = True

    @staticmethod
    def _close(payload: bytes) -> Close:
        if not payload:
            return Close(CloseCode.NO_STATUS, "")
        if len(payload) == 1:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "close frame of one byte")
        code = _U16.unpack_from(payload)[0]
        if not _valid_close_code(code):
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise WebSocketError(CloseCode.INVALID_PAYLOAD, "close reason is not UTF-8") from None
        return Close(code, reason)
