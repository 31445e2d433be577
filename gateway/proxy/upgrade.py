"""Relay of upgraded connections (exec, attach, port-forward) through a tunnel stream.

After the API server answers ``101 Switching Protocols``, the gateway forwards that
answer and then copies raw bytes both ways until either side closes: it does not
need to understand WebSocket or SPDY/3.1 framing. aiohttp recognises only
``websocket`` upgrades, so the client connection is taken over with
``RequestHandler.set_parser``: from then on every byte the client sends is handed
to :class:`_ClientToTunnel` instead of the HTTP parser. That hook is aiohttp's
internals, checked at start-up (:mod:`config.compat.aiohttp_internals`): when it is not
as tested, upgrades are refused with 501 (:func:`check_supported`) before anything
reaches the API server.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from config.compat import aiohttp_internals
from gateway.clusters.upstream import Response
from gateway.errors import GatewayError
from gateway.front.relay import taken_over
from gateway.proxy import sessions
from gateway.proxy.exchange import REQUEST_ID_HEADER, Exchange
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
        self.received = 0
        self._pump = IntoStream(stream, on_failure=self._finish, on_eof_sent=self._finish)
        self._pump.transport = transport

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data and not self.done.done():
            self.received += len(data)
            self._pump.feed(data)
        return False, b""

    def feed_eof(self) -> None:
        self._pump.feed_eof()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def relay(
    request: web.Request,
    upstream: Response,
    exchange: Exchange | None = None,
    held_by: sessions.Sessions | None = None,
) -> web.StreamResponse:
    """Answer 101 as the API server did, then copy bytes both ways.

    ``exchange`` (when given) learns when the session starts and how many bytes
    went each way; with ``held_by`` too, the session is closed when its identity loses
    access (``gateway.proxy.sessions``).
    """
    resp = web.StreamResponse(status=101, reason=upstream.reason or "Switching Protocols")
    for name, value in upstream.headers:
        if name.lower() not in _SKIPPED_RESPONSE_HEADERS:
            resp.headers.add(name.decode("latin-1"), value.decode("latin-1"))
    if exchange is not None:
        resp.headers[REQUEST_ID_HEADER] = exchange.request_id
    resp.force_close()
    stream = upstream.stream
    transport = request.transport
    protocol = request.protocol
    if transport is None or transport.is_closing():
        stream.reset(ErrorCode.CANCEL, "client went away")
        return resp
    await resp.prepare(request)
    client_side = _ClientToTunnel(stream, transport)
    # With no await between them: a relay in front of aiohttp (gateway.front.relay) stops
    # reading HTTP/1.1 exactly when aiohttp's parser hands the bytes to the tunnel. A
    # client sends the new protocol only after our 101; bytes sent before it are read
    # (and refused) as HTTP.
    taken_over(transport)
    protocol.set_parser(client_side)  # type: ignore[arg-type]  # duck-typed payload parser
    sent = [0]
    forget = None
    if exchange is not None:
        exchange.session_started(request)
    if exchange is not None and held_by is not None:
        forget = sessions.hold(
            held_by,
            None,
            exchange.identity,
            exchange.cluster_id,
            exchange.role,
            lambda: stream.reset(ErrorCode.CANCEL, "access revoked"),
        )
    try:
        if upstream.upgraded_tail:
            sent[0] += len(upstream.upgraded_tail)
            await resp.write(upstream.upgraded_tail)
        to_client = asyncio.ensure_future(_tunnel_to_client(stream, resp, sent))
        await asyncio.wait({to_client, client_side.done}, return_when=asyncio.FIRST_COMPLETED)
        if not to_client.done():
            # The client finished sending; let the API server finish its answer.
            await to_client
    except (ConnectionError, TunnelError) as exc:
        logger.debug("upgraded connection ended: %s", exc)
    finally:
        if forget is not None:
            forget()
        stream.reset(ErrorCode.CANCEL)
        if not transport.is_closing():
            transport.close()
        if exchange is not None:
            exchange.bytes_from_client = client_side.received
            exchange.bytes_to_client = sent[0]
    return resp


async def _tunnel_to_client(
    stream: TunnelStream, resp: web.StreamResponse, sent: list[int]
) -> None:
    try:
        while chunk := await stream.read():
            sent[0] += len(chunk)
            await resp.write(chunk)
    except TunnelError as exc:
        logger.debug("tunnel side of an upgraded connection ended: %s", exc)


def check_supported() -> None:
    """Refuse an upgrade (501 Not Implemented) when aiohttp cannot hand the connection over."""
    if not aiohttp_internals.upgrades_supported():
        raise GatewayError(
            501,
            "exec, attach and port-forward are not available on this gateway: its aiohttp "
            "version cannot hand a connection over (see the gateway's log)",
        )
