"""HTTP/2 client connections (ALPN ``h2``): many requests, watches above all, on one.

kubectl and every client-go program speak HTTP/2 when the server offers it, and an
informer's watches then share one TLS connection instead of holding one each. That is
what a watch costs the gateway: ~33 KiB per watch on HTTP/1.1, most of it the TLS
connection (docs/benchmarks.md). Exec, attach and port-forward still arrive over
HTTP/1.1: client-go asks for ``http/1.1`` alone when it upgrades.

``gateway.http2`` does the protocol; this module runs it on a transport. Each stream's
request is a ``ClientRequest``: ``/k8s/clusters/`` goes to ``gateway.proxy`` as on the
HTTP/1.1 lean path, answered with HEADERS and DATA frames. Anything else (the management
API, health, metrics) goes through ``Bridge``: the stream's request, written as
HTTP/1.1, is fed to a fresh aiohttp request handler over an in-memory transport, and
its HTTP/1.1 answer is read back into frames — aiohttp's application stays the one
place those routes live.

Flow control: an answer's writer waits while its stream has more than
``STREAM_HIGH_WATER`` bytes queued for window or the socket is paused; request bodies
get window back as the proxy (or aiohttp) consumes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import httptools
from aiohttp import web

from gateway import http2, proxy
from gateway.errors import status_body
from gateway.front_request import ClientRequest
from gateway.http1 import Head
from gateway.http2 import Data, Drained, End, GoAway, Request, Reset, ServerConnection, Terminated
from gateway.paths import PREFIX
from gateway.rawresponse import HOP_AND_FRAMING, RawResponse, h2_headers

if TYPE_CHECKING:
    from gateway.front import Front

logger = logging.getLogger(__name__)

Header = tuple[bytes, bytes]

STREAM_HIGH_WATER = 256 * 1024
"""Answer bytes queued on one stream (waiting for the client's window) before its
writer waits."""

FLUSH_AT_FRAMES = 32
FLUSH_NOW_BYTES = 8 * 1024
"""Answer pieces this large are written at once, smaller ones at the end of the turn."""

_PREFIX = PREFIX.encode("ascii")
_BODYLESS = (b"GET", b"HEAD", b"DELETE", b"OPTIONS")


class H2Connection(asyncio.Protocol):
    """One client connection that chose HTTP/2."""

    __slots__ = (
        "_flush_scheduled",
        "_front",
        "_going_away",
        "_h2",
        "_last_active",
        "_streams",
        "closing",
        "remote",
        "transport",
        "write_paused",
    )

    def __init__(self, front: Front) -> None:
        self._front = front
        self._h2 = ServerConnection()
        self._streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.write_paused = False
        self.closing = False
        """The transport is closing (what was written still goes out)."""
        self._going_away = False
        """No new streams: close when the last one is answered."""
        self._last_active = 0.0
        self._flush_scheduled = False

    # asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.remote = str(peer[0])
        self._last_active = asyncio.get_running_loop().time()
        self._front.added(self)
        self.flush()  # our SETTINGS

    def data_received(self, data: bytes) -> None:
        streams = self._streams
        for event in self._h2.receive(data):
            kind = type(event)
            if kind is Data:
                data_event = cast(Data, event)
                stream = streams.get(data_event.stream_id)
                if stream is not None:
                    stream.feed(data_event.data)
            elif kind is Request:
                self._on_request(cast(Request, event))
            elif kind is End:
                stream = streams.get(cast(End, event).stream_id)
                if stream is not None:
                    stream.feed_eof()
            elif kind is Drained:
                stream = streams.get(cast(Drained, event).stream_id)
                if stream is not None:
                    stream.writable()
            elif kind is Reset:
                stream = streams.pop(cast(Reset, event).stream_id, None)
                if stream is not None:
                    stream.abandon(ConnectionResetError("the client reset the stream"))
            elif kind is GoAway:
                self._going_away = True  # the client opens no more streams
            elif kind is Terminated:
                terminated = cast(Terminated, event)
                logger.info("HTTP/2 connection from %s: %s", self.remote, terminated.message)
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
        for stream in streams:
            stream.abandon(error)
        self._front.removed(self)

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

    # what gateway.front asks of every connection

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

    def _on_request(self, event: Request) -> None:
        stream = H2Stream(self, event)
        self._streams[event.stream_id] = stream
        self._last_active = asyncio.get_running_loop().time()
        if event.too_large:
            stream.refuse(431, "request header fields too large", "RequestHeaderFieldsTooLarge")
        elif event.method == b"CONNECT":
            stream.refuse(405, "CONNECT is not supported", "MethodNotAllowed")
        elif event.path.startswith(_PREFIX):
            stream.start(self._front.app)
        else:
            stream.bridge(self._front)


class H2Stream:
    """One request and its answer on an HTTP/2 connection (``RequestSide`` for it)."""

    __slots__ = ("_bridge", "_conn", "_task", "_waiter", "authority", "request", "stream_id")

    def __init__(self, conn: H2Connection, event: Request) -> None:
        self._conn = conn
        self.stream_id = event.stream_id
        self.authority = event.authority
        self.request = ClientRequest(_head(event), self)
        self._task: asyncio.Task[None] | None = None
        self._bridge: Bridge | None = None
        self._waiter: asyncio.Future[None] | None = None

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

    def continue_if_expected(self, request: ClientRequest) -> None:
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

    def streamed_answer(
        self,
        request: ClientRequest,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
    ) -> H2Answer:
        return H2Answer(
            self, status, h2_headers(upstream_headers, length=length, request_id=request_id)
        )

    # what the connection does with it

    def feed(self, data: bytes) -> None:
        if self._bridge is not None:
            self._bridge.feed(data)
        else:
            self.request.feed_body(data)

    def feed_eof(self) -> None:
        if self._bridge is not None:
            self._bridge.feed_eof()
        self.request.feed_eof()

    def finish(self) -> None:
        self._conn.finished(self)

    def writable(self) -> None:
        """The stream's queue drained, or the socket resumed."""
        if self._bridge is not None:
            self._bridge.writable()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abandon(self, error: BaseException) -> None:
        """The client reset the stream, or the connection is gone."""
        self.request.fail(error)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._bridge is not None:
            self._bridge.lost(error)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def start(self, app: web.Application) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(app))

    def bridge(self, front: Front) -> None:
        self._bridge = Bridge(self, front)

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

    def send(self, data: bytes, end_stream: bool = False) -> None:
        self._conn.h2.send_data(self.stream_id, data, end_stream)
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

    async def _run(self, app: web.Application) -> None:
        request = self.request
        try:
            response = await proxy.answer(app, request)
            if isinstance(response, RawResponse):
                self.send_whole(*response.h2_answer())
            elif not isinstance(response, H2Answer):  # an error answer from aiohttp's helpers
                self.send_whole(*_aiohttp_answer(cast(web.StreamResponse, response)))
        except (ConnectionError, asyncio.CancelledError):
            self._conn.h2.reset(self.stream_id, http2.CANCEL)
        except Exception:  # pragma: no cover - proxy.answer turns errors into answers
            logger.exception("unhandled error answering %s %s", request.method, request.path)
            self._conn.h2.reset(self.stream_id, http2.INTERNAL_ERROR)
        self.finish()


