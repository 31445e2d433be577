"""The gateway's ordinary requests as HTTP/2 streams on shared connections to the API server.

With ``apiserver_http2`` on and an API server that offers ``h2`` (ALPN), a tunnel stream
is not given a TLS connection of its own: its HTTP/1.1 requests (parsed by
``tunnel.h2translate``) go as streams on a few HTTP/2 connections (``H2Pool``: a new
connection is dialled when the open ones are at the server's MAX_CONCURRENT_STREAMS),
and each answer is written back into the tunnel stream as HTTP/1.1. So a watch costs
the agent an HTTP/2 stream, not a TLS connection and its descriptor.

Flow control, per stream: an answer's bytes are handed to the tunnel stream as its credit
allows, and only then is the HTTP/2 stream's window opened again by as much; a slow reader
on the gateway's side therefore holds back its own HTTP/2 stream, never the connection,
whose window is opened as soon as bytes arrive (what a stream may hold is bounded by its
window, ``STREAM_WINDOW``; it is given back in steps of ``ACK_STEP``). A request body
goes out as the HTTP/2 stream's window allows; while it cannot, the tunnel stream's credit
is kept back (``TunnelStream.set_sink``).

A request ``tunnel.h2translate.unusual`` names (exec, attach, port-forward: upgrades) is
relayed over a connection of its own (``tunnel.relay``), the tunnel stream with it from
then on; so is every request when the API server does not offer ``h2``. The agent also
sends there every tunnel stream whose first request is not long-running (``long_only``,
the default; ``apiserver_http2_all`` off): a short request costs the agent several
times less CPU relayed byte for byte on a kept-alive connection than translated to and
from HTTP/2 by the ``h2`` library, and the gateway keeps its long-running streams
apart from the others (``gateway.clusters.upstream.StreamPool``), so a watch finds a
stream that speaks HTTP/2 and a list one that does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from tunnel import tls
from tunnel.credentials import Upstream
from tunnel.errors import TunnelError
from tunnel.frames import ErrorCode
from tunnel.h2translate import (
    LAST_CHUNK,
    RequestHead,
    RequestReader,
    ResponseFraming,
    Untranslatable,
    bad_gateway,
    chunk,
    h1_response_head,
    h2_request_headers,
)
from tunnel.session import Session
from tunnel.sockets import set_nodelay
from tunnel.stats import AgentStats
from tunnel.streams import TunnelStream

logger = logging.getLogger(__name__)

STREAM_WINDOW = 256 * 1024
"""What the API server may send on one stream before the gateway's side has taken it."""
CONNECTION_WINDOW = 1 << 30
"""The connection's receive window: opened as bytes arrive (the streams' windows bound
what is held)."""
CONNECT_TIMEOUT_S = 10.0
SETTINGS_TIMEOUT_S = 10.0
"""How long a new connection may take to send its SETTINGS (MAX_CONCURRENT_STREAMS)."""
NO_H2_RETRY_S = 300.0
"""After an API server answered ALPN without ``h2``: ask again after this long."""
MAX_STREAM_ID = (1 << 31) - 1024
"""A connection this close to the last stream id takes no new streams."""
ACK_STEP = STREAM_WINDOW // 4
"""Window given back to a stream once this much of its answer went on (a reader that
keeps up never finds the window closed)."""
_HOLD_BACK = 256 * 1024
"""Request body bytes held for a stream's HTTP/2 window before the tunnel's credit is
kept back."""

Fallback = Callable[[TunnelStream, bytes], None]
"""Relay ``stream`` over a connection of its own, ``bytes`` first (``tunnel.relay``)."""


class NoHttp2(Exception):
    """The API server did not offer ``h2``."""


class _StreamUser(Protocol):
    """What a connection tells the user of one of its streams: a tunnel stream's relay
    (``_Relay``) or one of the agent's own requests (``Fetch``)."""

    def response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None: ...
    def data(self, data: bytes, flow: int) -> None: ...
    def ended(self) -> None: ...
    def upstream_failed(self, reason: str) -> None: ...
    def window_opened(self) -> None: ...


