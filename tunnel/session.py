"""asyncio layer over one :class:`~tunnel.protocol.TunnelProtocol` and one transport.

What arrives (pushed by the transport) is fed to the protocol and its events
dispatched to the streams. What the protocol queued leaves at the end of the loop
iteration, frames queued in the same iteration coalesced into one WebSocket message:
straight to the transport when it can take it, else through a writer task that runs
while anything waits (an idle tunnel has none). One timer per event loop
(``_Keepalive``) looks at every started session: it sends a PING on a tunnel that has been
quiet too long and closes one whose peer stopped answering.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from config import allocator
from tunnel.errors import ProtocolError, SessionClosed, StreamReset, TunnelError
from tunnel.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    HelloReceived,
    InfoReceived,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    WindowUpdated,
)
from tunnel.events import StreamReset as StreamResetEvent
from tunnel.frames import ErrorCode
from tunnel.protocol import Limits, Side, TunnelProtocol
from tunnel.streams import TunnelStream
from tunnel.transport import Parts, Transport

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 20.0
"""Send a PING when nothing has been received for this long."""
IDLE_TIMEOUT_S = 28.0
"""Declare the peer dead when nothing has been received for this long."""
HANDSHAKE_TIMEOUT_S = 10.0
TICK_S = 2.0
"""While a PING is unanswered, another goes this often (shorter for short intervals)."""
TIMER_GRID_S = 1.0
"""How often the keepalive timer looks at the sessions (shorter for short intervals),
on whole wall-clock seconds: a process's tunnels, and through their PINGs the peer's,
then wake together once a second."""
COALESCE_BELOW_BYTES = 8 * 1024
"""Smaller writes wait for the end of the event-loop turn, to leave with the others."""
FLUSH_AT_PARTS = 32
"""...but no more than this many frames wait: in a turn that handles many requests (64
arrive together at c=64) the first ones leave while the rest are still being built, so
the peer works on them meanwhile instead of both sides taking turns."""

SEND_BUFFER_BYTES = 8 * 1024 * 1024
"""Bytes queued for the peer, all streams together, above which writers wait."""
SEND_SLACK_BYTES = 1024 * 1024
"""Beyond twice the send buffer plus this (what cannot wait: control frames, answers to
the peer's PINGs, RESETs), the peer is not reading: the tunnel is closed."""
SEND_TIMEOUT_S = 30.0
"""A peer that takes nothing of what is queued for it this long is gone."""
SEND_BATCH_BYTES = 1024 * 1024
"""The writer hands the transport at most about this much at a time; ``send_timeout_s``
is the most one batch may take."""

StreamHandler = Callable[[TunnelStream], None]
InfoHandler = Callable[[bytes], None]


class Session:
    """One tunnel: many concurrent streams over one transport."""

    def __init__(
        self,
        transport: Transport,
        side: Side,
        *,
        limits: Limits | None = None,
        metadata: bytes = b"",
        on_stream: StreamHandler | None = None,
        on_info: InfoHandler | None = None,
        ping_interval_s: float = PING_INTERVAL_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        name: str = "",
        send_buffer: int = SEND_BUFFER_BYTES,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.name = name
        self._transport = transport
        self._proto = TunnelProtocol(side, limits, metadata)
        self._streams: dict[int, TunnelStream] = {}
        self._on_stream = on_stream
        self._on_info = on_info
        self._pending: Parts = []
        self._unsent = 0
        """Bytes in ``_pending`` and in the writer's hands, not yet taken by the transport."""
        self._send_buffer = send_buffer
        self._send_limit = 2 * send_buffer + SEND_SLACK_BYTES
        self._send_timeout_s = send_timeout_s
        self._room_waiters: list[asyncio.Future[None]] = []
        self._writing = False
        self._flush_scheduled = False
        self._started = False
        self._writer_task: asyncio.Task[None] | None = None
        """Sends ``_pending`` while it is not empty (after ``start``), then ends."""
        self._closed: asyncio.Future[SessionClosed] = self.loop.create_future()
        self._background: set[asyncio.Task[None]] | None = None
        self._early_events: list[Event] = []
        self._reading_done = False
        self._ping_interval_s = ping_interval_s
        self._idle_timeout_s = idle_timeout_s
        self._last_rx = self.loop.time()
        self._last_ping = 0.0
        self._tick_s = min(TICK_S, ping_interval_s / 2, idle_timeout_s / 2)
        self._keepalive: _Keepalive | None = None
        self._keepalive_slot = 0
        """Where ``_keepalive`` files this session: the grid step of its next look."""
        self._going_away = False
        self._goaway: tuple[ErrorCode, str] | None = None
        self.debug = logger.isEnabledFor(logging.DEBUG)

    def __repr__(self) -> str:
        return f"<Session {self.name} streams={len(self._streams)}>"

    # -- lifecycle ---------------------------------------------------------------

    async def handshake(self, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> bytes:
        """Exchange HELLOs; returns the peer's HELLO metadata (not kept here)."""
        metadata = b""
        try:
            async with asyncio.timeout(timeout_s):
                await self._transport.send(self._proto.parts_to_send())
                while True:
                    data = await self._transport.receive()
                    if data is None:
                        raise SessionClosed(ErrorCode.PROTOCOL_ERROR, "closed during handshake")
                    events = self._proto.receive_data(data)
                    if events and isinstance(events[0], HelloReceived):
                        metadata = events[0].metadata
                        self._early_events = events[1:]
                        break
                    if events:
                        raise ProtocolError("HELLO expected")
        except TimeoutError:
            await self._abort(SessionClosed(ErrorCode.TIMEOUT, "handshake timed out"))
            raise SessionClosed(ErrorCode.TIMEOUT, "handshake timed out") from None
        except ProtocolError as exc:
            await self._send_pending_then_abort(SessionClosed(exc.error_code, str(exc)))
            raise
        except SessionClosed as closed:
            await self._abort(closed)
            raise
        except OSError as failure:
            await self._abort(SessionClosed(ErrorCode.INTERNAL_ERROR, str(failure)))
            raise SessionClosed(ErrorCode.INTERNAL_ERROR, str(failure)) from failure
        return metadata

    def start(self) -> None:
        """Start reading, writing and keepalive after ``handshake``.

        The transport pushes what arrives from its own callback (``set_receiver``): no
        reader task and no task switch per read.
        """
        self._last_rx = self.loop.time()
        self._started = True
        if self._pending:  # queued before the start
            self._writer_task = self.loop.create_task(self._writer())
        if not self._closed.done():
            self._keepalive = _Keepalive.of(self.loop)
            self._keepalive.add(self, self._tick_s)
        if self._early_events:
            events, self._early_events = self._early_events, []
            self._dispatch(events)
            self._flush()
        self._transport.set_receiver(self._received, self._receive_ended)

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    @property
    def is_usable(self) -> bool:
        """Open, and the peer has not announced that it is going away."""
        return not self._closed.done() and not self._going_away

    @property
    def goaway(self) -> tuple[ErrorCode, str] | None:
        """The code and reason of the peer's GOAWAY; None if it sent none."""
        return self._goaway

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def peer_max_streams(self) -> int:
        """Streams the peer lets this side open at once (its HELLO)."""
        peer = self._proto.peer
        return peer.max_streams if peer is not None else 1

    @property
    def bytes_sent(self) -> int:
        return self._proto.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._proto.bytes_received

    async def wait_closed(self) -> SessionClosed:
        return await asyncio.shield(self._closed)

    def when_closed(self, callback: Callable[[SessionClosed], None]) -> None:
        """Call ``callback`` with the reason once the session has closed (in the context
        of this call, as ``Future.add_done_callback`` does)."""
        self._closed.add_done_callback(lambda closed: callback(closed.result()))

    async def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Send GOAWAY, fail every stream and close the transport."""
        if self._closed.done():
            return
        self._proto.close(code, reason)
        await self._send_pending_then_abort(SessionClosed(code, reason or "closed locally"))

    # -- streams -----------------------------------------------------------------

    def open_stream(self, target: bytes = b"") -> TunnelStream:
        """Open a stream now; data may be written before the peer accepts it."""
        if self._closed.done():
            raise self._closed.result()
        stream_id = self._proto.open_stream(target)
        stream = TunnelStream(self, stream_id, target)
        self._streams[stream_id] = stream
        self._flush()
        return stream

    def accept(self, stream: TunnelStream) -> None:
        if stream.is_closed:
            return
        self._proto.accept_stream(stream.id)
        self._flush()

    def set_stream_handler(self, on_stream: StreamHandler | None) -> None:
        """Who takes the streams the peer opens from now on (None: they are refused).
        For a handler that needs the session itself, so cannot be given to the
        constructor (the agent's relay)."""
        self._on_stream = on_stream

    def send_info(self, metadata: bytes) -> None:
        self._proto.send_info(metadata)
        self._flush()

    # -- called by streams ---------------------------------------------------------

    @property
    def send_room(self) -> int:
        """Bytes that may be queued now before the send buffer is full."""
        return self._send_buffer - self._unsent

    async def wait_room(self) -> None:
        """Until the peer has taken enough that the send buffer has room again."""
        while self._unsent >= self._send_buffer:
            if self._closed.done():
                raise self._closed.result()
            waiter = self.loop.create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)

    def send_window(self, stream_id: int) -> int:
        return self._proto.send_window(stream_id)

    def send_data(self, stream_id: int, data: bytes) -> None:
        self._proto.send_data(stream_id, data)
        if len(data) >= COALESCE_BELOW_BYTES:
            self._flush_now()  # bulk: nothing to gain by waiting for company
        else:
            self._flush()

    def send_data_borrowed(self, stream_id: int, data: memoryview) -> None:
        """``send_data`` for bytes valid only during this call (a read buffer that is
        reused): they leave at once, copied into the WebSocket message, and are copied
        only if the transport cannot take them now. Saves a copy per read of a big answer.
        """
        self._proto.send_data(stream_id, data)
        self._flush_now(borrowed=True)

    def end_stream(self, stream_id: int) -> None:
        self._proto.end_stream(stream_id)
        if not self._proto.has_stream(stream_id):
            self._streams.pop(stream_id, None)
        self._flush()

    def reset_stream(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        self._streams.pop(stream_id, None)
        if not self._closed.done():
            self._proto.reset_stream(stream_id, code, reason)
            self._flush()

    def consumed(self, stream_id: int, size: int) -> None:
        self._proto.acknowledge_received_data(stream_id, size)
        self._flush()

    # -- internals -----------------------------------------------------------------

    def _flush(self) -> None:
        """Send what the protocol has queued, at the end of this event-loop turn.

        Frames produced in the same turn (many requests' frames under load, a response's
        DATA and a WINDOW update) then leave as one WebSocket message: one TLS record and
        one system call instead of one each, for the price of a ``call_soon``. Once
        ``FLUSH_AT_PARTS`` frames wait they go at once.
        """
        queued = self._proto.queued
        if queued >= FLUSH_AT_PARTS:
            self._flush_now()  # a big turn: let the peer start on its first part
        elif queued and not self._flush_scheduled:  # (most reads queue no WINDOW)
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self, borrowed: bool = False) -> None:
        self._flush_scheduled = False
        parts = self._proto.parts_to_send()
        if not parts:
            return
        # Straight out when nothing is queued before it and the transport can take it;
        # otherwise the writer task sends it (after what is queued, coalesced).
        if not self._pending and not self._writing and self._transport.try_send_now(parts):
            return
        if borrowed:  # views of a buffer its owner reuses: kept, they must be copies
            parts = [bytes(p) if type(p) is memoryview else p for p in parts]
        self._pending += parts
        self._unsent += sum(map(len, parts))
        if self._unsent > self._send_limit and not self._closed.done():
            # Writers wait above the send buffer; what piles up beyond twice it is what
            # cannot wait (answers to PINGs, RESETs): the peer sends and does not read.
            logger.warning(
                "tunnel %s: the peer reads nothing of %d bytes queued for it; closing",
                self.name,
                self._unsent,
            )
            closed = SessionClosed(ErrorCode.FLOW_CONTROL_ERROR, "peer not reading")
            self._spawn(self._abort(closed))
            return
        if self._writer_task is None and self._started and not self._closed.done():
            self._writer_task = self.loop.create_task(self._writer())

    async def _writer(self) -> None:
        """Send ``_pending`` until it is empty (what is queued meanwhile too), then end."""
        try:
            while self._pending:
                parts, size = self._take_batch()
                self._writing = True
                try:
                    async with asyncio.timeout(self._send_timeout_s):
                        await self._transport.send(parts)
                except TimeoutError:
                    logger.warning(
                        "tunnel %s: the peer took nothing for %.0f s; closing",
                        self.name,
                        self._send_timeout_s,
                    )
                    self._spawn(self._abort(SessionClosed(ErrorCode.TIMEOUT, "send timed out")))
                    return
                finally:
                    self._writing = False
                self._unsent -= size
                if self._room_waiters and self._unsent < self._send_buffer:
                    self._wake_room()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the session
            if not self._closed.done():
                logger.info("tunnel %s: write failed: %s", self.name, exc)
            self._spawn(self._abort(SessionClosed(ErrorCode.INTERNAL_ERROR, str(exc))))
            return  # (a failed writer stays in place: no other starts; the abort follows)
        self._writer_task = None

    def _take_batch(self) -> tuple[Parts, int]:
        """The first parts of ``_pending``, about ``SEND_BATCH_BYTES`` (at least one)."""
        pending = self._pending
        size = 0
        count = 0
        for part in pending:
            size += len(part)
            count += 1
            if size >= SEND_BATCH_BYTES:
                break
        if count == len(pending):
            self._pending = []
            return pending, size
        batch = pending[:count]
        del pending[:count]
        return batch, size

    def _wake_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _received(self, data: bytes | bytearray) -> None:
        """Bytes from the peer, pushed by the transport."""
        if self._reading_done:
            return
        self._last_rx = self.loop.time()
        try:
            events = self._proto.receive_data(data)
            if events:
                self._dispatch(events)
        except ProtocolError as exc:
            logger.warning("tunnel %s: protocol error from peer: %s", self.name, exc)
            self._flush()
            self._end_reading(SessionClosed(exc.error_code, str(exc)))
            return
        except Exception as failure:  # a failure here ends the session, not the event loop
            logger.exception("tunnel %s: failed to handle what the peer sent", self.name)
            self._end_reading(SessionClosed(ErrorCode.INTERNAL_ERROR, f"read failed: {failure}"))
            return
        self._flush()

    def _receive_ended(self) -> None:
        self._end_reading(SessionClosed(ErrorCode.NO_ERROR, "peer closed the connection"))

    def _end_reading(self, reason: SessionClosed) -> None:
        if not self._reading_done:
            self._reading_done = True
            self._spawn(self._send_pending_then_abort(reason))

    def _dispatch(self, events: list[Event]) -> None:
        streams = self._streams
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                assert isinstance(event, DataReceived)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._feed(event.data)
            elif kind is WindowUpdated:
                assert isinstance(event, WindowUpdated)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._window_opened()
            elif kind is StreamEnded:
                assert isinstance(event, StreamEnded)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._feed_eof()
                    if not self._proto.has_stream(event.stream_id):
                        del streams[event.stream_id]
            elif kind is StreamOpened:
                assert isinstance(event, StreamOpened)
                self._on_stream_opened(event)
            elif kind is StreamAccepted:
                assert isinstance(event, StreamAccepted)
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._set_accepted()
            elif kind is StreamResetEvent:
                assert isinstance(event, StreamResetEvent)
                stream = streams.pop(event.stream_id, None)
                if stream is not None:
                    stream._fail(StreamReset(event.stream_id, event.code, event.reason))
            elif kind is InfoReceived:
                assert isinstance(event, InfoReceived)
                if self._on_info is not None:
                    self._on_info(event.metadata)
            elif kind is ConnectionTerminated:
                assert isinstance(event, ConnectionTerminated)
                logger.info("tunnel %s: peer is going away: %s", self.name, event.reason)
                self._going_away = True
                self._goaway = (event.code, event.reason)

    def _on_stream_opened(self, event: StreamOpened) -> None:
        if self._on_stream is None:
            self._proto.refuse_stream(event.stream_id, "no handler")
            return
        stream = TunnelStream(self, event.stream_id, event.target)
        self._streams[event.stream_id] = stream
        try:
            self._on_stream(stream)
        except Exception:
            logger.exception("tunnel %s: stream handler failed", self.name)
            stream.reset(ErrorCode.INTERNAL_ERROR, "handler failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        background = self._background
        if background is None:
            background = self._background = set()
        task = self.loop.create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    def _check_keepalive(self, now: float) -> float:
        """Called by the keepalive timer: a PING when the tunnel has been quiet for the
        ping interval (again every tick while unanswered), the end at the idle timeout.
        Data arriving only moves ``_last_rx``. Returns when a look is next needed (loop
        time; later data only moves that further out)."""
        idle = now - self._last_rx
        if idle >= self._idle_timeout_s:
            logger.warning("tunnel %s: no data from peer for %.0f s, closing", self.name, idle)
            self._stop_keepalive()
            self._proto.close(ErrorCode.TIMEOUT, "keepalive timeout")
            self._spawn(self._abort(SessionClosed(ErrorCode.TIMEOUT, "keepalive timeout")))
            return math.inf
        if idle < self._ping_interval_s:
            return self._last_rx + self._ping_interval_s
        if now - self._last_ping >= self._tick_s:
            self._last_ping = now
            self._proto.ping(os.urandom(8))
            self._flush()
        return min(self._last_ping + self._tick_s, self._last_rx + self._idle_timeout_s)

    def _stop_keepalive(self) -> None:
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None:
            keepalive.discard(self)

    async def _send_pending_then_abort(self, reason: SessionClosed) -> None:
        self._flush_now()
        if self._pending and not self._closed.done():
            parts, self._pending = self._pending, []
            try:
                async with asyncio.timeout(1.0):
                    await self._transport.send(parts)
            except (TimeoutError, OSError, TunnelError, RuntimeError):
                pass
            except Exception as exc:  # noqa: BLE001 - best effort GOAWAY on a dying transport
                logger.debug("tunnel %s: final write failed: %s", self.name, exc)
        await self._abort(reason)

    async def _abort(self, reason: SessionClosed) -> None:
        if self._closed.done():
            return
        self._closed.set_result(reason)
        self._stop_keepalive()
        freed, self._unsent = self._unsent, 0
        self._pending = []
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(reason)
                waiter.exception()  # retrieved: the writer may have gone meanwhile
        allocator.freed(freed)
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._fail(reason)
        writer = self._writer_task
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        try:
            async with asyncio.timeout(2.0):
                await self._transport.close()
        except Exception as exc:  # noqa: BLE001 - the transport may already be broken
            logger.debug("tunnel %s: close failed: %s", self.name, exc)
        logger.debug("tunnel %s closed: %s", self.name, reason)


class _Keepalive:
    """The keepalive of every started session of one event loop, on one timer.

    A timer per session, re-armed each time the peer's PING moved its deadline, woke an
    idle gateway once per tunnel per ping interval: at thousands of tunnels the timer
    heap's upkeep and the handles were a measurable part of its idle CPU
    (docs/benchmarks.md, "One keepalive timer"). Here one timer fires every
    ``TIMER_GRID_S`` (or the shortest tick a session asks for) while any session is
    registered. The sessions are filed by the grid step at which each next needs a look
    (a timing wheel: ``slots``), so a firing looks only at those due then, about once per
    ping interval each, not at every tunnel every second; data arriving files nothing
    (a session looked at early is filed again, further out).
    """

    __slots__ = ("count", "loop", "period", "slots", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, set[Session]] = {}
        """Grid step (``floor(loop time / period)``) -> the sessions to look at then."""
        self.count = 0
        self.period = TIMER_GRID_S
        self.timer: asyncio.TimerHandle | None = None

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> _Keepalive:
        keepalive = _KEEPALIVES.get(loop)
        if keepalive is None:
            for closed in [other for other in _KEEPALIVES if other.is_closed()]:
                del _KEEPALIVES[closed]  # (a test's loop closed with sessions open)
            keepalive = _KEEPALIVES[loop] = _Keepalive(loop)
        return keepalive

    def _step(self, when: float) -> int:
        return math.floor(when / self.period)

    def _file(self, session: Session, step: int) -> None:
        session._keepalive_slot = step
        slot = self.slots.get(step)
        if slot is None:
            slot = self.slots[step] = set()
        slot.add(session)

    def add(self, session: Session, tick_s: float) -> None:
        """Look at ``session`` from the next firing on."""
        if tick_s < self.period:  # a shorter grid: everyone is looked at next time
            everyone = [s for slot in self.slots.values() for s in slot]
            self.slots = {}
            self.period = tick_s
            following = self._step(self.loop.time()) + 1
            for other in everyone:
                self._file(other, following)
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        self._file(session, self._step(self.loop.time()) + 1)
        self.count += 1
        if self.timer is None:
            self._schedule()

    def discard(self, session: Session) -> None:
        """Once per ``add`` (``Session._stop_keepalive``); the session may be in no slot
        (the one being looked at)."""
        slot = self.slots.get(session._keepalive_slot)
        if slot is not None:
            slot.discard(session)
            if not slot:
                del self.slots[session._keepalive_slot]
        self.count -= 1
        if not self.count:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if _KEEPALIVES.get(self.loop) is self:
                del _KEEPALIVES[self.loop]

    def _schedule(self) -> None:
        delay = self.period
        if delay >= TIMER_GRID_S:  # the next whole second at least half a period away
            wall = time.time()
            delay = math.ceil((wall + delay / 2) / TIMER_GRID_S) * TIMER_GRID_S - wall
        self.timer = self.loop.call_later(max(delay, 0.001), self._run)

    def _run(self) -> None:
        self.timer = None
        now = self.loop.time()
        current = self._step(now)
        for step in sorted(step for step in self.slots if step <= current):
            due = self.slots.pop(step)
            for session in due:
                if session._keepalive is not self:
                    continue  # (stopped meanwhile)
                following = session._check_keepalive(now)
                if session._keepalive is self:
                    after = self._step(following) if following < math.inf else current
                    self._file(session, max(after, current + 1))
        if self.count and self.timer is None:
            self._schedule()


_KEEPALIVES: dict[asyncio.AbstractEventLoop, _Keepalive] = {}
"""Each event loop's keepalive while it has started sessions."""
