"""tunnel.tls over real loopback connections, with asyncio's loop and uvloop.

The transport under the gateway's listener and the agent's tunnel: writes delivered in
order (merged while the socket is full), back-pressure both ways, everything written
arriving before the close, abort, read-ahead held inside OpenSSL while reading is
paused, handshake failures and timeouts, ALPN."""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.compat import ssl_internals
from config.compat.ssl_internals import SessionRef
from config.tls import client_context
from tests.fakes import TestPKI
from tunnel import tls

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    return LOOPS[request.param]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(Path(tmp_path_factory.mktemp("pki")))


class Collector(asyncio.Protocol):
    """Keeps what arrives; can pause its transport's reading or be told to write."""

    def __init__(self) -> None:
        self.transport: tls.TLSTransport | None = None
        self.data = bytearray()
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.paused_writing = 0
        self.resumed_writing = 0
        self.pause_after: int | None = None
        self.arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, tls.TLSTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()
        if self.pause_after is not None and len(self.data) >= self.pause_after:
            self.pause_after = None
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def pause_writing(self) -> None:
        self.paused_writing += 1

    def resume_writing(self) -> None:
        self.resumed_writing += 1

    def connection_lost(self, exc: Exception | None) -> None:
        assert not self.lost.done(), "connection_lost twice"
        self.lost.set_result(exc)

    async def wait_for(self, size: int, timeout_s: float = 20) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.data) < size:
                self.arrived.clear()
                await self.arrived.wait()


class SmallBuffer(asyncio.BufferedProtocol):
    """A buffered protocol with a tiny buffer: reads stop full and must go on unprompted."""

    def __init__(self) -> None:
        self.buffer = bytearray(100)
        self.data = bytearray()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


class Pair:
    """A TLSServer with one accepted connection and the client that dialled it."""

    def __init__(self, pki: TestPKI, alpn: list[str] | None = None) -> None:
        self.pki = pki
        self.alpn = alpn
        self.accepted: asyncio.Queue[Collector] = asyncio.Queue()
        self.server: tls.TLSServer | None = None

    def _factory(self) -> Collector:
        protocol = Collector()
        self.accepted.put_nowait(protocol)
        return protocol

    async def start(self, timeout_s: float = tls.HANDSHAKE_TIMEOUT_S) -> int:
        context = self.pki.server_context()
        if self.alpn:
            context.set_alpn_protocols(self.alpn)
        self.server = await tls.TLSServer.listen(
            self._factory, "127.0.0.1", 0, context, handshake_timeout_s=timeout_s
        )
        port: int = self.server.sockets[0].getsockname()[1]
        self.port = port
        return port

    def client_context(self) -> ssl.SSLContext:
        context = client_context(ca_file=str(self.pki.ca_file))
        if self.alpn:
            context.set_alpn_protocols(self.alpn)
        return context

    async def dial(
        self, factory: Callable[[], asyncio.BaseProtocol] = Collector
    ) -> tuple[tls.TLSTransport, asyncio.BaseProtocol, Collector]:
        transport, protocol = await tls.connect(
            factory, "127.0.0.1", self.port, self.client_context(), "127.0.0.1"
        )
        server_side = await asyncio.wait_for(self.accepted.get(), 10)
        return transport, protocol, server_side

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_small_writes_arrive_in_order_both_ways(run, pki: TestPKI) -> None:
    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        client, client_protocol, server = await pair.dial()
        assert isinstance(client_protocol, Collector)
        parts = [b"%05d;" % i for i in range(2000)]
        for part in parts:  # every byte, in order
            client.write(part)
        client.writelines([b"tail-", bytearray(b"of-"), memoryview(b"it")])
        expected = b"".join(parts) + b"tail-of-it"
        await server.wait_for(len(expected))
        assert bytes(server.data) == expected
        assert server.transport is not None
        server.transport.write(b"answer")
        await client_protocol.wait_for(6)
        assert bytes(client_protocol.data) == b"answer"
        assert server.transport.get_extra_info("peername")[0] == "127.0.0.1"
        assert client.get_extra_info("cipher") is not None
        client.close()
        assert await asyncio.wait_for(server.lost, 10) is None
        assert server.eof
        assert await asyncio.wait_for(client_protocol.lost, 10) is None
        await pair.stop()

    run(body())


