"""A connection handed to aiohttp keeps the front's checks: heads, head and body timeouts.

``gateway.front.connection`` hands a connection to aiohttp's request handler when a request is not
for the cluster proxy (the management API, login pages, upgrades). ``Relay`` then sits
between the transport and that handler: every chunk the client sends goes first to a
``gateway.front.h1_protocol.RequestReader`` of its own (to know where each head begins and ends and
how much of each body has arrived) and then, unchanged, to the handler. The handler
gets the real transport: it writes, pauses and resumes reading on it itself.

What the lean path refuses is refused here too, with a v3 error (JSON) and a closed
connection, before aiohttp sees those bytes: a head over 64 KiB or over aiohttp's own limits
(8190 bytes of target, name or value, 128 fields: 431), a missing or a
second ``Host`` (400), a transfer coding other than chunked (501), a body over
``limits.max_request_body`` (413), malformed framing (400). The front's sweep calls
``check_timeouts``: a head begun and not complete after ``limits.head_timeout`` closes
the connection; so does a body that sends nothing for ``limits.body_timeout`` while
reading is on (aiohttp pausing reading for a slow handler is not the client's fault).
Idle keep-alive is aiohttp's.

A refusal is written at once: a client that pipelined a bad head behind a request that
aiohttp is still answering may get it in the middle of that answer. Only that client's
own connection is affected; browsers, curl and Go's client do not pipeline.

An upgrade head changes nothing by itself: aiohttp declines an upgrade its handler does
not accept (it answers and goes back to parsing HTTP/1.1), so the relay goes on reading
every byte as HTTP/1.1 and checking it until the gateway takes the connection over:
``gateway.proxy.upgrade`` (exec, attach, port-forward over WebSocket or SPDY/3.1) and
``gateway.clusters.tunnels`` (an agent's WebSocket) call ``taken_over`` before they answer 101, so
a client cannot send the other protocol's bytes before it. From then on the relay only
passes bytes on and leaves the front's sweep.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, cast

from gateway.front.h1_protocol import Body, End, Head, Invalid, RequestReader
from gateway.proxy import rawresponse

if TYPE_CHECKING:
    from gateway.front.connection import Front


AIOHTTP_MAX_FIELD = 8190
"""aiohttp's ``max_line_size`` and ``max_field_size``: longer targets, names or values it
refuses with a plain-text 400, so the relay refuses them first (431)."""
AIOHTTP_MAX_HEADERS = 128
"""aiohttp's ``max_headers`` (the lean path allows 256)."""

_REASONS = {
    400: ("BadRequest", "Bad Request"),
    408: ("Timeout", "Request Timeout"),
    413: ("RequestEntityTooLarge", "Content Too Large"),
    431: ("RequestHeaderFieldsTooLarge", "Request Header Fields Too Large"),
    501: ("NotImplemented", "Not Implemented"),
}


def _everything(head: Head) -> bool:
    return True


def _too_large_for_aiohttp(head: Head) -> bool:
    if len(head.target) > AIOHTTP_MAX_FIELD or len(head.headers) > AIOHTTP_MAX_HEADERS:
        return True
    return any(len(n) > AIOHTTP_MAX_FIELD or len(v) > AIOHTTP_MAX_FIELD for n, v in head.headers)


def v3_error(status: int, message: str) -> bytes:
    """A whole ``Connection: close`` answer with a v3 error body."""
    code, phrase = _REASONS.get(status, ("", ""))
    body = json.dumps({"type": "error", "status": status, "code": code, "message": message})
    return rawresponse.build(
        status,
        phrase,
        [(b"Content-Type", b"application/json; charset=utf-8")],
        body.encode(),
        request_id="",
        keep_alive=False,
    )


class Relay(asyncio.Protocol):
    """Between a handed-off connection's transport and aiohttp's request handler."""

    def __init__(
        self, front: Front, transport: asyncio.Transport, handler: asyncio.Protocol
    ) -> None:
        self._front = front
        self.transport: asyncio.Transport | None = transport
        self.handler = handler
        self._reader = RequestReader(_everything, front.max_body)
        self._passthrough = False
        self._held: list[bytes] = []
        """A head's bytes until it is whole and checked (at most 64 KiB)."""
        self._in_body = False
        self._head_started = 0.0
        self._body_active = 0.0
        self.closing = False

    # asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # made by ``gateway.front.connection`` with the transport already open

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self._passthrough:
            self.handler.data_received(data)
            return
        reader = self._reader
        begun = reader.begun
        now = asyncio.get_running_loop().time()
        rest = data
        while rest:
            events = reader.feed(rest)
            rest = b""
            for event in events:
                kind = type(event)
                if kind is Head:
                    head = cast(Head, event)
                    if _too_large_for_aiohttp(head):
                        self._refuse(Invalid(431, "request header fields too large"))
                        return
                    self._in_body = head.has_body
                    self._body_active = now
                    if head.upgrade:
                        # Still HTTP/1.1 until the gateway takes the connection over
                        # (``taken_over``): aiohttp declines every upgrade it is not
                        # told to accept and goes on parsing, so the relay does too.
                        rest = reader.take_upgrade_tail()
                elif kind is Body:
                    self._body_active = now
                elif kind is End:
                    self._in_body = False
                else:
                    self._refuse(cast(Invalid, event))
                    return
        if reader.begun != begun:
            self._head_started = now
        if reader.in_head and not self._passthrough:
            self._held.append(data)  # aiohttp gets the head once it is whole and checked
            return
        if self._held:
            self._held.append(data)
            data = b"".join(self._held)
            self._held.clear()
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        self._front.relays.discard(self)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def pass_through(self) -> None:
        """From now on the bytes are another protocol's: pass them on unread."""
        self._passthrough = True
        self._front.relays.discard(self)  # no timeouts of ours any more
        # Bytes held now began a head after the upgrade's, sent before our 101: no client
        # does that, and they were never checked; they are dropped, not passed on.
        self._held.clear()

    # what the front's sweep calls

    def check_timeouts(self, now: float) -> None:
        transport = self.transport
        if transport is None or self._passthrough or self.closing:
            return
        front = self._front
        if self._reader.in_head:
            if now - self._head_started > front.head_timeout_s:
                self.close()
        elif (
            self._in_body
            and transport.is_reading()
            and now - self._body_active > front.body_timeout_s
        ):
            self.close()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _refuse(self, invalid: Invalid) -> None:
        transport = self.transport
        self.closing = True
        if transport is None:
            return
        transport.write(v3_error(invalid.status, invalid.message))
        transport.close()


def relay_of(transport: asyncio.BaseTransport) -> Relay | None:
    """The relay in front of aiohttp on this connection, if there is one."""
    protocol = transport.get_protocol()
    return protocol if isinstance(protocol, Relay) else None


def taken_over(transport: asyncio.BaseTransport) -> None:
    """The gateway took this connection over from aiohttp (``gateway.proxy.upgrade``, as it
    hands the bytes to the tunnel): a relay in front of it stops reading HTTP/1.1."""
    relay = relay_of(transport)
    if relay is not None:
        relay.pass_through()
