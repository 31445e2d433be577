"""Requests served by aiohttp's application: an in-memory HTTP/1.1 connection per request.

The fronts answer ``/k8s/clusters/`` themselves (``gateway.proxy``); any other request
(the management API, login pages, health, metrics) is ``serve``d here, whether it came
over HTTP/1.1 or as an HTTP/2 stream. Its head, written as HTTP/1.1 with
``connection: close``, is fed to a fresh request handler of aiohttp's low-level server
(``web.Server``, a protocol factory) over this in-memory transport; the body follows as
the handler reads it; the handler's HTTP/1.1 answer is parsed back (httptools) and
written to the client through the request's own answer writer (HTTP/1.1 bytes or
HTTP/2 frames). aiohttp's application stays the one place those routes live, and
aiohttp never sees a client's connection.

Back-pressure both ways: the body is handed to aiohttp only while it reads (it pauses
reading on this transport; the request then holds the body and the front stops reading
from the client, or withholds the HTTP/2 window), and aiohttp's writes pause while more
than ``HIGH_WATER`` bytes of its answer wait for the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

from gateway.proxy.heads import UnsafeHead, request_head
from gateway.proxy.model import Answer, AnswerWriter, Request, status_answer, streamed

logger = logging.getLogger(__name__)

Header = tuple[bytes, bytes]
Factory = Callable[[], asyncio.Protocol]

HIGH_WATER = 256 * 1024
"""Answer bytes parsed from aiohttp and not yet written before aiohttp's writes pause."""
AIOHTTP_MAX_FIELD = 8190
"""aiohttp's ``max_line_size`` and ``max_field_size``: longer targets, names or values it
refuses with a plain-text 400, so the fronts refuse them first (431)."""
AIOHTTP_MAX_HEADERS = 128
"""aiohttp's ``max_headers`` (the fronts allow 256 on the proxy's requests)."""

_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
        b"http2-settings",
    }
)
"""The client's hop-by-hop fields: the in-memory connection has its own framing."""


def too_large_for_aiohttp(target: bytes, headers: list[Header]) -> bool:
    """A head aiohttp would refuse with its own plain-text 400."""
    if len(target) > AIOHTTP_MAX_FIELD or len(headers) > AIOHTTP_MAX_HEADERS:
        return True
    return any(len(n) > AIOHTTP_MAX_FIELD or len(v) > AIOHTTP_MAX_FIELD for n, v in headers)


async def serve(factory: Factory, request: Request) -> Answer:
    """Answer ``request`` with the application behind ``factory`` (``web.Server``)."""
    return await Bridge(factory, request).serve()


_HEAD = 0
_BODY = 1
_END = 2
_CUT = 3