def test_back_pressure_and_everything_arrives_before_the_close(run, pki: TestPKI) -> None:
    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        client, client_protocol, server = await pair.dial()
        assert isinstance(client_protocol, Collector) and server.transport is not None
        client.pause_reading()  # the server's writes pile up
        payload = os.urandom(8 * 1024 * 1024)
        sender = server.transport
        for i in range(0, len(payload), 100_000):
            sender.write(payload[i : i + 100_000])
        assert sender.get_write_buffer_size() > tls.HIGH_WATER
        assert server.paused_writing == 1
        sender.close()  # with megabytes still queued: they go first, then close_notify
        await asyncio.sleep(0.2)
        assert not server.lost.done()
        client.resume_reading()
        await client_protocol.wait_for(len(payload))
        assert hashlib.sha256(client_protocol.data).digest() == hashlib.sha256(payload).digest()
        assert await asyncio.wait_for(client_protocol.lost, 10) is None
        assert client_protocol.eof
        assert await asyncio.wait_for(server.lost, 10) is None
        assert server.resumed_writing == 1
        sender.write(b"after close")  # dropped, as with uvloop's transports
        await pair.stop()

    run(body())


def test_read_ahead_held_while_paused_and_tiny_buffers(run, pki: TestPKI) -> None:
    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        client, _, server = await pair.dial()
        server.pause_after = 1  # pauses inside the first delivery
        # More than one read's buffer: the first read stops full, OpenSSL holding the
        # rest of what it read ahead, which must come out after the resume.
        payload = b"".join(b"%06d\n" % i for i in range(100_000))
        for i in range(0, len(payload), 7000):
            client.write(payload[i : i + 7000])
        await asyncio.sleep(0.3)
        assert server.transport is not None and not server.transport.is_reading()
        held = len(server.data)
        assert held < len(payload)
        server.transport.resume_reading()
        await server.wait_for(len(payload))
        assert bytes(server.data) == payload

        # A 100-byte buffer: each read stops full and carries on without a socket event.
        _, small, small_server = await pair.dial(SmallBuffer)
        assert isinstance(small, SmallBuffer) and small_server.transport is not None
        small_server.transport.write(payload)
        small_server.transport.close()
        await asyncio.wait_for(small.lost, 20)
        assert bytes(small.data) == payload
        client.close()
        await pair.stop()

    run(body())


