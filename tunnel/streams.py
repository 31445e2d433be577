"""One multiplexed stream of a tunnel session, with an awaitable read/write API.

Reads return chunks as they arrive and give credit back to the peer as they are
consumed; writes wait for credit. A stream's buffer is therefore bounded by the
window this side announced, however slow its reader is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol

from tunnel.errors import SessionClosed, StreamClosed, StreamReset, TunnelError
from tunnel.frames import ErrorCode

MIN_WRITE_BYTES = 16 * 1024
"""A write with little room left in the tunnel's send buffer still sends this much."""


class Budget:
    """Bytes one owner (an HTTP/2 connection) holds for a peer that does not read,
    across its streams: ``held`` counts what arrived on their tunnel streams unread;
    ``extra()`` what else the owner holds. ``over()`` is called (once per event-loop
    turn) when the two pass ``limit``; it decides what to drop."""

    __slots__ = ("_extra", "_over", "_scheduled", "held", "limit")

    def __init__(self, limit: int, extra: Callable[[], int], over: Callable[[], None]) -> None:
        self.limit = limit
        self.held = 0
        self._extra = extra
        self._over = over
        self._scheduled = False

    @property
    def total(self) -> int:
        return self.held + self._extra()

    def check(self) -> None:
        """Call ``over`` soon if the total is above the limit."""
        if not self._scheduled and self.held + self._extra() > self.limit:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        if self.held + self._extra() > self.limit:
            self._over()


class ReadTally:
    """The unread tunnel bytes of one reader (an HTTP/2 stream's answer), counted into
    its owner's :class:`Budget` as they arrive and leave."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.held = 0

    def add(self, size: int) -> None:
        self.held += size
        budget = self.budget
        budget.held += size
        if size > 0:
            budget.check()

    def detach(self) -> None:
        """The reader is gone: what it still counted leaves the budget."""
        self.budget.held -= self.held
        self.held = 0
        self.budget = _NOWHERE


_NOWHERE = Budget(2**62, int, lambda: None)


READER_TALLY: ContextVar[ReadTally | None] = ContextVar("READER_TALLY", default=None)
"""Set by whoever reads tunnel streams on a budget (``gateway.front.h2``): the streams
taken for that task's requests count their unread bytes into it (``set_tally``)."""


class StreamOwner(Protocol):
    """What a stream needs of its session (:class:`tunnel.session.Session`): credit,
    room in the send buffer, and the frames it sends."""

    loop: asyncio.AbstractEventLoop

    @property
    def send_room(self) -> int: ...

    async def wait_room(self) -> None: ...

    def send_window(self, stream_id: int) -> int: ...

    def send_data(self, stream_id: int, data: bytes) -> None: ...

    def send_data_borrowed(self, stream_id: int, data: memoryview) -> None: ...

    def end_stream(self, stream_id: int) -> None: ...

    def reset_stream(self, stream_id: int, code: ErrorCode, reason: str) -> None: ...

    def consumed(self, stream_id: int, size: int) -> None: ...