class H2Pool:
    """The agent's HTTP/2 connections to one API server."""

    def __init__(self, upstream: Upstream, stats: AgentStats | None = None) -> None:
        assert upstream.ssl_h2 is not None
        self.upstream = upstream
        self.context: ssl.SSLContext = upstream.ssl_h2
        self.stats = stats
        self.connections: list[_Connection] = []
        self._dialing: asyncio.Future[_Connection] | None = None
        self._no_h2_until = -1.0

    @property
    def refused(self) -> bool:
        """The API server said it does not speak ``h2`` (ask again later)."""
        return asyncio.get_running_loop().time() < self._no_h2_until

    def _with_room(self) -> _Connection | None:
        for conn in self.connections:
            if conn.has_room():
                return conn
        return None

    async def connection(self) -> _Connection:
        """A connection with room for one more stream (dialled if none has room);
        ``NoHttp2`` if the server does not offer ``h2``, ``OSError`` (or ``TimeoutError``)
        if unreachable: the same failure for every caller that waited for that dial."""
        while True:
            conn = self._with_room()
            if conn is not None:
                return conn
            if self.refused:
                raise NoHttp2()
            dialing = self._dialing
            if dialing is None or dialing.done():
                # (A dial that has ended, its dialler not yet back to clear it, is not
                # waited for: awaiting a finished future does not yield, and this loop
                # would then spin without ever letting the dialler run.)
                dialing = self._dialing = asyncio.ensure_future(self._dial())
                # Its failure is taken by whoever awaits it; if all of them were cancelled
                # meanwhile (the agent stopping), it is retrieved here, not left unread.
                dialing.add_done_callback(_retrieve)
                try:
                    conn = await asyncio.shield(dialing)
                finally:
                    if self._dialing is dialing:
                        self._dialing = None
                if conn.has_room():
                    return conn
            else:
                await asyncio.shield(dialing)  # its failure is ours too
                # Take the new connection if it has room; else dial once more.

    async def _dial(self) -> _Connection:
        up = self.upstream
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            transport, protocol = await tls.connect(
                lambda: _Connection(self), up.host, up.port, self.context, up.server_hostname
            )
        conn = cast(_Connection, protocol)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != "h2":
            transport.close()
            self._no_h2_until = asyncio.get_running_loop().time() + NO_H2_RETRY_S
            logger.info("the API server %s does not offer HTTP/2: one connection per stream",
                        up.host_header)  # fmt: skip
            raise NoHttp2()
        try:
            async with asyncio.timeout(SETTINGS_TIMEOUT_S):
                await conn.settled
        except TimeoutError:
            transport.abort()
            raise OSError("the API server sent no HTTP/2 SETTINGS") from None
        self.connections.append(conn)
        if self.stats is not None:
            self.stats.h2_connections = len(self.connections)
        logger.debug("HTTP/2 connection %d to the API server", len(self.connections))
        return conn

    def forget(self, conn: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(conn)
        if self.stats is not None:
            self.stats.h2_connections = len(self.connections)

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection to the API server and the relays with a stream on it."""

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool
        self.h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=True,
                normalize_outbound_headers=True,
                validate_inbound_headers=True,
                normalize_inbound_headers=True,
            )
        )
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.relays: dict[int, _StreamUser] = {}
        self.settled: asyncio.Future[None] = self.loop.create_future()
        self.max_streams = 100
        """The server's MAX_CONCURRENT_STREAMS (until it says, RFC 9113's advice)."""
        self.closing = False
        self._flush_soon = False
        self._unacked = 0

    # -- the pool's view ----------------------------------------------------------------

    def has_room(self) -> bool:
        return (
            not self.closing
            and self.transport is not None
            and len(self.relays) < self.max_streams
            and self.h2.highest_outbound_stream_id < MAX_STREAM_ID
        )

    def open(self, relay: _StreamUser, headers: list[tuple[bytes, bytes]], end: bool) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=end)
        self.relays[sid] = relay
        self.flush()
        stats = self.pool.stats
        if stats is not None:
            stats.h2_streams += 1
        return sid

    def flush(self) -> None:
        """Send what the h2 state machine queued, at the end of this turn (writes of many
        streams leave together)."""
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
                self._flush()
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            return  # the pool closes it
        self.h2.initiate_connection()
        self.h2.update_settings(
            {
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20,
            }
        )
        self.h2.increment_flow_control_window(CONNECTION_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error as exc:
            logger.warning("HTTP/2 error from the API server: %r", exc, exc_info=True)
            self._flush()
            self._fail(f"HTTP/2 protocol error from the API server: {exc}")
            return
        for event in events:
            self._event(event)
        if self._unacked >= CONNECTION_WINDOW // 2:
            self.h2.increment_flow_control_window(self._unacked)
            self._unacked = 0
        self.flush()

    def _event(self, event: Any) -> None:
        if isinstance(event, DataReceived):
            self._unacked += event.flow_controlled_length
            stats = self.pool.stats
            if stats is not None:
                stats.bytes_from_apiserver += len(event.data)
            relay = self.relays.get(event.stream_id)
            if relay is not None:
                relay.data(event.data, event.flow_controlled_length)
            if event.stream_ended is not None:
                self._ended(event.stream_id)
        elif isinstance(event, ResponseReceived):
            relay = self.relays.get(event.stream_id)
            if relay is not None:
                relay.response(event.headers, event.stream_ended is not None)
            if event.stream_ended is not None:
                self._ended(event.stream_id)
        elif isinstance(event, StreamEnded):
            self._ended(event.stream_id)
        elif isinstance(event, TrailersReceived):
            if event.stream_ended is not None:
                self._ended(event.stream_id)
        elif isinstance(event, StreamReset):
            relay = self.relays.pop(event.stream_id, None)
            if relay is not None:
                relay.upstream_failed(f"the API server reset the stream ({event.error_code!r})")
        elif isinstance(event, WindowUpdated):
            if event.stream_id:
                relay = self.relays.get(event.stream_id)
                if relay is not None:
                    relay.window_opened()
            else:
                for relay in list(self.relays.values()):
                    relay.window_opened()
        elif isinstance(event, RemoteSettingsChanged):
            self.max_streams = min(self.h2.remote_settings.max_concurrent_streams, 1 << 20)
            if not self.settled.done():
                self.settled.set_result(None)
            for relay in list(self.relays.values()):
                relay.window_opened()  # INITIAL_WINDOW_SIZE may have grown
        elif isinstance(event, ConnectionTerminated):
            self.closing = True
            self.pool.forget(self)
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid in [sid for sid in self.relays if sid > last]:
                self.relays.pop(sid).upstream_failed("the API server is going away (GOAWAY)")
            if not self.relays and self.transport is not None:
                self.transport.close()
        elif isinstance(event, InformationalResponseReceived):
            pass  # 1xx: the gateway sends no Expect (such requests go over HTTP/1.1)

    def _ended(self, sid: int) -> None:
        relay = self.relays.pop(sid, None)
        if relay is not None:
            relay.ended()
        if self.closing and not self.relays and self.transport is not None:
            self.transport.close()

    def drain(self, sid: int) -> None:
        """The user of stream ``sid`` has its whole answer and goes on without it: the
        stream stays counted until the server ends it; what it still brings is dropped."""
        if sid in self.relays:
            self.relays[sid] = _DRAINED

    def done_with(self, sid: int) -> None:
        """The relay gives up its stream (reset by the gateway, or done sending)."""
        self.relays.pop(sid, None)
        if self.closing and not self.relays and self.transport is not None:
            self.transport.close()

    def reset(self, sid: int) -> None:
        self.relays.pop(sid, None)
        with contextlib.suppress(H2Error, KeyError):
            self.h2.reset_stream(sid, ErrorCodes.CANCEL)
        self.flush()

    def ack(self, sid: int, size: int) -> None:
        """The gateway's side took ``size`` bytes of stream ``sid``: open its window."""
        if size <= 0 or sid not in self.relays:
            return
        with contextlib.suppress(H2Error, KeyError, ValueError):
            self.h2.increment_flow_control_window(size, stream_id=sid)
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("the connection to the API server was lost")
        if not self.settled.done():
            self.settled.set_exception(OSError("the API server closed the connection"))
            self.settled.exception()

    def _fail(self, reason: str) -> None:
        self.closing = True
        self.pool.forget(self)
        relays, self.relays = self.relays, {}
        for relay in relays.values():
            relay.upstream_failed(reason)
        if self.transport is not None:
            self.transport.abort()