class AnswerAndClose(Collector):
    """Answers what arrives and closes at once, inside ``data_received`` (as a WebSocket
    answers the peer's Close)."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(b"echo")
        self.transport.close()


def test_closing_inside_the_read_that_saw_the_peers_close(run, pki: TestPKI) -> None:
    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        client, client_protocol, server = await pair.dial(AnswerAndClose)
        assert isinstance(client_protocol, AnswerAndClose) and server.transport is not None
        client.pause_reading()
        server.transport.write(b"bye")
        server.transport.close()  # data, close_notify and FIN: one read on the client
        await asyncio.sleep(0.2)
        started = asyncio.get_running_loop().time()
        client.resume_reading()
        assert await asyncio.wait_for(client_protocol.lost, 10) is None
        # Not the linger timeout: the peer's FIN had come, so it ends at once.
        assert asyncio.get_running_loop().time() - started < 1.0
        assert bytes(client_protocol.data) == b"bye"
        await asyncio.wait_for(server.lost, 10)
        await pair.stop()

    run(body())


def test_abort_tells_both_sides_once(run, pki: TestPKI) -> None:
    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        client, client_protocol, server = await pair.dial()
        assert isinstance(client_protocol, Collector) and server.transport is not None
        server.transport.write(b"x" * 10)
        server.transport.abort()
        server.transport.abort()
        assert server.transport.is_closing()
        assert await asyncio.wait_for(server.lost, 10) is None
        await asyncio.wait_for(client_protocol.lost, 10)
        client.write(b"late")  # closed: dropped, no error
        await pair.stop()

    run(body())


def test_handshake_failures_leave_the_server_serving(run, pki: TestPKI, tmp_path: Path) -> None:
    async def body() -> None:
        pair = Pair(pki)
        port = await pair.start(timeout_s=0.5)
        other = TestPKI.create(tmp_path / "other")
        wrong = client_context(ca_file=str(other.ca_file))
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls.connect(Collector, "127.0.0.1", port, wrong, "127.0.0.1")

        # A client that never says hello is cut after the handshake timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()

        with pytest.raises(OSError):
            closed = socket.socket()
            closed.bind(("127.0.0.1", 0))
            closed_port = closed.getsockname()[1]
            closed.close()
            await tls.connect(Collector, "127.0.0.1", closed_port, wrong, "127.0.0.1")

        client, _, server = await pair.dial()  # still accepting
        client.write(b"ok")
        await server.wait_for(2)
        client.close()
        await pair.stop()

    run(body())


class RunsOutOfDescriptors(socket.socket):
    """A listening socket whose first ``accept`` fails as with too many open files."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.accepts = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.accepts += 1
        if self.accepts == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_out_of_descriptors_pauses_accepting_instead_of_spinning(run, pki: TestPKI) -> None:
    async def body() -> None:
        listener = RunsOutOfDescriptors()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        accepted: asyncio.Queue[Collector] = asyncio.Queue()

        def factory() -> Collector:
            protocol = Collector()
            accepted.put_nowait(protocol)
            return protocol

        server = tls.TLSServer(factory, pki.server_context(), [listener])
        loop = asyncio.get_running_loop()
        started = loop.time()
        client, _ = await tls.connect(
            Collector, "127.0.0.1", port, client_context(ca_file=str(pki.ca_file)), "127.0.0.1"
        )
        server_side = await asyncio.wait_for(accepted.get(), 10)
        # Accepted once the pause was over; the failing accept was not retried in a loop.
        assert loop.time() - started >= tls.ACCEPT_PAUSE_S * 0.9
        assert listener.accepts <= 3
        client.write(b"ok")
        await server_side.wait_for(2)
        client.close()
        server.close()
        await server.wait_closed()

    run(body())


def test_alpn_and_extra_info(run, pki: TestPKI) -> None:
    async def body() -> None:
        pair = Pair(pki, alpn=["h2", "http/1.1"])
        await pair.start()
        client, _, server = await pair.dial()
        assert server.transport is not None
        assert server.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        assert client.get_extra_info("peercert")["subject"]
        assert isinstance(client.get_extra_info("sslcontext"), ssl.SSLContext)
        assert client.get_extra_info("nothing", 7) == 7
        assert not client.can_write_eof()
        with pytest.raises(NotImplementedError):
            client.write_eof()
        with pytest.raises(ValueError):
            client.set_write_buffer_limits(high=1, low=2)
        client.set_write_buffer_limits(high=1000)
        assert client.get_write_buffer_limits() == (250, 1000)
        client.close()
        await pair.stop()

    run(body())


def test_read_ahead_is_set_on_real_contexts(pki: TestPKI) -> None:
    assert ssl_internals.enable_read_ahead(pki.server_context())
    assert ssl_internals.enable_read_ahead(client_context(ca_file=str(pki.ca_file)))


def test_an_idle_connection_holds_no_write_queue(run, pki: TestPKI) -> None:
    """The queue of what OpenSSL has not taken exists only while something waits: an
    idle tunnel's connection holds none. Extra info is read from the socket when asked,
    and asked after the close it is the default, not an error."""

    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        client, client_protocol, server = await pair.dial()
        assert isinstance(client_protocol, Collector) and server.transport is not None
        sender = server.transport
        assert sender._pending is None
        client.pause_reading()
        payload = os.urandom(4 * 1024 * 1024)
        for i in range(0, len(payload), 100_000):
            sender.write(payload[i : i + 100_000])
        assert sender._pending and sender.get_write_buffer_size() > 0
        client.resume_reading()
        await client_protocol.wait_for(len(payload))
        assert bytes(client_protocol.data) == payload
        assert sender._pending is None and sender.get_write_buffer_size() == 0
        assert sender.get_extra_info("cipher")[1] in ("TLSv1.2", "TLSv1.3")
        assert sender.get_extra_info("sockname")[0] == "127.0.0.1"
        assert sender.get_extra_info("compression") is None
        sender.write(b"last")
        await client_protocol.wait_for(len(payload) + 4)
        assert sender._pending is None
        client.close()
        assert await asyncio.wait_for(server.lost, 10) is None
        assert sender.get_extra_info("sockname", "gone") == "gone"
        assert sender.get_extra_info("peername")[0] == "127.0.0.1"  # read at the start
        await pair.stop()

    run(body())


