"""gateway.front.connection: HTTP/1.1 client connections, with a fake transport, a fake
proxy and a real aiohttp low-level server behind the bridge."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.front.connection import Front, FrontConnection
from gateway.front.h1_protocol import RequestReader
from gateway.proxy.model import (
    BODY_HIGH_WATER,
    Answer,
    Request,
    status_answer,
    streamed,
    switching,
    whole,
)
from gateway.telemetry.drain import DRAIN, Drain

GET = b"GET /k8s/clusters/c-1/api/v1/pods HTTP/1.1\r\nHost: gw\r\n\r\n"
LOGIN = b"GET /v3/users HTTP/1.1\r\nHost: gw\r\n\r\n"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0
        self.closed = False
        self.aborted = False
        self.paused = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        self.written += data
        self.writes += 1

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.written += part
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default


class Application:
    """aiohttp's low-level server, as the bridge serves it: records what it is asked."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.cancelled = 0
        self.server = web.Server(self.handle, handler_cancellation=True)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            await self.release.wait()
            body = b"".join([piece async for piece in request.content.iter_any()])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.seen.append((request.method, request.raw_path, body))
        return web.json_response({"path": request.raw_path, "size": len(body)})


Handler = Callable[[web.Application, Request], Awaitable[Answer]]


def ok(request: Request) -> Answer:
    return whole(200, "OK", [], b"{}", request_id="r")


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> Any:
    handlers: list[Handler] = []
    seen: list[Request] = []

    async def answer(app: web.Application, request: Request) -> Answer:
        seen.append(request)
        if handlers:
            return await handlers.pop(0)(app, request)
        return ok(request)

    class World:
        def __init__(self) -> None:
            app = web.Application()
            app[DRAIN] = Drain()
            self.app = app
            self.aiohttp = Application()
            self.front = Front(app, self.aiohttp.server, answer=answer)
            self.handlers = handlers
            self.seen = seen

        def connect(self) -> tuple[FrontConnection, FakeTransport]:
            conn = self.front()
            transport = FakeTransport()
            conn.connection_made(transport)
            return conn, transport

    return World()


async def _settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def _until(done: Callable[[], bool], turns: int = 200) -> None:
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition was not met")


def _answers(transport: FakeTransport) -> int:
    return bytes(transport.written).count(b"HTTP/1.1 200 OK")


async def test_requests_are_answered_in_order_on_one_connection(world: Any) -> None:
    conn, transport = world.connect()
    conn.data_received(GET + GET)
    await _settle()
    assert _answers(transport) == 2
    assert not transport.closed
    conn.data_received(GET)
    await _settle()
    assert _answers(transport) == 3
    assert len(world.seen) == 3


async def test_a_later_request_waits_for_the_answer_before_it(world: Any) -> None:
    release = asyncio.Event()
    order: list[str] = []

    async def slow(app: web.Application, request: Request) -> Answer:
        await release.wait()
        order.append("first")
        return whole(200, "OK", [], b"1")

    async def fast(app: web.Application, request: Request) -> Answer:
        order.append("second")
        return whole(200, "OK", [], b"2")

    world.handlers += [slow, fast]
    conn, transport = world.connect()
    conn.data_received(GET + GET)
    await _settle()
    assert order == []
    release.set()
    await _settle()
    assert order == ["first", "second"]
    assert transport.written.index(b"\r\n\r\n1") < transport.written.index(b"\r\n\r\n2")


async def test_other_requests_go_to_aiohttp_through_the_bridge(world: Any) -> None:
    conn, transport = world.connect()
    conn.data_received(GET)
    await _settle()
    conn.data_received(LOGIN[:7])
    conn.data_received(LOGIN[7:])
    await _until(lambda: _answers(transport) == 2)
    assert world.aiohttp.seen == [("GET", "/v3/users", b"")]
    assert b'{"path": "/v3/users", "size": 0}' in transport.written
    assert transport.protocol is None  # the connection stays the front's
    assert conn in world.front.connections and not transport.closed


async def _served_v3(world: Any) -> tuple[FrontConnection, FakeTransport]:
    """A connection that has served a management-API request (its answer is cleared)."""
    conn, transport = world.connect()
    conn.data_received(LOGIN)
    await _until(lambda: _answers(transport) == 1)
    transport.written.clear()
    return conn, transport


