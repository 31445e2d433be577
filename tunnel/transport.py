"""The byte transport under a tunnel session: WebSocket binary messages.

A session only needs ``send``/``try_send_now``/``receive``/``close``: the WebSocket
connection (:mod:`tunnel.wsconn`) is one, tests substitute an in-memory pair. Frames
may be cut across messages anywhere: the protocol core reassembles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

MAX_MESSAGE_BYTES = 1024 * 1024
"""Largest WebSocket message a session writes; the peer's reader limit is above it."""
READ_LIMIT_BYTES = 4 * MAX_MESSAGE_BYTES


Parts = list[bytes | memoryview]
"""Bytes to send, in pieces: the transport writes them as one message."""


class Transport(Protocol):
    async def send(self, parts: Parts) -> None: ...

    def try_send_now(self, parts: Parts) -> bool:
        """Write ``parts`` now if that cannot block; False means use ``send``. When it
        returns True, ``parts`` have been copied into the message: the caller may reuse
        their buffers."""
        ...

    async def receive(self) -> bytes | bytearray | None:
        """Next chunk of bytes, or None once the transport is closed (the handshake)."""
        ...

    def set_receiver(
        self, on_data: Callable[[bytes | bytearray], None], on_end: Callable[[], None]
    ) -> None:
        """From now on hand what arrives to ``on_data`` as it arrives (what ``receive``
        has not taken yet first), and call ``on_end`` once the transport is closed."""
        ...

    async def close(self) -> None: ...


class MemoryTransport:
    """One end of an in-memory transport pair (tests and benchmarks). What is sent is
    delivered on the next event-loop turn, as from a socket."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._receiver: tuple[Callable[[bytes | bytearray], None], Callable[[], None]] | None = None
        self.peer: MemoryTransport | None = None
        self.closed = False

    @classmethod
    def pair(cls) -> tuple[MemoryTransport, MemoryTransport]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    async def send(self, parts: Parts) -> None:
        if not self.try_send_now(parts):
            raise ConnectionResetError("transport closed")

    def try_send_now(self, parts: Parts) -> bool:
        if self.closed or self.peer is None or self.peer.closed:
            return False
        self.peer._deliver(b"".join(parts))
        return True

    async def receive(self) -> bytes | None:
        if self.closed:
            return None
        return await self._inbox.get()

    def set_receiver(
        self, on_data: Callable[[bytes | bytearray], None], on_end: Callable[[], None]
    ) -> None:
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is None:
                on_end()
                return
            on_data(item)
        self._receiver = (on_data, on_end)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._deliver(None)
            if self.peer is not None:
                self.peer._deliver(None)

    def _deliver(self, data: bytes | None) -> None:
        if self._receiver is None:
            self._inbox.put_nowait(data)
        else:
            asyncio.get_running_loop().call_soon(self._push, data)

    def _push(self, data: bytes | None) -> None:
        if self._receiver is None:
            return
        on_data, on_end = self._receiver
        if data is None:
            self._receiver = None
            on_end()
        else:
            on_data(data)
