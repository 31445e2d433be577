"""A tunnel's WebSocket connection over an asyncio transport (TLS or not).

:class:`WebSocketConnection` is a buffered protocol: the event loop decrypts straight
into the process's shared read buffer (:mod:`tunnel.sockets`; the bytes are copied out
before ``buffer_updated`` returns), :class:`~tunnel.websocket.FrameReader` hands over
payload as it arrives, and the session gets it through ``receive`` (the
:class:`~tunnel.transport.Transport` interface). Pings are answered, a Close is answered
and ends the connection.

The agent dials with :func:`dial`; the gateway, once it has read, authenticated and
answered an agent's upgrade itself (``gateway.front.agents``), hands the connection over
with :func:`take_over`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any, cast

from config.compat import aiohttp_internals
from tunnel import tls, websocket
from tunnel.sockets import set_nodelay, shared_read_buffer
from tunnel.transport import MAX_MESSAGE_BYTES, READ_LIMIT_BYTES, Parts
from tunnel.websocket import (
    ClientHandshake,
    Close,
    CloseCode,
    HandshakeError,
    Opcode,
    Ping,
    WebSocketError,
)

logger = logging.getLogger(__name__)

INBOX_HIGH_BYTES = 4 * 1024 * 1024
"""Reading pauses while more than this has arrived and not been taken by ``receive``
(the tunnel's credit windows normally keep it far lower)."""
PONG_BACKLOG_BYTES = 2 * 1024 * 1024
"""A Ping arriving while more than this (beyond one message) waits to be written is not
answered: the connection is cut. A peer that pings and does not read would otherwise
grow our write buffer by a Pong per Ping, for ever."""
CLOSE_WAIT_S = 2.0
"""After sending Close, how long to wait for the peer's before cutting the connection."""

MASK_IN_PLACE: websocket.Masker = aiohttp_internals.websocket_mask or websocket.mask_pure
"""What masks and unmasks every payload: aiohttp's C loop when it is as tested (checked
once, config.compat), else the same XOR in Python (much slower: docs/design.md section 3,
"Frames")."""

_KEYS_AT_ONCE = 1024
_keys: list[bytes] = []


def _masking_key() -> bytes:
    """A fresh key from the OS's CSPRNG (RFC 6455 5.3), fetched 1,024 at a time: a
    ``getrandom`` call per frame showed in a busy agent's profile (docs/benchmarks.md,
    "Since the 06:44 run")."""
    if not _keys:
        pool = os.urandom(4 * _KEYS_AT_ONCE)
        _keys.extend(pool[i : i + 4] for i in range(0, len(pool), 4))
    return _keys.pop()


os.register_at_fork(after_in_child=_keys.clear)  # a child never reuses its parent's keys


class WebSocketConnection(asyncio.BufferedProtocol):
    """One WebSocket connection (either side); a :class:`~tunnel.transport.Transport`."""

    def __init__(
        self, client: bool, max_frame: int = READ_LIMIT_BYTES, previous: Any = None
    ) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self._reader = websocket.FrameReader(not client, max_frame, MASK_IN_PLACE)
        self._handshake: ClientHandshake | None = None
        self._inbox: collections.deque[bytes | bytearray | None] | None = None
        """Payload pieces until ``set_receiver`` (bytearrays where unmasked here), then
        None at the end; made when the first one arrives and dropped by ``set_receiver``
        (a tunnel's connection holds none for its life)."""
        self._inbox_bytes = 0
        self._reading_paused = False
        self._on_data: Callable[[bytes | bytearray], None] | None = None
        self._on_end: Callable[[], None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._close_sent = False
        self._eof = False
        self._previous = previous
        """A protocol that had the transport before (the gateway's front): told when
        the connection is lost, so its bookkeeping ends too."""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handshake_done: asyncio.Future[None] | None = None
        self.close_code: int | None = None

    def _mask(self) -> bytes | None:
        return _masking_key() if self.client else None

    # -- asyncio protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return shared_read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        data: bytes | memoryview = shared_read_buffer[:nbytes]
        if self._handshake is not None:
            try:
                rest = self._handshake.feed(data)
            except HandshakeError as exc:
                self._handshake = None
                assert self.handshake_done is not None
                self.handshake_done.set_exception(exc)
                self._cut()
                return
            if rest is None:
                return
            self._handshake = None
            assert self.handshake_done is not None
            self.handshake_done.set_result(None)
            data = rest
        try:
            items = self._reader.feed(data)
        except WebSocketError as bad_frame:
            logger.info("websocket: %s", bad_frame)
            self._fail(bad_frame.code, str(bad_frame))
            return
        on_data = self._on_data
        for item in items:
            if isinstance(item, (bytes, bytearray)):
                if on_data is not None:
                    on_data(item)
                    continue
                inbox = self._inbox
                if inbox is None:
                    inbox = self._inbox = collections.deque()
                inbox.append(item)
                self._inbox_bytes += len(item)
            elif type(item) is Ping:
                transport = self.transport
                if (
                    transport is not None
                    and transport.get_write_buffer_size() > MAX_MESSAGE_BYTES + PONG_BACKLOG_BYTES
                ):
                    logger.warning("websocket: the peer pings and does not read; cutting it off")
                    self._cut()
                    return
                self._write(
                    websocket.encode_frame(Opcode.PONG, item.payload, self._mask(), MASK_IN_PLACE)
                )
            elif type(item) is Close:
                self._on_close(item)
        if self._inbox_bytes > INBOX_HIGH_BYTES and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._end_inbox()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._end_inbox()
        if self.handshake_done is not None and not self.handshake_done.done():
            self.handshake_done.set_exception(
                HandshakeError(502, "the connection closed during the handshake")
            )
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)
        previous, self._previous = self._previous, None
        if previous is not None:
            previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- Transport (what a tunnel session uses) ------------------------------------------

    def try_send_now(self, parts: Parts) -> bool:
        if self._paused or self._close_sent or self.transport is None:
            return False
        if sum(map(len, parts)) > MAX_MESSAGE_BYTES:
            return False  # ``send`` splits it
        self._write(websocket.encode_parts(Opcode.BINARY, parts, self._mask(), MASK_IN_PLACE))
        return True

    async def send(self, parts: Parts) -> None:
        if self._close_sent or self.transport is None:
            raise ConnectionResetError("the WebSocket is closed")
        for group in websocket.split_parts(parts, MAX_MESSAGE_BYTES):
            self._write(websocket.encode_parts(Opcode.BINARY, group, self._mask(), MASK_IN_PLACE))
            await self._wait_room()

    def set_receiver(
        self, on_data: Callable[[bytes | bytearray], None], on_end: Callable[[], None]
    ) -> None:
        """From now on, hand payload to ``on_data`` as it arrives (and call ``on_end``
        once, when the connection ends) instead of keeping it for ``receive``."""
        inbox = self._inbox  # (what ``on_data`` calls may add to it, too)
        while inbox:
            item = inbox.popleft()
            if item is None:
                self._eof = True
                on_end()
                return
            on_data(item)
        self._inbox = None
        self._inbox_bytes = 0
        if self._reading_paused:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        self._on_data, self._on_end = on_data, on_end

    async def receive(self) -> bytes | bytearray | None:
        while not self._inbox:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        inbox = self._inbox
        assert inbox is not None
        item = inbox.popleft()
        if item is None:
            inbox.append(None)  # stays closed for later calls
            return None
        self._inbox_bytes -= len(item)
        if self._reading_paused and self._inbox_bytes <= INBOX_HIGH_BYTES // 2:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        return item

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send Close, wait briefly for the peer's, then close the connection (at once if
        this wait is cancelled)."""
        if self.transport is None:
            return
        if not self._close_sent:
            self._close_sent = True
            self._write(websocket.encode_close(code, reason, self._mask(), MASK_IN_PLACE))
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self._cut()
        except asyncio.CancelledError:
            # No more waiting for the peer's Close: the connection ends now, not never
            # (the session's own timeout on this close cancels it).
            self._cut()
            raise

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- internals --------------------------------------------------------------------

    def _write(self, frame: bytes | bytearray) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    async def _wait_room(self) -> None:
        while self._paused:
            if self.transport is None:
                raise ConnectionResetError("connection lost")
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self.transport is None:
            raise ConnectionResetError("connection lost")

    def _on_close(self, close: Close) -> None:
        """The peer's Close: echo its code (RFC 6455 5.5.1) and end."""
        echo = close.code if close.code != CloseCode.NO_STATUS else CloseCode.NORMAL
        self._finish(close.code, echo, "")

    def _fail(self, code: CloseCode, reason: str) -> None:
        """The peer broke the framing: Close with ``code`` and end."""
        self._finish(code, code, reason)

    def _finish(self, received: int, send: int, reason: str) -> None:
        self.close_code = received
        if not self._close_sent:
            self._close_sent = True
            self._write(websocket.encode_close(send, reason, self._mask(), MASK_IN_PLACE))
        self._end_inbox()
        if self.transport is not None:
            self.transport.close()

    def _cut(self) -> None:
        self._end_inbox()
        if self.transport is not None:
            self.transport.abort()

    def _end_inbox(self) -> None:
        if self._eof:
            return
        self._eof = True
        on_end, self._on_end, self._on_data = self._on_end, None, None
        if on_end is not None:
            on_end()
            return
        if self._inbox is None:
            self._inbox = collections.deque()
        self._inbox.append(None)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._inbox:
            waiter.set_result(None)


