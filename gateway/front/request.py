"""A client's request as the fronts make it, and the HTTP/1.1 streamed answer.

Both fronts make the request model's one ``Request`` (``gateway.proxy.model``):
``client_request`` from a head read over HTTP/1.1 (``gateway.front.connection``) or an
HTTP/2 stream's fields (``gateway.front.h2``); what differs between the two is behind
their ``RequestSide``. ``StreamedAnswer`` is the HTTP/1.1 ``AnswerWriter``: the head as
bytes, then the body as it arrives, chunked unless the API server gave a length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.front.h1_protocol import Head
from gateway.proxy import rawresponse
from gateway.proxy.model import Header, Request, RequestSide

if TYPE_CHECKING:
    from gateway.front.connection import FrontConnection

JOIN_MAX = 16 * 1024
"""Chunks up to a TLS record's size are copied together with their chunk framing."""


def client_request(head: Head, side: RequestSide) -> Request:
    """The request model's ``Request`` for a head read by ``gateway.front.h1_protocol``
    (or built from an HTTP/2 stream's fields)."""
    auth = head.authorization
    return Request(
        side,
        head.method,
        head.target.decode("latin-1"),
        head.version,
        head.headers,
        keep_alive=head.keep_alive,
        upgrade=head.upgrade,
        content_length=head.content_length,
        body_exists=head.has_body,
        expect_continue=head.expect_continue and head.has_body,
        authorization=None if auth is None else auth.decode("latin-1"),
        user_agent=head.user_agent.decode("latin-1"),
        impersonates=head.impersonates,
    )


class StreamedAnswer:
    """An answer streamed as it arrives (watches, big LISTs, logs -f): its head is
    written when it is made."""

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
