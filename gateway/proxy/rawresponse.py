"""Answers written as bytes: HTTP/1.1 heads and whole answers, HTTP/2 header fields.

Most kubectl answers are small and complete (a GET, a short LIST, a create). The fronts
write them with one ``transport.write``: the API server's header lines passed on as the
bytes they arrived as (but hop-by-hop and framing ones), then ``Content-Length``,
``Date``, ``X-Request-Id`` and ``Connection: close`` when the connection ends
(aiohttp's response machinery was a large share of the gateway's time per such
request: py-spy, ``python -m bench --profile``; docs/design.md section 9 has the
figure). Streamed answers use ``head`` for their HTTP/1.1 head and ``h2_headers`` for
their HEADERS.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

from gateway.proxy.heads import CACHED_NAME_BYTES
from gateway.proxy.model import Answer

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


def h2_whole(answer: Answer, head_only: bool) -> tuple[int, list[Header], bytes]:
    """A ``WHOLE`` answer's status, header fields and body for an HTTP/2 stream
    (``head_only``: an answer to HEAD, whose ``Content-Length`` is the API server's)."""
    no_body = head_only or answer.status < 200 or answer.status in (204, 304)
    length: int | None = len(answer.body)
    if head_only:
        length = next(
            (
                int(v)
                for n, v in answer.headers
                if n.lower() == b"content-length" and v.strip().isdigit()
            ),
            None,
        )
    elif no_body:
        length = None
    headers = h2_headers(answer.headers, length=length, request_id=answer.request_id)
    return answer.status, headers, b"" if no_body else answer.body


_NOT_AFTER_101 = frozenset({b"content-length", b"transfer-encoding"})


def switching_head(answer: Answer) -> bytes:
    """A ``SWITCHING`` answer's head: the 101 as the API server (or the agents' endpoint)
    gave it, ``Connection`` and ``Upgrade`` included, and ``X-Request-Id``."""
    parts = [b"HTTP/1.1 101 %s\r\n" % answer.reason.encode("latin-1")]
    for name, value in answer.headers:
        if name.lower() not in _NOT_AFTER_101:
            parts += [name, b": ", value, b"\r\n"]
    if answer.request_id:
        parts += [b"X-Request-Id: ", answer.request_id.encode("ascii"), b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)
