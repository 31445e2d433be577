"""The gateway's client connections: the lean path for the cluster proxy, aiohttp for the rest.

Each accepted connection starts as a ``FrontConnection``. Requests to
``/k8s/clusters/<id>/...`` that are not upgrades — nearly all kubectl traffic — are
parsed by ``gateway.front.h1_protocol`` and answered by ``gateway.proxy.handler``
right here: one task per request, the answer written as one buffer or streamed. The
first request that is anything else (the management API, exec/attach/port-forward
upgrades, a browser) hands the connection to aiohttp: the protocol switches to
aiohttp's request handler, which gets that request's bytes and everything after,
through ``gateway.front.relay.Relay``, which keeps the front's head checks and head and
body timeouts on that connection.

Why (measured, docs/design.md section 9): against aiohttp's server with the same
whole-buffer answers, 9 % less gateway CPU per request at one connection, the same at
64, ~1.3 KiB less per open watch, and the write path in our hands.

Requests on one connection are answered in order. Idle keep-alive connections close
after ``KEEPALIVE_S``; a request head that takes longer than ``HEAD_TIMEOUT_S`` to
arrive closes its connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import cast

from aiohttp import web

from gateway.errors import BadBody, status_body
from gateway.front.h1_protocol import (
    MAX_BODY_BYTES,
    Body,
    End,
    Head,
    Header,
    Invalid,
    RequestReader,
)
from gateway.front.h2 import HTTP2_BUFFER_BYTES, H2Connection
from gateway.front.relay import Relay
from gateway.front.request import BODY_HIGH_WATER, ClientRequest, StreamedAnswer
from gateway.proxy import handler as proxy
from gateway.proxy import rawresponse
from gateway.proxy.paths import PREFIX
from gateway.proxy.rawresponse import RawResponse
from gateway.telemetry import metrics
from gateway.telemetry.drain import DRAIN
from tunnel.sockets import set_nodelay

logger = logging.getLogger(__name__)

KEEPALIVE_S = 75.0
"""Idle keep-alive connections close after this long (aiohttp's and Go's default)."""
HEAD_TIMEOUT_S = 60.0
"""A request head must arrive whole within this long once it has begun."""
BODY_TIMEOUT_S = 60.0
"""A request body that sends nothing for this long fails its request (408)."""
SWEEP_S = 5.0
MAX_QUEUED = 8
"""Pipelined requests held before reading from the client pauses."""

Answerer = Callable[[web.Application, ClientRequest], Awaitable[proxy.Answer]]

_PREFIX = PREFIX.encode("ascii")
_H2_CONNECTIONS = metrics.CLIENT_CONNECTIONS.labels("h2")
_HTTP1_CONNECTIONS = metrics.CLIENT_CONNECTIONS.labels("http/1.1")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def wants(head: Head) -> bool:
    """Answered on the lean path: a cluster proxy request that is not an upgrade."""
    return head.target.startswith(_PREFIX) and not head.upgrade and head.method != "CONNECT"


class Front:
    """The protocol factory for the gateway's listener, and its open lean connections."""

    def __init__(
        self,
        app: web.Application,
        fallback: Callable[[], asyncio.BaseProtocol],
        keepalive_s: float = KEEPALIVE_S,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        answer: Answerer = proxy.answer,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_body: int = MAX_BODY_BYTES,
        http2_buffer: int = HTTP2_BUFFER_BYTES,
    ) -> None:
        self.app = app
        self.answer = answer
        """What answers a request: ``gateway.proxy.handler.answer`` (tests give their own)."""
        self.fallback = fallback
        """aiohttp's protocol factory (``web.Server``), for connections handed over."""
        self.drain = app[DRAIN]
        self.keepalive_s = keepalive_s
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_body = max_body
        self.http2_buffer = http2_buffer
        """``limits.http2_buffer``: what one HTTP/2 connection may hold for its client."""
        self.connections: set[FrontConnection | H2Connection] = set()
        self.relays: set[Relay] = set()
        """Connections handed to aiohttp: only their timeouts are checked here (aiohttp
        closes them when the gateway stops)."""
        self.lost = asyncio.get_running_loop().create_future()
        """Done when the last connection is gone after ``close_idle``."""
        self._stopping = False
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> FrontConnection:
        return FrontConnection(self)

    def added(self, conn: FrontConnection | H2Connection | Relay) -> None:
        if isinstance(conn, Relay):
            self.relays.add(conn)
        else:
            self.connections.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def removed(self, conn: FrontConnection | H2Connection) -> None:
        self.connections.discard(conn)
        if self._stopping and not self.connections and not self.lost.done():
            self.lost.set_result(None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for conn in list(self.connections):
            conn.check_timeouts(now)
        for relay in list(self.relays):
            relay.check_timeouts(now)
        if self.connections or self.relays:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def close_idle(self) -> None:
        """Stopping: close connections between requests; the others close after their
        answer (``ClientRequest.keep_alive`` is false while the gateway drains)."""
        self._stopping = True
        for conn in list(self.connections):
            conn.close_when_idle()
        if not self.connections and not self.lost.done():
            self.lost.set_result(None)

    def abort_all(self) -> None:
        """Cut the connections that are not already closing (those are sending what
        they buffered: ``wait_closed`` waits for them)."""
        for conn in list(self.connections):
            if not conn.closing:
                conn.abort()

    async def wait_closed(self, timeout_s: float) -> bool:
        """After ``close_idle``: wait until every connection has sent what it buffered."""
        if not self.connections:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.lost)
        except TimeoutError:
            return False
        return True


