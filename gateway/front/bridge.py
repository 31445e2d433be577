"""HTTP/2 streams served by aiohttp: an in-memory HTTP/1.1 connection per stream.

``gateway.front.h2`` answers ``/k8s/clusters/`` streams itself; any other stream (the
management API, health, metrics) gets a ``Bridge``: the stream's request, written as
HTTP/1.1 with ``connection: close``, is fed to a fresh aiohttp request handler over this
in-memory transport, and the handler's HTTP/1.1 answer is parsed back (httptools) into
the stream's HEADERS and DATA. aiohttp's application stays the one place those routes
live. Back-pressure both ways: the handler is paused while the stream's answer waits for
the client's window, and the client gets window back as the handler takes the body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import httptools

from gateway.proxy.heads import UnsafeHead, request_head
from gateway.proxy.rawresponse import HOP_AND_FRAMING

if TYPE_CHECKING:
    from gateway.front.connection import Front
    from gateway.front.h2 import H2Stream

logger = logging.getLogger(__name__)

Header = tuple[bytes, bytes]


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
        try:
            head = self._request_head()
        except UnsafeHead as exc:
            # gateway.front.h2_protocol refuses such requests first; this is the second line.
            self._closed = True
            self._handler: asyncio.Protocol = _NO_HANDLER
            stream.refuse(400, f"the request cannot be served: {exc}", "BadRequest")
            return
        self._handler = cast(asyncio.Protocol, front.fallback())
        self._handler.connection_made(self)
        self._handler.data_received(head)

    def _request_head(self) -> bytes:
        request = self._stream.request
        fields = list(request.raw_headers)
        if self._stream.authority and not any(name == b"host" for name, _ in fields):
            fields.append((b"host", self._stream.authority))
        if self._chunked:
            fields.append((b"transfer-encoding", b"chunked"))
        fields.append((b"connection", b"close"))
        return request_head(
            request.method.encode("utf-8", "replace"), request.raw_path.encode("latin-1"), fields
        )

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


_NO_HANDLER = asyncio.Protocol()
"""The handler of a bridge refused before aiohttp saw it (never called: it is closed)."""


class _HeadDone(Exception):
    """Stops the parser after an answer that has no body (HEAD, 204, 304)."""