class Bridge(asyncio.Transport):
    """One request served by aiohttp: the transport its request handler writes to."""

    def __init__(self, factory: Factory, request: Request) -> None:
        super().__init__()
        self._factory = factory
        self._request = request
        self._head_only = request.method == "HEAD"
        self._chunked = request.body_exists and request.content_length is None
        self._handler: asyncio.Protocol = _NO_HANDLER
        self._parser = httptools.HttpResponseParser(self)
        self._events: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._queued = 0
        self._writing_paused = False
        self._reading_paused = False
        self._resumed: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pump_error: BaseException | None = None
        self._status = 0
        self._reason = b""
        self._headers: list[Header] = []
        self._answered = False
        self._complete = False
        self._closed = False

    async def serve(self) -> Answer:
        request = self._request
        try:
            head = self._request_head()
        except UnsafeHead as exc:
            # The fronts refuse such requests first; this is the second line.
            return status_answer(400, f"the request cannot be served: {exc}", "BadRequest")
        handler = self._handler = self._factory()
        handler.connection_made(self)
        handler.data_received(head)
        if request.body_exists and not request.expect_continue:
            self._start_pump()
        answer: AnswerWriter | None = None
        try:
            while True:
                if not self._events:
                    self._waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    continue
                kind, data = self._events.popleft()
                if kind == _BODY:
                    self._queued -= len(data)
                    if answer is not None:
                        await answer.write(data)
                    if self._writing_paused and self._queued <= HIGH_WATER // 2:
                        self._writing_paused = False
                        if not self._closed:
                            handler.resume_writing()
                elif kind == _HEAD:
                    answer = await request.start_answer(
                        self._status,
                        self._reason.decode("latin-1"),
                        self._headers,
                        self._length(),
                        "",
                        bodyless=self._bodyless(),
                    )
                elif kind == _END:
                    assert answer is not None
                    await answer.end()
                    return streamed(answer.keep_alive)
                else:  # _CUT: aiohttp gave up before a whole answer, or the body failed
                    if answer is None:
                        if self._pump_error is not None:
                            raise self._pump_error  # the front answers it (BadBody)
                        request.cut()
                        raise ConnectionResetError("the application closed without an answer")
                    request.cut()
                    return streamed(False)
        finally:
            if self._pump is not None and not self._pump.done():
                self._pump.cancel()
            if not self._closed:
                self._closed = True
                handler.connection_lost(ConnectionResetError("the client went away"))

    def _request_head(self) -> bytes:
        request = self._request
        fields = [(n, v) for n, v in request.raw_headers if n.lower() not in _DROPPED]
        if request.authority and not any(name.lower() == b"host" for name, _ in fields):
            fields.append((b"host", request.authority))
        if self._chunked:
            fields.append((b"transfer-encoding", b"chunked"))
        fields.append((b"connection", b"close"))
        return request_head(
            request.method.encode("utf-8", "replace"), request.raw_path.encode("latin-1"), fields
        )

    def _length(self) -> int | None:
        for name, value in self._headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                return int(value)
        return None

    def _bodyless(self) -> bool:
        return self._head_only or self._status in (204, 304)

    # the request body, fed to aiohttp as it reads

    def _start_pump(self) -> None:
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._feed_body())

    async def _feed_body(self) -> None:
        request = self._request
        chunked = self._chunked
        try:
            while piece := await request.read_any():
                while self._reading_paused and not self._closed:
                    self._resumed = asyncio.get_running_loop().create_future()
                    try:
                        await self._resumed
                    finally:
                        self._resumed = None
                if self._closed:
                    return
                self._handler.data_received(
                    b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                )
            if chunked and not self._closed:
                self._handler.data_received(b"0\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self._pump_error = exc
            if not self._closed:
                self._closed = True
                self._handler.connection_lost(exc)
            self._push(_CUT, b"")

    # asyncio.Transport, as aiohttp's handler uses it

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._complete:
            return
        try:
            self._parser.feed_data(bytes(data))
        except httptools.HttpParserError:
            if self._finished_early():
                return  # stopped after an answer without a body
            logger.error("unreadable answer from the application")
            self._push(_CUT, b"")
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
            framed = any(
                n.lower() in (b"transfer-encoding", b"content-length") for n, _ in self._headers
            )
            # An answer delimited by the close ends here; any other is cut short.
            self._push(_END if self._answered and not framed else _CUT, b"")
        handler = self._handler
        asyncio.get_running_loop().call_soon(handler.connection_lost, None)
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._request.transport
        if name == "socket" or transport is None:
            return default  # no socket options on an in-memory connection
        if name == "peername" and self._request.client:
            return (self._request.client, 0)  # named by a trusted balancer
        return transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def is_reading(self) -> bool:
        return not self._reading_paused

    def get_write_buffer_size(self) -> int:
        return self._queued

    def can_write_eof(self) -> bool:
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if isinstance(protocol, asyncio.Protocol):
            self._handler = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._handler

    # httptools callbacks (the application's answer)

    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 100 Continue: the application reads the body now; the final answer follows.
            self._headers = []
            self._reason = b""
            if self._request.body_exists:
                self._start_pump()
            return
        self._status = status
        self._answered = True
        self._push(_HEAD, b"")
        if self._bodyless():
            self._complete = True
            self._push(_END, b"")
            raise _HeadDone()

    def on_body(self, body: bytes) -> None:
        self._queued += len(body)
        self._push(_BODY, body)
        if self._queued > HIGH_WATER and not self._writing_paused:
            self._writing_paused = True
            self._handler.pause_writing()

    def on_message_complete(self) -> None:
        if self._status:
            self._complete = True
            self._push(_END, b"")

    def _finished_early(self) -> bool:
        return self._complete

    def _push(self, kind: int, data: bytes) -> None:
        self._events.append((kind, data))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_NO_HANDLER = asyncio.Protocol()
"""The handler until ``serve`` makes one."""


class _HeadDone(Exception):
    """Stops the parser after an answer that has no body (HEAD, 204, 304)."""