async def test_aiohttp_gets_whole_checked_heads_only(world: Any) -> None:
    conn, transport = await _served_v3(world)
    post = b"POST /v3/tokens HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\nab"
    conn.data_received(post[:10])
    await _settle(20)
    assert len(world.aiohttp.seen) == 1  # nothing before the head is whole
    conn.data_received(post[10:])
    conn.data_received(b"cd" + LOGIN)
    await _until(lambda: len(world.aiohttp.seen) == 3)
    assert world.aiohttp.seen[1:] == [("POST", "/v3/tokens", b"abcd"), ("GET", "/v3/users", b"")]
    await _until(lambda: _answers(transport) == 2)
    assert not transport.closed


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /v3/users HTTP/1.1\r\n\r\n", 400),
        (b"GET /v3/users HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /v3/users HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /v3/users HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000, 431),
        (b"POST /v3/users HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999\r\n\r\n", 413),
    ],
)
async def test_a_management_api_connection_refuses_bad_heads(
    world: Any, data: bytes, status: int
) -> None:
    conn, transport = await _served_v3(world)
    conn.data_received(data)
    await _settle(20)
    assert world.aiohttp.seen == [("GET", "/v3/users", b"")]
    assert transport.closed
    assert transport.written.startswith(f"HTTP/1.1 {status} ".encode())
    body = json.loads(bytes(transport.written).partition(b"\r\n\r\n")[2])
    assert body["type"] == "error" and body["status"] == status, body


