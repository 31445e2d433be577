"""Answers read whole from the API server, written to the client as one buffer.

Most kubectl answers are small and complete (a GET, a short LIST, a create). aiohttp's
response machinery — a ``CIMultiDict`` of decoded headers, then ``prepare``, header
serialisation and ``write_eof`` — cost about a quarter of the gateway's time per such
request (py-spy, ``python -m bench --profile``). ``RawResponse`` instead passes the API
server's header lines on as the bytes they arrived as, adds ``Content-Length``,
``Date``, ``X-Request-Id`` (and ``Connection: close`` when the connection ends), and
writes status line, headers and body with one ``transport.write``.

aiohttp's request handler needs three things of a response: ``prepare(request)``,
``write_eof()`` and ``keep_alive``; that is all this class offers. Streamed answers
(watches, big LISTs) and upgrades still go through aiohttp.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

from gateway.proxy.heads import CACHED_NAME_BYTES

Header = tuple[bytes, bytes]

HOP_AND_FRAMING = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"te",
        b"content-length",
        b"date",
        b"server",
    }
)
"""Header lines of the API server's answer that the gateway does not pass on as they are."""

_passed: dict[bytes, bool] = {}
_date: list[Any] = [0, b""]


def _date_value() -> bytes:
    now = int(time.time())
    if now != _date[0]:  # one formatdate per second
        _date[:] = [now, formatdate(now, usegmt=True).encode("ascii")]
    value: bytes = _date[1]
    return value


def _date_line() -> bytes:
    return b"Date: " + _date_value() + b"\r\n"


def _passes(name: bytes) -> bool:
    passes = _passed.get(name)
    if passes is None:
        passes = name.lower() not in HOP_AND_FRAMING
        if len(_passed) < 256:  # API servers send a small, fixed set of names
            _passed[name] = passes
    return passes


def h2_headers(
    upstream_headers: list[Header], *, length: int | None, request_id: str
) -> list[Header]:
    """An HTTP/2 answer's header fields: the API server's (names lower case, without
    hop-by-hop and framing ones), ``content-length`` when known, ``date`` and
    ``x-request-id``."""
    out: list[Header] = []
    names = _h2_names
    for name, value in upstream_headers:
        lower = names.get(name)
        if lower is None:
            lower = name.lower() if _passes(name) else b""
            # API servers send a small, fixed set of names (a pod's behind a service
            # proxy may send any: long ones are not kept).
            if len(names) < 256 and len(name) <= CACHED_NAME_BYTES:
                names[name] = lower
        if lower:
            out.append((lower, value))
    if length is not None:
        out.append((b"content-length", b"%d" % length))
    out.append((b"date", _date_value()))
    if request_id:
        out.append((b"x-request-id", request_id.encode("ascii")))
    return out


_h2_names: dict[bytes, bytes] = {}


def aiohttp_parts(response: Any) -> tuple[list[Header], bytes]:
    """The header lines and body of an answer built with aiohttp's helpers (the proxy's
    error answers, ``gateway.errors``), for writing them the lean path's way."""
    body = getattr(response, "body", None)
    data = body if isinstance(body, bytes) else b""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    if response.content_type and "Content-Type" not in response.headers:
        headers.append((b"Content-Type", response.content_type.encode("latin-1")))
    return headers, data


def head(
    status: int,
    reason: str,
    upstream_headers: list[Header],
    *,
    length_line: bytes,
    chunked: bool = False,
    request_id: str,
    keep_alive: bool,
) -> bytes:
    """Status line and header lines: the API server's (but for hop-by-hop and framing
    ones), then ``length_line`` or chunked framing, ``Date``, ``X-Request-Id`` and
    ``Connection: close`` when the connection ends after this answer."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1") or b"OK")]
    for name, value in upstream_headers:
        if _passes(name):
            parts += [name, b": ", value, b"\r\n"]
    parts.append(b"Transfer-Encoding: chunked\r\n" if chunked else length_line)
    parts.append(_date_line())
    if request_id:
        parts += [b"X-Request-Id: ", request_id.encode("ascii"), b"\r\n"]
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def build(
    status: int,
    reason: str,
    upstream_headers: list[Header],
    body: bytes,
    *,
    request_id: str,
    keep_alive: bool,
    head_only: bool = False,
) -> bytes:
    """The whole answer (pure but for the date). ``head_only``: an answer to HEAD, whose
    ``Content-Length`` is the API server's and which has no body."""
    no_body = head_only or status < 200 or status in (204, 304)
    if not no_body:
        length_line = b"Content-Length: %d\r\n" % len(body)
    else:
        length_line = b""
        if head_only:
            for name, value in upstream_headers:
                if name.lower() == b"content-length":
                    length_line = b"Content-Length: " + value + b"\r\n"
    out = head(
        status,
        reason,
        upstream_headers,
        length_line=length_line,
        request_id=request_id,
        keep_alive=keep_alive,
    )
    return out if no_body else out + body


class RawResponse:
    """A complete answer that aiohttp's request handler sends by calling ``prepare``."""

    __slots__ = ("_body", "_head", "_headers", "_request_id", "keep_alive", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        body: bytes,
        *,
        request_id: str,
        keep_alive: bool,
        head: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self._headers = upstream_headers
        self._body = body
        self._request_id = request_id
        self._head = head
        self.keep_alive = keep_alive

    @property
    def prepared(self) -> bool:
        return False

    def force_close(self) -> None:
        self.keep_alive = False

    async def prepare(self, request: Any) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        transport.write(
            build(
                self.status,
                self.reason,
                self._headers,
                self._body,
                request_id=self._request_id,
                keep_alive=self.keep_alive,
                head_only=self._head,
            )
        )

    def h2_answer(self) -> tuple[int, list[Header], bytes]:
        """Status, header fields and body for an HTTP/2 stream."""
        no_body = self._head or self.status < 200 or self.status in (204, 304)
        length: int | None = len(self._body)
        if self._head:
            length = next(
                (
                    int(v)
                    for n, v in self._headers
                    if n.lower() == b"content-length" and v.strip().isdigit()
                ),
                None,
            )
        elif no_body:
            length = None
        headers = h2_headers(self._headers, length=length, request_id=self._request_id)
        return self.status, headers, b"" if no_body else self._body

    async def write_eof(self, data: bytes = b"") -> None:
        return None
