"""The byte transport under a tunnel session: WebSocket binary messages.

A session only needs ``send``/``receive``/``close``; tests substitute an in-memory
pair. Frames may be cut across messages anywhere: the protocol core reassembles.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp
from aiohttp import web

MAX_MESSAGE_BYTES = 1024 * 1024
"""Largest WebSocket message a session writes; the peer's reader limit is above it."""
READ_LIMIT_BYTES = 4 * MAX_MESSAGE_BYTES


SYNC_SEND_MAX_BYTES = 8 * 1024
"""Writes up to this size may go out at once, without a trip through the writer task."""


class Transport(Protocol):
    async def send(self, data: bytes) -> None: ...

    def try_send_now(self, data: bytes) -> bool:
        """Write ``data`` now if that cannot block; False means use ``send``."""
        ...

    async def receive(self) -> bytes | None:
        """Next chunk of bytes, or None once the transport is closed."""
        ...

    async def close(self) -> None: ...


class WebSocketTransport:
    """Adapts an aiohttp WebSocket (server or client side) to ``Transport``."""

    def __init__(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        # aiohttp writes an uncompressed frame synchronously inside ``send_bytes``; only
        # the flow-control wait after it is asynchronous. Calling that synchronous part
        # directly (when the transport is not paused) saves an event-loop turn per
        # message. If a later aiohttp moves it, ``try_send_now`` just declines.
        writer = getattr(ws, "_writer", None)
        self._writer = writer
        self._write_frame = getattr(writer, "_write_websocket_frame", None)
        self._protocol = getattr(writer, "protocol", None)
        self._transport = getattr(writer, "transport", None)

    def try_send_now(self, data: bytes) -> bool:
        write, protocol, transport = self._write_frame, self._protocol, self._transport
        if (
            write is None
            or len(data) > SYNC_SEND_MAX_BYTES
            or getattr(protocol, "_paused", True)
            or transport is None
            or transport.is_closing()
            or getattr(self._writer, "_closing", True)  # no data after our close frame
        ):
            return False
        write(data, aiohttp.WSMsgType.BINARY, 0)
        return True

    async def send(self, data: bytes) -> None:
        if len(data) <= MAX_MESSAGE_BYTES:
            await self._ws.send_bytes(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), MAX_MESSAGE_BYTES):
            await self._ws.send_bytes(bytes(view[start : start + MAX_MESSAGE_BYTES]))

    async def receive(self) -> bytes | None:
        msg = await self._ws.receive()
        if msg.type is aiohttp.WSMsgType.BINARY:
            data: bytes = msg.data
            return data
        if msg.type is aiohttp.WSMsgType.TEXT:
            await self._ws.close(code=aiohttp.WSCloseCode.UNSUPPORTED_DATA, message=b"binary only")
        return None

    async def close(self) -> None:
        await self._ws.close()


class MemoryTransport:
    """One end of an in-memory transport pair (tests and benchmarks)."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.peer: MemoryTransport | None = None
        self.closed = False

    @classmethod
    def pair(cls) -> tuple[MemoryTransport, MemoryTransport]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    async def send(self, data: bytes) -> None:
        if not self.try_send_now(data):
            raise ConnectionResetError("transport closed")

    def try_send_now(self, data: bytes) -> bool:
        if self.closed or self.peer is None or self.peer.closed:
            return False
        self.peer._inbox.put_nowait(data)
        return True

    async def receive(self) -> bytes | None:
        if self.closed:
            return None
        return await self._inbox.get()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._inbox.put_nowait(None)
            if self.peer is not None:
                self.peer._inbox.put_nowait(None)
