"""The gateway's client connections: every request is read and checked here.

Each accepted connection starts as a ``FrontConnection``. ALPN ``h2`` makes it an
``H2Connection`` (``gateway.front.h2``); otherwise it reads HTTP/1.1 itself
(``gateway.front.h1_protocol``), every request on it, and gives each to what answers it
(``Front.answerer``): ``/k8s/clusters/`` to the proxy (``gateway.proxy.handler.answer``),
an agent's ``GET /v3/connect`` to ``gateway.front.agents``, anything else to aiohttp's
application through the bridge (``gateway.front.bridge``). One task per request, the
answers in order on a connection, each written as one buffer or streamed. A 101
(exec, attach, port-forward; an agent's tunnel) is written here, and then the
connection's transport, which is the gateway's, is handed to the answer's ``Upgrade``.
aiohttp never sees a client's connection.

Why a front of our own: against aiohttp's server with the same whole-buffer answers it
serves more requests for less gateway CPU, holds less per open watch, and puts the write
path in our hands (docs/design.md section 9 and docs/benchmarks.md have the
measurements).

Idle keep-alive connections close after ``KEEPALIVE_S``; a request head that takes
longer than ``HEAD_TIMEOUT_S`` to arrive closes its connection; a body that sends
nothing for ``BODY_TIMEOUT_S`` fails its request (408).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from aiohttp import web

from gateway.errors import BadBody, api_body, status_body
from gateway.front import agents, bridge
from gateway.front.balancers import TrustedProxies
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
from gateway.front.request import Answerer, client_request
from gateway.proxy import handler as proxy
from gateway.proxy import rawresponse
from gateway.proxy.model import (
    BODY_HIGH_WATER,
    STREAMED,
    WHOLE,
    Answer,
    AnswerWriter,
    ParkedSide,
    Request,
    Upgrade,
    phrase,
)
from gateway.proxy.paths import PREFIX
from gateway.telemetry import metrics
from gateway.telemetry.drain import DRAIN
from tunnel.sockets import is_stream, set_nodelay

logger = logging.getLogger(__name__)

KEEPALIVE_S = 75.0
"""Idle keep-alive connections close after this long (aiohttp's and Go's default)."""
HEAD_TIMEOUT_S = 60.0
"""A request head must arrive whole within this long once it has begun."""
BODY_TIMEOUT_S = 60.0
"""A request body that sends nothing for this long fails its request (408)."""
JOIN_MAX = 16 * 1024
"""Answer chunks up to a TLS record's size are copied together with their chunk framing."""
SWEEP_S = 5.0
MAX_QUEUED = 8
"""Pipelined requests held before reading from the client pauses."""

