"""Relay of upgraded connections (exec, attach, port-forward) through a tunnel stream.

After the API server answers ``101 Switching Protocols``, the gateway forwards that
answer and then copies raw bytes both ways until either side closes: it does not
need to understand WebSocket or SPDY/3.1 framing. aiohttp recognises only
``websocket`` upgrades, so the client connection is taken over with
``RequestHandler.set_parser``: from then on every byte the client sends is handed
to :class:`_ClientToTunnel` instead of the HTTP parser.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.upstream import Response
from tunnel.errors import TunnelError
from tunnel.frames import ErrorCode
from tunnel.pump import IntoStream
from tunnel.streams import TunnelStream

logger = logging.getLogger(__name__)

_SKIPPED_RESPONSE_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class _ClientToTunnel:
    """Receives the client's raw bytes (aiohttp calls it as a payload parser)."""

    def __init__(self, stream: TunnelStream, transport: asyncio.Transport) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self._pump = IntoStream(stream, on_failure=self._finish, on_eof_sent=self._finish)
        self._pump.transport = transport

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data and not self.done.done():
            self._pump.feed(data)
        return False, b""

    def feed_eof(self) -> None:
        self._pump.feed_eof()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def relay(request: web.Request, upstream: Response) -> web.StreamResponse:
    """Answer 101 as the API server did, then copy bytes both ways."""
    resp = web.StreamResponse(status=101, reason=upstream.reason or "Switching Protocols")
    for name, value in upstream.headers:
        if name.lower() not in _SKIPPED_RESPONSE_HEADERS:
            resp.headers.add(name.decode("latin-1"), value.decode("latin-1"))
    resp.force_close()
    stream = upstream.stream
    transport = request.transport
    protocol = request.protocol
    if transport is None or transport.is_closing():
        stream.reset(ErrorCode.CANCEL, "client went away")
        return resp
    await resp.prepare(request)
    client_side = _ClientToTunnel(stream, transport)
    protocol.set_parser(client_side)  # type: ignore[arg-type]  # duck-typed payload parser
    try:
        if upstream.upgraded_tail:
            await resp.write(upstream.upgraded_tail)
        to_client = asyncio.ensure_future(_tunnel_to_client(stream, resp))
        await asyncio.wait({to_client, client_side.done}, return_when=asyncio.FIRST_COMPLETED)
        if not to_client.done():
            # The client finished sending; let the API server finish its answer.
            await to_client
    except (ConnectionError, TunnelError) as exc:
        logger.debug("upgraded connection ended: %s", exc)
    finally:
        stream.reset(ErrorCode.CANCEL)
        if not transport.is_closing():
            transport.close()
    return resp


async def _tunnel_to_client(stream: TunnelStream, resp: web.StreamResponse) -> None:
    try:
        while chunk := await stream.read():
            await resp.write(chunk)
    except TunnelError as exc:
        logger.debug("tunnel side of an upgraded connection ended: %s", exc)