class _Drained:
    """The user of a stream whose answer was had in full before its end came: takes
    nothing (``_Connection.drain``)."""

    def response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        return None

    def data(self, data: bytes, flow: int) -> None:
        return None

    def ended(self) -> None:
        return None

    def upstream_failed(self, reason: str) -> None:
        return None

    def window_opened(self) -> None:
        return None


_DRAINED = _Drained()


class _GivesWindowBack:
    """What reads an answer off an HTTP/2 stream: opens the stream's window again by what
    it took, in steps of ``ACK_STEP`` (a WINDOW_UPDATE per event of a watch would double
    the frames)."""

    __slots__ = ("_conn", "_sid", "_unacked")

    def __init__(self) -> None:
        self._conn: _Connection | None = None
        self._sid = 0
        self._unacked = 0
        """Answer bytes taken, not yet given back as window."""

    def _taken(self, size: int) -> None:
        self._unacked += size
        if self._unacked >= ACK_STEP and self._conn is not None:
            self._conn.ack(self._sid, self._unacked)
            self._unacked = 0


class _Relay(_GivesWindowBack):
    """One tunnel stream whose requests go over HTTP/2 (see the module docstring)."""

    __slots__ = (
        "_asked_at",
        "_backlog",
        "_body_out",
        "_body_out_end",
        "_credit_held",
        "_eof",
        "_fallback",
        "_flushing",
        "_framing",
        "_head_request",
        "_keep_alive",
        "_pending",
        "_pool",
        "_reader",
        "_request_done",
        "_responding",
        "stream",
    )

    def __init__(
        self, stream: TunnelStream, pool: H2Pool, fallback: Fallback, long_only: bool = False
    ) -> None:
        super().__init__()
        self.stream = stream
        self._pool = pool
        self._fallback = fallback
        self._reader = RequestReader(short_stop=long_only)
        self._pending: list[RequestHead | bytes | None] | None = None
        """Events waiting for a connection (one is being dialled)."""
        self._body_out: list[bytes] = []
        """Request body waiting for the HTTP/2 stream's window."""
        self._body_out_end = False
        self._credit_held = False
        self._request_done = True
        self._responding = False
        self._framing: ResponseFraming | None = None
        self._head_request = False
        self._keep_alive = True
        self._backlog: list[tuple[bytes, int]] = []
        """Answer bytes waiting for the tunnel stream's credit, with their HTTP/2 size."""
        self._flushing = False
        self._eof = False
        self._asked_at = 0.0
        """Loop time the current request was sent (the API server latency histogram)."""

    # -- from the gateway ----------------------------------------------------------------

    def sink(self, data: bytes | bytearray) -> bool:
        try:
            events = self._reader.feed(data)
        except Untranslatable as exc:
            self._refuse(str(exc))
            return True
        if self._reader.stopped:
            self._to_fallback()
            return True
        count = len(events)
        i = 0
        while i < count:
            event = events[i]
            if self._pending is not None:
                self._pending.append(event)
            elif isinstance(event, RequestHead):
                ends = i + 1 < count and events[i + 1] is None
                self._start(event, ends)
                if ends:
                    i += 1  # the request's end went with its head (or waits with it)
            else:
                self._request_event(event)
            i += 1
        return not self._held_too_much()

    def _held_too_much(self) -> bool:
        held = sum(map(len, self._body_out))
        if self._pending is not None:
            held += sum(len(e) for e in self._pending if isinstance(e, bytes))
        if held > _HOLD_BACK:
            self._credit_held = True
            return True
        return False

    def _request_event(self, event: RequestHead | bytes | None) -> None:
        if isinstance(event, RequestHead):
            self._start(event, False)
        elif event is None:
            self._body_out_end = True
            self._send_body()
        else:
            self._body_out.append(event)
            self._send_body()

    def _start(self, head: RequestHead, ends: bool) -> None:
        if self._responding or not self._request_done:
            framing = self._framing
            if not (self._request_done and framing is not None and framing.complete):
                self._refuse("a request before the last one's answer ended")
                return
            self._leave_answered_stream()
        try:
            headers = h2_request_headers(head)
        except Untranslatable as exc:
            self._refuse(str(exc))
            return
        self._head_request = head.method == b"HEAD"
        self._keep_alive = head.keep_alive
        self._request_done = False
        self._body_out_end = False
        conn = self._pool._with_room()
        if conn is None:
            # Dial (or wait for a dial); what arrives meanwhile waits in ``_pending``.
            self._pending = [None] if ends else []
            _spawn(self._open_later(headers))
            return
        self._open_on(conn, headers, ends)

    async def _open_later(self, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            conn = await self._pool.connection()
        except NoHttp2:
            self._pending = None
            self._to_fallback_after_dial()
            return
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._pending = None
            self._refuse(f"API server unreachable: {exc}")
            return
        if self.stream.is_closed:
            self._pending = None
            return
        pending, self._pending = self._pending or [], None
        self._open_on(conn, headers, False)
        for event in pending:
            self._request_event(event)
        if self._credit_held and not self._held_too_much():
            self._credit_held = False
            self.stream.sink_drained()

    def _open_on(self, conn: _Connection, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self._sid = conn.open(self, headers, end=end)
        except H2Error as exc:
            self._refuse(f"the request cannot be sent over HTTP/2: {exc}")
            return
        self._conn = conn
        self._responding = True
        self._asked_at = conn.loop.time()
        if end:
            self._request_done = True

    def _send_body(self) -> None:
        conn, sid = self._conn, self._sid
        if conn is None or self._pending is not None:
            return
        h2 = conn.h2
        sent = 0
        try:
            while self._body_out:
                piece = self._body_out[0]
                room = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if room <= 0:
                    break
                if len(piece) > room:
                    h2.send_data(sid, piece[:room])
                    self._body_out[0] = piece[room:]
                    sent += room
                    continue
                h2.send_data(sid, piece)
                self._body_out.pop(0)
                sent += len(piece)
            if not self._body_out and self._body_out_end:
                self._body_out_end = False
                if not self._request_done:
                    self._request_done = True
                    h2.end_stream(sid)
        except (H2Error, KeyError):
            # The server already answered and closed the stream: the rest is not wanted.
            self._body_out.clear()
            self._request_done = True
        stats = self._pool.stats
        if stats is not None:
            stats.bytes_to_apiserver += sent
        conn.flush()
        if self._credit_held and not self._held_too_much():
            self._credit_held = False
            self.stream.sink_drained()

    def window_opened(self) -> None:
        if self._body_out or self._body_out_end:
            self._send_body()

    def _leave_answered_stream(self) -> None:
        """The gateway has the whole answer (by its length) and sent its next request
        before the API server's END_STREAM reached us (Go's server may send it in a frame
        of its own after the handler returns): the old stream is left to end on its own,
        what it still brings dropped, and the next request goes on a new one."""
        if self._conn is not None:
            self._conn.drain(self._sid)
        self._conn = None
        self._framing = None
        self._responding = False
        self._unacked = 0

    def gateway_ended(self, error: TunnelError | None) -> None:
        """The tunnel stream ended: half-closed (``None``) or failed."""
        if error is not None or not self._reader.between_requests:
            self._drop_stream()
            return
        self._eof = True
        if not self._responding:
            self._close_tunnel()

    def _drop_stream(self) -> None:
        conn = self._conn
        if conn is not None and self._responding:
            conn.reset(self._sid)
        self._conn = None
        self._responding = False

    # -- from the API server --------------------------------------------------------------

    def response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        stats = self._pool.stats
        if stats is not None and self._conn is not None:
            stats.latency.observe(self._conn.loop.time() - self._asked_at)
        close = not self._keep_alive or self._eof
        try:
            head, framing = h1_response_head(
                headers, head_request=self._head_request, ended=ended, close=close
            )
        except Untranslatable as exc:
            if self._conn is not None:
                self._conn.reset(self._sid)
            self._refuse(str(exc))
            return
        self._framing = framing
        self._write(head, 0)

    def data(self, data: bytes, flow: int) -> None:
        framing = self._framing
        if framing is None or framing.no_body or not data:
            self._taken(flow)
            return
        if framing.chunked:
            self._write(chunk(data), flow)
        else:
            framing.remaining -= len(data)
            self._write(data, flow)

    def ended(self) -> None:
        framing = self._framing
        if framing is None:
            self._refuse("the API server ended the stream without an answer")
            return
        if framing.chunked:
            self._write(LAST_CHUNK, 0)
        self._framing = None
        self._responding = False
        if not self._request_done and self._conn is not None:
            # Answered before the whole body was sent: as an HTTP/1.1 server would,
            # close after the answer.
            self._conn.reset(self._sid)
            self._body_out.clear()
            self._eof = True
        self._conn = None
        self._unacked = 0
        self._request_done = True
        if self._eof or not self._keep_alive:
            self._close_tunnel()

    def upstream_failed(self, reason: str) -> None:
        self._conn = None
        if self._framing is None and self._responding:
            self._refuse(reason)
        elif self._responding:
            self._responding = False
            self.stream.reset(ErrorCode.CONNECT_FAILED, reason)

    # -- into the tunnel stream -----------------------------------------------------------

    def _write(self, data: bytes, flow: int) -> None:
        stream = self.stream
        if not self._backlog and stream.can_write_now(len(data)):
            try:
                stream.write_nowait(data)
            except TunnelError:
                self._drop_stream()
                return
            if flow:
                self._taken(flow)
            return
        self._backlog.append((data, flow))
        if not self._flushing:
            self._flushing = True
            _spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self._backlog:
                data, flow = self._backlog.pop(0)
                await self.stream.write(data)
                if flow:
                    self._taken(flow)
            if self._eof and not self._responding:
                await self.stream.write_eof()
        except TunnelError:
            self._backlog.clear()
            self._drop_stream()
        finally:
            self._flushing = False

    def _close_tunnel(self) -> None:
        """End the tunnel stream after what is queued (as a server closing)."""
        self._eof = True
        if self._flushing:
            return  # ``_flush`` ends it
        with contextlib.suppress(TunnelError):
            if not self.stream.is_closed:
                self._write_eof_now()

    def _write_eof_now(self) -> None:
        self._flushing = True
        _spawn(self._flush())

    def _refuse(self, reason: str) -> None:
        """Answer 502 (if no answer began) and end the stream; never raise."""
        logger.info("request not relayed over HTTP/2: %s", reason)
        self._drop_stream()
        self._pending = None
        self._body_out.clear()
        if self._framing is not None or self.stream.is_closed:
            self.stream.reset(ErrorCode.INTERNAL_ERROR, reason)
            return
        self._framing = None
        self._responding = False
        self._eof = True
        self._write(bad_gateway(reason), 0)
        self._close_tunnel()

    # -- over a connection of its own -----------------------------------------------------

    def _to_fallback(self) -> None:
        if self._conn is not None or self._responding:
            self._refuse("an upgrade after an answer over HTTP/2")
            return
        raw = b"".join(self._reader.raw)
        self.stream.detach()
        self._fallback(self.stream, raw)

    def _to_fallback_after_dial(self) -> None:
        # The API server does not speak h2: this request (already parsed) is written
        # again as it came; the gateway has not seen an answer yet.
        self._refuse("the API server does not offer HTTP/2")


class Fetch(_GivesWindowBack):
    """One request of the agent's own on the pool (``tunnel.cluster_watch``: probes,
    lists and watches of its cluster): ``status`` once the answer's head came, then the
    body as it comes, the stream's window given back as it is read (a slow reader holds
    back its own stream only). ``OSError`` when the stream or connection fails."""

    def __init__(self) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self._head: asyncio.Future[int] = loop.create_future()
        self._chunks: list[bytes] = []
        self._wake = asyncio.Event()
        self._done = False
        self._error: str | None = None

    async def open(self, pool: H2Pool, headers: list[tuple[bytes, bytes]]) -> int:
        """Send the request (a GET, no body) and wait for the answer's status."""
        conn = await pool.connection()
        try:
            self._sid = conn.open(self, headers, end=True)
        except H2Error as exc:
            raise OSError(f"the request cannot be sent over HTTP/2: {exc}") from exc
        self._conn = conn
        try:
            return await asyncio.shield(self._head)
        except BaseException:
            self.close()
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece, until the API server ends the stream."""
        while True:
            while self._chunks:
                piece = self._chunks.pop(0)
                self._taken(len(piece))
                yield piece
            if self._error is not None:
                raise OSError(self._error)
            if self._done:
                return
            self._wake.clear()
            await self._wake.wait()

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        body = bytearray()
        async for piece in self.chunks():
            body += piece
            if len(body) > limit:
                self.close()
                raise OSError(f"an answer larger than {limit} bytes")
        return bytes(body)

    def close(self) -> None:
        """Give the stream up (reset it if the answer has not ended)."""
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.reset(self._sid)
        self._done = True
        if not self._head.done():
            self._head.cancel()
        self._wake.set()

    # -- from the connection (``_StreamUser``) --------------------------------------------

    def response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        status = next((v for n, v in headers if n == b":status"), b"")
        if not self._head.done():
            if status.isdigit():
                self._head.set_result(int(status))
            else:
                self._head.set_exception(OSError("an HTTP/2 answer without a status"))

    def data(self, data: bytes, flow: int) -> None:
        if data:
            self._chunks.append(data)
            self._wake.set()
        if flow > len(data):  # padding: nobody reads it
            self._taken(flow - len(data))

    def ended(self) -> None:
        self._done = True
        self._conn = None
        if not self._head.done():
            self._head.set_exception(OSError("the API server ended the stream without an answer"))
        self._wake.set()

    def upstream_failed(self, reason: str) -> None:
        self._error = reason
        self._conn = None
        if not self._head.done():
            self._head.set_exception(OSError(reason))
        self._wake.set()

    def window_opened(self) -> None:
        pass  # no request body


def request_headers(
    upstream: Upstream, path: str, fields: list[tuple[str, str]]
) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 head of a GET of ``path`` (with its query) from the agent itself."""
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", upstream.host_header.encode("ascii")),
        (b":path", path.encode("ascii")),
        *((name.lower().encode("ascii"), value.encode("latin-1")) for name, value in fields),
    ]


_TASKS: set[asyncio.Task[None]] = set()
"""Tasks of relays waiting for a dial or for a slow reader's credit (held, not lost)."""


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


def start(
    stream: TunnelStream,
    session: Session,
    pool: H2Pool,
    fallback: Fallback,
    long_only: bool = False,
) -> None:
    """Relay ``stream``'s requests over ``pool`` (the stream is accepted at once: the
    connection is shared). ``long_only``: a stream whose first request is not
    long-running (``h2translate.long_running``) goes to ``fallback`` instead, as an
    upgrade does."""
    session.accept(stream)
    relay = _Relay(stream, pool, fallback, long_only)
    stream.set_sink(relay.sink)
    stream.on_end(relay.gateway_ended)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
