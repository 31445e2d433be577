"""The request model: what every front hands the proxy, and the one answer it gets back.

A front (``gateway.front``: HTTP/1.1 connections, HTTP/2 streams) turns what a client
sent into a ``Request`` (one class, so the compiled proxy reads its fields natively;
what differs between fronts is behind its ``RequestSide``) and passes it to
``gateway.proxy.handler.answer`` (or to the
bridge to aiohttp, or to the agents' endpoint); each returns an ``Answer``, which the
front writes its own way. An ``Answer`` is one of three kinds:

- ``WHOLE``: status, reason, the header lines as bytes and the body, not yet written
  (most kubectl answers, and every error: a Kubernetes ``Status``);
- ``STREAMED``: already written, as it arrived, through the ``AnswerWriter`` the request
  gave (watches, big LISTs, ``logs -f``, what aiohttp answers through the bridge);
- ``SWITCHING``: a ``101 Switching Protocols`` whose header lines the front writes
  before it hands its transport to the answer's ``Upgrade`` (exec, attach, port-forward;
  an agent's tunnel);
- ``PARKED``: the head is written and the rest goes on without the request's task: the
  answer's ``parked`` relays the body by callbacks as it arrives and finishes the stream
  when it is done (long-running answers, watches and ``logs -f``, on fronts whose writer
  offers ``parking``: HTTP/2; a task waiting for the next event was most of what each
  open watch cost, docs/benchmarks.md).

This module is below the fronts: they import it, it imports none of them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any, Protocol

from gateway.errors import status_body
from gateway.pieces import Pieces

Header = tuple[bytes, bytes]

WHOLE = 0
STREAMED = 1
SWITCHING = 2
PARKED = 3


class HeaderView:
    """Case-insensitive lookups in raw request headers (first value wins)."""

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


class AnswerWriter(Protocol):
    """An answer written while it arrives; its head is out once the writer exists."""

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after this answer."""

    async def write(self, data: bytes | bytearray) -> None:
        """Send a piece of the body (waits while the client does not keep up)."""

    async def end(self) -> None:
        """The body is complete."""

    def parking(self) -> ParkedSide | None:
        """The same answer written by callbacks (``PARKED``), where the front can."""


class Parked(Protocol):
    """A ``PARKED`` answer's relay, as its front sees it."""

    def abort(self) -> None:
        """The client went away: stop, release what is held, finish."""


