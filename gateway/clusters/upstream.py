"""HTTP/1.1 to the API server over tunnel streams.

The gateway writes requests straight into a tunnel stream; the agent relays that
stream's bytes to a TLS connection to its API server. Each stream is one upstream
keep-alive connection, so streams are pooled per tunnel and reused for the next
request. Responses are parsed with httptools (llhttp) and their bodies handed on
chunk by chunk, never buffered whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httptools

from gateway.clusters.chunked import ChunkedDecoder, ChunkedError
from gateway.pieces import Pieces
from tunnel.errors import StreamReset, TunnelError
from tunnel.frames import ErrorCode
from tunnel.session import Session
from tunnel.streams import READER_TALLY, TunnelStream

logger = logging.getLogger(__name__)

MAX_IDLE_STREAMS = 256
"""Idle upstream connections kept per tunnel. With 64, more than 64 requests in flight to
one cluster made the pool reset the surplus streams as they finished, and the agent open a
new TLS connection to the API server for the next request, so throughput fell as
concurrency rose and the agent spent its time on handshakes (docs/design.md section 9,
"Up to 256 idle streams per tunnel", has the measurement). A stream whose connection the
API server has closed meanwhile is dropped when next taken."""
MAX_HEAD_BYTES = 256 * 1024
RESPONSE_HEAD_TIMEOUT_S = 300.0
"""How long the API server may take to start answering (long LISTs can be slow)."""
HEAD_SWEEP_S = 5.0
"""How often streams waiting for a response head are checked against that timeout."""
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class UpstreamError(Exception):
    """The request failed before a response started; ``retryable`` if nothing was read."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class _Parsed:
    """httptools callbacks."""

    __slots__ = ("body", "complete", "headers", "headers_done", "keep_alive", "parser", "reason")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes | bytearray] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.reason = b""
        self.parser: httptools.HttpResponseParser | None = None

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # llhttp resets its flags once the message completes: ask now.
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.parser = None  # no reference cycle once done