class H2Answer:
    """A streamed answer (watch, big LIST, logs -f) as HEADERS, then DATA as it comes."""

    __slots__ = ("_headers", "_status", "_stream", "keep_alive")

    def __init__(self, stream: H2Stream, status: int, headers: list[Header]) -> None:
        self._stream = stream
        self._status = status
        self._headers = headers
        self.keep_alive = True

    def force_close(self) -> None:
        return None

    async def prepare(self, request: Any) -> None:
        self._stream.send_head(self._status, self._headers)
        self._headers = []  # not kept for the life of a watch

    async def write(self, data: bytes) -> None:
        stream = self._stream
        stream.send(data)
        if stream.backlogged:
            await stream.wait_writable()

    async def write_eof(self, data: bytes = b"") -> None:
        self._stream.send(data, end_stream=True)


class Bridge(asyncio.Transport):
    """A stream served by aiohttp: an in-memory HTTP/1.1 connection for one request."""

    def __init__(self, stream: H2Stream, front: Front) -> None:
        super().__init__()
        self._stream = stream
        request = stream.request
        self._head_only = request.method == "HEAD"
        self._chunked = request.body_exists and request.content_length is None
        self._closed = False
        self._complete = False
        self._answered = False
        self._reading_paused = False
        self._unacknowledged = 0
        self._status = 0
        self._headers: list[Header] = []
        self._parser = httptools.HttpResponseParser(self)
        self._handler = cast(asyncio.Protocol, front.fallback())
        self._handler.connection_made(self)
        self._handler.data_received(self._request_head())

    def _request_head(self) -> bytes:
        request = self._stream.request
        parts = [request.method.encode("ascii"), b" ", request.raw_path.encode("latin-1")]
        parts.append(b" HTTP/1.1\r\n")
        host = False
        for name, value in request.raw_headers:
            parts += [name, b": ", value, b"\r\n"]
            host = host or name == b"host"
        if not host and self._stream.authority:
            parts += [b"host: ", self._stream.authority, b"\r\n"]
        if self._chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"connection: close\r\n\r\n")
        return b"".join(parts)

    # from the client (the H2 stream)

    def feed(self, data: bytes) -> None:
        if self._closed:
            self._stream.body_read(len(data), 0)
            return
        self._handler.data_received(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        if self._reading_paused:
            self._unacknowledged += len(data)
        else:
            self._stream.body_read(len(data), 0)

    def feed_eof(self) -> None:
        if self._chunked and not self._closed:
            self._handler.data_received(b"0\r\n\r\n")

    def writable(self) -> None:
        if not self._closed and not self._stream.backlogged:
            self._handler.resume_writing()

    def lost(self, error: BaseException) -> None:
        if not self._closed:
            self._closed = True
            self._handler.connection_lost(cast(Exception, error))

    # asyncio.Transport, as aiohttp's handler uses it

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._complete:
            return
        try:
            self._parser.feed_data(bytes(data))
        except httptools.HttpParserError:
            if self._finished_early():
                return  # stopped after an answer without a body
            logger.exception("unreadable answer from the application")  # pragma: no cover
            self._stream.cut()
            self.close()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._complete:
            if self._answered and not self._framed_answer():
                self._stream.send(b"", end_stream=True)  # an answer delimited by the close
            else:
                self._stream.cut()
        asyncio.get_running_loop().call_soon(self._handler.connection_lost, None)
        self._stream.finish()

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._stream.transport
        if name == "socket" or transport is None:
            return default  # no socket options on an in-memory connection
        return transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._unacknowledged:
            self._stream.body_read(self._unacknowledged, 0)
            self._unacknowledged = 0

    def is_reading(self) -> bool:
        return not self._reading_paused

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._handler = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._handler

    # httptools callbacks (the application's answer)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self._headers = []
            return  # 100 Continue: the final answer follows
        self._status = status
        headers = [
            (name.lower(), value)
            for name, value in self._headers
            if name.lower() not in HOP_AND_FRAMING or name.lower() == b"content-length"
        ]
        self._answered = True
        end = self._head_only or status in (204, 304)
        self._stream.send_head(status, headers, end_stream=end)
        if end:
            self._complete = True
            raise _HeadDone()

    def on_body(self, body: bytes) -> None:
        self._stream.send(body)
        if self._stream.backlogged:
            self._handler.pause_writing()

    def on_message_complete(self) -> None:
        if self._status:
            self._complete = True
            self._stream.send(b"", end_stream=True)

    def _finished_early(self) -> bool:
        return self._complete

    def _framed_answer(self) -> bool:
        """The answer has a length or chunks: a close before its end is an error."""
        return any(n.lower() in (b"transfer-encoding", b"content-length") for n, _ in self._headers)


class _HeadDone(Exception):
    """Stops the parser after an answer that has no body (HEAD, 204, 304)."""


def _head(event: Request) -> Head:
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
            content_length = int(value)  # gateway.http2 has checked it
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


def _aiohttp_answer(response: web.StreamResponse) -> tuple[int, list[Header], bytes]:
    body = getattr(response, "body", None)
    data = body if isinstance(body, bytes) else b""
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in response.headers.items()
        if k.lower().encode("latin-1") not in HOP_AND_FRAMING
    ]
    if response.content_type and "Content-Type" not in response.headers:
        headers.append((b"content-type", response.content_type.encode("latin-1")))
    headers.append((b"content-length", b"%d" % len(data)))
    return response.status, headers, data