async def dial(
    url: str,
    headers: Mapping[str, str],
    ssl_context: ssl.SSLContext | None,
    timeout_s: float,
    max_frame: int = READ_LIMIT_BYTES,
    connect_to: tuple[str, int] | None = None,
) -> WebSocketConnection:
    """Open a WebSocket to ``url`` (``https``/``wss`` with ``ssl_context``, or ``http``).

    ``connect_to``: dial this host and port instead of the URL's, keeping the URL's
    host as the TLS server name and ``Host`` (one gateway replica's own address, whose
    certificate names the gateway's public host).

    Raises HandshakeError (``status`` is the server's HTTP status when it answered with
    one), OSError, ssl.SSLError or TimeoutError.
    """
    target = websocket.parse_url(url)
    loop = asyncio.get_running_loop()
    conn = WebSocketConnection(client=True, max_frame=max_frame)
    key = websocket.new_key()
    conn._handshake = ClientHandshake(key)
    conn.handshake_done = loop.create_future()
    host, port = connect_to or (target.host, target.port)
    async with asyncio.timeout(timeout_s):
        if target.secure:
            await tls.connect(
                lambda: conn,
                host,
                port,
                ssl_context or ssl.create_default_context(),
                server_hostname=target.host,
            )
        else:
            await loop.create_connection(lambda: conn, host, port)
        assert conn.transport is not None
        request = websocket.client_request(target.host_header, target.path, key, headers)
        conn.transport.write(request)
        try:
            await conn.handshake_done
        except BaseException:
            conn._cut()
            raise
    return conn


def take_over(
    transport: asyncio.Transport,
    max_frame: int = READ_LIMIT_BYTES,
    previous: asyncio.BaseProtocol | None = None,
) -> WebSocketConnection:
    """The server's side once its 101 is written: ``transport`` becomes a WebSocket
    connection (it is this connection's protocol from now on).

    ``previous``, the protocol that had the transport (the gateway's front), is told
    when the connection is lost. The peer sends nothing before it has read the 101, so
    no WebSocket byte was read by the previous protocol.
    """
    conn = WebSocketConnection(client=False, max_frame=max_frame, previous=previous)
    transport.set_protocol(conn)
    conn.connection_made(transport)
    return conn
