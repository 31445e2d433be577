"""HTTP/1.1 as the gateway writes it <-> HTTP/2 streams to the API server, without I/O.

The agent multiplexes the gateway's ordinary requests onto shared HTTP/2 connections to
the API server (``tunnel.h2upstream``); this module is the translation, pure:

- ``RequestReader`` parses the HTTP/1.1 bytes of one tunnel stream (httptools, llhttp:
  ``Content-Length`` and chunked bodies, one request after another on the same stream)
  into ``RequestHead``, body pieces and the request's end;
- ``h2_request_headers`` turns a head into an HTTP/2 header list: ``:method``,
  ``:scheme``, ``:authority`` (from ``Host``), ``:path``, then every other field in the
  order written, names lower-cased, values untouched; the hop-by-hop fields of RFC 9113
  section 8.2.2 (``Connection``, ``Keep-Alive``, ``Proxy-Connection``,
  ``Transfer-Encoding``, ``Upgrade``) are dropped. No field is added, merged or
  reordered, so identity headers (``Impersonate-*``) reach the API server as the gateway
  wrote them;
- ``h1_response_head`` turns an HTTP/2 answer's headers back into an HTTP/1.1 status line
  and fields (``Content-Length`` kept, otherwise ``Transfer-Encoding: chunked``), so the
  gateway reads what an HTTP/1.1 API server would have sent; ``chunk`` frames a piece of
  its body;
- ``bad_gateway`` is the HTTP/1.1 502 (a Kubernetes ``Status``) written back when a
  request or answer cannot be translated.

Anything this module cannot translate faithfully raises ``Untranslatable``: a request
``unusual`` names (an upgrade, ``Expect``, ``Connection`` naming other fields, ``CONNECT``,
a target not in origin form) goes over a connection of its own as before; CR, LF or NUL in
a name or value, a name that is not a token, two ``Host`` fields, two different
``Content-Length`` fields are refused (the h2 library checks what it receives but not
all of what it sends, so the check is made here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus

import httptools

from tunnel.kubequery import query_flag

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
"""Fields of the HTTP/1.1 connection, not of the request (RFC 9113 section 8.2.2)."""

MAX_HEAD_BYTES = 256 * 1024
"""A request head larger than this is refused (the gateway writes far smaller ones)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""Control characters but HTAB: never in a field value."""
_NO_BODY_STATUS = frozenset({204, 304})
_CONNECTION_TOKENS_ALLOWED = frozenset({b"keep-alive", b"close"})


class Untranslatable(ValueError):
    """A request or answer that cannot be carried across faithfully. The message names
    what was refused, never a value (it may hold a credential)."""


class RequestHead:
    """One request's head as the gateway wrote it."""

    __slots__ = ("chunked", "headers", "keep_alive", "method", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[Header],
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.chunked = chunked
        self.keep_alive = keep_alive


def unusual(head: RequestHead) -> str:
    """Why ``head`` should not go over HTTP/2 ("" if it may): such requests keep a
    connection of their own, relayed byte for byte."""
    if head.method == b"CONNECT":
        return "CONNECT"
    if not head.target.startswith(b"/"):
        return "a target not in origin form"
    for name, value in head.headers:
        lower = name.lower()
        if lower == b"upgrade":
            return "an upgrade"
        if lower == b"expect":
            return "Expect"
        if lower == b"connection":
            for item in value.lower().split(b","):
                token = item.strip(b" \t")
                if token == b"upgrade":
                    return "an upgrade"
                if token and token not in _CONNECTION_TOKENS_ALLOWED:
                    return "Connection naming other fields"
        elif lower == b"transfer-encoding" and value.strip(b" \t").lower() != b"chunked":
            return "a transfer coding other than chunked"
    return ""


_NAMESPACE_SUBRESOURCES = frozenset({b"status", b"finalize"})


def long_running(head: RequestHead) -> bool:
    """Whether the API server keeps ``head``'s answer open: a watch (``?watch`` on a
    collection, or the legacy ``/watch/`` path) or a followed log (``.../log?follow``),
    read as kube-apiserver reads them (the gateway's ``RequestInfo.long_running``, which
    a test holds this to). Such requests are worth an HTTP/2 stream: a TLS connection
    of their own would be held for as long as they last."""
    if head.method != b"GET":
        return False
    path, _, query = head.target.partition(b"?")
    parts = [p for p in path.split(b"/") if p]
    if not parts or parts[0] not in (b"api", b"apis"):
        return False
    rest = parts[2:] if parts[0] == b"api" else parts[3:]
    if not rest:
        return False
    if rest[0] == b"watch":
        return True
    if len(rest) > 2 and rest[0] == b"namespaces" and rest[2] not in _NAMESPACE_SUBRESOURCES:
        rest = rest[2:]
    if len(rest) < 2:
        return query_flag(query.decode("latin-1"), "watch")
    return len(rest) >= 3 and rest[2] == b"log" and query_flag(query.decode("latin-1"), "follow")


def _check_field(name: bytes, value: bytes) -> None:
    if _TOKEN.fullmatch(name) is None:
        raise Untranslatable("a header field name that is not a token")
    if _CTL.search(value) is not None:
        raise Untranslatable("a header field value with a control character")


def h2_request_headers(head: RequestHead, scheme: bytes = b"https") -> list[Header]:
    """The HTTP/2 header list of ``head`` (see the module docstring)."""
    if _TOKEN.fullmatch(head.method) is None:
        raise Untranslatable("a method that is not a token")
    if not head.target.startswith(b"/") or _CTL.search(head.target) or b" " in head.target:
        raise Untranslatable("a request target that is not an origin-form path")
    authority: bytes | None = None
    lengths: set[bytes] = set()
    rest: list[Header] = []
    for name, value in head.headers:
        _check_field(name, value)
        lower = name.lower()
        if lower == b"host":
            if authority is not None:
                raise Untranslatable("two Host fields")
            authority = value.strip(b" \t")
            continue
        if lower in HOP_BY_HOP:
            continue
        if lower == b"te":
            if value.strip(b" \t").lower() != b"trailers":
                continue  # only "trailers" may cross (RFC 9113 section 8.2.2)
        elif lower == b"content-length":
            lengths.add(value.strip(b" \t"))
        rest.append((lower, value))
    if not authority:
        raise Untranslatable("no Host field")
    if len(lengths) > 1:
        raise Untranslatable("two different Content-Length fields")
    out: list[Header] = [
        (b":method", head.method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", head.target),
    ]
    out += rest
    return out


def canonical_name(name: bytes) -> bytes:
    """``content-type`` -> ``Content-Type``, as Go's HTTP/1.1 server writes names."""
    return b"-".join(part[:1].upper() + part[1:].lower() for part in name.split(b"-"))


class ResponseFraming:
    """How an answer's body is written in HTTP/1.1, and how much of it is still to come
    when its length is known (``remaining``; the relay counts it down)."""

    __slots__ = ("chunked", "no_body", "remaining")

    def __init__(self, chunked: bool, no_body: bool, remaining: int = 0) -> None:
        self.chunked = chunked
        self.no_body = no_body
        self.remaining = remaining
        """Body bytes the Content-Length still promises (0 without a body; unused when
        chunked)."""

    @property
    def complete(self) -> bool:
        """The HTTP/1.1 reader has the whole answer: no body, or all its length came (a
        chunked answer is complete only with its last chunk, written at the stream's
        end)."""
        return self.no_body or (not self.chunked and self.remaining <= 0)


def h1_response_head(
    headers: Sequence[Header], *, head_request: bool, ended: bool, close: bool = False
) -> tuple[bytes, ResponseFraming]:
    """The HTTP/1.1 head of an HTTP/2 answer and how its body is framed.

    ``head_request``: the request was HEAD (no body follows, whatever the fields say);
    ``ended``: the answer ended with its headers (no body); ``close``: the relay closes
    the stream after this answer (``Connection: close``).
    """
    status = -1
    fields: list[bytes] = []
    length: bytes | None = None
    for name, value in headers:
        if name.startswith(b":"):
            if name != b":status" or status != -1:
                raise Untranslatable("an unexpected pseudo-header in the answer")
            if len(value) != 3 or not value.isdigit():
                raise Untranslatable("a :status that is not three digits")
            status = int(value)
            continue
        _check_field(name, value)
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        if lower == b"content-length":
            digits = value.strip(b" \t")
            if not digits.isdigit():
                raise Untranslatable("a Content-Length that is not a number")
            if length is not None and length != digits:
                raise Untranslatable("two different Content-Length fields in the answer")
            if length is not None:
                continue
            length = digits
        fields += [canonical_name(lower), b": ", value, b"\r\n"]
    if status < 100:
        raise Untranslatable("an answer without :status")
    no_body = head_request or status in _NO_BODY_STATUS or status < 200
    chunked = False
    if not no_body and length is None:
        if ended:
            fields.append(b"Content-Length: 0\r\n")
        else:
            fields.append(b"Transfer-Encoding: chunked\r\n")
            chunked = True
    if close:
        fields.append(b"Connection: close\r\n")
    line = b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))
    remaining = int(length) if length is not None and not no_body else 0
    return line + b"".join(fields) + b"\r\n", ResponseFraming(chunked, no_body, remaining)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def chunk(data: bytes | bytearray | memoryview) -> bytes:
    """One HTTP/1.1 chunk (never empty: an empty one would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def bad_gateway(message: str) -> bytes:
    """An HTTP/1.1 502 with a Kubernetes ``Status`` body; the stream closes after it."""
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"the agent could not relay the request over HTTP/2: {message}",
            "reason": "BadGateway",
            "code": 502,
        }
    ).encode()
    return (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )


# -- reading the gateway's requests ---------------------------------------------------


class RequestReader:
    """Bytes of one tunnel stream in, request events out (``feed``).

    Events, in order: a ``RequestHead``; its body as ``bytes`` pieces (de-chunked);
    ``None`` once the request is complete; then the next request's. After a head that
    ``unusual`` names, or one llhttp does not read, reading stops (``stopped``) and ``raw``
    holds every byte of that request fed so far, to be relayed as it is. The gateway
    writes one request at a time: bytes of a second request in the piece that ended the
    first are refused.
    """

    __slots__ = (
        "_events",
        "_head_seen",
        "_headers",
        "_parser",
        "_pieces",
        "_short_stop",
        "_url",
        "raw",
        "stopped",
    )

    def __init__(self, short_stop: bool = False) -> None:
        self._short_stop = short_stop
        """Stop (as at an unusual head) at a first request that is not ``long_running``:
        such a stream is relayed byte for byte on a connection of its own."""
        self._parser: httptools.HttpRequestParser | None = None
        self._events: list[RequestHead | bytes | None] = []
        self._headers: list[Header] = []
        self._url = b""
        self._head_seen = False
        self._pieces = 0
        """Requests that ended within the piece being fed."""
        self.raw: list[bytes] = []
        """The current request's bytes while its head is read."""
        self.stopped = ""
        """Why reading stopped at an unusual request ("" while reading)."""

    @property
    def between_requests(self) -> bool:
        """The last request is complete and no byte of the next has come."""
        return self._parser is None

    def feed(self, data: bytes | bytearray) -> list[RequestHead | bytes | None]:
        """Events for ``data`` (``None`` is a request's end); ``Untranslatable`` if the
        bytes are not an HTTP/1.1 request the relay can take."""
        if self.stopped:
            raise Untranslatable("bytes after an unusual request")
        if not data:
            return []
        if self._parser is None:
            # A new request begins with this data.
            self._parser = httptools.HttpRequestParser(self)
            self._headers = []
            self._url = b""
            self._head_seen = False
            self.raw = []
        parser = self._parser
        if not self._head_seen:
            self.raw.append(bytes(data))
        self._pieces = 0
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self.stopped:
                raise Untranslatable("an upgrade") from None
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, Untranslatable):
                raise cause from None
            raise Untranslatable("not an HTTP/1.1 request") from None
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
        if not self._head_seen and sum(map(len, self.raw)) > MAX_HEAD_BYTES:
            raise Untranslatable("a request head too large")
        events, self._events = self._events, []
        return events

    def _parse_error(self, exc: Exception) -> None:
        if self.stopped:
            return  # the bytes after an unusual head: relayed as they are
        if self._head_seen:
            raise Untranslatable(f"not an HTTP/1.1 request: {exc}") from None
        # A head llhttp does not take (a method it does not know ...): relayed as it
        # came, as before, for the API server to judge.
        self.stopped = f"a head the parser does not take ({exc})"

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._pieces:
            raise Untranslatable("a second request in the piece that ended the first")

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        chunked = False
        for name, value in self._headers:
            if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        head = RequestHead(
            parser.get_method(),
            self._url,
            self._headers,
            chunked=chunked,
            keep_alive=parser.should_keep_alive() and parser.get_http_version() == "1.1",
        )
        self._head_seen = True
        why = unusual(head)
        if not why and self._short_stop and not long_running(head):
            why = "not long-running"
        self._short_stop = False
        if why:
            self.stopped = why
            return
        self.raw = []
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        if not self.stopped:
            self._events.append(body)

    def on_message_complete(self) -> None:
        if self.stopped:
            return
        self._events.append(None)
        self._pieces += 1
        self._parser = None


def header_list(headers: Iterable[Header]) -> list[Header]:
    """``headers`` as a list of byte pairs (what tests compare)."""
    return [(bytes(n), bytes(v)) for n, v in headers]
