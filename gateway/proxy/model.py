"""The request model: what every front hands the proxy, and the one answer it gets back.

A front (``gateway.front``: HTTP/1.1 connections, HTTP/2 streams) turns what a client
sent into a ``Request`` and passes it to ``gateway.proxy.handler.answer`` (or to the
bridge to aiohttp, or to the agents' endpoint); each returns an ``Answer``, which the
front writes its own way. An ``Answer`` is one of three kinds:

- ``WHOLE``: status, reason, the header lines as bytes and the body, not yet written
  (most kubectl answers, and every error: a Kubernetes ``Status``);
- ``STREAMED``: already written, as it arrived, through the ``AnswerWriter`` the request
  gave (watches, big LISTs, ``logs -f``, what aiohttp answers through the bridge);
- ``SWITCHING``: a ``101 Switching Protocols`` whose header lines the front writes
  before it hands its transport to the answer's ``Upgrade`` (exec, attach, port-forward;
  an agent's tunnel).

This module is below the fronts: they import it, it imports none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any, Protocol

from gateway.errors import status_body

Header = tuple[bytes, bytes]

WHOLE = 0
STREAMED = 1
SWITCHING = 2


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


class Request(Protocol):
    """One client request, as the proxy (and the bridge and the agents' endpoint) read it."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str:
        """The request target as sent (path and query)."""

    @property
    def path(self) -> str: ...
    @property
    def version(self) -> str:
        """``"1.1"``, ``"1.0"`` or ``"2"``."""

    @property
    def raw_headers(self) -> list[Header]: ...
    @property
    def headers(self) -> HeaderView: ...
    @property
    def authorization(self) -> str | None:
        """The first ``Authorization`` field."""

    @property
    def impersonates(self) -> bool:
        """An ``Impersonate-*`` field is present."""

    @property
    def user_agent(self) -> str: ...
    @property
    def remote(self) -> str:
        """The client's address."""

    @property
    def upgrade(self) -> bool:
        """An HTTP/1.1 upgrade (``Connection: Upgrade`` with ``Upgrade``)."""

    @property
    def content_length(self) -> int | None: ...
    @property
    def body_exists(self) -> bool: ...
    @property
    def keep_alive(self) -> bool:
        """The connection may go on after this request's answer."""

    async def read(self) -> bytes:
        """The whole body."""

    def iter_any(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrived in."""

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

    def cut(self) -> None:
        """The answer cannot be completed: end it as an error the client notices (the
        connection closed, or the HTTP/2 stream reset)."""


class Upgrade(Protocol):
    """What takes a client's connection over after a 101 (``SWITCHING``)."""

    async def take_over(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol) -> None:
        """The 101 is written: from now on ``transport`` is this upgrade's (it becomes its
        protocol); returns when the connection is done. ``previous``, the front's
        protocol, is told when the connection is lost (``connection_lost``)."""

    def abandon(self) -> None:
        """The 101 will not be written (the client went away): release what is held."""


class Answer:
    """What a request is answered with (see the module's docstring for the kinds)."""

    __slots__ = (
        "body",
        "headers",
        "keep_alive",
        "kind",
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