_PREFIX = PREFIX.encode("ascii")
_K8S = b"/k8s/"
_H2_CONNECTIONS = metrics.CLIENT_CONNECTIONS.labels("h2")
_HTTP1_CONNECTIONS = metrics.CLIENT_CONNECTIONS.labels("http/1.1")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Front:
    """The protocol factory for the gateway's listener, and its open connections."""

    def __init__(
        self,
        app: web.Application,
        fallback: Callable[[], asyncio.Protocol],
        keepalive_s: float = KEEPALIVE_S,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        answer: Answerer = proxy.answer,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_body: int = MAX_BODY_BYTES,
        http2_buffer: int = HTTP2_BUFFER_BYTES,
        trusted: TrustedProxies | None = None,
    ) -> None:
        self.app = app
        self.trusted = trusted if trusted else None
        """``server.trusted_proxies``: whose ``X-Forwarded-For`` is believed (None: nobody's,
        and no request is looked at for it)."""
        self.answer = answer
        """What answers a request: ``gateway.proxy.handler.answer`` (tests give their own)."""
        self.fallback = fallback
        """aiohttp's protocol factory (``web.Server``): the bridge (``gateway.front.bridge``)
        makes one request handler from it per management-API request; no connection is
        handed over."""
        self.drain = app[DRAIN]
        self.keepalive_s = keepalive_s
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_body = max_body
        self.http2_buffer = http2_buffer
        """``limits.http2_buffer``: what one HTTP/2 connection may hold for its client."""
        self.connections: set[FrontConnection | H2Connection] = set()
        """Every client connection, upgraded ones included, until it is lost."""
        self.lost = asyncio.get_running_loop().create_future()
        """Done when the last connection is gone after ``close_idle``."""
        self._stopping = False
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> FrontConnection:
        return FrontConnection(self)

    def forwarded_from(self, remote: str) -> bool:
        """Whether requests on a connection from ``remote`` may name their client."""
        trusted = self.trusted
        return trusted is not None and trusted.trusts(remote)

    def client_of(self, remote: str, headers: list[Header]) -> str:
        """The client of a request that came through the trusted balancer ``remote``."""
        assert self.trusted is not None
        forwarded = [v for n, v in headers if n.lower() == b"x-forwarded-for"]
        return self.trusted.client_of(remote, forwarded) if forwarded else remote

    def answerer(self, request: Request) -> Answerer:
        """Who answers ``request``: the proxy for ``/k8s/clusters/``, the agents' endpoint
        for ``GET /v3/connect``, aiohttp's application (through the bridge) for the rest."""
        if request.raw_path.startswith(PREFIX):
            return self.answer
        if request.method == "GET" and request.path == agents.CONNECT_PATH:
            return agents.answer
        return self._bridged

    async def _bridged(self, app: web.Application, request: Request) -> Answer:
        return await bridge.serve(self.fallback, request)

    def added(self, conn: FrontConnection | H2Connection) -> None:
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
        if self.connections:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def close_idle(self) -> None:
        """Stopping: close connections between requests; the others close after their
        answer (``Request.keep_alive`` is false while the gateway drains)."""
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
    """One client connection over HTTP/1.1."""

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
        "_v3",
        "closing",
        "forwarded",
        "remote",
        "taken_over",
        "transport",
        "write_paused",
    )

    def __init__(self, front: Front) -> None:
        self._front = front
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.forwarded = False
        """The peer is a trusted balancer: requests name their client (X-Forwarded-For)."""
        self._reader: RequestReader | None = RequestReader(front.max_body)
        """None once the connection is taken over (an upgrade reads it from then on)."""
        self._current: Request | None = None
        self._receiving: Request | None = None
        self._queue: list[Request] = []
        self._invalid: Invalid | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._last_active = 0.0
        self._head_started = 0.0
        self._body_active = 0.0
        self._v3 = False
        """The connection served the management API: its refusals are v3 errors."""
        self.closing = False
        self.taken_over = False
        """After a 101: the connection is its upgrade's (no timeouts of ours)."""

    # asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_nodelay(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            _H2_CONNECTIONS.inc()
            h2conn = H2Connection(self._front)
            transport.set_protocol(h2conn)
            h2conn.connection_made(transport)
            return
        if not is_stream(transport):
            raise TypeError(f"not a stream transport: {transport!r}")
        _HTTP1_CONNECTIONS.inc()
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.remote = str(peer[0])
            if self._front.trusted is not None:
                self.forwarded = self._front.forwarded_from(self.remote)
        self._last_active = asyncio.get_running_loop().time()
        self._front.added(self)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            return  # taken over: the upgrade is the transport's protocol (never here)
        begun = reader.begun
        for event in reader.feed(data):
            if isinstance(event, Body):
                if self._receiving is not None:
                    self._receiving.feed_body(event.data)
            elif isinstance(event, Head):
                self._on_head(event, reader)
            elif isinstance(event, End):
                if self._receiving is not None:
                    self._receiving.feed_eof()
                    self._receiving = None
            else:
                self._on_invalid(event)
        if self._receiving is not None or reader.begun != begun:
            now = asyncio.get_running_loop().time()
            self._body_active = now
            if reader.begun != begun:  # a request began: its head has HEAD_TIMEOUT_S
                self._head_started = now
        if self._current is None:
            self._next()
        # Not paused after an Invalid: the reader ignores what follows, and a paused
        # connection would not see the client close (CLOSE-WAIT) while the answer is on
        # its way.

    def eof_received(self) -> bool | None:
        if self._receiving is not None:
            self._receiving.fail(ConnectionResetError("the client closed its side mid-body"))
        return None  # under TLS the connection closes whatever we return

    def connection_lost(self, exc: Exception | None) -> None:
        """Also called by an upgrade's protocol when its connection is lost."""
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

    def continue_if_expected(self, request: Request) -> None:
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

    def start_answer(
        self,
        request: Request,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
        bodyless: bool,
    ) -> AnswerWriter:
        return StreamedAnswer(
            self, request, status, reason, upstream_headers, length, request_id, bodyless
        )

    def body_drained(self) -> None:
        if self._reading_paused and self._invalid is None:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    @property
    def between_requests(self) -> bool:
        # (An upgraded connection is its upgrade's to end: never between requests.)
        reader = self._reader
        return self._current is None and reader is not None and reader.idle

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
        reader = self._reader
        if self.transport is None or reader is None:  # (None: taken over)
            return
        front = self._front
        if reader.in_head:
            if now - self._head_started > front.head_timeout_s:
                self.close()  # a head that never completes, even behind a request in flight
        elif self._receiving is not None:
            # A body that stopped arriving (not while reading is paused, nor before a
            # 100 Continue the client waits for: that waits for us, not for the client).
            receiving = self._receiving
            if (
                not self._reading_paused
                and not receiving.expect_continue
                and now - self._body_active > front.body_timeout_s
            ):
                target = receiving.raw_path.encode("latin-1")
                self._on_invalid(Invalid(408, "the request body did not arrive in time", target))
                reader.failed = True
                if self._current is None:
                    self._next()
        elif self._current is None and reader.idle and now - self._last_active > front.keepalive_s:
            self.close()

    # internals

    def _on_invalid(self, invalid: Invalid) -> None:
        """The connection cannot go on. A request whose body was arriving fails: its
        handler stops reading, which resets its tunnel stream, and ``_run`` answers
        ``invalid`` (``BadBody``); else ``_next`` answers it once nothing is in flight.
        An upgrade in flight is never taken over: it is cancelled and ``invalid``
        answered at once."""
        self._invalid = invalid
        receiving = self._receiving
        if receiving is not None:
            self._receiving = None
            receiving.fail(BadBody(invalid.status, invalid.message))
        current = self._current
        if current is not None and current.upgrade and self._task is not None:
            self._task.cancel()
            self._refuse(invalid)

    def _on_head(self, head: Head, reader: RequestReader) -> None:
        if not head.target.startswith(_PREFIX) and bridge.too_large_for_aiohttp(
            head.target, head.headers
        ):
            reader.failed = True
            self._on_invalid(Invalid(431, "request header fields too large", head.target))
            return
        request = client_request(head, self)
        if self.forwarded:
            request.client = self._front.client_of(self.remote, head.headers)
        self._receiving = request
        if self._current is None:
            self._start(request)
        else:
            self._queue.append(request)
            if len(self._queue) >= MAX_QUEUED:
                self._pause_reading()

    def _start(self, request: Request) -> None:
        self._current = request
        answerer = self._front.answerer(request)
        if answerer is not self._front.answer:
            self._v3 = True
        self._task = asyncio.get_running_loop().create_task(self._run(answerer))

    async def _run(self, answerer: Answerer) -> None:
        upgrade = await self._answer(answerer)
        if upgrade is not None:
            # The 101 is written. Handed over in this same step, before any byte that
            # follows it is read as HTTP; what answering took (the request, the answer)
            # went with ``_answer``'s frame and is not held for the upgraded
            # connection's life (an agent's tunnel lasts as long as the agent).
            await self._taken_over(upgrade)

    async def _answer(self, answerer: Answerer) -> Upgrade | None:
        """Answer ``_current``; the upgrade to hand the connection to once its 101 is
        written, else None (the request is finished)."""
        request = self._current
        assert request is not None
        front = self._front
        try:
            answer = await answerer(front.app, request)
            kind = answer.kind
            if kind == WHOLE:
                keep_alive = request.keep_alive and not self.closing and not front.drain.draining
                self.write(
                    rawresponse.build(
                        answer.status,
                        answer.reason,
                        answer.headers,
                        answer.body,
                        request_id=answer.request_id,
                        keep_alive=keep_alive,
                        head_only=request.method == "HEAD",
                    )
                )
            elif kind == STREAMED:
                keep_alive = answer.keep_alive  # written as it arrived
            else:
                return self._switch(answer)
            keep_alive = keep_alive and request.body_complete
        except BadBody as exc:
            self._invalid = None
            self._refuse(Invalid(exc.status, exc.message, request.raw_path.encode("latin-1")))
            keep_alive = False
        except (ConnectionError, asyncio.CancelledError):
            keep_alive = False
        except Exception:  # pragma: no cover - what answers turns errors into answers
            logger.exception("unhandled error answering %s %s", request.method, request.path)
            keep_alive = False
        self._finished(keep_alive)
        return None

    def _switch(self, answer: Answer) -> Upgrade | None:
        """Write a 101; the upgrade that takes the connection over (None: not switched,
        the request is finished)."""
        upgrade = answer.upgrade
        assert upgrade is not None
        transport = self.transport
        if transport is None or self.closing or self._invalid is not None:
            upgrade.abandon()
            self._finished(False)
            return None
        transport.write(rawresponse.switching_head(answer))
        self.taken_over = True
        self._reader = None  # its parser and the last head's fields: not for the upgrade's life
        # Requests read after the upgrade's head were sent before our 101 (no client does
        # that): they are dropped, never passed on.
        for queued in self._queue:
            queued.fail(ConnectionResetError("the connection was upgraded"))
        self._queue.clear()
        self._receiving = None
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._current = None
        return upgrade

    async def _taken_over(self, upgrade: Upgrade) -> None:
        transport = self.transport
        try:
            if transport is None:
                raise ConnectionResetError("the client went away")
            if await upgrade.take_over(transport, self):
                self._task = None  # runs on without this task; the upgrade ends it
                return
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # pragma: no cover - an upgrade handles its own errors
            logger.exception("unhandled error in an upgraded connection")
        self._finished(False)

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
        """Nothing in flight: start what arrived meanwhile, or refuse."""
        if self._queue:
            self._start(self._queue.pop(0))
            if self._reading_paused and len(self._queue) < MAX_QUEUED // 2:
                self.body_drained()
            return
        if self._invalid is not None:
            self._refuse(self._invalid)

    def _refuse(self, invalid: Invalid) -> None:
        """Answer ``invalid`` and close: a Kubernetes ``Status``, but a v3 error to a
        client of the management API (a target outside ``/k8s/``, or a connection that
        served one)."""
        if self.transport is None:
            return
        target = invalid.target
        status = invalid.status
        if self._v3 or (target.startswith(b"/") and not target.startswith(_K8S)):
            body = api_body(status, _REASONS.get(status, ""), invalid.message)
            content_type = b"application/json; charset=utf-8"
        else:
            body = status_body(status, invalid.message, _REASONS.get(status, ""), None)
            content_type = b"application/json"
        self.write(
            rawresponse.build(
                status,
                phrase(status),
                [(b"Content-Type", content_type)],
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


class StreamedAnswer:
    """The HTTP/1.1 ``AnswerWriter`` of an answer streamed as it arrives (watches, big
    LISTs, logs -f): the head as bytes when it is made, then the body as it arrives,
    chunked unless the API server gave a length."""

    __slots__ = ("_chunked", "_conn", "keep_alive")

    def __init__(
        self,
        conn: FrontConnection,
        request: Request,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
        bodyless: bool = False,
    ) -> None:
        self._conn = conn
        keep_alive = request.keep_alive
        # Without a length, HTTP/1.0 clients read until the connection closes.
        self._chunked = length is None and request.version == "1.1" and not bodyless
        if length is None and not self._chunked and not bodyless:
            keep_alive = False
        self.keep_alive = keep_alive
        conn.write(
            rawresponse.head(
                status,
                reason,
                upstream_headers,
                length_line=b"" if length is None else b"Content-Length: %d\r\n" % length,
                chunked=self._chunked,
                request_id=request_id,
                keep_alive=keep_alive,
            )
        )

    async def write(self, data: bytes | bytearray) -> None:
        conn = self._conn
        if not self._chunked:
            conn.write(data)
        elif len(data) <= JOIN_MAX:
            # One buffer: each piece handed to the TLS transport becomes a TLS record of
            # its own, and a watch event would otherwise be three.
            conn.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            conn.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        if conn.write_paused:
            await conn.drain()

    async def end(self) -> None:
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")

    def parking(self) -> ParkedSide | None:
        return None  # an answer per connection at a time here: its task is not the cost
