"""TLS connections whose records OpenSSL reads and writes on the socket itself.

uvloop's (and asyncio's) TLS keeps OpenSSL behind two memory BIOs: every record is
copied into one before it is decrypted and out of the other after it is encrypted, and
each BIO write zero-fills its space first. A non-blocking :class:`ssl.SSLSocket`
encrypts straight into the record it writes to the socket and reads each record straight
from it, which saves the sending end CPU per MB and leaves the receiving end about the
same; streaming answers cost the gateway (sending to clients) and the agent (sending
through the tunnel) that much less. docs/design.md section 9 ("TLS on the socket") has
the measurements.

:class:`TLSTransport` is an :class:`asyncio.Transport` over such a socket, for
:class:`asyncio.Protocol` and :class:`asyncio.BufferedProtocol` alike; :func:`connect`
dials one (the agent's tunnel and its API-server connections) and :class:`TLSServer`
accepts them (the gateway's listener). What they do not do: half-close (TLS has none,
as with uvloop), and renegotiation beyond retrying an operation OpenSSL asked to retry.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from config.compat.ssl_internals import (
    Session,
    SessionRef,
    direct,
    enable_read_ahead,
    pending_check,
    resume,
    session_of,
)

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 60.0
"""A TLS handshake that has not finished by then is cut (uvloop's default too)."""
LINGER_S = 5.0
"""After our close_notify and FIN, how long to read and discard what the peer still
sends before closing: closing with unread bytes would make the kernel answer with a
reset and drop what we wrote but it has not yet received."""
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
READ_BYTES = 256 * 1024
"""Most plaintext bytes taken from the socket in one readiness callback."""
FULL_RECORD = 16 * 1024
"""The most plaintext a TLS record carries: a read that returned less was not part of a
stream of full records (``_fill``)."""
_KEEP_WHOLE_BYTES = 64 * 1024
"""A queued ``bytes`` this big is kept as it is (immutable: no copy) rather than merged."""
_MERGE_BYTES = 256 * 1024
"""Writes queued while the socket is full are merged into one buffer up to this size
(one SSL_write, fewer records and syscalls, once it drains)."""

_scratch = memoryview(bytearray(READ_BYTES))
"""Read buffer for protocols that are not buffered (copied out before they see it)."""

_SOFT_ERRORS = (BlockingIOError, InterruptedError)
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ACCEPT_PAUSE_S = 1.0
"""After an accept failed for want of descriptors or memory, accepting waits this long."""


MAX_SESSIONS = 8
"""TLS sessions kept for resumption per server (``Sessions``)."""


class Sessions:
    """TLS sessions to resume, for connections from one context to one server.

    A resumed handshake (TLS 1.3 with a ticket the server sent on an earlier connection,
    still with a fresh key exchange) skips the server's certificate and its signature, and
    our verification of them: cheaper for both ends, and the agent dials its API server
    while a user waits (an exec, a request on a new tunnel stream). Each connection that
    ends leaves the session it holds (its newest ticket) here; each dial takes one, so a
    ticket is used once (RFC 8446, appendix C.4). A session the server no longer accepts
    costs a full handshake, as without one."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[Session] = []

    def __len__(self) -> int:
        return len(self._held)

    def take(self) -> Session | None:
        """The newest session kept, or None."""
        return self._held.pop() if self._held else None

    def keep(self, sock: ssl.SSLSocket, inner: Any) -> None:
        """Keep the session of ``sock`` (about to close; ``inner`` its C object) if it
        holds a ticket: OpenSSL's own copy where OpenSSL can be reached (CPython's
        ``SSLSocket.session`` serialises it and parses it back, certificate and all:
        config.compat.ssl_internals, 5)."""
        session = session_of(sock, inner)
        if session is None:
            return
        if len(self._held) >= MAX_SESSIONS:
            oldest = self._held.pop(0)
            if isinstance(oldest, SessionRef):
                oldest.release()
        self._held.append(session)


class TLSTransport(asyncio.Transport):
    """An established TLS connection on a non-blocking :class:`ssl.SSLSocket`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        protocol: asyncio.BaseProtocol,
        release: Callable[[], None] | None = None,
        peername: Any = None,
        sessions: Sessions | None = None,
    ) -> None:
        super().__init__()
        self._release = release
        """Called once the connection is gone (``TLSServer``'s ``admit``)."""
        self._sessions = sessions
        """Where the connection's TLS session goes when it ends (dialled connections)."""
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        # The C object under SSLSocket: its read/write without the Python wrappers'
        # checks (a large share of this transport's time per small request: docs/design.md
        # section 3, "TLS"); the socket's
        # own methods if that is not there (config.compat.ssl_internals). Ragged EOFs,
        # which SSLSocket.recv_into turns into 0, are handled in _fill.
        self._ssl: Any = direct(sock)
        self._has_pending: Callable[[], int] | None = (
            None if self._ssl is sock else pending_check(sock, self._ssl)
        )
        """Whether OpenSSL holds anything not yet read (None: not known; read until it
        wants more). ``_ssl`` keeps alive what it points into."""
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._pending: collections.deque[bytes | bytearray] | None = None
        """What OpenSSL has not taken yet, oldest first; None when nothing waits (most
        of the time: an idle connection holds no queue)."""
        self._pending_size = 0
        self._head_in_flight = False
        """Whether OpenSSL has begun on ``_pending[0]`` (then it must not change)."""
        self._high = HIGH_WATER
        self._low = LOW_WATER
        self._reading = False
        self._more_held = False
        """Whether the last read stopped with its buffer full (OpenSSL may hold more)."""
        self._reader_on = False
        self._writer_on = False
        self._write_paused = False
        self._read_wants_write = False
        self._write_wants_read = False
        self._closing = False
        self._closed = False
        self._lost = False
        self._linger: asyncio.TimerHandle | None = None
        if peername is None:  # else the client behind a balancer
            with contextlib.suppress(OSError):
                peername = sock.getpeername()
        self._peername: Any = peername
        """Read now: the front asks for it once the connection is made, and the socket
        cannot tell once it is closed. The rest of ``get_extra_info`` is asked of the
        socket when wanted (held here, it was a dict per connection)."""

    def start(self) -> None:
        """Hand the connection to its protocol and start reading."""
        self._protocol.connection_made(self)
        if not self._closing:
            self._reading = True
            self._update_reader()
            # Plaintext OpenSSL already holds is not a socket event: look once.
            self._loop.call_soon(self._read_ready)

    # asyncio.BaseTransport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sock = self._sock
        if name in ("socket", "ssl_object"):
            return sock
        if name == "peername":
            return default if self._peername is None else self._peername
        if name == "sslcontext":
            return sock.context
        try:
            if name == "peercert":
                return sock.getpeercert()
            if name == "cipher":
                return sock.cipher()
            if name == "compression":
                return sock.compression()
            if name == "sockname":
                return sock.getsockname()
        except (OSError, ValueError):  # closed: the socket cannot tell any more
            return default
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._reading = False
        self._update_reader()
        if not self._pending:
            self._loop.call_soon(self._shut_down)  # else once the queue has drained

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # asyncio.ReadTransport

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._update_reader()

    def resume_reading(self) -> None:
        if self._closing or self._reading:
            return
        self._reading = True
        self._update_reader()
        if self._more_held or self._ssl.pending():
            self._loop.call_soon(self._read_ready)  # records OpenSSL read ahead

    # asyncio.WriteTransport

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._pending_size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing:
            return  # as uvloop's: writes after close() are dropped
        if self._pending or self._writer_on or self._write_wants_read:
            self._queue(data)  # the socket is full: wait for it
            self._maybe_pause_protocol()
        else:
            # Straight to OpenSSL and the socket. Holding small writes to the end of the
            # event-loop turn, to merge them, cost req/s at 64 connections: the callers
            # already write a turn's worth at once (design.md section 3; the measurement
            # is in section 9).
            self._send(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def abort(self) -> None:
        self._fatal(None)

    def _gone(self) -> bool:
        """Whether the socket is closed (a method: a callback may have closed it)."""
        return self._closed

    # reading

    def _update_reader(self) -> None:
        if self._linger is not None:
            return  # shut down: the reader is _discard's until the end
        want = not self._closed and (self._reading or self._write_wants_read)
        if want and not self._reader_on:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reader_on = True
        elif not want and self._reader_on:
            self._loop.remove_reader(self._fd)
            self._reader_on = False

    def _read_ready(self) -> None:
        if self._closed:
            return
        if self._write_wants_read:
            self._write_wants_read = False
            self._update_reader()
            self._write_ready()
            if self._gone():
                return
        if not self._reading:
            return
        self._more_held = False
        if self._buffered:
            self._read_buffered()
        else:
            self._read_copied()

    def _read_buffered(self) -> None:
        protocol: Any = self._protocol
        try:
            buf = memoryview(protocol.get_buffer(-1))
        except Exception as exc:  # noqa: BLE001 - reported, then the connection is cut
            self._protocol_failed(exc, "get_buffer")
            return
        filled, eof, error = self._fill(buf)
        if filled:
            try:
                protocol.buffer_updated(filled)
            except Exception as exc:  # noqa: BLE001 - reported, then the connection is cut
                self._protocol_failed(exc, "buffer_updated")
                return
        self._after_read(eof, error)

    def _read_copied(self) -> None:
        filled, eof, error = self._fill(_scratch)
        if filled:
            data = bytes(_scratch[:filled])
            try:
                self._protocol.data_received(data)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - reported, then the connection is cut
                self._protocol_failed(exc, "data_received")
                return
        self._after_read(eof, error)

    def _protocol_failed(self, exc: Exception, call: str) -> None:
        """As uvloop does: report the protocol's exception and cut the connection."""
        self._loop.call_exception_handler(
            {
                "message": f"Fatal error: protocol.{call}() call failed.",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            }
        )
        self._fatal(exc)

    def _fill(self, buf: memoryview) -> tuple[int, bool, BaseException | None]:
        """Read records into ``buf`` until it is full or the socket has no more.

        A short record after which OpenSSL holds nothing ends the read: whatever else has
        arrived is still in the socket, which says so (its reader is level-triggered).
        Asking OpenSSL again would cost a ``recv`` that fails and an ``SSLWantReadError``
        built and caught, for every small message (a PING, a request). Full records go on
        until OpenSSL wants more, as a stream's do."""
        filled = 0
        size = len(buf)
        read = self._ssl.read
        has_pending = self._has_pending
        try:
            while filled < size:
                n = read(size - filled, buf[filled:])
                if n == 0:
                    return filled, True, None
                filled += n
                if n < FULL_RECORD and has_pending is not None and not has_pending():
                    return filled, False, None
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return filled, True, None
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
            self._want_write()
        except (OSError, ssl.SSLError) as exc:
            return filled, False, exc
        if filled == size:
            # More may wait inside OpenSSL (read ahead), where the socket cannot tell.
            self._more_held = True
            self._loop.call_soon(self._read_ready)
        return filled, False, None

    def _after_read(self, eof: bool, error: BaseException | None) -> None:
        if self._linger is not None:
            return  # the protocol closed us during this read: _discard takes over
        if error is not None:
            if not self._closed:
                self._fatal(error)
            return
        if eof and not self._closed:
            self._reading = False
            self._update_reader()
            if not self._closing:
                try:
                    self._protocol.eof_received()  # type: ignore[attr-defined]
                except Exception as exc:  # noqa: BLE001 - reported, then the connection is cut
                    self._protocol_failed(exc, "eof_received")
                    return
            self.close()  # TLS has no half-close: whatever eof_received answered

    # writing

    def _queue(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            pending = self._pending = collections.deque()
        last = pending[-1] if pending else None
        if (
            isinstance(last, bytearray)
            and (len(pending) > 1 or not self._head_in_flight)
            and len(last) + len(data) <= _MERGE_BYTES
        ):
            last += data
        elif isinstance(data, bytes) and len(data) >= _KEEP_WHOLE_BYTES:
            pending.append(data)  # immutable: no copy
        else:
            pending.append(bytearray(data))  # the caller may reuse its buffer
        self._pending_size += len(data)

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """Hand ``data`` to OpenSSL now (nothing is queued)."""
        try:
            self._ssl.write(data)
            return
        except ssl.SSLWantWriteError:
            self._want_write()
        except ssl.SSLWantReadError:
            self._write_wants_read = True
            self._update_reader()
        except (OSError, ssl.SSLError) as exc:
            self._fatal(exc)
            return
        # OpenSSL took part of it and must be given the same bytes again.
        self._pending = collections.deque((data if isinstance(data, bytes) else bytes(data),))
        self._head_in_flight = True
        self._pending_size += len(data)
        self._maybe_pause_protocol()

    def _want_write(self) -> None:
        if not self._writer_on and not self._closed:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writer_on = True

    def _no_write(self) -> None:
        if self._writer_on:
            self._loop.remove_writer(self._fd)
            self._writer_on = False

    def _write_ready(self) -> None:
        if self._closed:
            return
        if self._read_wants_write:
            self._read_wants_write = False
            self._read_ready()
            if self._gone():
                return
        pending = self._pending
        write = self._ssl.write
        while pending:  # (None: nothing queued)
            head = pending[0]
            try:
                write(head)
            except ssl.SSLWantWriteError:
                self._head_in_flight = True
                self._want_write()
                return
            except ssl.SSLWantReadError:
                self._head_in_flight = True
                self._no_write()
                self._write_wants_read = True
                self._update_reader()
                return
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
            pending.popleft()
            self._head_in_flight = False
            self._pending_size -= len(head)
        self._pending = None
        if not self._read_wants_write:
            self._no_write()
        self._maybe_resume_protocol()
        if self._closing:
            self._shut_down()

    def _maybe_pause_protocol(self) -> None:
        if self._write_paused or self._pending_size <= self._high:
            return
        self._write_paused = True
        try:
            self._protocol.pause_writing()
        except Exception:
            logger.exception("protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if self._write_paused and self._pending_size <= self._low:
            self._write_paused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                logger.exception("protocol.resume_writing() failed")

    # closing

    def _shut_down(self) -> None:
        """Everything written: send close_notify and FIN, then linger (``LINGER_S``)."""
        if self._closed or self._linger is not None:
            return
        self._no_write()
        sock = self._sock
        self._leave_session()
        with contextlib.suppress(OSError, ValueError, ssl.SSLError):
            sock.unwrap()  # sends close_notify; the peer's answer is not awaited
        try:
            # SSLSocket.shutdown drops the TLS state: recv() below reads the raw socket.
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._fatal(None)
            return
        self._linger = self._loop.call_later(LINGER_S, self._fatal, None)
        if self._reader_on:
            self._loop.remove_reader(self._fd)
        self._loop.add_reader(self._fd, self._discard)
        self._reader_on = True

    def _discard(self) -> None:
        try:
            while self._sock.recv(65536):
                pass
        except _SOFT_ERRORS:
            return
        except OSError:
            pass
        self._fatal(None)

    def _leave_session(self) -> None:
        """Leave the TLS session in ``_sessions`` (once; before ``unwrap`` drops it)."""
        if self._sessions is not None:
            self._sessions.keep(self._sock, self._ssl)
            self._sessions = None

    def _fatal(self, exc: BaseException | None) -> None:
        """Close the socket now and tell the protocol (once)."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._reading = False
        if self._linger is not None:
            self._linger.cancel()
        if self._reader_on:
            self._loop.remove_reader(self._fd)
            self._reader_on = False
        self._no_write()
        self._pending = None
        self._pending_size = 0
        self._head_in_flight = False
        if exc is None:
            self._leave_session()
        self._sock.close()
        if exc is not None and not isinstance(exc, (OSError, ssl.SSLError)):
            logger.debug("TLS connection ended by %r", exc)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._release is not None:
            self._release()
        lost_exc = exc if isinstance(exc, Exception) else None
        self._protocol.connection_lost(lost_exc)


async def handshake(sock: ssl.SSLSocket, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Run ``sock``'s TLS handshake (non-blocking socket) within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                add, remove = loop.add_reader, loop.remove_reader
            except ssl.SSLWantWriteError:
                add, remove = loop.add_writer, loop.remove_writer
            ready = loop.create_future()
            add(fd, _set_once, ready)
            try:
                await ready
            finally:
                remove(fd)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _connect(loop: asyncio.AbstractEventLoop, raw: socket.socket, address: Any) -> None:
    """Connect the non-blocking ``raw`` to ``address`` (already resolved).

    Not ``loop.sock_connect``: uvloop's resolves the address again with no socket type,
    which its numeric fast path does not take, so every dial waited for a thread of
    libuv's pool to run ``getaddrinfo`` and wake the loop (docs/design.md section 4,
    "Relay")."""
    err = raw.connect_ex(address)
    if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
        fd = raw.fileno()
        writable = loop.create_future()
        loop.add_writer(fd, _set_once, writable)
        try:
            await writable
        finally:
            loop.remove_writer(fd)
        err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"Connect call failed {address}: {os.strerror(err)}")


async def connect(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    context: ssl.SSLContext,
    server_hostname: str | None,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    sessions: Sessions | None = None,
) -> tuple[TLSTransport, asyncio.BaseProtocol]:
    """Dial ``host:port``, handshake, and start ``protocol_factory()`` on the connection;
    with ``sessions`` (always for one context and server), resume one if it holds one and
    leave this connection's there when it ends."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        raw = socket.socket(family, kind, proto)
        try:
            raw.setblocking(False)
            await _connect(loop, raw, address)
        except OSError as exc:
            raw.close()
            last = exc
            continue
        except BaseException:
            raw.close()
            raise
        break
    else:
        raise last or OSError(errno.EHOSTUNREACH, f"cannot resolve {host}")
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    enable_read_ahead(context)
    sock = context.wrap_socket(raw, server_hostname=server_hostname, do_handshake_on_connect=False)
    try:
        session = sessions.take() if sessions is not None else None
        if session is not None:
            resume(sock, direct(sock), session)
        await handshake(sock, handshake_timeout_s)
    except BaseException:
        sock.close()
        raise
    protocol = protocol_factory()
    transport = TLSTransport(loop, sock, protocol, sessions=sessions)
    transport.start()
    return transport, protocol


Admit = Callable[[str], Callable[[], None] | None]
Preface = Callable[[socket.socket, Any], Awaitable[Any]]
"""Run on an accepted socket before its TLS handshake, with the peer's address: the
address the connection reports as its peer (``peername``), or None to close it
(``gateway.front.balancers.ProxyPreface``: the PROXY protocol)."""


class TLSServer:
    """Accepts TLS connections on listening sockets and starts a protocol on each."""

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        sockets: list[socket.socket],
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        admit: Admit | None = None,
        preface: Preface | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._admit = admit
        self._preface = preface
        """Asked at each accept with the peer's address: None closes the connection at
        once, else what to call when it is gone (``gateway.front.connlimit``)."""
        self._factory = protocol_factory
        self._context = context
        self.sockets = sockets
        self._timeout = handshake_timeout_s
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = False
        enable_read_ahead(context)
        for lsock in sockets:
            lsock.setblocking(False)
            self._loop.add_reader(lsock.fileno(), self._accept, lsock)

    @classmethod
    async def listen(
        cls,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None,
        port: int,
        context: ssl.SSLContext,
        backlog: int = 1024,
        reuse_port: bool = False,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        admit: Admit | None = None,
    ) -> TLSServer:
        """Bind every address ``host`` resolves to (all interfaces for None or "")."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets = _bind_all(infos, backlog, reuse_port)
        return cls(protocol_factory, context, sockets, handshake_timeout_s, admit)

    def close(self) -> None:
        """Stop accepting (connections already made stay open)."""
        if self._closed:
            return
        self._closed = True
        for lsock in self.sockets:
            self._loop.remove_reader(lsock.fileno())
            lsock.close()
        for task in self._handshakes:
            task.cancel()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.wait(set(self._handshakes))

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(128):
            try:
                raw, address = lsock.accept()
            except _SOFT_ERRORS:
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    continue  # that connection went away before we took it
                # Out of descriptors or memory: the socket stays readable, so retrying
                # at once would spin. Stop accepting for a moment (as asyncio does).
                logger.warning("accept failed: %s; accepting again in %.0f s", exc, ACCEPT_PAUSE_S)
                self._loop.remove_reader(lsock.fileno())
                self._loop.call_later(ACCEPT_PAUSE_S, self._accept_again, lsock)
                return
            release = None
            if self._admit is not None:
                release = self._admit(str(address[0]) if address else "")
                if release is None:
                    raw.close()
                    continue
            task = self._loop.create_task(self._start(raw, release, address))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _accept_again(self, lsock: socket.socket) -> None:
        if not self._closed:
            self._loop.add_reader(lsock.fileno(), self._accept, lsock)

    async def _start(
        self, raw: socket.socket, release: Callable[[], None] | None, address: Any = None
    ) -> None:
        peername = None
        try:
            raw.setblocking(False)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._preface is not None:
                peername = await self._preface(raw, address)
                if peername is None:
                    raise ConnectionRefusedError("refused before the TLS handshake")
            sock = self._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except OSError:
            raw.close()
            if release is not None:
                release()
            return
        except BaseException:
            raw.close()
            if release is not None:
                release()
            raise
        try:
            await handshake(sock, self._timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            logger.debug("TLS handshake failed: %s", exc)
            sock.close()
            if release is not None:
                release()
            return
        except BaseException:
            sock.close()
            if release is not None:
                release()
            raise
        TLSTransport(self._loop, sock, self._factory(), release, peername).start()


def bind(
    host: str | None, port: int, backlog: int = 1024, reuse_port: bool = False
) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (all interfaces for None
    or ""), for a :class:`TLSServer` (or any server) made later: a program binds first,
    so that an address in use stops it before it has done anything else. ``OSError``
    (none left open) when one cannot be bound."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return _bind_all(infos, backlog, reuse_port)


def _bind_all(
    infos: list[tuple[Any, Any, int, str, Any]], backlog: int, reuse_port: bool
) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            lsock = socket.socket(family, kind, proto)
            sockets.append(lsock)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            lsock.bind(address)
            lsock.listen(backlog)
    except BaseException:
        for lsock in sockets:
            lsock.close()
        raise
    return sockets
