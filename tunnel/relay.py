"""One tunnel stream relayed to the cluster's API server.

Each stream the gateway opens becomes one TLS connection to this cluster's API server
(TCP_NODELAY): the one ``tunnel.preconnect`` kept ready if there is one, else dialled
then (resuming a TLS session, ``tunnel.tls.Sessions``), and once the API server has
answered on it the next spare is dialled. Bytes are copied both ways under the stream's
credit window: when the gateway has not returned credit, reading from the API server
pauses. With an ``AgentStats`` (``tunnel.stats``), the relay counts streams, bytes both
ways and the time from each request's first byte to the API server's first byte back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable
from typing import cast

from tunnel import tls
from tunnel.credentials import Upstream
from tunnel.errors import TunnelError
from tunnel.frames import ErrorCode
from tunnel.pump import IntoStream
from tunnel.session import COALESCE_BELOW_BYTES, Session
from tunnel.sockets import set_nodelay, shared_read_buffer
from tunnel.stats import AgentStats
from tunnel.streams import TunnelStream

logger = logging.getLogger(__name__)

UPSTREAM_CONNECT_TIMEOUT_S = 10.0
_HIGH_WATER = 256 * 1024


class _UpstreamConnection(asyncio.BufferedProtocol):
    """API server bytes -> tunnel stream, respecting the stream's credit."""

    def __init__(self, stream: TunnelStream, stats: AgentStats | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._pump = IntoStream(stream, on_failure=self._abort)
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self.stats = stats
        self.asked_at = -1.0
        """Loop time of the first byte written since the API server last answered
        (-1: none waiting)."""
        self.answered: Callable[[], None] | None = None
        """Called once, at the API server's first bytes (the spare's refill)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport does not subclass asyncio.Transport; it has its API.
        self.transport = cast(asyncio.Transport, transport)
        self._pump.transport = self.transport
        set_nodelay(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return shared_read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.answered is not None:
            answered, self.answered = self.answered, None
            answered()
        stats = self.stats
        if stats is not None:
            stats.bytes_from_apiserver += nbytes
            if self.asked_at >= 0:
                stats.latency.observe(self._loop.time() - self.asked_at)
                self.asked_at = -1.0
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


def unreachable(
    stream: TunnelStream, upstream: Upstream, exc: BaseException, stats: AgentStats | None
) -> None:
    """Refuse ``stream``: the API server could not be reached (also for the HTTP/2 path)."""
    logger.warning("cannot reach the API server %s: %s", upstream.host_header, exc)
    stream.reset(ErrorCode.CONNECT_FAILED, f"API server unreachable: {exc}")
    if stats is not None:
        stats.stream_failures += 1


async def _dial(
    upstream: Upstream, factory: Callable[[], asyncio.BaseProtocol]
) -> tls.TLSTransport:
    """A TLS connection to the API server, resuming a session if one is kept."""
    assert upstream.ssl is not None
    transport, _ = await tls.connect(
        factory,
        upstream.host,
        upstream.port,
        upstream.ssl,
        upstream.server_hostname,
        sessions=upstream.sessions,
    )
    return transport


async def relay(
    stream: TunnelStream,
    session: Session,
    upstream: Upstream,
    stats: AgentStats | None = None,
    prefix: bytes = b"",
    accepted: bool = False,
) -> None:
    """Connect the stream to the API server and copy bytes both ways.

    ``prefix``: bytes the gateway already sent on the stream (read by
    ``tunnel.h2upstream`` before it handed the stream over), written first;
    ``accepted``: the stream was accepted already."""
    loop = asyncio.get_running_loop()
    if stats is not None:
        stats.streams_total += 1
    transport: asyncio.Transport
    spare = upstream.spare.take() if upstream.ssl is not None else None
    if spare is not None:
        conn = _UpstreamConnection(stream, stats)
        spare.set_protocol(conn)
        conn.connection_made(spare)
        transport = spare
    else:
        try:
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
                if upstream.ssl is not None:
                    transport = await _dial(upstream, lambda: _UpstreamConnection(stream, stats))
                    conn = cast(_UpstreamConnection, transport.get_protocol())
                else:
                    transport, conn = await loop.create_connection(
                        lambda: _UpstreamConnection(stream, stats), upstream.host, upstream.port
                    )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            unreachable(stream, upstream, exc, stats)
            return
    if upstream.ssl is not None:
        # Once the API server has answered (its dial for the next stream does not compete
        # with this exchange for the CPU).
        conn.answered = functools.partial(upstream.spare.refill, functools.partial(_dial, upstream))
    if not accepted:
        session.accept(stream)
    if stats is not None:
        stats.streams_open += 1
    if prefix:
        if stats is not None:
            stats.bytes_to_apiserver += len(prefix)
            conn.asked_at = loop.time()
        transport.write(prefix)

    def to_api_server(data: bytes | bytearray) -> bool:
        # Called for each arriving chunk (no task in between); False holds the credit
        # back until the connection drains (resume_writing), so the gateway waits.
        if transport.is_closing():
            return True
        if stats is not None:
            stats.bytes_to_apiserver += len(data)
            if conn.asked_at < 0:
                conn.asked_at = loop.time()
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
        if stats is not None:
            stats.streams_open -= 1
        if not gateway_done.done():
            gateway_done.cancel()
        with contextlib.suppress(asyncio.CancelledError, TunnelError):
            await gateway_done