class FrontConnection(asyncio.Protocol):
    """One client connection on the lean path (until it is handed to aiohttp)."""

    __slots__ = (
        "_body_active",
        "_current",
        "_drain_waiter",
        "_front",
        "_head_started",
        "_invalid",
        "_last_active",
        "_queue",
        "_reader",
        "_reading_paused",
        "_receiving",
        "_task",
        "closing",
        "remote",
        "transport",
        "write_paused",
    )

    def __init__(self, front: Front) -> None:
        self._front = front
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self._reader = RequestReader(wants, front.max_body)
        self._current: ClientRequest | None = None
        self._receiving: ClientRequest | None = None
        self._queue: list[ClientRequest] = []
        self._invalid: Invalid | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._last_active = 0.0
        self._head_started = 0.0
        self._body_active = 0.0
        self.closing = False

    # asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_nodelay(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            _H2_CONNECTIONS.inc()
            h2conn = H2Connection(self._front)
            cast(asyncio.Transport, transport).set_protocol(h2conn)
            h2conn.connection_made(transport)
            return
        _HTTP1_CONNECTIONS.inc()
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.remote = str(peer[0])
        self._last_active = asyncio.get_running_loop().time()
        self._front.added(self)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        begun = reader.begun
        for event in reader.feed(data):
            kind = type(event)
            if kind is Body:
                if self._receiving is not None:
                    self._receiving.feed_body(cast(Body, event).data)
            elif kind is Head:
                self._on_head(cast(Head, event))
            elif kind is End:
                if self._receiving is not None:
                    self._receiving.feed_eof()
                    self._receiving = None
            else:
                self._on_invalid(cast(Invalid, event))
        if self._receiving is not None or reader.begun != begun:
            now = asyncio.get_running_loop().time()
            self._body_active = now
            if reader.begun != begun:  # a request began: its head has HEAD_TIMEOUT_S
                self._head_started = now
        if self._current is None:
            self._next()
        elif reader.handing_off:
            self._pause_reading()  # until the request in flight is answered
        # Not after an Invalid: the reader ignores what follows, and a paused connection
        # would not see the client close (CLOSE-WAIT) while the answer is on its way.

    def eof_received(self) -> bool | None:
        if self._receiving is not None:
            self._receiving.fail(ConnectionResetError("the client closed its side mid-body"))
        return None  # under TLS the connection closes whatever we return

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        error = ConnectionResetError("the client went away")
        for request in (self._current, self._receiving, *self._queue):
            if request is not None:
                request.fail(error)
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._wake_drain()
        self._front.removed(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # what requests and answers use

    def write(self, data: bytes | bytearray) -> None:
        if self.transport is None:
            raise ConnectionResetError("the client went away")
        self.transport.write(data)

    def writelines(self, parts: Iterable[bytes | bytearray]) -> None:
        if self.transport is None:
            raise ConnectionResetError("the client went away")
        self.transport.writelines(parts)

    async def drain(self) -> None:
        while self.write_paused:
            if self.transport is None:
                raise ConnectionResetError("the client went away")
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self.transport is None:
            raise ConnectionResetError("the client went away")

    def continue_if_expected(self, request: ClientRequest) -> None:
        """``Expect: 100-continue``: the handler wants the body, tell the client to send it."""
        if request.expect_continue and self.transport is not None:
            request.expect_continue = False
            self.transport.write(_CONTINUE)

    def body_backlogged(self) -> None:
        self._pause_reading()

    def body_read(self, size: int, held: int) -> None:
        if held < BODY_HIGH_WATER // 2:
            self.body_drained()

    def cut(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def streamed_answer(
        self,
        request: ClientRequest,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
    ) -> StreamedAnswer:
        return StreamedAnswer(self, request, status, reason, upstream_headers, length, request_id)

    def body_drained(self) -> None:
        if self._reading_paused and not self._reader.handing_off and self._invalid is None:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    @property
    def between_requests(self) -> bool:
        return self._current is None and self._reader.idle

    def close_when_idle(self) -> None:
        """Stopping: close now if between requests (else after the answer: the request's
        ``keep_alive`` is false while the gateway drains)."""
        if self.between_requests:
            self.close()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def check_timeouts(self, now: float) -> None:
        if self.transport is None:
            return
        front = self._front
        if self._reader.in_head:
            if now - self._head_started > front.head_timeout_s:
                self.close()  # a head that never completes, even behind a request in flight
        elif self._receiving is not None:
            # A body that stopped arriving (not while reading is paused, nor before a
            # 100 Continue the client waits for: that waits for us, not for the client).
            if (
                not self._reading_paused
                and not self._receiving.expect_continue
                and now - self._body_active > front.body_timeout_s
            ):
                self._on_invalid(Invalid(408, "the request body did not arrive in time"))
                self._reader.failed = True
                if self._current is None:
                    self._next()
        elif (
            self._current is None
            and self._reader.idle
            and now - self._last_active > front.keepalive_s
        ):
            self.close()

    # internals

    def _on_invalid(self, invalid: Invalid) -> None:
        """The connection cannot go on. A request whose body was arriving fails: its
        handler stops reading, which resets its tunnel stream, and ``_run`` answers
        ``invalid`` (``BadBody``); else ``_next`` answers it once nothing is in flight."""
        self._invalid = invalid
        receiving = self._receiving
        if receiving is not None:
            self._receiving = None
            receiving.fail(BadBody(invalid.status, invalid.message))

    def _on_head(self, head: Head) -> None:
        request = ClientRequest(head, self)
        self._receiving = request
        if self._current is None:
            self._start(request)
        else:
            self._queue.append(request)
            if len(self._queue) >= MAX_QUEUED:
                self._pause_reading()

    def _start(self, request: ClientRequest) -> None:
        self._current = request
        self._task = asyncio.get_running_loop().create_task(self._run(request))

    async def _run(self, request: ClientRequest) -> None:
        try:
            response = await self._front.answer(self._front.app, request)
            if isinstance(response, RawResponse):
                if self.closing or self._front.drain.draining:
                    response.force_close()
                await response.prepare(request)
                keep_alive = response.keep_alive
            elif isinstance(response, StreamedAnswer):
                keep_alive = response.keep_alive  # written as it arrived
            else:  # an error answer built by aiohttp's helpers (gateway.errors)
                keep_alive = request.keep_alive
                answer = cast(web.StreamResponse, response)
                self.write(_aiohttp_answer(answer, keep_alive, request.method == "HEAD"))
            keep_alive = keep_alive and request.body_complete
        except BadBody as exc:
            self._invalid = None
            self._refuse(Invalid(exc.status, exc.message))
            keep_alive = False
        except (ConnectionError, asyncio.CancelledError):
            keep_alive = False
        except Exception:  # pragma: no cover - proxy.answer turns errors into answers
            logger.exception("unhandled error answering %s %s", request.method, request.path)
            keep_alive = False
        self._finished(keep_alive)

    def _finished(self, keep_alive: bool) -> None:
        self._current = None
        self._task = None
        if self.transport is None:
            return
        if not keep_alive or self.closing or self._front.drain.draining:
            self.close()
            return
        self._last_active = asyncio.get_running_loop().time()
        self._next()

    def _next(self) -> None:
        """Nothing in flight: start what arrived meanwhile, hand over, or refuse."""
        if self._queue:
            self._start(self._queue.pop(0))
            if self._reading_paused and len(self._queue) < MAX_QUEUED // 2:
                self.body_drained()
            return
        if self._reader.handing_off:
            self._hand_off()
        elif self._invalid is not None:
            self._refuse(self._invalid)

    def _hand_off(self) -> None:
        transport = self.transport
        if transport is None:
            return
        raw = self._reader.take_raw()
        self._front.removed(self)
        handler = cast(asyncio.Protocol, self._front.fallback())
        relay = Relay(self._front, transport, handler)
        transport.set_protocol(relay)
        handler.connection_made(transport)
        self._front.added(relay)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if raw:
            relay.data_received(raw)

    def _refuse(self, invalid: Invalid) -> None:
        if self.transport is None:
            return
        body = status_body(invalid.status, invalid.message, _REASONS.get(invalid.status, ""), None)
        self.write(
            rawresponse.build(
                invalid.status,
                _PHRASES.get(invalid.status, ""),
                [(b"Content-Type", b"application/json")],
                body,
                request_id="",
                keep_alive=False,
            )
        )
        self.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)


_REASONS = {
    400: "BadRequest",
    408: "Timeout",
    413: "RequestEntityTooLarge",
    431: "RequestHeaderFieldsTooLarge",
    501: "NotImplemented",
}
_PHRASES = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
}


def _aiohttp_answer(response: web.StreamResponse, keep_alive: bool, head_only: bool) -> bytes:
    headers, data = rawresponse.aiohttp_parts(response)
    return rawresponse.build(
        response.status,
        response.reason,
        headers,
        data,
        request_id="",
        keep_alive=keep_alive,
        head_only=head_only,
    )
