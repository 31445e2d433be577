"""HTTP/2 client connections (ALPN ``h2``): many requests, watches above all, on one.

kubectl and every client-go program speak HTTP/2 when the server offers it, and an
informer's watches then share one TLS connection instead of holding one each. That is
what a watch costs the gateway: on HTTP/1.1 most of a watch's memory is its TLS
connection (docs/benchmarks.md, "HTTP/2 towards clients", has the figures). Exec,
attach and port-forward still arrive over HTTP/1.1: client-go asks for ``http/1.1``
alone when it upgrades.

``gateway.front.h2_protocol`` does the protocol; this module runs it on a transport.
Each stream's request is the request model's ``Request`` and goes where
``Front.answerer`` sends it, as on the HTTP/1.1 front: ``/k8s/clusters/`` to
``gateway.proxy.handler``, anything else (the management API, health, metrics) through
``gateway.front.bridge`` to aiohttp. The answer is written as HEADERS and DATA frames.

Flow control: an answer's writer waits while its stream has more than
``STREAM_HIGH_WATER`` bytes queued for window or the socket is paused; request bodies
get window back as the proxy (or aiohttp) consumes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from config import allocator
from gateway.errors import status_body
from gateway.front import bridge
from gateway.front import h2_protocol as http2
from gateway.front.balancers import TrustedProxies
from gateway.front.h1_protocol import Head
from gateway.front.h2_protocol import (
    Data,
    Drained,
    End,
    GoAway,
    RequestReceived,
    Reset,
    ServerConnection,
    Terminated,
)
from gateway.front.request import Answerer, client_request
from gateway.proxy import model
from gateway.proxy.model import PARKED, STREAMED, WHOLE, AnswerWriter
from gateway.proxy.paths import PREFIX
from gateway.proxy.rawresponse import h2_headers, h2_whole
from gateway.telemetry.drain import Drain
from tunnel.sockets import is_stream
from tunnel.streams import READER_TALLY, Budget, ReadTally

logger = logging.getLogger(__name__)

Header = tuple[bytes, bytes]

HTTP2_BUFFER_BYTES = 64 * 1024 * 1024
"""Default of ``limits.http2_buffer``: what one connection may hold for a client that does
not read, all streams together (see ``H2Connection._over_budget``)."""

STREAM_HIGH_WATER = 256 * 1024
"""Answer bytes queued on one stream (waiting for the client's window) before its
writer waits."""

FLUSH_AT_FRAMES = 32
FLUSH_NOW_BYTES = 8 * 1024
"""Answer pieces this large are written at once, smaller ones at the end of the turn."""

_BODYLESS = (b"GET", b"HEAD", b"DELETE", b"OPTIONS")
_PREFIX = PREFIX.encode("ascii")


class Listener(Protocol):
    """What an HTTP/2 connection asks of the listener that made it: the interface that
    ``gateway.front.connection.Front`` implements (a Protocol, so that this module does
    not import the one that makes its connections)."""

    @property
    def app(self) -> web.Application: ...
    @property
    def drain(self) -> Drain: ...
    @property
    def keepalive_s(self) -> float: ...
    @property
    def body_timeout_s(self) -> float: ...
    @property
    def http2_buffer(self) -> int: ...
    @property
    def trusted(self) -> TrustedProxies | None: ...
    def forwarded_from(self, remote: str) -> bool: ...
    def client_of(self, remote: str, headers: list[Header]) -> str: ...
    def answerer(self, request: model.Request) -> Answerer: ...
    def added(self, conn: H2Connection) -> None: ...
    def removed(self, conn: H2Connection) -> None: ...


class H2Connection(asyncio.Protocol):
    """One client connection that chose HTTP/2."""

    __slots__ = (
        "_budget_resets",
        "_flush_scheduled",
        "_front",
        "_going_away",
        "_h2",
        "_last_active",
        "_streams",
        "budget",
        "closing",
        "forwarded",
        "remote",
        "transport",
        "write_paused",
    )

    def __init__(self, front: Listener) -> None:
        self._front = front
        self._h2 = ServerConnection()
        self._streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.forwarded = False
        """The peer is a trusted balancer: requests name their client (X-Forwarded-For)."""
        self.write_paused = False
        self.closing = False
        """The transport is closing (what was written still goes out)."""
        self._going_away = False
        """No new streams: close when the last one is answered."""
        self._last_active = 0.0
        self._flush_scheduled = False
        h2 = self._h2
        self.budget = Budget(front.http2_buffer, lambda: h2.pending_total, self._over_budget)
        """Answer bytes waiting for the client's windows, and the unread tunnel bytes
        behind them (``READER_TALLY``), against ``limits.http2_buffer``."""
        self._budget_resets = 0

    # asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not is_stream(transport):
            raise TypeError(f"not a stream transport: {transport!r}")
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.remote = str(peer[0])
            if self._front.trusted is not None:
                self.forwarded = self._front.forwarded_from(self.remote)
        self._last_active = asyncio.get_running_loop().time()
        self._front.added(self)
        self.flush()  # our SETTINGS

    def data_received(self, data: bytes) -> None:
        streams = self._streams
        for event in self._h2.receive(data):
            if isinstance(event, Data):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.feed(event.data)
            elif isinstance(event, RequestReceived):
                self._on_request(event)
            elif isinstance(event, End):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.feed_eof()
            elif isinstance(event, Drained):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.writable()
            elif isinstance(event, Reset):
                stream = streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.abandon(ConnectionResetError("the client reset the stream"))
            elif isinstance(event, GoAway):
                self._going_away = True  # the client opens no more streams
            elif isinstance(event, Terminated):
                logger.info("HTTP/2 connection from %s: %s", self.remote, event.message)
                self.flush()
                self._close_transport()
                return
        self.flush()
        if self._going_away and not streams:
            self._close_transport()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        streams = list(self._streams.values())
        self._streams.clear()
        error = ConnectionResetError("the client went away")
        held = self.budget.total
        for stream in streams:
            stream.abandon(error)
        self._front.removed(self)
        allocator.freed(held)

    def pause_writing(self) -> None:
        # A client that does not read what it is sent (PING answers pile up, say) is not
        # read either until it does: flow control bounds answers, this bounds the rest.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None:
            self.transport.resume_reading()
        for stream in list(self._streams.values()):
            stream.writable()

    # what streams use

    @property
    def h2(self) -> ServerConnection:
        return self._h2

    def flush_soon(self) -> None:
        """Write what is queued at the end of this event-loop turn, so the answers of
        the streams that finish in one turn share a TLS write (at most FLUSH_AT_FRAMES
        wait: the client gets the first ones while the rest are built)."""
        if self._h2.queued >= FLUSH_AT_FRAMES:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        out = self._h2.data_to_send()
        if out and self.transport is not None:
            # One buffer, not ``writelines``: the TLS transport makes a record of each
            # piece it is handed, so a small answer's HEADERS and DATA would be two and a
            # full DATA frame (16 KiB + its 9-byte head) two, one of them tiny.
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def finished(self, stream: H2Stream) -> None:
        """The stream's answer is complete (or abandoned)."""
        if stream.tally is not None:
            stream.tally.detach()
        if self._streams.pop(stream.stream_id, None) is None:
            return
        self._last_active = asyncio.get_running_loop().time()
        if not stream.request.body_complete:
            self._h2.reset(stream.stream_id, http2.NO_ERROR)  # the rest of the body is not needed
        if self._front.drain.draining and not self._going_away:
            self.close()
        if self._going_away and not self._streams:
            self.flush()
            self._close_transport()
        else:
            self.flush_soon()

    def _over_budget(self) -> None:
        """More than ``limits.http2_buffer`` held for a client that does not read: reset
        the streams holding most (ENHANCE_YOUR_CALM) until the rest fit."""
        budget = self.budget
        h2 = self._h2
        excess = budget.total - budget.limit
        while excess > 0 and self._streams:
            largest = max(self._streams.values(), key=lambda s: s.held(h2))
            size = largest.held(h2)
            self._budget_resets += 1
            logger.warning(
                "HTTP/2 connection from %s holds %d bytes it cannot send (limit %d); "
                "resetting stream %d (%d bytes)",
                self.remote,
                budget.total,
                budget.limit,
                largest.stream_id,
                size,
            )
            del self._streams[largest.stream_id]
            h2.reset(largest.stream_id, http2.ENHANCE_YOUR_CALM)
            largest.abandon(ConnectionResetError("the client does not read its answers"))
            if largest.tally is not None:
                largest.tally.detach()  # its tunnel stream is reset as the task ends
            excess -= max(size, 1)
        self.flush()
        allocator.freed(budget.limit)

    # what gateway.front.connection asks of every connection

    @property
    def between_requests(self) -> bool:
        return not self._streams

    def close_when_idle(self) -> None:
        self.close()

    def close(self) -> None:
        """No new streams; close once those in flight have their answers."""
        self._going_away = True
        self._h2.goaway()
        self.flush()
        if not self._streams:
            self._close_transport()

    def abort(self) -> None:
        self.closing = True
        for stream in list(self._streams.values()):
            stream.abandon(ConnectionResetError("the gateway is stopping"))
        if self.transport is not None:
            self.transport.abort()

    def check_timeouts(self, now: float) -> None:
        body_timeout = self._front.body_timeout_s
        late = [
            stream for stream in self._streams.values() if stream.body_stalled(now, body_timeout)
        ]
        for stream in late:  # a stream error: its body stopped arriving
            self._streams.pop(stream.stream_id, None)
            self.h2.reset(stream.stream_id, http2.CANCEL)
            stream.abandon(ConnectionResetError("the request body did not arrive in time"))
        if late:
            self.flush()
        if (
            not self._streams
            and self.transport is not None
            and now - self._last_active > self._front.keepalive_s
        ):
            self.close()

    # internals

    def _close_transport(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _on_request(self, event: RequestReceived) -> None:
        stream = H2Stream(self, event)
        self._streams[event.stream_id] = stream
        self._last_active = asyncio.get_running_loop().time()
        if event.too_large:
            stream.refuse(431, "request header fields too large", "RequestHeaderFieldsTooLarge")
        elif event.method == b"CONNECT":
            stream.refuse(405, "CONNECT is not supported", "MethodNotAllowed")
        elif not event.path.startswith(_PREFIX) and bridge.too_large_for_aiohttp(
            event.path, event.headers
        ):  # as on HTTP/1.1: a 431 of ours, not aiohttp's plain-text 400
            stream.refuse(431, "request header fields too large", "RequestHeaderFieldsTooLarge")
        else:
            stream.start(self._front)


class H2Stream:
    """One request and its answer on an HTTP/2 connection (``RequestSide`` for it)."""

    __slots__ = (
        "_body_active",
        "_conn",
        "_on_writable",
        "_parked",
        "_task",
        "_waiter",
        "authority",
        "request",
        "stream_id",
        "tally",
    )

    def __init__(self, conn: H2Connection, event: RequestReceived) -> None:
        self._conn = conn
        self.stream_id = event.stream_id
        self.authority = event.authority
        head = _head(event)
        self.request = client_request(head, self)
        self.request.authority = event.authority
        if conn.forwarded:
            self.request.client = conn._front.client_of(conn.remote, head.headers)
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._parked: model.Parked | None = None
        """The relay that has a ``PARKED`` answer (no task then)."""
        self._on_writable: Callable[[], None] | None = None
        self._body_active = asyncio.get_running_loop().time()
        self.tally: ReadTally | None = None
        """The unread tunnel bytes of this stream's answer (proxied streams only)."""

    def body_stalled(self, now: float, timeout_s: float) -> bool:
        """The client sends none of the body for ``timeout_s`` though it may (all it
        sent has been read: its window is open)."""
        request = self.request
        return (
            request.body_exists
            and not request.body_complete
            and request.body_held == 0
            and not request.expect_continue  # the client waits for our 100
            and now - self._body_active > timeout_s
        )

    def held(self, h2: ServerConnection) -> int:
        """Bytes held for this stream's answer: queued for the window, and unread."""
        tally = self.tally
        return h2.buffered(self.stream_id) + (tally.held if tally is not None else 0)

    # RequestSide

    @property
    def closing(self) -> bool:
        return self._conn.closing

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    @property
    def remote(self) -> str:
        return self._conn.remote

    def continue_if_expected(self, request: model.Request) -> None:
        if request.expect_continue:
            request.expect_continue = False
            self._conn.h2.send_headers(self.stream_id, 100, [])
            self._conn.flush()

    def body_backlogged(self) -> None:
        return None  # the stream's window holds the client back

    def body_read(self, size: int, held: int) -> None:
        self._conn.h2.acknowledge(self.stream_id, size)
        self._conn.flush()

    def cut(self) -> None:
        self._conn.h2.reset(self.stream_id, http2.INTERNAL_ERROR)
        self._conn.flush()

    def start_answer(
        self,
        request: model.Request,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
        bodyless: bool,
    ) -> AnswerWriter:
        headers = h2_headers(upstream_headers, length=length, request_id=request_id)
        self.send_head(status, headers, end_stream=bodyless)
        return H2Answer(self, bodyless)

    # what the connection does with it

    def feed(self, data: bytes) -> None:
        self._body_active = asyncio.get_running_loop().time()
        self.request.feed_body(data)

    def feed_eof(self) -> None:
        self.request.feed_eof()

    def finish(self) -> None:
        self._conn.finished(self)

    def writable(self) -> None:
        """The stream's queue drained, or the socket resumed."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        callback = self._on_writable
        if callback is not None and not self.backlogged:
            self._on_writable = None
            callback()

    def abandon(self, error: BaseException) -> None:
        """The client reset the stream, or the connection is gone."""
        self.request.fail(error)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        parked, self._parked = self._parked, None
        self._on_writable = None
        if parked is not None:
            parked.abort()

    def start(self, front: Listener) -> None:
        tally = self.tally = ReadTally(self._conn.budget)
        token = READER_TALLY.set(tally)  # the task's copy of the context keeps it
        self._task = asyncio.get_running_loop().create_task(self._run(front))
        READER_TALLY.reset(token)

    def refuse(self, status: int, message: str, reason: str) -> None:
        self.send_whole(
            status,
            [(b"content-type", b"application/json")],
            status_body(status, message, reason, None),
        )
        self.finish()

    # writing

    def send_head(self, status: int, headers: list[Header], end_stream: bool = False) -> None:
        self._conn.h2.send_headers(self.stream_id, status, headers, end_stream)
        self._conn.flush_soon()

    def send(self, data: bytes | bytearray, end_stream: bool = False) -> None:
        conn = self._conn
        conn.h2.send_data(self.stream_id, data, end_stream)
        if conn.h2.pending_total > STREAM_HIGH_WATER:
            conn.budget.check()
        if len(data) >= FLUSH_NOW_BYTES:
            self._conn.flush()  # bulk: out at once, so the socket's back-pressure shows
        else:
            self._conn.flush_soon()

    def send_whole(self, status: int, headers: list[Header], body: bytes) -> None:
        h2conn = self._conn.h2
        h2conn.send_headers(self.stream_id, status, headers, end_stream=not body)
        if body:
            h2conn.send_data(self.stream_id, body, end_stream=True)
        self._conn.flush_soon()

    @property
    def backlogged(self) -> bool:
        return self._conn.write_paused or self._conn.h2.buffered(self.stream_id) > STREAM_HIGH_WATER

    async def wait_writable(self) -> None:
        while self.backlogged:
            if self._conn.transport is None:
                raise ConnectionResetError("the client went away")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def _run(self, front: Listener) -> None:
        request = self.request
        try:
            answer = await front.answerer(request)(front.app, request)
            if answer.kind == PARKED:
                # Its relay goes on by callbacks and finishes the stream (``done``); this
                # task ends here, and nothing holds on to it.
                self._task = None
                return
            if answer.kind == WHOLE:
                self.send_whole(*h2_whole(answer, request.method == "HEAD"))
            elif answer.kind != STREAMED:  # a 101: never on HTTP/2 (no upgrades there)
                if answer.upgrade is not None:
                    answer.upgrade.abandon()
                self._conn.h2.reset(self.stream_id, http2.INTERNAL_ERROR)
        except (ConnectionError, asyncio.CancelledError):
            self._conn.h2.reset(self.stream_id, http2.CANCEL)
        except Exception:  # pragma: no cover - proxy.answer turns errors into answers
            logger.exception("unhandled error answering %s %s", request.method, request.path)
            self._conn.h2.reset(self.stream_id, http2.INTERNAL_ERROR)
        self.finish()


class H2Answer:
    """A streamed answer (watch, big LIST, logs -f): DATA as it comes, after the HEADERS
    ``H2Stream.start_answer`` sent."""

    __slots__ = ("_bodyless", "_stream")

    def __init__(self, stream: H2Stream, bodyless: bool) -> None:
        self._stream = stream
        self._bodyless = bodyless
        """An answer to HEAD, a 204 or a 304: the HEADERS ended the stream."""

    @property
    def keep_alive(self) -> bool:
        return True

    async def write(self, data: bytes | bytearray) -> None:
        stream = self._stream
        stream.send(data)
        if stream.backlogged:
            await stream.wait_writable()

    async def end(self) -> None:
        if not self._bodyless:
            self._stream.send(b"", end_stream=True)

    # ParkedSide: the same answer written by callbacks

    def parking(self) -> model.ParkedSide | None:
        return None if self._bodyless else self

    def send_now(self, data: bytes | bytearray) -> bool:
        stream = self._stream
        stream.send(data)
        return not stream.backlogged

    def when_writable(self, callback: Callable[[], None]) -> None:
        stream = self._stream
        if stream.backlogged:
            stream._on_writable = callback
        else:
            callback()

    def end_now(self) -> None:
        self._stream.send(b"", end_stream=True)

    def cut(self) -> None:
        self._stream.cut()

    def hold(self, parked: model.Parked) -> None:
        self._stream._parked = parked

    def done(self) -> None:
        stream = self._stream
        stream._parked = None
        stream._on_writable = None
        stream.finish()


def _head(event: RequestReceived) -> Head:
    """The stream's request as the HTTP/1.1 reader would have given it."""
    content_length: int | None = None
    expect = impersonates = False
    authorization: bytes | None = None
    user_agent = b""
    headers = event.headers
    for name, value in headers:
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"user-agent":
            user_agent = user_agent or value
        elif name == b"content-length":
            content_length = int(value)  # gateway.front.h2_protocol has checked it
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
        elif name.startswith(b"impersonate-"):
            impersonates = True
    has_body = not event.end_stream
    return Head(
        method=event.method.decode("ascii", "replace"),
        target=event.path,
        version="2",
        headers=headers,
        keep_alive=True,
        upgrade=False,
        content_length=content_length if has_body else None,
        chunked=has_body and content_length is None,
        expect_continue=expect,
        authorization=authorization,
        user_agent=user_agent,
        impersonates=impersonates,
    )
