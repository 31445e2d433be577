"""The byte transport under a tunnel session: WebSocket binary messages.

A session only needs ``send``/``try_send_now``/``receive``/``close``: the WebSocket
connection (:mod:`tunnel.wsconn`) is one, tests substitute an in-memory pair. Frames
may be cut across messages anywhere: the protocol core reassembles.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

MAX_MESSAGE_BYTES = 1024 * 1024
"""Largest WebSocket message a session writes; the peer's reader limit is above it."""
READ_LIMIT_BYTES = 4 * MAX_MESSAGE_BYTES


class Transport(Protocol):
    async def send(self, data: bytes) -> None: ...

    def try_send_now(self, data: bytes) -> bool:
        """Write ``data`` now if that cannot block; False means use ``send``."""
        ...

    async def receive(self) -> bytes | None:
        """Next chunk of bytes, or None once the transport is closed."""
        ...

    async def close(self) -> None: ...


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
