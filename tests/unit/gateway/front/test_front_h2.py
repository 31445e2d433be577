"""gateway.front.h2: HTTP/2 streams to the proxy and, through the bridge, to a real aiohttp
application; an ``h2`` client on an in-memory transport, the proxy faked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.front.connection import Front
from gateway.front.h2 import STREAM_HIGH_WATER, H2Connection
from gateway.front.h2_protocol import PREFACE, SETTINGS, _pack
from gateway.proxy.model import Request, streamed, whole
from gateway.telemetry.drain import DRAIN, Drain

Handler = Callable[[web.Application, Request], Awaitable[Any]]
CLUSTER = "/k8s/clusters/c-1/api/v1/pods"
_SETTINGS = _pack(SETTINGS, 0, 0, b"")


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading_paused = False
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes += 1

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.written += part
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default


class Client:
    """An ``h2`` client wired to an ``H2Connection`` in memory."""

    def __init__(self, front: Front, window: int = 1 << 20) -> None:
        self.transport = Transport()
        self.server = H2Connection(front)
        self.server.connection_made(self.transport)  # type: ignore[arg-type]
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.h2.initiate_connection()
        self.auto_ack = True
        self.status: dict[int, int] = {}
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.body: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway = False
        self.unacked: dict[int, int] = {}
        self.send()

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.server.data_received(data)
        self.receive()

    def receive(self) -> None:
        data = bytes(self.transport.written)
        self.transport.written.clear()
        if not data:
            return
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                fields = dict(event.headers)
                self.status[event.stream_id] = int(fields[b":status"])
                self.headers[event.stream_id] = fields
            elif isinstance(event, h2.events.DataReceived):
                self.body.setdefault(event.stream_id, bytearray()).extend(event.data)
                if self.auto_ack:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                else:
                    self.unacked[event.stream_id] = (
                        self.unacked.get(event.stream_id, 0) + event.flow_controlled_length
                    )
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = True
        self.send()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
    ) -> int:
        stream = self.h2.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", b"gw"),
            (b":path", path.encode()),
            *(headers or []),
        ]
        self.h2.send_headers(stream, fields, end_stream=body is None and end)
        if body is not None:
            self.h2.send_data(stream, body, end_stream=end)
        self.send()
        return stream

    def ack_all(self) -> None:
        for stream, count in self.unacked.items():
            if count:
                self.h2.acknowledge_received_data(count, stream)
        self.unacked.clear()
        self.send()

    async def until(self, done: Callable[[], bool], turns: int = 500) -> None:
        for _ in range(turns):
            self.receive()
            if done():
                return
            await asyncio.sleep(0)
        raise AssertionError("the condition was not met")


async def _big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(32):
        await response.write(b"b" * 65536)
    await response.write_eof()
    return response


async def _users(request: web.Request) -> web.Response:
    return web.json_response({"data": []})


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    handlers: list[Handler] = []

    async def answer(app: web.Application, request: Request) -> Any:
        if handlers:
            return await handlers.pop(0)(app, request)
        return whole(
            200,
            "OK",
            [(b"Content-Type", b"application/json"), (b"Connection", b"x")],
            b'{"kind":"PodList"}',
            request_id="rid",
        )

    app = web.Application()
    app[DRAIN] = Drain()
    app.router.add_get("/v3/users", _users)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/big", _big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None

    class World:
        front = Front(app, runner.server, answer=answer)

        def __init__(self) -> None:
            self.app = app
            self.handlers = handlers

    yield World()
    await runner.cleanup()


async def test_a_cluster_request_gets_the_raw_answer(world: Any) -> None:
    client = Client(world.front)
    stream = client.request("GET", CLUSTER, headers=[(b"authorization", b"Bearer t")])
    await client.until(lambda: stream in client.ended)
    assert client.status[stream] == 200
    assert client.body[stream] == b'{"kind":"PodList"}'
    fields = client.headers[stream]
    assert fields[b"content-type"] == b"application/json"
    assert fields[b"content-length"] == b"18"
    assert fields[b"x-request-id"] == b"rid"
    assert b"connection" not in fields


async def test_head_gets_no_body(world: Any) -> None:
    client = Client(world.front)
    stream = client.request("HEAD", CLUSTER)
    await client.until(lambda: stream in client.ended)
    assert client.status[stream] == 200 and stream not in client.body


async def test_a_streamed_answer_waits_for_the_clients_window(world: Any) -> None:
    waited: list[int] = []

    async def stream_big(app: web.Application, request: Request) -> Any:
        answer = await request.start_answer(200, "OK", [(b"Content-Type", b"x")], None, "rid")
        for _ in range(40):
            await answer.write(b"w" * 32768)
            waited.append(client.server.h2.buffered(1))
        await answer.end()
        return streamed(answer.keep_alive)

    world.handlers.append(stream_big)
    client = Client(world.front, window=65535)
    client.auto_ack = False
    stream = client.request("GET", CLUSTER + "?watch=1")
    await client.until(lambda: len(waited) >= 8)
    await asyncio.sleep(0.01)
    assert max(waited) <= STREAM_HIGH_WATER + 32768  # the writer waited
    assert len(waited) < 40
    while stream not in client.ended:
        client.ack_all()
        await asyncio.sleep(0)
    assert len(client.body[stream]) == 40 * 32768


async def test_a_client_reset_cancels_the_proxy(world: Any) -> None:
    cancelled = asyncio.Event()

    async def hang(app: web.Application, request: Request) -> Any:
        await request.start_answer(200, "OK", [], None, "rid")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    world.handlers.append(hang)
    client = Client(world.front)
    stream = client.request("GET", CLUSTER + "?watch=1")
    await client.until(lambda: stream in client.status)
    client.h2.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
    client.send()
    await asyncio.wait_for(cancelled.wait(), 5)
    assert client.server.between_requests
    again = client.request("GET", CLUSTER)
    await client.until(lambda: again in client.ended)
    assert client.status[again] == 200


async def test_a_request_body_gets_window_as_it_is_read(world: Any) -> None:
    got = bytearray()
    release = asyncio.Event()

    async def slow_reader(app: web.Application, request: Request) -> Any:
        await release.wait()
        async for chunk in request.iter_any():
            got.extend(chunk)
        return whole(201, "Created", [], b"{}")

    world.handlers.append(slow_reader)
    client = Client(world.front)
    stream = client.request("POST", CLUSTER, headers=[(b"content-length", b"3000000")], end=False)
    body = b"p" * 3_000_000
    sent = 0
    while client.h2.local_flow_control_window(stream) > 0:
        size = min(client.h2.local_flow_control_window(stream), 16384)
        client.h2.send_data(stream, body[sent : sent + size])
        sent += size
        client.send()
    assert sent <= 1024 * 1024  # the stream's window: nothing was read yet
    release.set()
    while sent < len(body):
        await asyncio.sleep(0)
        client.receive()
        window = min(client.h2.local_flow_control_window(stream), 16384, len(body) - sent)
        if window > 0:
            client.h2.send_data(
                stream, body[sent : sent + window], end_stream=sent + window == len(body)
            )
            sent += window
            client.send()
    await client.until(lambda: stream in client.ended)
    assert client.status[stream] == 201 and bytes(got) == body


async def test_the_management_api_through_the_bridge(world: Any) -> None:
    client = Client(world.front)
    users = client.request("GET", "/v3/users")
    echo = client.request("POST", "/echo", body=b"hello over h2")  # no content-length: chunked
    missing = client.request("GET", "/nowhere")
    await client.until(lambda: {users, echo, missing} <= client.ended)
    assert client.status[users] == 200 and bytes(client.body[users]) == b'{"data": []}'
    assert client.status[echo] == 200 and bytes(client.body[echo]) == b"hello over h2"
    assert client.status[missing] == 404
    assert b"transfer-encoding" not in client.headers[echo]
    assert b"connection" not in client.headers[users]


async def test_a_head_aiohttp_would_refuse_gets_our_431_before_the_bridge(world: Any) -> None:
    client = Client(world.front)
    long_field = client.request("GET", "/v3/users", headers=[(b"x-long", b"a" * 9000)])
    many = client.request("GET", "/v3/users", headers=[(b"x-%d" % i, b"v") for i in range(130)])
    await client.until(lambda: {long_field, many} <= client.ended)
    assert client.status[long_field] == 431 and client.status[many] == 431
    assert b"RequestHeaderFieldsTooLarge" in bytes(client.body[long_field])


async def test_a_big_bridged_answer_follows_the_window(world: Any) -> None:
    client = Client(world.front, window=65535)
    client.auto_ack = False
    stream = client.request("GET", "/big")
    for _ in range(2000):
        client.ack_all()
        await asyncio.sleep(0)
        if stream in client.ended:
            break
    assert client.status[stream] == 200
    assert len(client.body[stream]) == 32 * 65536


async def test_draining_sends_goaway_after_the_answer(world: Any) -> None:
    client = Client(world.front)
    world.app[DRAIN].draining = True
    stream = client.request("GET", CLUSTER)
    await client.until(lambda: stream in client.ended)
    await client.until(lambda: client.goaway)
    assert client.transport.closed


def _frame_types(data: bytes) -> list[int]:
    types = []
    while len(data) >= 9:
        types.append(data[3])
        data = data[9 + int.from_bytes(data[:3], "big") :]
    return types


async def test_stopping_waits_for_streams_in_flight(world: Any) -> None:
    release = asyncio.Event()

    async def slow(app: web.Application, request: Request) -> Any:
        await release.wait()
        return whole(200, "OK", [], b"{}")

    world.handlers.append(slow)
    client = Client(world.front)
    client.request("GET", CLUSTER)
    await asyncio.sleep(0)
    world.front.close_idle()
    # (read raw: the h2 package refuses frames after a GOAWAY, though RFC 9113 allows
    # streams below its last stream id to finish)
    assert _frame_types(bytes(client.transport.written)) == [7]  # GOAWAY
    assert not client.transport.closed
    client.transport.written.clear()
    release.set()
    for _ in range(50):
        await asyncio.sleep(0)
    assert _frame_types(bytes(client.transport.written)) == [1, 0]  # HEADERS, DATA
    assert client.transport.closed


async def test_idle_connections_close_after_keepalive(world: Any) -> None:
    client = Client(world.front)
    now = asyncio.get_running_loop().time()
    client.server.check_timeouts(now + 1)
    assert not client.transport.closed
    client.server.check_timeouts(now + world.front.keepalive_s + 1)
    client.receive()
    assert client.goaway and client.transport.closed


async def test_a_broken_connection_fails_its_streams(world: Any) -> None:
    failed = asyncio.Event()

    async def reader(app: web.Application, request: Request) -> Any:
        try:
            await request.read()
        except (ConnectionError, asyncio.CancelledError):
            failed.set()
            raise

    world.handlers.append(reader)
    client = Client(world.front)
    client.request("POST", CLUSTER, body=b"part", end=False)
    await asyncio.sleep(0)
    client.server.connection_lost(None)
    await asyncio.wait_for(failed.wait(), 5)
    assert world.front.connections == set()


async def test_a_full_socket_pauses_writers_and_reading(world: Any) -> None:
    written: list[int] = []

    async def stream_some(app: web.Application, request: Request) -> Any:
        answer = await request.start_answer(200, "OK", [], None, "rid")
        for _ in range(3):
            await answer.write(b"x" * 100)
            written.append(1)
        await answer.end()
        return streamed(answer.keep_alive)

    client = Client(world.front)
    client.server.pause_writing()  # the socket's buffer is full
    assert client.transport.reading_paused
    world.handlers.append(stream_some)
    stream = client.request("GET", CLUSTER + "?watch=1")
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(written) == 0  # the first write waits
    client.server.resume_writing()
    assert not client.transport.reading_paused
    await client.until(lambda: stream in client.ended)
    assert bytes(client.body[stream]) == b"x" * 300


async def test_connect_is_refused(world: Any) -> None:
    client = Client(world.front)
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(stream, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:443")])
    client.send()
    await client.until(lambda: stream in client.ended)
    assert client.status[stream] == 405


async def test_expect_continue_is_answered_when_the_body_is_read(world: Any) -> None:
    async def read_body(app: web.Application, request: Request) -> Any:
        body = await request.read()
        return whole(201, "Created", [], body)

    world.handlers.append(read_body)
    client = Client(world.front)
    stream = client.request(
        "POST",
        CLUSTER,
        headers=[(b"content-length", b"5"), (b"expect", b"100-continue")],
        end=False,
    )
    informational: list[int] = []
    original = client.h2.receive_data

    def spy(data: bytes) -> list[Any]:
        events = original(data)
        informational.extend(
            int(dict(e.headers)[b":status"])
            for e in events
            if isinstance(e, h2.events.InformationalResponseReceived)
        )
        return events

    client.h2.receive_data = spy  # type: ignore[method-assign]
    await client.until(lambda: 100 in informational)
    client.h2.send_data(stream, b"hello", end_stream=True)
    client.send()
    await client.until(lambda: stream in client.ended)
    assert client.status[stream] == 201 and bytes(client.body[stream]) == b"hello"


async def test_head_through_the_bridge(world: Any) -> None:
    client = Client(world.front)
    stream = client.request("HEAD", "/v3/users")
    await client.until(lambda: stream in client.ended)
    assert client.status[stream] == 200 and stream not in client.body


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
async def test_any_bytes_after_the_preface_never_escape_the_protocol(
    world: Any, data: bytes
) -> None:
    transport = Transport()
    conn = H2Connection(world.front)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(PREFACE + _SETTINGS)
    conn.data_received(data)  # must not raise
    for _ in range(5):
        await asyncio.sleep(0)
    conn.connection_lost(None)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.sampled_from(["get", "post", "bridge", "reset", "ping", "window", "settings", "data"]),
        min_size=1,
        max_size=25,
    )
)
async def test_client_action_sequences_leave_a_sound_connection(
    world: Any, actions: list[str]
) -> None:
    client = Client(world.front)
    open_posts: list[int] = []
    opened: list[int] = []
    for action in actions:
        if action == "get":
            opened.append(client.request("GET", CLUSTER))
        elif action == "post":
            stream = client.request("POST", CLUSTER, body=b"x" * 100, end=False)
            open_posts.append(stream)
            opened.append(stream)
        elif action == "bridge":
            opened.append(client.request("GET", "/v3/users"))
        elif action == "reset" and opened:
            stream = opened[-1]
            if stream not in client.ended and stream not in client.resets:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    client.h2.reset_stream(stream)
                    client.resets[stream] = -1  # reset by the client itself
                    client.send()
        elif action == "ping":
            client.h2.ping(b"12345678")
            client.send()
        elif action == "window":
            client.h2.increment_flow_control_window(1000)
            client.send()
        elif action == "settings":
            client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 70000})
            client.send()
        elif action == "data" and open_posts:
            stream = open_posts.pop()
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                client.h2.send_data(stream, b"end", end_stream=True)
                client.send()
        await asyncio.sleep(0)
    for stream in open_posts:
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            client.h2.end_stream(stream)
            client.send()
    for _ in range(200):
        client.receive()
        done = all(s in client.ended or s in client.resets for s in opened)
        if done and client.server.between_requests:
            break
        await asyncio.sleep(0)
    assert all(s in client.ended or s in client.resets for s in opened)
    assert client.server.between_requests
    assert not client.goaway


async def test_answers_finished_in_one_turn_share_a_write(world: Any) -> None:
    client = Client(world.front)
    client.auto_ack = True
    streams = []
    for _ in range(5):
        stream = client.h2.get_next_available_stream_id()
        client.h2.send_headers(
            stream,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"gw"),
             (b":path", CLUSTER.encode())],
            end_stream=True,
        )  # fmt: skip
        streams.append(stream)
    before = client.transport.writes
    client.server.data_received(client.h2.data_to_send())
    for _ in range(10):
        await asyncio.sleep(0)
    assert client.transport.writes - before == 1  # five answers, one TLS write
    await client.until(lambda: set(streams) <= client.ended)
    assert {client.status[s] for s in streams} == {200}
