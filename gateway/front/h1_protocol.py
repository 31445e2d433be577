"""HTTP/1.1 requests from clients, read without I/O: bytes in, events out.

``RequestReader`` parses a client connection's bytes with httptools (llhttp) into
``Head``, ``Body`` and ``End`` events for the requests the gateway answers itself on its
lean path (see ``gateway.front.connection``). A request it should not answer there (``wants``
says no: the management API, upgrades) is handed to aiohttp with the connection: the
reader then stops parsing and keeps the raw bytes from the first byte of that request
on, which ``take_raw`` gives to the new protocol.

Raw bytes can only be kept from a message that began at the start of a ``feed``: the
reader cannot tell where inside a chunk a pipelined message began. Clients do not
pipeline (Go's, curl's, browsers'), so such a request gets an ``Invalid`` answer
instead of a guess.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """One client connection's requests. ``wants(head)``: answered on the lean path."""

    __slots__ = (
        "_building",
        "_events",
        "_head_bytes",
        "_in_head",
        "_in_message",
        "_max_body",
        "_parser",
        "_raw",
        "_raw_valid",
        "_started_in_feed",
        "_upgrade_tail",
        "_wants",
        "begun",
        "failed",
        "handing_off",
    )

    def __init__(self, wants: Callable[[Head], bool], max_body: int = MAX_BODY_BYTES) -> None:
        self._wants = wants
        self._max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._building = _Building()
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0
        self._raw: list[bytes] = []
        """The bytes of the current message since its first byte (while ``_raw_valid``)."""
        self._raw_valid = False
        self._started_in_feed = False
        self._upgrade_tail = b""
        self.handing_off = False
        """A request for aiohttp arrived: no more events; ``take_raw`` has its bytes."""
        self.failed = False
        self.begun = 0
        """Requests begun so far (a caller can tell that a new one started)."""

    @property
    def idle(self) -> bool:
        """Between requests: no part of one has arrived."""
        return not self._in_message and not self.handing_off

    @property
    def in_head(self) -> bool:
        """Part of a request head has arrived, not all of it."""
        return self._in_head and not self.failed

    def feed(self, data: bytes) -> list[Event]:
        if self.handing_off:
            self._raw.append(data)
            return []
        if self.failed or not data:
            return []
        if self._in_message:
            if self._raw_valid:
                self._raw.append(data)
        else:
            self._raw = [data]
            self._raw_valid = True
        # A message that begins after anything else in this chunk began mid-chunk.
        self._started_in_feed = self._in_message
        events = self._events
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self._stopped():  # a callback rejected what llhttp accepted
                self._fail(400, "malformed HTTP request")
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after the head of an upgrade; ``wants`` refused it already
            # (``gateway.front.relay`` goes on with what follows it: ``take_upgrade_tail``).
            self._upgrade_tail = data[exc.args[0] :] if exc.args else b""
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {_reason(exc)}")
        if self._in_head:
            self._head_bytes += len(data)  # at most this chunk's earlier bytes too many
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.failed:
            self._fail(431, "request header fields too large")
        self._events = []
        return events

    def take_raw(self) -> bytes:
        """After ``handing_off``: every byte of the handed-off request and what followed."""
        raw, self._raw = self._raw, []
        return b"".join(raw)

    def take_upgrade_tail(self) -> bytes:
        """After a ``Head`` with ``upgrade``: the bytes of that feed after its head (the
        parser goes on with the next ``feed`` as if the upgrade were refused)."""
        tail, self._upgrade_tail = self._upgrade_tail, b""
        return tail

    def _stopped(self) -> bool:
        """Parsing was stopped on purpose (``_HandOff``, ``_Stop``)."""
        return self.handing_off or self.failed

    def _fail(self, status: int, message: str) -> None:
        self.failed = True
        self._events.append(Invalid(status, message))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._started_in_feed:
            self._raw_valid = False  # pipelined: began mid-chunk
        self._started_in_feed = True
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
            upgrade=parser.should_upgrade(),
            content_length=content_length,
            chunked=chunked,
            expect_continue=expect,
            authorization=authorization,
            user_agent=user_agent,
            impersonates=impersonates,
        )
        if not self._wants(head):
            if not self._raw_valid:
                self._fail(400, "pipelined requests outside the cluster proxy are not supported")
                raise _Stop()
            self.handing_off = True
            self._in_message = False
            raise _HandOff()
        self._raw_valid = False  # answered here: its bytes are not needed again
        self._raw = []
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
        self._started_in_feed = True
        self._events.append(_END)


class _HandOff(Exception):
    """Stops llhttp at the head of a request that goes to aiohttp."""


class _Stop(Exception):
    """Stops llhttp after ``Invalid``."""


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if text else type(exc).__name__
