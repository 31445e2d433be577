"""aiohttp's internals: the WebSocket mask helper and two hooks of its HTTP server.

What herdgate relies on, and what runs when it does not hold (one WARNING each):

1. ``websocket-mask``: ``aiohttp._websocket.helpers.websocket_mask(mask, data)``, which
   XORs a bytearray in place with a 4-byte key (aiohttp's C loop: ~3 µs per 64 KiB). The
   tunnel's WebSocket connection (:mod:`tunnel.wsconn`) masks and unmasks every payload
   with :data:`websocket_mask`. Fallback: ``websocket_mask`` is None and the tunnel uses
   ``tunnel.websocket.mask_pure`` (the same XOR with ``bytes.translate``, ~50 times
   slower). Chosen when this module is imported (the probe is a computation, no I/O);
   reported by the start-up self-test.
2. ``aiohttp-set-parser``: ``web_protocol.RequestHandler.set_parser(parser)``: from then on
   the handler hands every byte the client sends to ``parser.feed_data`` (which answers
   ``(eof, tail)``) and calls ``parser.feed_eof`` when the connection is lost.
   :mod:`gateway.proxy.upgrade` takes exec, attach and port-forward connections over with it
   (aiohttp itself knows only WebSocket upgrades). Fallback: such upgrades are refused
   with a 501 Status before anything is sent to the API server
   (:func:`upgrades_supported`).
3. ``aiohttp-connection-lost``: ``web.Server.connection_lost(handler, exc)`` is what every
   ``RequestHandler`` calls when its connection is lost, looked up on the server
   instance (so an instance attribute replaces it). The gateway counts the connections
   that are gone, to wait at exit until closing connections have sent what they
   buffered (:func:`track_lost_connections`). Fallback: the gateway exits without that
   wait (the end of an answer a slow client was still reading may be lost at exit).

Tested: aiohttp 3.14.5. The probes: (1) masks buffers of several sizes (0 to 1 KiB, not
multiples of 4 among them) with a random key and compares with a plain XOR; (2) and (3)
build a ``web.Server`` and one of its ``RequestHandler`` objects (no socket, no task),
replace the server's ``connection_lost``, set a parser, feed the handler bytes and lose
its connection: the parser must have received the bytes and the end, and the
replacement must have been called once with the handler.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable
from typing import Any

from config.compat.assumption import AGENT, GATEWAY, Assumption, Broken

# 1. websocket_mask

_MASK_SIZES = (0, 1, 3, 4, 5, 7, 8, 63, 64, 65, 1027)


def _reference_mask(mask: bytes, data: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _aiohttp_mask() -> Callable[[bytes, bytearray], None]:
    from aiohttp._websocket.helpers import websocket_mask as helper

    mask: Callable[[bytes, bytearray], None] = helper
    return mask


def _probe_mask() -> None:
    helper = _aiohttp_mask()
    key = os.urandom(4)
    for size in _MASK_SIZES:
        payload = os.urandom(size)
        data = bytearray(payload)
        if helper(key, data) is not None or data != _reference_mask(key, payload):
            raise Broken(f"websocket_mask gave other bytes ({size} bytes)")


MASK = Assumption(
    "websocket-mask",
    "aiohttp._websocket.helpers.websocket_mask",
    "the tunnel's WebSocket masks in Python (slower)",
    _probe_mask,
    programs=(GATEWAY, AGENT),
)


def _choose_mask() -> Callable[[bytes, bytearray], None] | None:
    return _aiohttp_mask() if MASK.evaluate() else None


websocket_mask = _choose_mask()
"""``websocket_mask(mask, data)``: XOR ``data`` (a bytearray) in place with ``mask``;
None when aiohttp's helper is not as tested (the tunnel then masks in Python)."""


# 2. and 3. RequestHandler.set_parser and Server.connection_lost


class _Parser:
    """What :mod:`gateway.proxy.upgrade` hands ``set_parser``: records what it is fed."""

    def __init__(self) -> None:
        self.fed: list[bytes | None] = []

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.fed.append(bytes(data))
        return False, b""

    def feed_eof(self) -> None:
        self.fed.append(None)


async def _never(request: Any) -> Any:  # pragma: no cover - the probe sends no request
    raise AssertionError("no request reaches the probe's server")


def _exercise_handler(*, take_over: bool) -> tuple[list[bytes | None], list[object], object]:
    """Build a server and a handler, lose its connection (after ``set_parser`` and bytes
    when ``take_over``); return what the parser got, the handlers the replaced
    ``connection_lost`` saw, and the handler."""
    from aiohttp import web

    try:
        loop = asyncio.get_running_loop()
        own_loop = None
    except RuntimeError:
        loop = own_loop = asyncio.new_event_loop()
    try:
        server = web.Server(_never, loop=loop)
        seen: list[object] = []
        original = server.connection_lost

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            seen.append(handler)
            original(handler, exc)

        server.connection_lost = connection_lost  # type: ignore[method-assign,assignment]
        handler = server()
        parser = _Parser()
        if take_over:
            handler.set_parser(parser)  # type: ignore[arg-type]
            handler.data_received(b"upgraded bytes")
        handler.connection_lost(None)
        return parser.fed, seen, handler
    finally:
        if own_loop is not None:
            own_loop.close()


def _probe_set_parser() -> None:
    from aiohttp import web_protocol

    parameters = list(inspect.signature(web_protocol.RequestHandler.set_parser).parameters)
    if parameters[:2] != ["self", "parser"]:
        raise Broken(f"set_parser takes {parameters}")
    fed, _, _ = _exercise_handler(take_over=True)
    if fed != [b"upgraded bytes", None]:
        raise Broken(f"the parser was fed {fed!r}")


def _probe_connection_lost() -> None:
    from aiohttp import web

    parameters = list(inspect.signature(web.Server.connection_lost).parameters)
    if parameters[:3] != ["self", "handler", "exc"]:
        raise Broken(f"Server.connection_lost takes {parameters}")
    if not hasattr(web.Server, "connections"):
        raise Broken("web.Server has no connections")
    _, seen, handler = _exercise_handler(take_over=False)
    if seen != [handler]:
        raise Broken("a lost connection did not call the server's connection_lost")


SET_PARSER = Assumption(
    "aiohttp-set-parser",
    "aiohttp's RequestHandler.set_parser (web_protocol)",
    "exec, attach and port-forward are refused (501)",
    _probe_set_parser,
    programs=(GATEWAY,),
)

CONNECTION_LOST = Assumption(
    "aiohttp-connection-lost",
    "aiohttp's Server.connection_lost, called by each RequestHandler",
    "at exit the gateway does not wait for closing connections to send what they buffered",
    _probe_connection_lost,
    programs=(GATEWAY,),
)


def upgrades_supported() -> bool:
    """Whether connections can be taken over for exec, attach and port-forward."""
    return SET_PARSER.holds()


def track_lost_connections(server: Any) -> set[object] | None:
    """The client connections of ``server`` (a ``web.Server``) whose ``connection_lost``
    has run, kept up to date from now on; None when that cannot be known."""
    if not CONNECTION_LOST.holds():
        return None
    lost: set[object] = set()
    original = server.connection_lost

    def connection_lost(handler: Any, exc: BaseException | None) -> None:
        lost.add(handler)
        original(handler, exc)

    server.connection_lost = connection_lost
    return lost