class Response:
    """A response being read from one stream. Call ``release`` when done with it."""

    __slots__ = (
        "_chunked",
        "_decoder",
        "_ending",
        "_fed",
        "_left",
        "_long",
        "_parsed",
        "_parser",
        "_pool",
        "_released",
        "content_length",
        "headers",
        "reason",
        "status",
        "stream",
        "upgraded",
        "upgraded_tail",
    )

    def __init__(
        self,
        pool: StreamPool,
        stream: TunnelStream,
        parser: httptools.HttpResponseParser,
        parsed: _Parsed,
        upgraded_tail: bytes | None,
        no_body: bool,
        fed: list[bytes | bytearray] | None = None,
        long_running: bool = False,
    ) -> None:
        self._pool = pool
        self._long = long_running
        self.stream = stream
        self._parser: httptools.HttpResponseParser | None = parser
        self._decoder: ChunkedDecoder | None = None
        """The rest of a chunked body, once ``park`` took it from llhttp."""
        self._parsed = parsed
        self.status: int = parser.get_status_code()
        self.reason = parsed.reason.decode("latin-1")
        self.headers = parsed.headers
        self.upgraded = upgraded_tail is not None
        self.upgraded_tail = upgraded_tail or b""
        self.content_length: int | None = None
        self._chunked = False
        for name, value in parsed.headers:
            lname = name.lower()
            if lname == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
        if no_body:
            parsed.complete = True
            parsed.body.clear()
            self.content_length = 0
        self._left: int | None = None
        """Body bytes still to come, when the length is known: they are passed on as they
        arrive, without llhttp (one copy and one parser pass less per byte)."""
        if self.content_length is not None and not self._chunked and not parsed.complete:
            self._left = self.content_length - sum(len(piece) for piece in parsed.body)
        self._released = False
        self._ending = False
        self._fed = fed if self._chunked and not parsed.complete else None
        """What llhttp parsed so far (the head and the body's start), until ``park``."""

    @property
    def complete(self) -> bool:
        return self._parsed.complete

    def end_early(self, reason: str = "the gateway is shutting down") -> None:
        """Stop a long-running answer (a watch) at the next read, as if it had ended.

        What has already arrived is still returned; then ``read_chunk`` returns
        ``b""`` and the stream to the API server is reset.
        """
        if not self._ending and not self._parsed.complete:
            self._ending = True
            self.stream.reset(ErrorCode.CANCEL, reason)

    async def read_chunk(self) -> bytes | bytearray:
        """The next piece of the body, ``b""`` at its end (a bytearray is the reader's
        own: nothing else holds it)."""
        parsed = self._parsed
        if self._left is not None and not parsed.body:
            return await self._read_counted()
        while not parsed.body:
            if parsed.complete:
                return b""
            data = await self._receive()
            if data is None:
                return b""
            if not data:
                if self.content_length is None and not self._chunked:
                    parsed.complete = True  # delimited by the connection closing
                    return b""
                raise UpstreamError("the API server closed the connection mid-response")
            self._parse(data)
        if len(parsed.body) == 1:
            return parsed.body.pop()
        out = b"".join(parsed.body)
        parsed.body.clear()
        return out

    async def _receive(self) -> bytes | bytearray | None:
        """The next bytes from the API server (``b""`` at its end); None once
        ``end_early`` has stopped the answer."""
        try:
            return await self.stream.read()
        except TunnelError:
            if self._ending:
                return None
            raise

    async def _read_counted(self) -> bytes | bytearray:
        left = self._left
        assert left is not None
        parsed = self._parsed
        if left <= 0:
            parsed.complete = True
            return b""
        data = await self._receive()
        if data is None:
            return b""
        if not data:
            raise UpstreamError("the API server closed the connection mid-response")
        if len(data) >= left:
            if len(data) > left:
                data = data[:left]
                parsed.keep_alive = False  # bytes after the answer: do not reuse
            parsed.complete = True
        self._left = left - len(data)
        return data

    # -- taking the body as it arrives (no task waiting: ``gateway.proxy.parked``) ------

    @property
    def ending(self) -> bool:
        """``end_early`` stopped it: the stream's reset is the answer's end."""
        return self._ending

    @property
    def close_delimited(self) -> bool:
        """The body ends when the API server closes the connection (no length, not
        chunked)."""
        return self.content_length is None and not self._chunked

    def take_parsed(self) -> list[bytes | bytearray]:
        """Body pieces that came with the head."""
        pieces: list[bytes | bytearray] = list(self._parsed.body)
        self._parsed.body.clear()
        if self._left is not None and self._left <= 0:
            self._parsed.complete = True
        return pieces

    def feed(self, data: bytes | bytearray) -> list[bytes | bytearray]:
        """The body pieces in ``data``, bytes that arrived on the stream (for an owner
        that takes them as they come, ``TunnelStream.set_sink``, instead of reading);
        ``complete`` then tells whether the answer ended. ``UpstreamError`` if they are
        not HTTP."""
        parsed = self._parsed
        if parsed.complete:
            parsed.keep_alive = False  # bytes after the answer: do not reuse
            return []
        left = self._left
        if left is not None:
            if len(data) >= left:
                if len(data) > left:
                    data = data[:left]
                    parsed.keep_alive = False
                parsed.complete = True
            self._left = left - len(data)
            return [data] if data else []
        self._parse(data)
        pieces: list[bytes | bytearray] = list(parsed.body)
        parsed.body.clear()
        return pieces

    def _parse(self, data: bytes | bytearray) -> None:
        """Body bytes through llhttp, or the chunked decoder once parked; the pieces go
        to ``_parsed.body``."""
        decoder = self._decoder
        parsed = self._parsed
        if decoder is not None:
            try:
                parsed.body.extend(decoder.feed(data))
            except ChunkedError as exc:
                raise UpstreamError(f"malformed response from the API server: {exc}") from exc
            if decoder.complete:
                parsed.complete = True
                if decoder.extra:
                    parsed.keep_alive = False  # bytes after the answer: do not reuse
            return
        parser = self._parser
        if parser is None:
            raise UpstreamError("the response's parser is gone")
        self._fed = None  # read on: not parked
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"malformed response from the API server: {exc}") from exc

    def park(self) -> None:
        """This answer's body goes on for long (a watch): a chunked one is decoded from
        now on by ``gateway.clusters.chunked`` instead of llhttp, whose parser is most of
        what an open watch would keep. Only after the decoder has read what llhttp already
        parsed exactly as llhttp did (the head ending where llhttp's ended, the same body
        bytes, neither at the end); otherwise llhttp goes on."""
        fed, self._fed = self._fed, None
        parsed = self._parsed
        if fed is None or parsed.complete or self._decoder is not None:
            return
        raw = b"".join(fed)
        end = raw.find(b"\r\n\r\n") + 4
        if end < 4 or not _head_ends_at(raw[:end]):
            return
        decoder = ChunkedDecoder()
        try:
            pieces = decoder.feed(raw[end:])
        except ChunkedError:
            return
        if decoder.complete or b"".join(pieces) != b"".join(parsed.body):
            return
        self._decoder = decoder
        self._parser = None
        parsed.parser = None

    def feed_eof(self) -> bool:
        """The API server closed the stream: whether that ended the answer cleanly."""
        if self._parsed.complete:
            return True
        if self.close_delimited and self._left is None:
            self._parsed.complete = True
            return True
        return False

    def iter_chunks(self) -> AsyncIterator[bytes | bytearray]:
        return Pieces(self.read_chunk)

    async def read_all(self) -> bytes:
        parts: list[bytes | bytearray] = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    def release(self) -> None:
        """Return the connection to the pool if the exchange finished cleanly."""
        if self._released:
            return
        self._released = True
        reusable = self._parsed.complete and not self.upgraded and self._parsed.keep_alive
        self._pool.put_back(self.stream, reusable, self._long)


