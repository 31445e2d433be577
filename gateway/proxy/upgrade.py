"""Upgraded connections (exec, attach, port-forward) joined to a tunnel stream.

When the API server answers ``101 Switching Protocols`` the proxy returns a
``SWITCHING`` answer whose ``Upgrade`` is an ``Upgraded``: the front writes the 101,
then hands it its transport (``take_over``), and from then on raw bytes are copied
both ways until either side closes. The gateway does not need to understand WebSocket
or SPDY/3.1 framing. The client's bytes go into the stream under its credit
(``tunnel.pump.IntoStream``: reading from the client pauses while the stream has
none); the stream's go to the client, waiting while its socket is full.

The request ends with its session: its metrics and audit record (which name the bytes
each way), the request counted in flight for a stopping gateway, and the user's tunnel
stream count are let go when the connection is done (``when_done``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from config.logging import request_id as request_id_var
from gateway.clusters.upstream import Response
from gateway.proxy import sessions
from gateway.proxy.exchange import Exchange
from gateway.proxy.model import Answer, Request, switching
from tunnel.errors import TunnelError
from tunnel.frames import ErrorCode
from tunnel.pump import IntoStream
from tunnel.streams import TunnelStream

logger = logging.getLogger(__name__)


def switching_from_upstream(
    upstream: Response,
    request: Request,
    exchange: Exchange | None,
    held_by: sessions.Sessions | None,
) -> Answer:
    """The API server's 101, to be written as it gave it, and what joins the two sides.

    ``exchange`` (when given) learns when the session starts and how many bytes went
    each way; with ``held_by`` too, the session is closed when its identity loses
    access (``gateway.proxy.sessions``).
    """
    joined = Upgraded(upstream, request, exchange, held_by)
    request_id = exchange.request_id if exchange is not None else ""
    return switching(upstream.reason, upstream.headers, joined, request_id)


class Upgraded:
    """A 101 from the API server: the tunnel stream, waiting for the client's connection."""

    def __init__(
        self,
        upstream: Response,
        request: Request,
        exchange: Exchange | None,
        held_by: sessions.Sessions | None,
    ) -> None:
        self._stream = upstream.stream
        self._tail = upstream.upgraded_tail
        self._request = request
        self._exchange = exchange
        self._held_by = held_by
        self._done: list[Callable[[], None]] = []
        self._ended = False

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the session ends (or is abandoned)."""
        self._done.append(callback)

    def abandon(self) -> None:
        self._stream.reset(ErrorCode.CANCEL, "client went away")
        self._end()

    async def take_over(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol) -> None:
        stream = self._stream
        exchange = self._exchange
        context = request_id_var.set(exchange.request_id) if exchange is not None else None
        client = ClientSide(stream, transport, previous)
        transport.set_protocol(client)
        forget = None
        if exchange is not None:
            exchange.session_started(self._request)
            if self._held_by is not None:
                forget = sessions.hold(
                    self._held_by,
                    None,
                    exchange.identity,
                    exchange.cluster_id,
                    exchange.role,
                    lambda: stream.reset(ErrorCode.CANCEL, "access revoked"),
                )
        try:
            if self._tail:
                await client.write(self._tail)
            to_client = asyncio.ensure_future(self._tunnel_to_client(client))
            try:
                await asyncio.wait({to_client, client.done}, return_when=asyncio.FIRST_COMPLETED)
                if not to_client.done():
                    # The client finished sending; let the API server finish its answer.
                    await to_client
            finally:
                to_client.cancel()
        except (ConnectionError, TunnelError) as exc:
            logger.debug("upgraded connection ended: %s", exc)
        finally:
            if forget is not None:
                forget()
            stream.reset(ErrorCode.CANCEL)
            if not transport.is_closing():
                transport.close()
            if exchange is not None:
                exchange.bytes_from_client = client.received
                exchange.bytes_to_client = client.sent
            self._end()
            if context is not None:
                request_id_var.reset(context)

    async def _tunnel_to_client(self, client: ClientSide) -> None:
        try:
            while chunk := await self._stream.read():
                await client.write(chunk)
        except TunnelError as exc:
            logger.debug("tunnel side of an upgraded connection ended: %s", exc)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        done, self._done = self._done, []
        for callback in done:
            callback()


class ClientSide(asyncio.Protocol):
    """The client's connection once upgraded: its bytes into the stream, and a writer
    that waits while the socket is full."""

    def __init__(
        self, stream: TunnelStream, transport: asyncio.Transport, previous: asyncio.BaseProtocol
    ) -> None:
        self.transport = transport
        self.done = asyncio.get_running_loop().create_future()
        """Done when the client has sent everything (or the connection is gone)."""
        self.received = 0
        self.sent = 0
        self._previous = previous
        self._pump = IntoStream(stream, on_failure=self._finish, on_eof_sent=self._finish)
        self._pump.transport = transport
        self._paused = False
        self._lost = False
        self._drain: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        if data and not self.done.done():
            self.received += len(data)
            self._pump.feed(data)

    def eof_received(self) -> bool | None:
        self._pump.feed_eof()
        return None  # under TLS the connection closes whatever we return

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._finish()
        self._wake()
        self._pump.feed_eof()
        self._previous.connection_lost(exc)  # the front's bookkeeping ends too

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    async def write(self, data: bytes | bytearray) -> None:
        if self._lost:
            raise ConnectionResetError("the client went away")
        self.sent += len(data)
        self.transport.write(data)
        while self._paused and not self._lost:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self._lost:
            raise ConnectionResetError("the client went away")

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _wake(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
