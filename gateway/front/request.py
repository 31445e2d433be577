"""A request on the lean path (see ``gateway.front.connection``) and its streamed answer.

``ClientRequest`` offers the part of aiohttp's request that ``gateway.proxy.handler`` uses
(method, raw path and headers, body, keep-alive, transport), so one proxy serves both
paths. It arrives over HTTP/1.1 (``gateway.front.connection``) or as an HTTP/2 stream
(``gateway.front.h2``); what differs between the two is behind ``RequestSide``.
``StreamedAnswer`` is the HTTP/1.1 ``web.StreamResponse``: the head as bytes, then the
body as it arrives, chunked unless the API server gave a length.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from gateway.clusters.pieces import Pieces
from gateway.front.h1_protocol import Head
from gateway.proxy import rawresponse

if TYPE_CHECKING:
    from gateway.front.connection import FrontConnection

JOIN_MAX = 16 * 1024
"""Chunks up to a TLS record's size are copied together with their chunk framing."""
BODY_HIGH_WATER = 1024 * 1024
"""Request body bytes held before reading from the client pauses."""

Header = tuple[bytes, bytes]


class HeaderView:
    """Case-insensitive lookups in the raw request headers (first value wins)."""

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: list[Header]) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    def _lookup(self) -> dict[str, str]:
        if self._map is None:
            found: dict[str, str] = {}
            for name, value in self._raw:
                found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
            self._map = found
        return self._map

    def get(self, name: str, default: Any = None) -> Any:
        return self._lookup().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup()

    def __getitem__(self, name: str) -> str:
        return self._lookup()[name.lower()]


class Streamed(Protocol):
    """An answer written while the API server sends it (``web.StreamResponse``'s part)."""

    keep_alive: bool

    def force_close(self) -> None: ...
    async def prepare(self, request: Any) -> None: ...
    async def write(self, data: bytes | bytearray) -> None: ...
    async def write_eof(self, data: bytes = b"") -> None: ...


class RequestSide(Protocol):
    """What a request needs of the connection (HTTP/1.1) or stream (HTTP/2) it came on."""

    @property
    def closing(self) -> bool: ...
    @property
    def transport(self) -> asyncio.Transport | None: ...
    @property
    def remote(self) -> str: ...
    def continue_if_expected(self, request: ClientRequest) -> None: ...
    def body_backlogged(self) -> None: ...
    def body_read(self, size: int, held: int) -> None:
        """The handler took ``size`` body bytes; ``held`` are still buffered."""

    def cut(self) -> None:
        """The answer cannot be completed: end it as an error the client notices."""

    def streamed_answer(
        self,
        request: ClientRequest,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
    ) -> Streamed: ...


class ClientRequest:
    """One request read by ``gateway.front.h1_protocol``; its body arrives through ``feed_body``."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_headers",
        "_held",
        "_keep_alive",
        "_waiter",
        "authorization",
        "body_complete",
        "body_exists",
        "content_length",
        "expect_continue",
        "impersonates",
        "method",
        "raw_headers",
        "raw_path",
        "user_agent",
        "version",
    )

    upgrade = False
    """Upgrades go to aiohttp (``gateway.front.connection.wants``)."""

    def __init__(self, head: Head, conn: RequestSide) -> None:
        self.method = head.method
        self.raw_path = head.target.decode("latin-1")
        self.raw_headers = head.headers
        self.version = head.version
        self.content_length = head.content_length
        self.body_exists = head.has_body
        self.expect_continue = head.expect_continue and head.has_body
        auth = head.authorization
        self.authorization = None if auth is None else auth.decode("latin-1")
        self.user_agent = head.user_agent.decode("latin-1")
        self.impersonates = head.impersonates
        self._keep_alive = head.keep_alive
        self._headers: HeaderView | None = None
        self._conn = conn
        self._chunks: deque[bytes] | None = None  # most requests have no body
        self._held = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.body_complete = False

    # what gateway.proxy.handler reads

    @property
    def content(self) -> ClientRequest:
        """``request.content.iter_any()``, as with aiohttp. (A property, not an attribute
        holding ``self``: that reference cycle left every request to the cyclic garbage
        collector, ~4 % of the gateway's CPU under load.)"""
        return self

    @property
    def path(self) -> str:
        return self.raw_path.partition("?")[0]

    @property
    def headers(self) -> HeaderView:
        if self._headers is None:
            self._headers = HeaderView(self.raw_headers)
        return self._headers

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive and not self._conn.closing

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    @property
    def remote(self) -> str:
        return self._conn.remote

    @property
    def body_held(self) -> int:
        """Body bytes that arrived and have not been read yet."""
        return self._held

    async def read(self) -> bytes:
        """The whole body (the proxy reads bodies whole only up to a small size)."""
        parts: list[bytes] = []
        while chunk := await self.read_any():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def iter_any(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrived in."""
        return Pieces(self.read_any)

    async def read_any(self) -> bytes:
        """The next piece of the body as it arrived, ``b""`` at its end."""
        self._conn.continue_if_expected(self)
        if self._chunks is None:
            self._chunks = deque()
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.body_complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._held -= len(chunk)
        self._conn.body_read(len(chunk), self._held)
        return chunk

    # what the connection feeds

    def cut(self) -> None:
        """The answer broke off after its head was sent (see ``RequestSide.cut``)."""
        self._conn.cut()

    def streamed_answer(
        self,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
    ) -> Streamed:
        return self._conn.streamed_answer(
            self, status, reason, upstream_headers, length, request_id
        )

    # what the connection feeds

    def feed_body(self, data: bytes) -> None:
        if not data:
            return  # b"" is what read_any returns at the end
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.append(data)
        self._held += len(data)
        if self._held > BODY_HIGH_WATER:
            self._conn.body_backlogged()
        self._wake()

    def feed_eof(self) -> None:
        self.body_complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StreamedAnswer:
    """An answer streamed as the API server sends it (watches, big LISTs, logs -f)."""

    __slots__ = ("_chunked", "_conn", "_head", "keep_alive")

    def __init__(
        self,
        conn: FrontConnection,
        request: ClientRequest,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
    ) -> None:
        self._conn = conn
        keep_alive = request.keep_alive
        # Without a length, HTTP/1.0 clients read until the connection closes.
        self._chunked = length is None and request.version == "1.1"
        if length is None and not self._chunked:
            keep_alive = False
        self.keep_alive = keep_alive
        self._head = rawresponse.head(
            status,
            reason,
            upstream_headers,
            length_line=b"" if length is None else b"Content-Length: %d\r\n" % length,
            chunked=self._chunked,
            request_id=request_id,
            keep_alive=keep_alive,
        )

    def force_close(self) -> None:
        self.keep_alive = False

    async def prepare(self, request: Any) -> None:
        self._conn.write(self._head)

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

    async def write_eof(self, data: bytes = b"") -> None:
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