class StreamPool:
    """Idle upstream connections (tunnel streams) of one tunnel session."""

    def __init__(self, session: Session, max_idle: int = MAX_IDLE_STREAMS) -> None:
        self.session = session
        self._idle: list[TunnelStream] = []
        self._idle_long: list[TunnelStream] = []
        """Streams that carried long-running requests (watches, followed logs), kept for
        those only: the agent relays a stream over HTTP/2 or byte for byte by its first
        request (``tunnel.h2upstream``), so a list after a watch, or a watch after a list,
        would take the path meant for the other."""
        self._max_idle = max_idle
        self._waiting: dict[TunnelStream, float] = {}
        """Streams waiting for a response head, and when they give up (see ``_sweep``)."""
        self._sweeper: asyncio.TimerHandle | None = None

    def wait_for_head(self, stream: TunnelStream) -> None:
        """Give up on ``stream`` if no response head arrived in RESPONSE_HEAD_TIMEOUT_S.

        One sweep every HEAD_SWEEP_S for all streams, instead of a timer per request to
        set and cancel (docs/benchmarks.md, "Since the 00:41 run", has its cost).
        """
        loop = self.session.loop
        self._waiting[stream] = loop.time() + RESPONSE_HEAD_TIMEOUT_S
        if self._sweeper is None:
            self._sweeper = loop.call_later(HEAD_SWEEP_S, self._sweep)

    def got_head(self, stream: TunnelStream) -> None:
        self._waiting.pop(stream, None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.session.loop.time()
        late = [stream for stream, deadline in self._waiting.items() if deadline <= now]
        for stream in late:
            del self._waiting[stream]
            stream.reset(ErrorCode.TIMEOUT, "the API server did not answer")
        if self._waiting:
            self._sweeper = self.session.loop.call_later(HEAD_SWEEP_S, self._sweep)

    @property
    def idle_count(self) -> int:
        return len(self._idle) + len(self._idle_long)

    def take(self, long_running: bool = False) -> tuple[TunnelStream, bool]:
        """A stream to send on, and whether it is a reused connection."""
        idle = self._idle_long if long_running else self._idle
        while idle:
            stream = idle.pop()
            if not stream.is_closed and not stream.at_eof:
                return stream, True
            stream.reset(ErrorCode.CANCEL)
        return self.session.open_stream(), False

    def put_back(self, stream: TunnelStream, reusable: bool, long_running: bool = False) -> None:
        stream.set_tally(None)
        idle = self._idle_long if long_running else self._idle
        if (
            reusable
            and not stream.is_closed
            and not stream.at_eof
            and len(self._idle) + len(self._idle_long) < self._max_idle
        ):
            idle.append(stream)
        else:
            stream.reset(ErrorCode.CANCEL)

    def close(self) -> None:
        for stream in (*self._idle, *self._idle_long):
            stream.reset(ErrorCode.CANCEL)
        self._idle.clear()
        self._idle_long.clear()
        self._waiting.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def request(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        upgrade: bool = False,
        long_running: bool = False,
    ) -> Response:
        """Send one request and read the response head; ``long_running`` (a watch, a
        followed log: ``RequestInfo.long_running``) on a stream kept for such requests.

        A reused connection that turns out to be closed (the API server dropped it
        while idle) is retried once on a new one when the body can be replayed.

        An ``upgrade`` (exec, attach, port-forward) takes an idle stream of the short
        kind too: kubectl reads the pod just before, so one is usually there, and the
        agent need not dial the API server while the user waits (an HTTP/1.1 upgrade
        is as valid on a kept-alive connection as on a new one; a stream the agent
        relays over HTTP/2 moves to a connection of its own for it,
        ``tunnel.h2upstream``). Switched, the stream is never put back.
        """
        replayable = body is None or isinstance(body, bytes)
        long_running = long_running and not upgrade  # never on a stream relayed as HTTP/2
        for attempt in range(2):
            stream, reused = self.take(long_running)
            try:
                return await _round_trip(self, stream, method, head, body, upgrade, long_running)
            except UpstreamError as exc:
                stream.reset(ErrorCode.CANCEL)
                if attempt == 0 and reused and exc.retryable and replayable:
                    logger.debug("retrying on a new upstream connection: %s", exc)
                    continue
                raise
            except BaseException:
                stream.reset(ErrorCode.CANCEL)
                raise
        raise AssertionError("unreachable")  # pragma: no cover


async def _round_trip(
    pool: StreamPool,
    stream: TunnelStream,
    method: str,
    head: bytes,
    body: bytes | AsyncIterator[bytes] | None,
    upgrade: bool,
    long_running: bool = False,
) -> Response:
    try:
        if body is None:
            await stream.write(head)
        elif isinstance(body, bytes):
            await stream.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                await stream.write(body)
        else:
            await stream.write(head)
            async for chunk in body:
                if chunk:
                    await stream.write(chunk)
    except TunnelError as exc:
        raise UpstreamError(f"tunnel failed while sending: {exc}", retryable=True) from exc

    tally = READER_TALLY.get()
    if tally is not None:
        stream.set_tally(tally)  # its unread bytes count towards the client connection's
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    parsed.parser = parser
    received = 0
    fed: list[bytes | bytearray] = []
    tail: bytes | None = None
    # The pool's sweep resets the stream if no head comes in time (no timer per request).
    pool.wait_for_head(stream)
    try:
        while not parsed.headers_done:
            try:
                data = await stream.read()
            except TunnelError as exc:
                if isinstance(exc, StreamReset) and exc.code is ErrorCode.TIMEOUT:
                    raise UpstreamError("the API server did not answer in time") from None
                raise UpstreamError(
                    f"tunnel failed while waiting for the API server: {exc}",
                    retryable=received == 0,
                ) from exc
            if not data:
                raise UpstreamError("the API server closed the connection", retryable=received == 0)
            received += len(data)
            if received > MAX_HEAD_BYTES and not parsed.headers_done:
                raise UpstreamError("response head too large")
            fed.append(data)
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgraded:
                offset = upgraded.args[0] if upgraded.args else len(data)
                tail = bytes(data[offset:]) if upgrade else b""
            except httptools.HttpParserError as malformed:
                raise UpstreamError(
                    f"malformed response from the API server: {malformed}"
                ) from malformed
    finally:
        pool.got_head(stream)
    is_upgraded = tail is not None and parser.get_status_code() == 101
    return Response(
        pool,
        stream,
        parser,
        parsed,
        tail if is_upgraded else None,
        no_body=method == "HEAD" or is_upgraded,
        fed=fed,
        long_running=long_running,
    )


class _HeadOnly:
    __slots__ = ("body", "done")

    def __init__(self) -> None:
        self.done = False
        self.body = False

    def on_headers_complete(self) -> None:
        self.done = True

    def on_body(self, body: bytes) -> None:
        self.body = True

    def on_message_complete(self) -> None:
        self.body = True


def _head_ends_at(head: bytes) -> bool:
    """Whether llhttp reads ``head`` as exactly one response head: complete, with not one
    byte of body in it."""
    seen = _HeadOnly()
    try:
        httptools.HttpResponseParser(seen).feed_data(head)
    except httptools.HttpParserError:
        return False
    return seen.done and not seen.body


def is_idempotent(method: str) -> bool:
    return method in _IDEMPOTENT