class TunnelStream:
    __slots__ = (
        "_accepted",
        "_chunks",
        "_eof",
        "_error",
        "_held",
        "_is_accepted",
        "_on_end",
        "_read_waiter",
        "_session",
        "_sink",
        "_tally",
        "_window_waiter",
        "_write_closed",
        "id",
        "target",
    )

    def __init__(self, session: StreamOwner, stream_id: int, target: bytes = b"") -> None:
        self._session = session
        self.id = stream_id
        self.target = target
        # Short (the window bounds it); a list, since a deque holds more memory per open
        # stream (docs/benchmarks.md, "Missed targets").
        self._chunks: list[bytes | bytearray] = []
        self._eof = False
        self._write_closed = False
        self._error: TunnelError | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        self._accepted: asyncio.Future[None] | None = None
        """Made only for a waiter (``wait_accepted``): a future per stream held its
        whole life only to say that it was accepted."""
        self._is_accepted = False
        self._sink: Callable[[bytes | bytearray], bool] | None = None
        self._held = 0
        self._tally: ReadTally | None = None
        self._on_end: Callable[[TunnelError | None], None] | None = None

    def __repr__(self) -> str:
        return f"<TunnelStream {self.id}>"

    # -- state -----------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Reset, or the session is gone: nothing more can be read or written."""
        return self._error is not None

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    # -- reading ---------------------------------------------------------------

    async def read(self) -> bytes | bytearray:
        """The next chunk of bytes; ``b""`` once the peer has half-closed."""
        while not self._chunks:
            if self._eof:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait_for_feed()
        chunk = self._chunks.pop(0)
        if self._tally is not None:
            self._tally.add(-len(chunk))
        self._session.consumed(self.id, len(chunk))
        return chunk

    def set_tally(self, tally: ReadTally | None) -> None:
        """Count unread bytes into ``tally`` from now on (None: stop counting)."""
        if tally is self._tally:
            return
        unread = sum(map(len, self._chunks))
        if self._tally is not None and unread:
            self._tally.add(-unread)
        self._tally = tally
        if tally is not None and unread:
            tally.add(unread)

    def set_sink(self, sink: Callable[[bytes | bytearray], bool]) -> None:
        """Hand arriving bytes straight to ``sink`` instead of queueing them for ``read``.

        Saves a task wake-up per chunk where the bytes only need to be written on (the
        agent's API-server connections). ``sink`` returns False when it is backed up: the
        credit for those bytes is then kept until :meth:`sink_drained`, so the peer stops
        sending. End and errors are still awaited with :meth:`wait_eof`.
        """
        self._sink = sink
        while self._chunks:
            self._deliver(self._chunks.pop(0))

    def detach(self) -> None:
        """Forget the sink and the end callback (the stream is read again, or goes back
        to a pool); credit held back for the sink is returned."""
        self._sink = None
        self._on_end = None
        self.sink_drained()

    def on_end(self, callback: Callable[[TunnelError | None], None]) -> None:
        """Call ``callback(None)`` when the peer half-closes, ``callback(error)`` when the
        stream fails (reset, the session gone), once, instead of waiting for it (a sink's
        owner with no task of its own). Called at once if that has happened already."""
        if self._error is not None:
            callback(self._error)
        elif self._eof:
            callback(None)
        else:
            self._on_end = callback

    def _ended(self, error: TunnelError | None) -> None:
        callback = self._on_end
        if callback is not None:
            self._on_end = None
            callback(error)

    def sink_drained(self) -> None:
        """The sink can take more: return the credit held back."""
        held, self._held = self._held, 0
        if held and self._error is None:
            self._session.consumed(self.id, held)

    async def wait_eof(self) -> None:
        """Wait until the peer half-closes; raises if the stream fails first."""
        while not self._eof:
            if self._error is not None:
                raise self._error
            await self._wait_for_feed()

    async def _wait_for_feed(self) -> None:
        """Until data, the end or an error arrives (``_wake_reader``)."""
        waiter = self._session.loop.create_future()
        self._read_waiter = waiter
        try:
            await waiter
        finally:
            self._read_waiter = None

    def _deliver(self, data: bytes | bytearray) -> None:
        assert self._sink is not None
        if self._sink(data):
            self._session.consumed(self.id, len(data))
        else:
            self._held += len(data)

    def read_nowait(self) -> bytes | bytearray | None:
        """A buffered chunk, ``b""`` at EOF, or None if nothing is buffered."""
        if self._chunks:
            chunk = self._chunks.pop(0)
            if self._tally is not None:
                self._tally.add(-len(chunk))
            self._session.consumed(self.id, len(chunk))
            return chunk
        if self._eof:
            return b""
        if self._error is not None:
            raise self._error
        return None

    # -- writing ---------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send all of ``data``, waiting for credit as needed."""
        view = memoryview(data) if len(data) > 0 else None
        offset = 0
        total = len(data)
        while offset < total:
            if self._error is not None:
                raise self._error
            if self._write_closed:
                raise StreamClosed(self.id, "write after write_eof")
            session = self._session
            window = session.send_window(self.id)
            if window <= 0:
                waiter = session.loop.create_future()
                self._window_waiter = waiter
                try:
                    await waiter
                finally:
                    self._window_waiter = None
                continue
            room = session.send_room
            if room <= 0:  # the tunnel's send buffer is full: wait for the peer to read
                await session.wait_room()
                continue
            size = min(window, total - offset, max(room, MIN_WRITE_BYTES))
            if offset == 0 and size == total:
                self._session.send_data(self.id, data)
            else:
                assert view is not None
                self._session.send_data(self.id, bytes(view[offset : offset + size]))
            offset += size

    def can_write_now(self, size: int) -> bool:
        session = self._session
        return (
            self._error is None
            and session.send_window(self.id) >= size
            and session.send_room >= size
        )

    def write_nowait(self, data: bytes) -> None:
        """Send ``data`` now; the caller has checked ``can_write_now``."""
        if self._error is not None:
            raise self._error
        self._session.send_data(self.id, data)

    def write_borrowed_nowait(self, data: memoryview) -> None:
        """``write_nowait`` for bytes valid only during this call (see
        ``Session.send_data_borrowed``)."""
        if self._error is not None:
            raise self._error
        self._session.send_data_borrowed(self.id, data)

    async def write_eof(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._write_closed:
            self._write_closed = True
            self._session.end_stream(self.id)

    def reset(self, code: ErrorCode = ErrorCode.CANCEL, reason: str = "") -> None:
        """Abort the stream in both directions. Safe to call more than once."""
        if self._error is None:
            self._session.reset_stream(self.id, code, reason)
            self._fail(StreamReset(self.id, code, reason or "reset locally"))

    async def wait_accepted(self) -> None:
        """Wait for the peer's ACCEPT (its far end is connected)."""
        if self._error is not None:
            raise self._error
        if self._is_accepted:
            return
        if self._accepted is None:
            self._accepted = self._session.loop.create_future()
        try:
            await self._accepted
        finally:
            self._accepted = None

    # -- called by the session ---------------------------------------------------

    def _feed(self, data: bytes | bytearray) -> None:
        if self._sink is not None:
            self._deliver(data)
            return
        self._chunks.append(data)
        if self._tally is not None:
            self._tally.add(len(data))
        self._wake_reader()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake_reader()
        if self._on_end is not None:
            self._ended(None)

    def _set_accepted(self) -> None:
        self._is_accepted = True
        accepted = self._accepted
        if accepted is not None and not accepted.done():
            accepted.set_result(None)

    def _window_opened(self) -> None:
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: TunnelError) -> None:
        if self._error is not None:
            return
        self._error = error
        # Unread data stays readable when the session ends; a reset discards it.
        if not isinstance(error, SessionClosed):
            if self._tally is not None:
                self._tally.add(-sum(map(len, self._chunks)))
                self._tally = None
            self._chunks.clear()
        self._wake_reader()
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        accepted = self._accepted
        if accepted is not None and not accepted.done():
            accepted.set_exception(error)
            accepted.exception()  # mark retrieved: nobody may be waiting
        if self._on_end is not None:
            self._ended(error)

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
