"""tunnel.wsconn over real loopback connections, with asyncio's loop and uvloop.

Our dialer against our acceptor (TLS, big payloads, back-pressure, close), and each of
them against aiohttp's WebSocket (the other side of the interoperability check). The
acceptor here reads the head, answers 101 and hands its transport to ``wsconn.take_over``,
as the gateway's front does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web
from multidict import CIMultiDict

from config.tls import client_context
from tests.fakes import TestPKI
from tunnel import wsconn
from tunnel.websocket import CloseCode, HandshakeError, server_accept

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Accepted = Callable[[wsconn.WebSocketConnection], Awaitable[None]]


LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    """Runs a test body on a fresh event loop of each kind (the gateway and agent use
    uvloop, whose TLS transport hands a buffered protocol its own buffer)."""
    return LOOPS[request.param]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(Path(tmp_path_factory.mktemp("pki")))


class Served:
    def __init__(self, runner: web.AppRunner, port: int, ctx: ssl.SSLContext) -> None:
        self.runner = runner
        self.url = f"https://127.0.0.1:{port}/ws"
        self.ctx = ctx

    @property
    def open_connections(self) -> int:
        assert self.runner.server is not None
        return len(self.runner.server.connections)


@contextlib.asynccontextmanager
async def serving(pki: TestPKI, handler: Handler) -> AsyncIterator[Served]:
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
        await site.start()
        yield Served(runner, runner.addresses[0][1], client_context(ca_file=str(pki.ca_file)))
    finally:
        await runner.cleanup()


class Acceptor(asyncio.Protocol):
    """Reads a WebSocket upgrade's head, answers it, and hands the connection over."""

    def __init__(self, handler: Accepted, open_connections: set[Acceptor]) -> None:
        self._handler = handler
        self._open = open_connections
        self._head = b""
        self._task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "write")
        self.transport = transport  # type: ignore[assignment]
        self._open.add(self)

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" not in self._head:
            return
        lines = self._head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
        headers = CIMultiDict(
            (k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in lines)
        )
        transport = self.transport
        assert transport is not None
        try:
            accepted = server_accept(headers)
        except HandshakeError as exc:
            transport.write(b"HTTP/1.1 %d No\r\nContent-Length: 0\r\n\r\n" % exc.status)
            transport.close()
            return
        answer = "".join(f"{k}: {v}\r\n" for k, v in accepted.items())
        transport.write(f"HTTP/1.1 101 Switching Protocols\r\n{answer}\r\n".encode())
        conn = wsconn.take_over(transport, previous=self)
        self._task = asyncio.get_running_loop().create_task(self._handler(conn))

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)


class Accepting:
    def __init__(self, server: asyncio.Server, ctx: ssl.SSLContext, opened: set[Acceptor]) -> None:
        self.url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        self.ctx = ctx
        self.opened = opened

    @property
    def open_connections(self) -> int:
        return len(self.opened)


@contextlib.asynccontextmanager
async def accepting(pki: TestPKI, handler: Accepted) -> AsyncIterator[Accepting]:
    opened: set[Acceptor] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Acceptor(handler, opened), "127.0.0.1", 0, ssl=pki.server_context()
    )
    try:
        yield Accepting(server, client_context(ca_file=str(pki.ca_file)), opened)
    finally:
        server.close()


