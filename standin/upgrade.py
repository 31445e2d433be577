"""Taking over an aiohttp server connection for a non-WebSocket ``Upgrade`` (``SPDY/3.1``).

aiohttp's HTTP parser only switches to raw mode for ``Upgrade: websocket``/``tcp``; after
``Upgrade: SPDY/3.1`` it would parse the client's next bytes as another HTTP request.  The
handler therefore answers ``101 Switching Protocols`` itself and installs a *payload parser*
with :meth:`aiohttp.web_protocol.RequestHandler.set_parser` before doing so: from then on the
protocol hands every received byte to that object's ``feed_data`` and calls ``feed_eof`` when
the client goes away.  Writes go through the prepared 101 response's writer (no chunking for a
1xx status), which waits for the transport to drain once 64 KiB are pending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web


class RawUpgrade:
    """The client side of an upgraded connection as a byte pipe.

    ``on_data`` (settable after construction) is called synchronously, from the protocol
    callback, with every chunk the client sends; ``on_eof`` once, when the client closes or the
    connection drops.
    """

    def __init__(
        self,
        request: web.Request,
        on_data: Callable[[bytes], None] | None = None,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        self._request = request
        self.on_data = on_data
        self.on_eof = on_eof
        self._response: web.StreamResponse | None = None
        self._eof = False
        self._reading_paused = False
        self.closed = asyncio.Event()
        """Set when the client is gone (EOF or connection lost) or :meth:`close` was called."""

    # The payload-parser interface aiohttp's RequestHandler drives after set_parser().
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data and not self._eof and self.on_data is not None:
            self.on_data(bytes(data))
        return False, b""

    def feed_eof(self) -> None:
        if not self._eof:
            self._eof = True
            self.closed.set()
            if self.on_eof is not None:
                self.on_eof()

    async def accept(self, headers: Mapping[str, str]) -> web.StreamResponse:
        """Send ``101 Switching Protocols`` with ``headers`` and start receiving raw bytes."""
        response = web.StreamResponse(status=101, reason="Switching Protocols", headers=headers)
        response.force_close()  # the connection never returns to HTTP
        parser: Any = self
        # Install the parser first: no byte the client sends after seeing the 101 may reach the
        # HTTP parser.
        self._request.protocol.set_parser(parser)
        await response.prepare(self._request)
        self._response = response
        return response

    @property
    def response(self) -> web.StreamResponse:
        assert self._response is not None, "accept() first"
        return self._response

    async def write(self, data: bytes) -> None:
        """Send bytes; waits while the transport's write buffer is above its high-water mark."""
        if self.closed.is_set():
            raise ConnectionResetError("upgraded connection is closed")
        transport = self._request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("upgraded connection is closed")
        await self.response.write(data)

    def pause_reading(self) -> None:
        transport = self._request.transport
        if not self._reading_paused and transport is not None and not transport.is_closing():
            self._reading_paused = True
            with contextlib.suppress(RuntimeError):
                transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._request.transport
        if self._reading_paused and transport is not None and not transport.is_closing():
            self._reading_paused = False
            with contextlib.suppress(RuntimeError):
                transport.resume_reading()

    def close(self) -> None:
        """Close the TCP (or TLS) connection now."""
        self.closed.set()
        transport = self._request.transport
        if transport is not None and not transport.is_closing():
            if self._reading_paused:
                with contextlib.suppress(RuntimeError):
                    transport.resume_reading()
            transport.close()
