"""One tunnel stream relayed to the cluster's API server.

Each stream the gateway opens becomes one TLS connection to this cluster's API server
(TCP_NODELAY), and bytes are copied both ways under the stream's credit window: when
the gateway has not returned credit, reading from the API server pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import cast

from tunnel import tls
from tunnel.credentials import Upstream
from tunnel.errors import TunnelError
from tunnel.frames import ErrorCode
from tunnel.pump import IntoStream
from tunnel.session import COALESCE_BELOW_BYTES, Session
from tunnel.sockets import set_nodelay, shared_read_buffer
from tunnel.streams import TunnelStream

logger = logging.getLogger(__name__)

UPSTREAM_CONNECT_TIMEOUT_S = 10.0
_HIGH_WATER = 256 * 1024


class _UpstreamConnection(asyncio.BufferedProtocol):
    """API server bytes -> tunnel stream, respecting the stream's credit."""

    def __init__(self, stream: TunnelStream) -> None:
        self.transport: asyncio.Transport | None = None
        self._pump = IntoStream(stream, on_failure=self._abort)
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport does not subclass asyncio.Transport; it has its API.
        self.transport = cast(asyncio.Transport, transport)
        self._pump.transport = self.transport
        set_nodelay(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return shared_read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = shared_read_buffer[:nbytes]
        if nbytes >= COALESCE_BELOW_BYTES:
            # Leaves in this call, copied once into the WebSocket message.
            self._pump.feed_borrowed(data)
        else:
            # Waits for the end of the turn, to leave with other small writes: a copy.
            self._pump.feed(data.tobytes())

    def eof_received(self) -> bool | None:
        self._pump.feed_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._pump.feed_eof()
        if not self.closed.done():
            self.closed.set_result(None)

    def resume_writing(self) -> None:
        # The API server caught up: let the gateway send what the stream held back.
        self._pump.stream.sink_drained()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def relay(stream: TunnelStream, session: Session, upstream: Upstream) -> None:
    """Connect the stream to the API server and copy bytes both ways."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
            if upstream.ssl is not None:
                tls_transport, protocol = await tls.connect(
                    lambda: _UpstreamConnection(stream),
                    upstream.host,
                    upstream.port,
                    upstream.ssl,
                    upstream.server_hostname,
                )
                transport: asyncio.Transport = tls_transport
                conn = cast(_UpstreamConnection, protocol)
            else:
                transport, conn = await loop.create_connection(
                    lambda: _UpstreamConnection(stream), upstream.host, upstream.port
                )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        logger.warning("cannot reach the API server %s: %s", upstream.host_header, exc)
        stream.reset(ErrorCode.CONNECT_FAILED, f"API server unreachable: {exc}")
        return
    session.accept(stream)

    def to_api_server(data: bytes | bytearray) -> bool:
        # Called for each arriving chunk (no task in between); False holds the credit
        # back until the connection drains (resume_writing), so the gateway waits.
        if transport.is_closing():
            return True
        transport.write(data)
        return transport.get_write_buffer_size() <= _HIGH_WATER

    gateway_done = asyncio.ensure_future(stream.wait_eof())
    try:
        stream.set_sink(to_api_server)
        await asyncio.wait({gateway_done, conn.closed}, return_when=asyncio.FIRST_COMPLETED)
        if gateway_done.done():
            gateway_done.result()  # raises if the stream failed
        # The gateway finished this exchange, or the API server closed: close our side.
        if not transport.is_closing():
            transport.close()
        await asyncio.wait_for(asyncio.shield(conn.closed), 30)
    except TunnelError:
        transport.abort()
    except (TimeoutError, OSError):
        transport.abort()
        stream.reset(ErrorCode.INTERNAL_ERROR)
    finally:
        if not gateway_done.done():
            gateway_done.cancel()
        with contextlib.suppress(asyncio.CancelledError, TunnelError):
            await gateway_done