# -- a read ends where OpenSSL holds nothing more ----------------------------------------


def _read_calls() -> int:
    """This process's read-family system calls so far (OpenSSL reads a socket with
    ``read``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError("no syscr in /proc/self/io")


def test_the_readers_socket_is_level_triggered(run) -> None:
    """What ``TLSTransport._fill`` relies on when it stops with bytes still in the socket:
    the loop calls the reader again without new data arriving."""

    async def body() -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        done = loop.create_future()

        def one_byte() -> None:
            got.append(ours.recv(1))
            if len(got) == 5:
                loop.remove_reader(ours.fileno())
                done.set_result(None)

        loop.add_reader(ours.fileno(), one_byte)
        theirs.send(b"abcdefgh")  # one write, nothing after it
        await asyncio.wait_for(done, 5)
        assert b"".join(got) == b"abcde"
        ours.close()
        theirs.close()

    run(body())


def test_a_short_record_with_nothing_held_ends_the_read(run, pki: TestPKI) -> None:
    """A small message (a PING, a request) costs one ``read`` of the socket, not a second
    that fails: OpenSSL says it holds nothing more (``SSL_has_pending``)."""

    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        client, _, server = await pair.dial()
        assert server.transport is not None and server.transport._has_pending is not None
        await asyncio.sleep(0.05)
        messages = 200
        before = _read_calls()
        for i in range(messages):
            client.write(b"ping %04d" % i)
            await server.wait_for(9 * (i + 1))
        reads = _read_calls() - before
        assert bytes(server.data) == b"".join(b"ping %04d" % i for i in range(messages))
        # One per message (two, with a failing one after each, before the change).
        assert messages <= reads < messages * 1.25, reads
        client.close()
        await pair.stop()

    run(body())


class RawTLSClient:
    """A TLS client on a plain socket (``ssl.SSLObject`` over memory BIOs): what it sends
    is cut into TCP segments exactly where the test says."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext) -> RawTLSClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock, context)
        while True:
            try:
                client.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await loop.sock_sendall(sock, client.outgoing.read())
                data = await loop.sock_recv(sock, 65536)
                assert data, "the server closed during the handshake"
                client.incoming.write(data)
        await loop.sock_sendall(sock, client.outgoing.read())
        return client

    def records(self, messages: list[bytes]) -> bytes:
        """The TLS records carrying ``messages`` (one write each), not yet sent."""
        for message in messages:
            self.obj.write(message)
        return self.outgoing.read()

    def close(self) -> None:
        self.sock.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(
        st.one_of(
            st.integers(1, 64),
            st.integers(65, 20_000),
            st.sampled_from([16_383, 16_384, 16_385, 32_768]),
        ),
        min_size=1,
        max_size=12,
    ),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=8),
    pauses=st.lists(st.booleans(), max_size=9),
    loop_name=st.sampled_from(sorted(LOOPS)),
)
def test_records_cut_anywhere_all_arrive_without_a_stall(
    pki: TestPKI, sizes: list[int], cuts: list[float], pauses: list[bool], loop_name: str
) -> None:
    """Records of any size, sent whole, several to a segment, or cut inside a header or a
    body across segments (with a pause between segments or not): everything arrives, in
    order, and nothing waits inside OpenSSL for data that will not come (a read that
    ended where OpenSSL still held a record would stall here until the timeout)."""

    async def body() -> None:
        pair = Pair(pki)
        port = await pair.start()
        client = await RawTLSClient.connect(port, pair.client_context())
        server = await asyncio.wait_for(pair.accepted.get(), 10)
        messages = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
        wire = client.records(messages)
        points = sorted({int(c * len(wire)) for c in cuts} - {0, len(wire)})
        pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
        loop = asyncio.get_running_loop()
        for index, piece in enumerate(pieces):
            await loop.sock_sendall(client.sock, piece)
            if index < len(pauses) and pauses[index]:
                await asyncio.sleep(0.005)  # a segment of its own, read on its own
        expected = b"".join(messages)
        await server.wait_for(len(expected), timeout_s=10)
        assert bytes(server.data) == expected
        client.close()
        await pair.stop()

    LOOPS[loop_name](body())


