"""A rogue agent: the tunnel protocol spoken by hand over a blocking TLS socket.

It does what a real agent never does: sends no HELLO or a broken one, garbage and
oversized frames, thousands of OPENs, advertises a huge window and then never reads.
Everything is plain bytes (RFC 6455 framing, masked, and the 10-byte tunnel frame
header of ``tunnel.frames``) so that nothing in ``tunnel/`` can hide a flaw.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

HELLO, OPEN, ACCEPT, DATA, WINDOW, RESET, PING, GOAWAY, INFO = range(9)
FIN = 0x1
_HEADER = struct.Struct(">BBII")


def tunnel_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, flags, stream_id, len(payload)) + payload


def hello(
    window: int = 4 * 1024 * 1024,
    max_frame: int = 256 * 1024,
    max_streams: int = 4096,
    metadata: bytes | None = None,
) -> bytes:
    if metadata is None:
        metadata = json.dumps({"apiHost": "127.0.0.1:1", "authorization": ""}).encode()
    body = struct.pack(">HIII", 1, window, max_frame, max_streams) + metadata
    return tunnel_frame(HELLO, 0, 0, body)


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One final, masked client frame."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, size)
    masked = (
        bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if size < 4096
        else _mask(payload, mask)
    )
    return head + mask + masked


def _mask(payload: bytes, mask: bytes) -> bytes:
    key = int.from_bytes(mask * (len(payload) // 4 + 1), "little")
    value = int.from_bytes(payload, "little") ^ (key & ((1 << (8 * len(payload))) - 1))
    return value.to_bytes(len(payload), "little")


class RogueAgent:
    """One connection to ``/v3/connect``. ``rcvbuf`` small makes "never reads" bite soon."""

    def __init__(self, port: int, ca_file: Path, token: str, rcvbuf: int = 0) -> None:
        self.port = port
        self.ca_file = ca_file
        self.token = token
        self.rcvbuf = rcvbuf
        self.sock: ssl.SSLSocket | None = None
        self.status = 0
        self._buf = b""
        self._payload = b""

    def connect(self, path: str = "/v3/connect", timeout: float = 10.0) -> int:
        """The WebSocket handshake; returns the HTTP status (101 when accepted)."""
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", self.port))
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.set_alpn_protocols(["http/1.1"])
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        head, _, self._buf = head.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        return self.status

    def send(self, tunnel_bytes: bytes) -> None:
        """``tunnel_bytes`` as one WebSocket binary message."""
        assert self.sock is not None
        self.sock.sendall(ws_frame(tunnel_bytes))

    def send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def try_send(self, tunnel_bytes: bytes) -> bool:
        """Send unless the gateway has closed the connection (False then)."""
        try:
            self.send(tunnel_bytes)
        except (OSError, ssl.SSLError):
            return False
        return True

    def _ws_payloads(self, deadline: float) -> Iterator[tuple[int, bytes]]:
        assert self.sock is not None
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            while len(self._buf) >= 2:
                size = self._buf[1] & 0x7F
                start = 2
                if size == 126:
                    if len(self._buf) < 4:
                        break
                    size = struct.unpack_from(">H", self._buf, 2)[0]
                    start = 4
                elif size == 127:
                    if len(self._buf) < 10:
                        break
                    size = struct.unpack_from(">Q", self._buf, 2)[0]
                    start = 10
                if len(self._buf) < start + size:
                    break
                opcode = self._buf[0] & 0x0F
                payload = self._buf[start : start + size]
                self._buf = self._buf[start + size :]
                yield opcode, payload
            try:
                chunk = self.sock.recv(262144)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                return
            if not chunk:
                return
            self._buf += chunk

    def frames(self, timeout: float = 5.0) -> Iterator[tuple[int, int, int, bytes]]:
        """Tunnel frames from the gateway (and ``(-1, code, 0, b"")`` for a WebSocket
        Close) until the connection ends or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        for opcode, payload in self._ws_payloads(deadline):
            if opcode == 0x8:
                code = struct.unpack_from(">H", payload)[0] if len(payload) >= 2 else 1005
                yield -1, code, 0, b""
                return
            if opcode == 0x9:
                self.try_send_raw(ws_frame(payload, opcode=0xA))
                continue
            if opcode not in (0x0, 0x2):
                continue
            self._payload += payload
            while len(self._payload) >= 10:
                kind, flags, stream_id, length = _HEADER.unpack_from(self._payload)
                if len(self._payload) < 10 + length:
                    break
                body = self._payload[10 : 10 + length]
                self._payload = self._payload[10 + length :]
                yield kind, flags, stream_id, body

    def try_send_raw(self, data: bytes) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            self.send_raw(data)

    def handshake(self, **hello_args: object) -> None:
        """Read the gateway's HELLO, send ours."""
        for kind, _, _, _ in self.frames():
            if kind == HELLO:
                break
        else:
            raise AssertionError("no HELLO from the gateway")
        self.send(hello(**hello_args))  # type: ignore[arg-type]

    def goaway(self, timeout: float = 10.0) -> tuple[int, str] | None:
        """The GOAWAY's code and reason, or None if the connection ended without one."""
        for kind, _, _, payload in self.frames(timeout):
            if kind == GOAWAY:
                code = struct.unpack_from(">I", payload, 4)[0]
                return code, payload[8:].decode(errors="replace")
            if kind == -1:
                return None
        return None

    def closed_by_gateway(self, timeout: float = 10.0) -> bool:
        """Read (and drop) everything until the gateway closes; False on timeout."""
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(262144)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                return True
            if not chunk:
                return True
        return False

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def registration_token(command: str) -> str:
    """The ``--token`` of the ``herdgate agent ...`` line the gateway prints."""
    parts = command.split()
    return parts[parts.index("--token") + 1]