class ParkedSide(Protocol):
    """A streamed answer's writer driven by callbacks instead of an awaiting task."""

    def send_now(self, data: bytes | bytearray) -> bool:
        """Write a piece of the body; False when the client is backed up (then
        ``when_writable``)."""

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the client takes more (at once if it already does)."""

    def end_now(self) -> None:
        """The body is complete."""

    def cut(self) -> None:
        """The answer cannot be completed: end it as an error the client notices."""

    def hold(self, parked: Parked) -> None:
        """``parked`` has the answer now: the client going away aborts it."""

    def done(self) -> None:
        """``parked`` is finished: the front may forget the stream."""


BODY_HIGH_WATER = 1024 * 1024
"""Request body bytes held before reading from the client pauses."""


class RequestSide(Protocol):
    """What a request needs of the connection (HTTP/1.1) or stream (HTTP/2) it came on."""

    @property
    def closing(self) -> bool: ...
    @property
    def transport(self) -> asyncio.Transport | None: ...
    @property
    def remote(self) -> str: ...
    def continue_if_expected(self, request: Request) -> None: ...
    def body_backlogged(self) -> None: ...
    def body_read(self, size: int, held: int) -> None:
        """The handler took ``size`` body bytes; ``held`` are still buffered."""

    def cut(self) -> None:
        """The answer cannot be completed: end it as an error the client notices."""

    def start_answer(
        self,
        request: Request,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
        bodyless: bool,
    ) -> AnswerWriter: ...


class Request:
    """One client request, as the proxy (and the bridge and the agents' endpoint) read it:
    made by a front (or the gateway's own API client), its body fed as it arrives
    (``feed_body``, ``feed_eof``, ``fail``) and read by what answers it."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_headers",
        "_held",
        "_keep_alive",
        "_waiter",
        "authority",
        "authorization",
        "body_complete",
        "body_exists",
        "client",
        "content_length",
        "expect_continue",
        "impersonates",
        "method",
        "raw_headers",
        "raw_path",
        "upgrade",
        "user_agent",
        "version",
    )

    def __init__(
        self,
        conn: RequestSide,
        method: str,
        raw_path: str,
        version: str,
        raw_headers: list[Header],
        *,
        keep_alive: bool,
        upgrade: bool,
        content_length: int | None,
        body_exists: bool,
        expect_continue: bool,
        authorization: str | None,
        user_agent: str,
        impersonates: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        """The request target as sent (path and query)."""
        self.raw_headers = raw_headers
        self.version = version
        """``"1.1"``, ``"1.0"`` or ``"2"``."""
        self.content_length = content_length
        self.body_exists = body_exists
        self.expect_continue = expect_continue
        self.authorization = authorization
        """The first ``Authorization`` field."""
        self.user_agent = user_agent
        self.impersonates = impersonates
        """An ``Impersonate-*`` field is present."""
        self.upgrade = upgrade
        """An HTTP/1.1 upgrade (``Connection: Upgrade`` with ``Upgrade``)."""
        self._keep_alive = keep_alive
        self.client = ""
        """The client's address named by a trusted balancer (``X-Forwarded-For``); empty:
        the connection's peer is the client."""
        self._headers: HeaderView | None = None
        self._conn = conn
        self._chunks: deque[bytes] | None = None  # most requests have no body
        self._held = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.body_complete = False
        self.authority = b""
        """HTTP/2's ``:authority`` (what the bridge sends aiohttp as ``Host``)."""

    # what the proxy reads

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
        return self.client or self._conn.remote

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

    def cut(self) -> None:
        """The answer broke off after its head was sent (see ``RequestSide.cut``)."""
        self._conn.cut()

    async def start_answer(
        self,
        status: int,
        reason: str,
        headers: list[Header],
        length: int | None,
        request_id: str,
        bodyless: bool = False,
    ) -> AnswerWriter:
        """Write an answer's head now (``headers``: the API server's lines; hop-by-hop
        and framing ones are not passed on) and return the writer of its body.
        ``bodyless``: an answer to HEAD, a 204 or a 304."""
        return self._conn.start_answer(self, status, reason, headers, length, request_id, bodyless)

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


class Upgrade(Protocol):
    """What takes a client's connection over after a 101 (``SWITCHING``)."""

    async def take_over(
        self, transport: asyncio.Transport, previous: asyncio.BaseProtocol
    ) -> bool | None:
        """The 101 is written: from now on ``transport`` is this upgrade's (it becomes its
        protocol); returns when the connection is done, or True once it runs on without
        the front's task (an agent's tunnel: its session ends the connection itself).
        ``previous``, the front's protocol, is told when the connection is lost
        (``connection_lost``)."""

    def abandon(self) -> None:
        """The 101 will not be written (the client went away): release what is held."""


class Answer:
    """What a request is answered with (see the module's docstring for the kinds)."""

    __slots__ = (
        "body",
        "headers",
        "keep_alive",
        "kind",
        "parked",
        "reason",
        "request_id",
        "status",
        "upgrade",
    )

    def __init__(
        self,
        kind: int,
        status: int,
        reason: str,
        headers: list[Header],
        body: bytes,
        request_id: str,
        keep_alive: bool,
        upgrade: Upgrade | None,
    ) -> None:
        self.kind = kind
        self.status = status
        self.reason = reason
        self.headers = headers
        """Header lines as the API server sent them (the front drops hop-by-hop and
        framing ones and adds its own)."""
        self.body = body
        self.request_id = request_id
        """Sent as ``X-Request-Id`` when not empty."""
        self.keep_alive = keep_alive
        """``STREAMED``: what the written head told the client; else True (the front
        decides)."""
        self.upgrade = upgrade
        self.parked: Parked | None = None
        """``PARKED``: the relay that has the answer."""


def whole(
    status: int,
    reason: str,
    headers: list[Header],
    body: bytes,
    *,
    request_id: str = "",
) -> Answer:
    """A complete answer, not yet written (to HEAD, the front sends no body and the
    ``Content-Length`` among ``headers``)."""
    return Answer(WHOLE, status, reason, headers, body, request_id, True, None)


def streamed(keep_alive: bool) -> Answer:
    """An answer already written through an ``AnswerWriter``."""
    return Answer(STREAMED, 0, "", [], b"", "", keep_alive, None)


def parked(relay: Parked) -> Answer:
    """An answer whose head is written and whose body ``relay`` passes on."""
    answer = Answer(PARKED, 0, "", [], b"", "", True, None)
    answer.parked = relay
    return answer


def switching(reason: str, headers: list[Header], upgrade: Upgrade, request_id: str = "") -> Answer:
    """``101 Switching Protocols``: ``headers`` go out as they are (``Connection`` and
    ``Upgrade`` among them), then ``upgrade`` has the connection."""
    return Answer(
        SWITCHING, 101, reason or "Switching Protocols", headers, b"", request_id, False, upgrade
    )


def phrase(status: int) -> str:
    """The reason phrase of ``status`` (``"Not Found"``)."""
    text = _PHRASES.get(status)
    if text is None:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = ""
        _PHRASES[status] = text
    return text


_PHRASES: dict[int, str] = {413: "Content Too Large"}  # RFC 9110's name

JSON = (b"Content-Type", b"application/json")
_NO_CACHE = (b"Cache-Control", b"no-cache, private")


def status_answer(
    status: int,
    message: str,
    reason: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str = "",
) -> Answer:
    """A Kubernetes ``Status`` answer (errors under ``/k8s/``, so kubectl prints them);
    ``reason`` is the Status reason (``NotFound``)."""
    lines = [_NO_CACHE]
    if headers:
        lines += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if status == 401:
        lines.append((b"WWW-Authenticate", b'Bearer realm="herdgate"'))
    lines.append(JSON)
    body = status_body(status, message, reason, details)
    return whole(status, phrase(status), lines, body, request_id=request_id)