async def _dial_and_hear(
    pair: Pair, context: ssl.SSLContext, sessions: tls.Sessions | None = None
) -> tuple[tls.TLSTransport, Collector]:
    """Dial ``pair``'s server and read a first message from it (a TLS 1.3 server's
    session ticket comes before it)."""
    client, protocol = await tls.connect(
        Collector, "127.0.0.1", pair.port, context, "127.0.0.1", sessions=sessions
    )
    server = await asyncio.wait_for(pair.accepted.get(), 10)
    assert isinstance(protocol, Collector) and server.transport is not None
    server.transport.write(b"hello")
    await protocol.wait_for(5)
    return client, protocol


def test_a_dial_resumes_the_session_an_ended_connection_left(
    run, pki: TestPKI, by_reference: bool = True
) -> None:
    """With ``Sessions``, a connection that ends leaves its TLS session (the ticket the
    server sent on it); the next dial resumes it (no certificate exchanged) and takes it,
    so a ticket serves one dial; a dial with nothing kept is a full handshake. Sessions
    are held by reference (OpenSSL's own, not CPython's copy) unless the internals are
    out of reach (tests/component/test_tls_fallback.py)."""

    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        context = pair.client_context()
        sessions = tls.Sessions()
        reused: list[bool] = []
        for _ in range(3):
            client, protocol = await _dial_and_hear(pair, context, sessions)
            reused.append(client.get_extra_info("ssl_object").session_reused)
            assert len(sessions) == 0  # taken by this dial (or none was there)
            client.close()
            assert await asyncio.wait_for(protocol.lost, 10) is None
            assert len(sessions) == 1
            kept = sessions._held[0]
            assert isinstance(kept, SessionRef if by_reference else ssl.SSLSession)
        assert reused == [False, True, True]
        # Without a context's own sessions, every dial is a full handshake.
        client, _ = await tls.connect(Collector, "127.0.0.1", pair.port, context, "127.0.0.1")
        assert not client.get_extra_info("ssl_object").session_reused
        client.close()
        await pair.stop()

    run(body())


def test_a_dial_connects_without_the_loops_sock_connect(run, pki: TestPKI) -> None:
    """``connect`` connects the socket itself (uvloop's ``sock_connect`` resolves the
    address again on its thread pool): a dial works with ``sock_connect`` out of order,
    and a port nobody listens on is refused as before."""

    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        loop = asyncio.get_running_loop()

        async def no_sock_connect(*args: Any) -> None:
            raise AssertionError("loop.sock_connect called")

        if isinstance(loop, asyncio.BaseEventLoop):  # (uvloop's methods cannot be replaced)
            loop.sock_connect = no_sock_connect  # type: ignore[method-assign]
        client, protocol = await _dial_and_hear(pair, pair.client_context())
        client.close()
        await asyncio.wait_for(protocol.lost, 10)
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]  # bound, not listening: refused
            with pytest.raises(ConnectionRefusedError):
                await tls.connect(Collector, "127.0.0.1", port, pair.client_context(), None)
        await pair.stop()

    run(body())