async def test_a_management_api_connection_keeps_the_timeouts(world: Any) -> None:
    now = asyncio.get_running_loop().time()
    conn, transport = await _served_v3(world)
    conn.check_timeouts(now + world.front.head_timeout_s + 1)  # between requests
    assert not transport.closed
    conn.data_received(LOGIN[:10])
    conn.check_timeouts(now + world.front.head_timeout_s + 1)
    assert transport.closed
    # A body held back by aiohttp (its handler does not read) is not the client's fault.
    conn, transport = await _served_v3(world)
    world.aiohttp.release.clear()
    size = 8 * BODY_HIGH_WATER
    conn.data_received(b"POST /v3/x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % size)
    piece = b"x" * (BODY_HIGH_WATER // 2)
    for _ in range(8):  # aiohttp takes some, then pauses; the front holds the rest
        conn.data_received(piece)
        await _settle(20)
        if transport.paused:
            break
    assert transport.paused
    conn.check_timeouts(now + world.front.body_timeout_s + 1)
    assert not transport.closed
    world.aiohttp.release.set()
    await _until(lambda: not transport.paused)
    conn.check_timeouts(asyncio.get_running_loop().time() + world.front.body_timeout_s + 1)
    await _until(lambda: transport.closed)
    assert transport.written.startswith(b"HTTP/1.1 408 ")
    assert json.loads(bytes(transport.written).partition(b"\r\n\r\n")[2])["type"] == "error"
    conn.connection_lost(None)
    assert conn not in world.front.connections


async def test_a_management_request_waits_for_the_answer_in_flight(world: Any) -> None:
    release = asyncio.Event()

    async def slow(app: web.Application, request: Request) -> Answer:
        await release.wait()
        return whole(200, "OK", [], b"{}")

    world.handlers.append(slow)
    conn, transport = world.connect()
    conn.data_received(GET)
    await _settle()
    conn.data_received(LOGIN)
    await _settle(20)
    assert world.aiohttp.seen == [] and transport.written == b""
    release.set()
    await _until(lambda: _answers(transport) == 2)
    assert world.aiohttp.seen == [("GET", "/v3/users", b"")]
    assert transport.written.index(b"\r\n\r\n{}") < transport.written.index(b'"/v3/users"')


async def test_invalid_requests_get_a_status_and_the_connection_closes(world: Any) -> None:
    conn, transport = world.connect()
    conn.data_received(b"GET /k8s/clusters/c-1/ HTTP/1.1\r\nBroken\r\n\r\n")
    assert transport.closed
    text = bytes(transport.written)
    assert text.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'"kind": "Status"' in text and b"Connection: close" in text


async def test_error_answers_keep_the_connection(world: Any) -> None:
    async def missing(app: web.Application, request: Request) -> Answer:
        return status_answer(404, 'clusters "c-1" not found', "NotFound", request_id="rid")

    world.handlers.append(missing)
    conn, transport = world.connect()
    conn.data_received(GET)
    await _settle()
    text = bytes(transport.written)
    assert text.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Type: application/json" in text and b"X-Request-Id: rid" in text
    assert text.endswith(b'"code": 404}')
    assert not transport.closed


async def test_bodies_stream_with_back_pressure(world: Any) -> None:
    got: list[int] = []
    proceed = asyncio.Event()

    async def consume(app: web.Application, request: Request) -> Answer:
        await proceed.wait()
        got.extend([len(chunk) async for chunk in request.iter_any()])
        return whole(200, "OK", [], b"")

    world.handlers.append(consume)
    conn, transport = world.connect()
    size = 3 * BODY_HIGH_WATER
    conn.data_received(
        b"PUT /k8s/clusters/c-1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % size
    )
    piece = b"x" * (BODY_HIGH_WATER // 2)
    for _ in range(3):
        conn.data_received(piece)
    assert transport.paused  # more than the high-water mark held
    proceed.set()
    await _settle()
    assert not transport.paused
    for _ in range(3):
        conn.data_received(piece)
    await _settle()
    assert sum(got) == size
    assert _answers(transport) == 1 and not transport.closed


async def test_expect_continue_is_answered_when_the_body_is_read(world: Any) -> None:
    async def read(app: web.Application, request: Request) -> Answer:
        await request.read()
        return whole(200, "OK", [], b"")

    world.handlers.append(read)
    conn, transport = world.connect()
    conn.data_received(
        b"PUT /k8s/clusters/c-1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    await _settle()
    assert bytes(transport.written) == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(b"{}")
    await _settle()
    assert _answers(transport) == 1


async def test_an_unread_body_closes_the_connection_after_the_answer(world: Any) -> None:
    conn, transport = world.connect()
    conn.data_received(
        b"PUT /k8s/clusters/c-1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nabc"
    )
    await _settle()
    assert _answers(transport) == 1 and transport.closed


async def test_a_client_that_goes_away_cancels_its_request(world: Any) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(app: web.Application, request: Request) -> Answer:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    world.handlers.append(hang)
    conn, _ = world.connect()
    conn.data_received(GET)
    await started.wait()
    conn.connection_lost(None)
    await asyncio.wait_for(cancelled.wait(), 1)
    assert conn not in world.front.connections


async def test_streamed_answers_are_chunked_and_wait_for_the_client(world: Any) -> None:
    async def stream(app: web.Application, request: Request) -> Answer:
        answer = await request.start_answer(200, "OK", [(b"Content-Type", b"x")], None, "rid")
        await answer.write(b"one")
        await answer.write(b"two")
        await answer.end()
        return streamed(answer.keep_alive)

    world.handlers.append(stream)
    conn, transport = world.connect()
    conn.pause_writing()
    conn.data_received(GET)
    await _settle()
    text = bytes(transport.written)
    assert b"Transfer-Encoding: chunked" in text and text.endswith(b"3\r\none\r\n")
    conn.resume_writing()
    await _settle()
    assert bytes(transport.written).endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    assert not transport.closed


async def test_stopping_closes_idle_connections_and_the_others_after_their_answer(
    world: Any,
) -> None:
    release = asyncio.Event()

    async def slow(app: web.Application, request: Request) -> Answer:
        await release.wait()
        return whole(200, "OK", [], b"{}")

    world.handlers.append(slow)
    _idle, idle_transport = world.connect()
    busy, busy_transport = world.connect()
    busy.data_received(GET)
    await _settle()
    world.app[DRAIN].start()
    world.front.close_idle()
    assert idle_transport.closed and not busy_transport.closed
    release.set()
    await _settle()
    assert b"Connection: close" in bytes(busy_transport.written)
    assert busy_transport.closed


async def test_idle_and_stalled_connections_time_out(world: Any) -> None:
    idle, idle_transport = world.connect()
    stalled, stalled_transport = world.connect()
    stalled.data_received(GET[:20])
    loop = asyncio.get_running_loop()
    idle.check_timeouts(loop.time() + world.front.head_timeout_s + 1)
    stalled.check_timeouts(loop.time() + world.front.head_timeout_s + 1)
    assert not idle_transport.closed and stalled_transport.closed
    idle.check_timeouts(loop.time() + world.front.keepalive_s + 1)
    assert idle_transport.closed


async def test_a_head_that_follows_a_long_body_gets_its_own_time(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    clock = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: clock[0])
    conn, transport = world.connect()
    conn.data_received(
        b"PUT /k8s/clusters/c-1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\nab"
    )
    clock[0] += world.front.head_timeout_s * 3  # a slow upload
    conn.data_received(b"cd" + GET[:20])  # the body ends, the next head begins
    await _settle()
    conn.check_timeouts(clock[0] + world.front.head_timeout_s / 2)
    assert not transport.closed
    conn.check_timeouts(clock[0] + world.front.head_timeout_s + 1)
    assert transport.closed


async def test_an_error_answer_to_head_has_no_body(world: Any) -> None:
    async def missing(app: web.Application, request: Request) -> Answer:
        return status_answer(404, 'clusters "c-1" not found', "NotFound")

    world.handlers.append(missing)
    conn, transport = world.connect()
    conn.data_received(GET.replace(b"GET ", b"HEAD ", 1))
    await _settle()
    text = bytes(transport.written)
    assert text.startswith(b"HTTP/1.1 404 Not Found\r\n") and text.endswith(b"\r\n\r\n")
    assert not transport.closed


_PIECES = [
    GET,
    GET[:17],
    GET[17:],
    LOGIN,
    b"PUT /k8s/clusters/c-1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /k8s/clusters/c-1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"\r\n",
    b"GARBAGE \x00\xff\r\n\r\n",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=64)), max_size=10))
async def test_any_byte_stream_gets_answers_or_a_refusal_never_an_exception(
    chunks: list[bytes],
) -> None:
    async def answer(app: web.Application, request: Request) -> Answer:
        if request.body_exists:
            await request.read()
        return whole(200, "OK", [], b"{}")

    app = web.Application()
    app[DRAIN] = Drain()
    aiohttp = Application()
    conn = Front(app, aiohttp.server, answer=answer)()
    transport = FakeTransport()
    conn.connection_made(transport)
    for chunk in chunks:
        if transport.closed:
            break
        conn.data_received(chunk)
        await _settle(20)
    conn.connection_lost(None)
    await _settle()
    text = bytes(transport.written)
    assert text == b"" or text.startswith(b"HTTP/1.1 ")
    sent = b"".join(chunks)
    for method, path, _ in aiohttp.seen:  # what aiohttp got, the client sent
        assert f"{method} {path} HTTP/1.1".encode() in sent


async def test_a_stalled_body_fails_its_request_with_408(world: Any) -> None:
    failures: list[BaseException] = []

    async def read(app: web.Application, request: Request) -> Answer:
        try:
            await request.read()
        except ConnectionError as exc:
            failures.append(exc)
            raise
        return whole(200, "OK", [], b"")

    world.handlers.append(read)
    conn, transport = world.connect()
    conn.data_received(
        b"PUT /k8s/clusters/c-1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nabc"
    )
    await _settle()
    loop = asyncio.get_running_loop()
    conn.check_timeouts(loop.time() + world.front.body_timeout_s / 2)
    assert not transport.closed
    conn.check_timeouts(loop.time() + world.front.body_timeout_s + 1)
    await _settle()
    assert failures  # the handler stopped reading (the proxy resets its tunnel stream)
    assert bytes(transport.written).startswith(b"HTTP/1.1 408 Request Timeout")
    assert b'"code": 408' in bytes(transport.written) and transport.closed


async def test_a_malformed_body_fails_its_request_with_400_at_once(world: Any) -> None:
    async def read(app: web.Application, request: Request) -> Answer:
        await request.read()
        return whole(200, "OK", [], b"")

    world.handlers.append(read)
    conn, transport = world.connect()
    conn.data_received(
        b"PUT /k8s/clusters/c-1/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    await _settle()
    conn.data_received(b"FFFFFFFFFFFFFFFFF1\r\n")
    await _settle()
    assert bytes(transport.written).startswith(b"HTTP/1.1 400 Bad Request")
    assert transport.closed and not transport.paused


async def test_no_body_timeout_before_the_100_continue_the_client_waits_for(
    world: Any,
) -> None:
    proceed = asyncio.Event()

    async def late(app: web.Application, request: Request) -> Answer:
        await proceed.wait()  # e.g. waiting for a tunnel
        await request.read()
        return whole(200, "OK", [], b"")

    world.handlers.append(late)
    conn, transport = world.connect()
    conn.data_received(
        b"PUT /k8s/clusters/c-1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    await _settle()
    loop = asyncio.get_running_loop()
    conn.check_timeouts(loop.time() + world.front.body_timeout_s + 1)
    assert not transport.closed and bytes(transport.written) == b""
    proceed.set()
    await _settle()
    conn.data_received(b"{}")
    await _settle()
    assert _answers(transport) == 1


EXEC = (
    b"POST /k8s/clusters/c-1/api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: gw\r\n"
    b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
)
SPDY = b"\x80\x03\x00\x01\x00\x00\x00\x0aabcdefghij"


class Joined(asyncio.Protocol):
    """What an upgrade makes the connection's protocol: records what arrives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done = asyncio.Event()
        self.abandoned = False
        self.previous: Any = None

    def data_received(self, data: bytes) -> None:
        self.data += data

    def abandon(self) -> None:
        self.abandoned = True

    async def take_over(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol) -> None:
        self.previous = previous
        transport.set_protocol(self)
        await self.done.wait()


def _switching(joined: Joined, proceed: asyncio.Event | None = None) -> Handler:
    async def upgrade(app: web.Application, request: Request) -> Answer:
        if proceed is not None:
            await proceed.wait()  # the API server has not answered yet
        headers = [(b"Connection", b"Upgrade"), (b"Upgrade", b"SPDY/3.1")]
        return switching("Switching Protocols", headers, joined, "rid")

    return upgrade


@pytest.mark.parametrize("first", [b"", LOGIN])
async def test_after_the_101_the_upgrade_gets_every_byte_unread(world: Any, first: bytes) -> None:
    joined = Joined()
    world.handlers.append(_switching(joined))
    conn, transport = world.connect()
    if first:  # a connection that served the management API first
        conn.data_received(first)
        await _until(lambda: _answers(transport) == 1)
        transport.written.clear()
    conn.data_received(EXEC)
    await _until(lambda: transport.protocol is joined)
    assert transport.written.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Upgrade: SPDY/3.1\r\n" in transport.written
    assert b"X-Request-Id: rid\r\n" in transport.written
    assert joined.previous is conn and conn.taken_over
    # From now on the transport calls the upgrade's protocol: the bytes are its own.
    transport.protocol.data_received(SPDY)
    transport.protocol.data_received(LOGIN + LOGIN)
    assert bytes(joined.data) == SPDY + LOGIN + LOGIN
    assert not transport.closed and len(world.aiohttp.seen) == (1 if first else 0)
    joined.done.set()
    await _until(lambda: transport.closed)  # the upgrade is over: so is the connection


async def test_bytes_right_behind_the_101_reach_the_upgrade(world: Any) -> None:
    """The peer may answer the 101 at once (an agent's HELLO): the connection is the
    upgrade's before the event loop reads again, never read as HTTP meanwhile."""
    joined = Joined()
    world.handlers.append(_switching(joined))
    conn, transport = world.connect()
    loop = asyncio.get_running_loop()
    write = transport.write

    def write_then_peer_answers(data: Any) -> None:
        write(data)
        if bytes(data).startswith(b"HTTP/1.1 101 "):  # the next read is the peer's
            loop.call_soon(lambda: transport.protocol.data_received(SPDY))

    transport.write = write_then_peer_answers  # type: ignore[method-assign]
    conn.data_received(EXEC)
    await _until(lambda: bytes(joined.data) == SPDY)
    assert transport.protocol is joined and not transport.closed
    joined.done.set()
    await _until(lambda: transport.closed)


def _readers() -> int:
    gc.collect()
    return sum(type(o) is RequestReader for o in gc.get_objects())


async def test_an_upgraded_connection_keeps_neither_its_request_nor_its_answer(
    world: Any,
) -> None:
    """An agent's tunnel is an upgrade that lasts as long as the agent: what answering
    its request took (the request with its headers, the answer with its header lines)
    is let go once the upgrade has the connection (it was kept for the tunnel's life),
    and so is the HTTP/1.1 reader with its parser and the last head's fields."""
    joined = Joined()
    kept: list[Any] = []

    async def upgrade(app: web.Application, request: Request) -> Answer:
        answer = switching("Switching Protocols", [(b"Upgrade", b"SPDY/3.1")], joined, "rid")
        kept.extend((request, answer))
        return answer

    world.handlers.append(upgrade)
    readers = _readers()
    conn, transport = world.connect()
    assert _readers() == readers + 1
    conn.data_received(EXEC)
    await _until(lambda: transport.protocol is joined)
    await _settle()
    gc.collect()
    assert conn._reader is None
    assert not conn.between_requests
    conn.check_timeouts(1e12)  # nothing of ours times an upgraded connection out
    assert not transport.closed
    request, answer = kept
    kept.clear()
    world.seen.clear()  # (the test's own record of what was asked)
    # Only this frame's names (and getrefcount's argument) refer to them now.
    assert sys.getrefcount(request) == 2
    assert sys.getrefcount(answer) == 2
    assert _readers() == readers  # (the parser and the reader refer to each other)
    conn.close_when_idle()  # a stopping gateway: the upgrade ends its connection itself
    assert not transport.closed
    joined.done.set()
    await _until(lambda: transport.closed)


@pytest.mark.parametrize("upgrade", [b"websocket", b"tcp"])
async def test_an_upgrade_head_alone_turns_no_check_off(world: Any, upgrade: bytes) -> None:
    """Found in review: a WebSocket (or ``tcp``) upgrade head switched the relay to
    passing bytes on for good, while aiohttp declines any upgrade its handler does not
    accept and goes back to HTTP/1.1: no credentials needed to turn every check off."""
    conn, transport = await _served_v3(world)
    head = (
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: "
        + upgrade
        + b"\r\n\r\n"
    )
    conn.data_received(head)
    await _until(lambda: _answers(transport) == 1)
    assert conn in world.front.connections and not conn.taken_over  # still swept
    conn.data_received(b"GET /v3/users HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    await _settle()
    assert transport.closed and b"HTTP/1.1 400 " in transport.written
    assert [path for _, path, _ in world.aiohttp.seen] == ["/v3/users", "/healthz"]


async def test_a_connection_taken_over_leaves_the_sweep(world: Any) -> None:
    joined = Joined()
    world.handlers.append(_switching(joined))
    conn, transport = world.connect()
    conn.data_received(EXEC)
    await _until(lambda: transport.protocol is joined)
    conn.check_timeouts(asyncio.get_running_loop().time() + 10 * world.front.keepalive_s)
    assert not transport.closed
    conn.connection_lost(None)  # told by the upgrade's protocol
    assert conn not in world.front.connections


class RunsOn(Joined):
    """An upgrade that, like an agent's tunnel, runs on after ``take_over`` returns."""

    async def take_over(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol) -> bool:
        self.previous = previous
        transport.set_protocol(self)
        return True


async def test_an_upgrade_that_runs_on_keeps_its_connection_without_a_task(world: Any) -> None:
    """An agent's tunnel lasts as long as the agent: once its upgrade says it runs on,
    the front holds no task for it and does not close it; it still leaves the front's
    connections when its protocol reports the loss, and a stopping gateway's abort
    reaches it."""
    joined = RunsOn()
    world.handlers.append(_switching(joined))
    conn, transport = world.connect()
    conn.data_received(EXEC)
    await _until(lambda: transport.protocol is joined)
    await _settle()
    assert conn._task is None and not transport.closed
    assert conn in world.front.connections and not conn.between_requests
    conn.close_when_idle()
    assert not transport.closed
    world.front.abort_all()
    assert transport.aborted
    conn.connection_lost(None)  # told by the upgrade's protocol
    assert conn not in world.front.connections


async def test_before_the_101_other_bytes_are_refused(world: Any) -> None:
    """No guessing from the bytes: until the front writes the 101, what follows an
    upgrade head is read as HTTP/1.1 and checked; the upgrade is then never taken over."""
    joined = Joined()
    proceed = asyncio.Event()
    world.handlers.append(_switching(joined, proceed))
    conn, transport = world.connect()
    conn.data_received(EXEC)
    await _settle()
    conn.data_received(b"\x80\x03\x00\x01")
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 400 ")
    proceed.set()
    await _settle(20)
    assert transport.protocol is None and b"101" not in transport.written


async def test_after_an_upgrade_aiohttp_ignores_heads_are_still_checked(world: Any) -> None:
    conn, transport = await _served_v3(world)
    h2c = b"GET /v3/users HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    conn.data_received(h2c + LOGIN)
    await _until(lambda: _answers(transport) == 2)
    assert len(world.aiohttp.seen) == 3
    conn.data_received(b"GET /v3/users HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    await _settle()
    assert transport.closed and b"HTTP/1.1 400 " in transport.written
    conn, transport = await _served_v3(world)
    spdy_elsewhere = h2c.replace(b"h2c", b"SPDY/3.1")
    conn.data_received(spdy_elsewhere + b"\x80\x03\x00\x01")
    await _settle(20)
    assert transport.closed and b"HTTP/1.1 400 " in transport.written


async def test_a_whole_answer_is_one_write_and_says_when_the_connection_ends(
    world: Any,
) -> None:
    conn, transport = world.connect()
    conn.data_received(GET.replace(b"Host: gw", b"Host: gw\r\nConnection: close"))
    await _settle()
    assert transport.writes == 1 and b"Connection: close\r\n" in transport.written
    assert transport.closed
    conn.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        conn.write(b"late")
