"""HTTP/1.1 requests from clients, read without I/O: bytes in, events out.

``RequestReader`` parses a client connection's bytes with httptools (llhttp) into
``Head``, ``Body`` and ``End`` events, every request the connection carries, and into
``Invalid`` when the connection cannot go on (answer its status and close). An upgrade
head (``Connection: Upgrade``) is a request like any other: what follows it is read as
HTTP/1.1 too, until the front takes the connection over (after its 101), so no byte
the gateway has not agreed to pass on escapes these checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools

Header = tuple[bytes, bytes]

MAX_HEAD_BYTES = 64 * 1024
"""Request line and header lines together (kubectl's are well under 8 KiB, a long OIDC
ID token included)."""
MAX_HEADERS = 256
MAX_BODY_BYTES = 64 * 1024 * 1024
"""A request body larger than this is refused (413); ``limits.max_request_body``."""


@dataclass(slots=True)
class Head:
    method: str
    target: bytes
    version: str
    headers: list[Header]
    keep_alive: bool
    upgrade: bool
    content_length: int | None
    chunked: bool
    expect_continue: bool
    authorization: bytes | None = None
    user_agent: bytes = b""
    impersonates: bool = False
    """An ``Impersonate-*`` header is present."""

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(slots=True)
class Body:
    data: bytes


@dataclass(slots=True)
class End:
    pass


@dataclass(slots=True)
class Invalid:
    """The connection cannot go on: answer ``status`` and close it."""

    status: int
    message: str
    target: bytes = b""
    """The request target, when it was read before the failure."""


Event = Head | Body | End | Invalid

_END = End()


@dataclass(slots=True)
class _Building:
    target: bytes = b""
    headers: list[Header] = field(default_factory=list)
    size: int = 0
    """Bytes of the target and the header fields (a head that came in one read too)."""
    body: int = 0


class RequestReader:
    """One client connection's requests."""

    __slots__ = (
        "_building",
        "_events",
        "_head_bytes",
        "_in_head",
        "_in_message",
        "_max_body",
        "_parser",
        "begun",
        "failed",
    )

    def __init__(self, max_body: int = MAX_BODY_BYTES) -> None:
        self._max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._building = _Building()
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0
        self.failed = False
        self.begun = 0
        """Requests begun so far (a caller can tell that a new one started)."""

    @property
    def idle(self) -> bool:
        """Between requests: no part of one has arrived."""
        return not self._in_message

    @property
    def in_head(self) -> bool:
        """Part of a request head has arrived, not all of it."""
        return self._in_head and not self.failed

    def feed(self, data: bytes) -> list[Event]:
        events = self._events
        while data and not self.failed:
            rest = b""
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserCallbackError:
                if not self.failed:  # a callback rejected what llhttp accepted
                    self._fail(400, "malformed HTTP request")
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops after an upgrade's head; until the connection is taken
                # over, what follows is HTTP/1.1 again (parsing goes on with it).
                rest = data[exc.args[0] :] if exc.args else b""
            except httptools.HttpParserError as exc:
                self._fail(400, f"malformed HTTP request: {_reason(exc)}")
            if self._in_head:
                self._head_bytes += len(data)  # at most this chunk's earlier bytes too many
                if self._head_bytes > MAX_HEAD_BYTES and not self.failed:
                    self._fail(431, "request header fields too large")
            data = rest
        self._events = []
        return events

    def _fail(self, status: int, message: str) -> None:
        self.failed = True
        self._events.append(Invalid(status, message, self._building.target))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.begun += 1
        self._in_message = True
        self._in_head = True
        self._head_bytes = 0
        self._building = _Building()

    def on_url(self, url: bytes) -> None:
        self._building.target += url
        self._building.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a chunked body's trailer: never a header field (RFC 9110 6.5.1)
        building = self._building
        headers = building.headers
        if len(headers) >= MAX_HEADERS:
            self._fail(431, "too many request header fields")
            raise _Stop()
        building.size += len(name) + len(value) + 4
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        building = self._building
        if building.size > MAX_HEAD_BYTES:  # all of it in one read
            self._fail(431, "request header fields too large")
            raise _Stop()
        target = building.target
        if not target.startswith(b"/"):
            # absolute-form (RFC 9112 3.2.2) names another server; "*" and authority-form
            # name none of ours.
            self._fail(400, "the request target must be a path (origin-form)")
            raise _Stop()
        content_length: int | None = None
        chunked = expect = impersonates = False
        authorization: bytes | None = None
        user_agent = b""
        hosts = 0
        # One pass picks out what the proxy asks of every request.
        for name, value in building.headers:
            lname = name.lower()
            if lname == b"authorization":
                if authorization is None:
                    authorization = value
            elif lname == b"host":
                hosts += 1
            elif lname == b"user-agent":
                user_agent = user_agent or value
            elif lname == b"content-length":
                content_length = int(value)  # llhttp has checked it
            elif lname == b"transfer-encoding":
                if value.strip().lower() != b"chunked":  # llhttp: chunked is last
                    self._fail(501, "only the chunked transfer coding is supported")
                    raise _Stop()
                chunked = True
            elif lname == b"expect":
                expect = value.lower() == b"100-continue"
            elif lname.startswith(b"impersonate-"):
                impersonates = True
        upgrade = parser.should_upgrade()
        if upgrade and (chunked or content_length):
            self._fail(400, "an upgrade request has no body")
            raise _Stop()
        if hosts > 1 or (hosts == 0 and parser.get_http_version() == "1.1"):
            self._fail(400, "a request needs exactly one Host field (RFC 9112 3.2)")
            raise _Stop()
        if content_length is not None and content_length > self._max_body:
            self._fail(413, f"the request body is larger than {self._max_body} bytes")
            raise _Stop()
        head = Head(
            method=parser.get_method().decode("ascii"),
            target=building.target,
            version=parser.get_http_version(),
            headers=building.headers,
            keep_alive=parser.should_keep_alive(),
            upgrade=upgrade,
            content_length=content_length,
            chunked=chunked,
            expect_continue=expect,
            authorization=authorization,
            user_agent=user_agent,
            impersonates=impersonates,
        )
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        building = self._building
        building.body += len(body)
        if building.body > self._max_body:
            self._fail(413, f"the request body is larger than {self._max_body} bytes")
            raise _Stop()
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        self._in_message = False
        self._events.append(_END)


class _Stop(Exception):
    """Stops llhttp after ``Invalid``."""


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if text else type(exc).__name__