# gc.collect() below may finalise what earlier tests left (not this test's subject)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_session_resumes_after_an_aborted_connection(run, pki: TestPKI) -> None:
    """OpenSSL marks a connection's session not resumable when the connection is freed
    with no close_notify sent (an abort: the relay's on a reset stream or a timeout):
    the session kept is a copy, which the next dial still resumes once the aborted
    connection is gone."""

    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        context = pair.client_context()
        sessions = tls.Sessions()
        client, protocol = await _dial_and_hear(pair, context, sessions)
        client.abort()
        await asyncio.wait_for(protocol.lost, 10)
        assert len(sessions) == 1
        del client, protocol
        gc.collect()  # the aborted connection's SSL freed (where OpenSSL marks its session)
        client, _ = await tls.connect(
            Collector, "127.0.0.1", pair.port, context, "127.0.0.1", sessions=sessions
        )
        await asyncio.wait_for(pair.accepted.get(), 10)
        assert client.get_extra_info("ssl_object").session_reused
        client.abort()
        await pair.stop()

    run(body())


def test_a_session_is_resumed_only_from_the_context_it_came_from(run, pki: TestPKI) -> None:
    """A session held by reference is offered only on a connection of the ``SSL_CTX`` it
    came from (resuming skips verifying the server: another context's settings must not
    be skipped that way); elsewhere the handshake is a full one, and the reference is
    released either way."""

    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        sessions = tls.Sessions()
        client, protocol = await _dial_and_hear(pair, pair.client_context(), sessions)
        client.close()
        await asyncio.wait_for(protocol.lost, 10)
        held = sessions._held[0]
        assert isinstance(held, SessionRef) and not held.released
        other = pair.client_context()  # same settings, another SSL_CTX
        client, _ = await tls.connect(
            Collector, "127.0.0.1", pair.port, other, "127.0.0.1", sessions=sessions
        )
        await asyncio.wait_for(pair.accepted.get(), 10)
        assert not client.get_extra_info("ssl_object").session_reused
        assert held.released
        client.abort()
        await pair.stop()

    run(body())


def test_sessions_past_the_limit_are_released_oldest_first(run, pki: TestPKI) -> None:
    """Connections ending beyond ``MAX_SESSIONS`` push the oldest sessions out, and those
    are released (OpenSSL's copies are freed there, not left to the collector)."""

    async def body() -> None:
        pair = Pair(pki)
        await pair.start()
        context = pair.client_context()
        sessions = tls.Sessions()
        open_ = [await _dial_and_hear(pair, context) for _ in range(tls.MAX_SESSIONS + 2)]
        for client, _ in open_:
            client._sessions = sessions  # as if dialled with them (none to resume here)
        first: list[object] = []
        for client, protocol in open_:
            client.close()
            await asyncio.wait_for(protocol.lost, 10)
            if len(sessions) == tls.MAX_SESSIONS and not first:
                first = list(sessions._held)  # full: the next two push the oldest out
        assert len(sessions) == tls.MAX_SESSIONS
        assert all(isinstance(kept, SessionRef) for kept in first)
        assert [kept.released for kept in first] == [True, True] + [False] * (tls.MAX_SESSIONS - 2)
        assert sessions._held[: tls.MAX_SESSIONS - 2] == first[2:]
        await pair.stop()

    run(body())


def test_sessions_keep_the_newest_and_only_sessions_with_a_ticket() -> None:
    class FakeSocket:
        def __init__(self, session: object) -> None:
            self.session = session

    class FakeSession:
        def __init__(self, ticket: bool) -> None:
            self.has_ticket = ticket

    sessions = tls.Sessions()
    sessions.keep(FakeSocket(None), None)  # type: ignore[arg-type]
    sessions.keep(FakeSocket(FakeSession(False)), None)  # type: ignore[arg-type]
    assert len(sessions) == 0
    kept = [FakeSession(True) for _ in range(tls.MAX_SESSIONS + 2)]
    for session in kept:
        sessions.keep(FakeSocket(session), None)  # type: ignore[arg-type]
    assert len(sessions) == tls.MAX_SESSIONS
    taken = [sessions.take() for _ in range(tls.MAX_SESSIONS)]
    assert taken == kept[::-1][: tls.MAX_SESSIONS]  # newest first; the two oldest dropped
    assert sessions.take() is None