async def until(check: Callable[[], object], timeout_s: float) -> None:
    """Until ``check()`` is true; TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)


async def echo(conn: wsconn.WebSocketConnection) -> None:
    while (data := await conn.receive()) is not None:
        await conn.send([data])
    await conn.close()


async def receive_exactly(conn: wsconn.WebSocketConnection, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await conn.receive()
        assert data is not None, f"closed after {len(got)} of {size} bytes"
        got += data
    return bytes(got)


def test_dial_and_accept_carry_big_and_small_payloads(run, pki: TestPKI) -> None:
    run(_test_dial_and_accept_carry_big_and_small_payloads(pki))


async def _test_dial_and_accept_carry_big_and_small_payloads(pki: TestPKI) -> None:
    async with accepting(pki, echo) as served:
        conn = await wsconn.dial(served.url, {"X-Test": "1"}, served.ctx, 10)
        for size in (1, 125, 126, 65535, 65536, 3 * 1024 * 1024 + 7):
            data = os.urandom(size)
            if conn.try_send_now([data[:100], memoryview(data)[100:]]):
                assert await receive_exactly(conn, size) == data
            else:
                await conn.send([data])
                assert await receive_exactly(conn, size) == data
        await conn.close()
        assert conn.close_code == CloseCode.NORMAL
        assert await conn.receive() is None
        # the protocol that had the connection learned that it is gone
        await until(lambda: not served.open_connections, 5)


def test_writes_wait_while_the_peer_does_not_read(run, pki: TestPKI) -> None:
    run(_test_writes_wait_while_the_peer_does_not_read(pki))


async def _test_writes_wait_while_the_peer_does_not_read(pki: TestPKI) -> None:
    release = asyncio.Event()
    totals: list[int] = []

    async def slow(conn: wsconn.WebSocketConnection) -> None:
        await release.wait()
        total = 0
        while (data := await conn.receive()) is not None:
            total += len(data)
        totals.append(total)

    async with accepting(pki, slow) as served:
        conn = await wsconn.dial(served.url, {}, served.ctx, 10)
        chunk = b"x" * (1024 * 1024)
        written = 0
        blocked = False
        for _ in range(256):  # at most 256 MiB, far above any buffer
            written += len(chunk)  # the frame is written before the wait for room
            try:
                async with asyncio.timeout(0.3):
                    await conn.send([chunk])
            except TimeoutError:
                blocked = True
                break
        assert blocked, "send never waited: the reader does not push back"
        assert written <= 64 * 1024 * 1024
        release.set()
        await conn.send([chunk])  # completes once the peer reads
        written += len(chunk)
        await conn.close()
        await until(lambda: totals, 10)
        assert totals == [written]


def test_our_dialer_against_aiohttp_server(run, pki: TestPKI) -> None:
    run(_test_our_dialer_against_aiohttp_server(pki))


async def _test_our_dialer_against_aiohttp_server(pki: TestPKI) -> None:
    server_saw: list[object] = []

    async def aiohttp_side(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.send_bytes(b"hello")
        await ws.ping(b"are you there")
        for _ in range(2):
            msg = await ws.receive()
            server_saw.append((msg.type, bytes(msg.data)))
        await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"bye")
        return ws

    async with serving(pki, aiohttp_side) as served:
        conn = await wsconn.dial(served.url, {}, served.ctx, 10)
        assert await conn.receive() == b"hello"
        await conn.send([b"x" * 30000, b"x" * 40000])
        assert await conn.receive() is None  # the server closed
        assert conn.close_code == CloseCode.GOING_AWAY
        assert server_saw == [
            (aiohttp.WSMsgType.PONG, b"are you there"),
            (aiohttp.WSMsgType.BINARY, b"x" * 70000),
        ]


def test_aiohttp_client_against_our_acceptor(run, pki: TestPKI) -> None:
    run(_test_aiohttp_client_against_our_acceptor(pki))


async def _test_aiohttp_client_against_our_acceptor(pki: TestPKI) -> None:
    async with accepting(pki, echo) as served:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(served.url, ssl=served.ctx, autoping=False)
            await ws.send_bytes(b"y" * 200000)
            got = b""
            while len(got) < 200000:  # echoed as it arrived: message bounds mean nothing
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.BINARY
                got += msg.data
            assert got == b"y" * 200000
            await ws.ping(b"ping")
            msg = await ws.receive()
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"ping")
            await ws.send_str("text is refused")
            msg = await ws.receive()
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, CloseCode.UNSUPPORTED_DATA)
            await ws.close()


def test_handshake_failures_carry_the_status(run, pki: TestPKI) -> None:
    run(_test_handshake_failures_carry_the_status(pki))


async def _test_handshake_failures_carry_the_status(pki: TestPKI) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response({"message": "no"}, status=401)

    async with serving(pki, refuse) as served:
        with pytest.raises(HandshakeError) as caught:
            await wsconn.dial(served.url, {}, served.ctx, 10)
        assert caught.value.status == 401

        async def never(conn: wsconn.WebSocketConnection) -> None:
            raise AssertionError("accepted")

        async with accepting(pki, never) as other:
            async with aiohttp.ClientSession() as http:
                async with http.get(
                    other.url,
                    ssl=other.ctx,
                    headers={
                        "Upgrade": "websocket",
                        "Connection": "Upgrade",
                        "Sec-WebSocket-Version": "8",
                    },
                ) as resp:
                    assert resp.status == 426
            with pytest.raises(ValueError):
                await wsconn.dial("ftp://127.0.0.1/", {}, None, 1)


def test_dial_fails_cleanly_when_the_server_closes_or_stays_silent(run, pki: TestPKI) -> None:
    run(_test_dial_fails_cleanly(pki))


async def _test_dial_fails_cleanly(pki: TestPKI) -> None:
    class Silent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

    class Closer(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            self.transport.close()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

    loop = asyncio.get_running_loop()
    ctx = client_context(ca_file=str(pki.ca_file))
    for factory, expected in ((Closer, HandshakeError), (Silent, TimeoutError)):
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(expected):
                await wsconn.dial(f"https://127.0.0.1:{port}/ws", {}, ctx, 0.5)
        finally:
            server.close()


def test_a_receiver_gets_what_was_kept_and_the_connection_keeps_no_inbox(run, pki: TestPKI) -> None:
    run(_test_a_receiver_gets_what_was_kept(pki))


async def _test_a_receiver_gets_what_was_kept(pki: TestPKI) -> None:
    """Payload that arrived before ``set_receiver`` reaches the receiver first, in order;
    from then on the connection keeps no inbox (a tunnel holds none for its life); the
    end reaches ``on_end`` once."""
    got: list[bytes] = []
    ended: list[bool] = []
    seen_inbox: list[object] = []
    kept = asyncio.Event()

    async def handler(conn: wsconn.WebSocketConnection) -> None:
        assert conn._inbox is None  # nothing arrived yet: none made
        first = await conn.receive()
        assert first == b"one"
        await until(lambda: conn._inbox, 5)
        conn.set_receiver(lambda data: got.append(bytes(data)), lambda: ended.append(True))
        seen_inbox.append(conn._inbox)
        kept.set()

    async with accepting(pki, handler) as served:
        conn = await wsconn.dial(served.url, {}, served.ctx, 10)
        await conn.send([b"one"])
        await conn.send([b"two"])
        await asyncio.wait_for(kept.wait(), 5)
        await conn.send([b"three"])
        await until(lambda: len(got) >= 2, 5)
        assert got == [b"two", b"three"] and seen_inbox == [None]
        conn.abort()
        await until(lambda: ended, 5)
        assert ended == [True]


def test_a_cancelled_close_cuts_the_connection(run, pki: TestPKI) -> None:
    run(_test_a_cancelled_close_cuts_the_connection(pki))


async def _test_a_cancelled_close_cuts_the_connection(pki: TestPKI) -> None:
    """A close whose wait for the peer's Close is cancelled (a tunnel session bounds it
    with a timeout of its own) ends the connection then, rather than leaving it open
    with nothing left to end it."""
    ended: list[bool] = []
    ready = asyncio.Event()

    async def handler(conn: wsconn.WebSocketConnection) -> None:
        await ready.wait()
        closing = asyncio.ensure_future(conn.close())
        await asyncio.sleep(0.2)  # the peer reads nothing: no Close comes back
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        await asyncio.wait_for(asyncio.shield(conn.closed), 1.0)
        ended.append(True)

    async with accepting(pki, handler) as served:
        conn = await wsconn.dial(served.url, {}, served.ctx, 10)
        assert conn.transport is not None
        conn.transport.pause_reading()
        ready.set()
        await until(lambda: ended, 5)
        conn.abort()
