"""gateway.front.connection: the lean client connection, with a fake transport and a fake proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import NotFound, k8s_response
from gateway.front.connection import Front, FrontConnection
from gateway.front.relay import Relay, taken_over
from gateway.front.request import BODY_HIGH_WATER, ClientRequest
from gateway.proxy.rawresponse import RawResponse
from gateway.telemetry.drain import DRAIN, Drain

GET = b"GET /k8s/clusters/c-1/api/v1/pods HTTP/1.1\r\nHost: gw\r\n\r\n"
LOGIN = b"GET /v3/users HTTP/1.1\r\nHost: gw\r\n\r\n"


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.paused = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.written += part

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


class FakeAiohttp(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: Any = None
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


Handler = Callable[[web.Application, ClientRequest], Awaitable[Any]]


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> Any:
    handlers: list[Handler] = []
    seen: list[ClientRequest] = []

    async def answer(app: web.Application, request: ClientRequest) -> Any:
        seen.append(request)
        if handlers:
            return await handlers.pop(0)(app, request)
        return RawResponse(
            200, "OK", [], b"{}", request_id="r", keep_alive=request.keep_alive, head=False
        )

    class World:
        def __init__(self) -> None:
            app = web.Application()
            app[DRAIN] = Drain()
            self.app = app
            self.fallbacks: list[FakeAiohttp] = []
            self.front = Front(app, self._fallback, answer=answer)
            self.handlers = handlers
            self.seen = seen

        def _fallback(self) -> FakeAiohttp:
            protocol = FakeAiohttp()
            self.fallbacks.append(protocol)
            return protocol

        def connect(self) -> tuple[FrontConnection, FakeTransport]:
            conn = self.front()
            transport = FakeTransport()
            conn.connection_made(transport)  # type: ignore[arg-type]
            return conn, transport

    return World()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


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

    async def slow(app: web.Application, request: ClientRequest) -> RawResponse:
        await release.wait()
        order.append("first")
        return RawResponse(200, "OK", [], b"1", request_id="", keep_alive=True, head=False)

    async def fast(app: web.Application, request: ClientRequest) -> RawResponse:
        order.append("second")
        return RawResponse(200, "OK", [], b"2", request_id="", keep_alive=True, head=False)

    world.handlers += [slow, fast]
    conn, transport = world.connect()
    conn.data_received(GET + GET)
    await _settle()
    assert order == []
    release.set()
    await _settle()
    assert order == ["first", "second"]
    assert transport.written.index(b"\r\n\r\n1") < transport.written.index(b"\r\n\r\n2")


async def test_other_requests_hand_the_connection_to_aiohttp(world: Any) -> None:
    conn, transport = world.connect()
    conn.data_received(GET)
    await _settle()
    conn.data_received(LOGIN[:7])
    conn.data_received(LOGIN[7:])
    assert len(world.fallbacks) == 1
    handler = world.fallbacks[0]
    relay = transport.protocol
    assert isinstance(relay, Relay) and relay.handler is handler
    assert handler.transport is transport
    assert bytes(handler.data) == LOGIN
    assert conn not in world.front.connections and relay in world.front.relays


def _handed_off(world: Any) -> tuple[Relay, Any, FakeTransport]:
    conn, transport = world.connect()
    conn.data_received(LOGIN)
    relay = transport.protocol
    assert isinstance(relay, Relay)
    return relay, world.fallbacks[-1], transport


async def test_a_handed_off_connection_gets_whole_heads_only(world: Any) -> None:
    relay, handler, transport = _handed_off(world)
    post = b"POST /v3/tokens HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\nab"
    relay.data_received(post[:10])
    assert bytes(handler.data) == LOGIN  # held until the head is whole
    relay.data_received(post[10:])
    assert bytes(handler.data) == LOGIN + post
    relay.data_received(b"cd" + LOGIN)
    assert bytes(handler.data) == LOGIN + post + b"cd" + LOGIN
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
async def test_a_handed_off_connection_refuses_bad_heads(
    world: Any, data: bytes, status: int
) -> None:
    relay, handler, transport = _handed_off(world)
    relay.data_received(data)
    assert bytes(handler.data) == LOGIN
    assert transport.closed
    assert transport.written.startswith(f"HTTP/1.1 {status} ".encode())
    body = json.loads(bytes(transport.written).partition(b"\r\n\r\n")[2])
    assert body["type"] == "error" and body["status"] == status, body


async def test_a_handed_off_connection_keeps_the_timeouts(world: Any) -> None:
    now = asyncio.get_running_loop().time()
    relay, handler, transport = _handed_off(world)
    relay.check_timeouts(now + world.front.head_timeout_s * 10)  # between requests
    assert not transport.closed
    relay.data_received(LOGIN[:10])
    relay.check_timeouts(now + world.front.head_timeout_s + 1)
    assert transport.closed
    relay, handler, transport = _handed_off(world)
    relay.data_received(b"POST /v3/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\nab")
    transport.paused = True  # aiohttp's back-pressure: not the client's fault
    relay.check_timeouts(now + world.front.body_timeout_s + 1)
    assert not transport.closed
    transport.paused = False
    relay.check_timeouts(now + world.front.body_timeout_s + 1)
    assert transport.closed
    relay.connection_lost(None)
    assert relay not in world.front.relays and handler.lost


async def test_a_hand_over_waits_for_the_answer_in_flight(world: Any) -> None:
    release = asyncio.Event()

    async def slow(app: web.Application, request: ClientRequest) -> RawResponse:
        await release.wait()
        return RawResponse(200, "OK", [], b"{}", request_id="", keep_alive=True, head=False)

    world.handlers.append(slow)
    conn, transport = world.connect()
    conn.data_received(GET)
    await _settle()
    conn.data_received(LOGIN)
    assert world.fallbacks == [] and transport.paused
    release.set()
    await _settle()
    assert _answers(transport) == 1
    assert bytes(world.fallbacks[0].data) == LOGIN
    assert not transport.paused


async def test_invalid_requests_get_a_status_and_the_connection_closes(world: Any) -> None:
    conn, transport = world.connect()
    conn.data_received(b"GET /k8s/clusters/c-1/ HTTP/1.1\r\nBroken\r\n\r\n")
    assert transport.closed
    text = bytes(transport.written)
    assert text.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'"kind": "Status"' in text and b"Connection: close" in text


async def test_error_answers_keep_the_connection(world: Any) -> None:
    async def missing(app: web.Application, request: ClientRequest) -> web.Response:
        response = k8s_response(NotFound('clusters "c-1" not found'))
        response.headers["X-Request-Id"] = "rid"
        return response

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

    async def consume(app: web.Application, request: ClientRequest) -> RawResponse:
        await proceed.wait()
        got.extend([len(chunk) async for chunk in request.content.iter_any()])
        return RawResponse(200, "OK", [], b"", request_id="", keep_alive=True, head=False)

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
    async def read(app: web.Application, request: ClientRequest) -> RawResponse:
        await request.read()
        return RawResponse(200, "OK", [], b"", request_id="", keep_alive=True, head=False)

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

    async def hang(app: web.Application, request: ClientRequest) -> RawResponse:
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
    async def stream(app: web.Application, request: ClientRequest) -> Any:
        answer = request.streamed_answer(200, "OK", [(b"Content-Type", b"x")], None, "rid")
        await answer.prepare(request)
        await answer.write(b"one")
        await answer.write(b"two")
        await answer.write_eof()
        return answer

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

    async def slow(app: web.Application, request: ClientRequest) -> RawResponse:
        await release.wait()
        return RawResponse(
            200, "OK", [], b"{}", request_id="", keep_alive=request.keep_alive, head=False
        )

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
    async def missing(app: web.Application, request: ClientRequest) -> web.Response:
        return k8s_response(NotFound('clusters "c-1" not found'))

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
    async def answer(app: web.Application, request: ClientRequest) -> RawResponse:
        if request.body_exists:
            await request.read()
        return RawResponse(
            200, "OK", [], b"{}", request_id="", keep_alive=request.keep_alive, head=False
        )

    app = web.Application()
    app[DRAIN] = Drain()
    handed: list[FakeAiohttp] = []

    def fallback() -> FakeAiohttp:
        handed.append(FakeAiohttp())
        return handed[-1]

    conn = Front(app, fallback, answer=answer)()
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        if transport.closed or transport.protocol is not None:
            break
        conn.data_received(chunk)
        await _settle()
    conn.connection_lost(None)
    await _settle()
    text = bytes(transport.written)
    assert text == b"" or text.startswith(b"HTTP/1.1 ")
    if handed:  # what aiohttp got is exactly the end of what the client sent
        assert b"".join(chunks).find(bytes(handed[0].data)) >= 0


async def test_a_stalled_body_fails_its_request_with_408(world: Any) -> None:
    failures: list[BaseException] = []

    async def read(app: web.Application, request: ClientRequest) -> RawResponse:
        try:
            await request.read()
        except ConnectionError as exc:
            failures.append(exc)
            raise
        return RawResponse(200, "OK", [], b"", request_id="", keep_alive=True, head=False)

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
    async def read(app: web.Application, request: ClientRequest) -> RawResponse:
        await request.read()
        return RawResponse(200, "OK", [], b"", request_id="", keep_alive=True, head=False)

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

    async def late(app: web.Application, request: ClientRequest) -> RawResponse:
        await proceed.wait()  # e.g. waiting for a tunnel
        await request.read()
        return RawResponse(200, "OK", [], b"", request_id="", keep_alive=True, head=False)

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


async def test_after_the_gateway_takes_a_spdy_upgrade_over_the_relay_passes_bytes_on(
    world: Any,
) -> None:
    relay, handler, transport = _handed_off(world)
    upgrade = (
        b"POST /k8s/clusters/c-1/api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: gw\r\n"
        b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
    )
    relay.data_received(upgrade)
    taken_over(transport)  # gateway.proxy.upgrade, before its 101
    frames = b"\x80\x03\x00\x01\x00\x00\x00\x0aabcdefghij"  # SPDY
    relay.data_received(frames)
    relay.data_received(LOGIN + LOGIN)  # from now on, only passed on
    assert bytes(handler.data) == LOGIN + upgrade + frames + LOGIN + LOGIN
    assert not transport.closed


@pytest.mark.parametrize("upgrade", [b"websocket", b"tcp"])
async def test_an_upgrade_head_alone_turns_no_check_off(world: Any, upgrade: bytes) -> None:
    """Found in review: a WebSocket (or ``tcp``) upgrade head switched the relay to
    passing bytes on for good, while aiohttp declines any upgrade its handler does not
    accept and goes back to HTTP/1.1: no credentials needed to turn every check off."""
    relay, handler, transport = _handed_off(world)
    head = (
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: "
        + upgrade
        + b"\r\n\r\n"
    )
    relay.data_received(head)
    assert relay in world.front.relays  # still swept for timeouts
    relay.data_received(b"GET /v3/users HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 400 ")
    assert bytes(handler.data) == LOGIN + head


async def test_a_connection_taken_over_leaves_the_sweep(world: Any) -> None:
    relay, _, transport = _handed_off(world)
    taken_over(transport)
    assert relay not in world.front.relays


async def test_before_the_gateway_takes_an_upgrade_over_other_bytes_are_refused(
    world: Any,
) -> None:
    """No guessing from the bytes: until ``gateway.proxy.upgrade`` says it took the connection,
    what follows an upgrade head is read as HTTP/1.1 and checked."""
    relay, handler, transport = _handed_off(world)
    upgrade = (
        b"POST /k8s/clusters/c-1/api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: gw\r\n"
        b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
    )
    relay.data_received(upgrade)
    relay.data_received(b"\x80\x03\x00\x01")
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 400 ")
    assert bytes(handler.data) == LOGIN + upgrade


async def test_after_an_upgrade_aiohttp_ignores_heads_are_still_checked(world: Any) -> None:
    relay, handler, transport = _handed_off(world)
    h2c = b"GET /v3/users HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    relay.data_received(h2c + LOGIN)
    assert bytes(handler.data) == LOGIN + h2c + LOGIN
    relay.data_received(b"GET /v3/users HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 400 ")
    relay, handler, transport = _handed_off(world)
    spdy_elsewhere = h2c.replace(b"h2c", b"SPDY/3.1")
    relay.data_received(spdy_elsewhere + b"\x80\x03\x00\x01")
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 400 ")
