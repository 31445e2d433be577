"""Bytes arriving on an asyncio transport, written into a tunnel stream under its credit.

Used where a socket feeds a stream: the agent's API-server connections and the
gateway's upgraded client connections. Data goes out at once while the stream has
credit; otherwise it is held, reading from the transport pauses, and it resumes once
the held bytes are sent. So a slow far end holds back only this connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tunnel.errors import TunnelError
from tunnel.streams import TunnelStream


class IntoStream:
    def __init__(
        self,
        stream: TunnelStream,
        on_failure: Callable[[], None],
        on_eof_sent: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        """Set once known; paused and resumed for back-pressure."""
        self._on_failure = on_failure
        self._on_eof_sent = on_eof_sent
        self._backlog: list[bytes] = []
        self._flushing: asyncio.Task[None] | None = None
        self._eof = False

    def feed(self, data: bytes) -> None:
        if not self._sent_now(self.stream.write_nowait, data):
            self._hold(data)

    def feed_borrowed(self, data: memoryview) -> None:
        """``feed`` for bytes valid only during this call (a read buffer that is reused):
        sent at once when the stream has credit, otherwise copied and held."""
        if not self._sent_now(self.stream.write_borrowed_nowait, data):
            self._hold(data.tobytes())

    def _sent_now(self, write: Callable[[Any], None], data: bytes | memoryview) -> bool:
        """Hand ``data`` to ``write`` if nothing is held and the stream has the credit;
        False if it must be held instead."""
        if self._backlog or not self.stream.can_write_now(len(data)):
            return False
        try:
            write(data)
        except TunnelError:
            self._on_failure()
        return True

    def _hold(self, data: bytes) -> None:
        # No credit: hold the bytes and stop reading until they are sent.
        self._backlog.append(data)
        if self.transport is not None:
            self.transport.pause_reading()
        self._start_flush()

    def feed_eof(self) -> None:
        """The transport will send nothing more: half-close the stream after the backlog."""
        self._eof = True
        self._start_flush()

    def _start_flush(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._backlog:
                data = b"".join(self._backlog)
                self._backlog.clear()
                await self.stream.write(data)
            if self._eof:
                await self.stream.write_eof()
                if self._on_eof_sent is not None:
                    self._on_eof_sent()
                return
        except TunnelError:
            self._on_failure()
            return
        finally:
            self._flushing = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
