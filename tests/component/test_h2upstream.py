"""The agent's HTTP/2 relay (``tunnel.h2upstream``) between the gateway's real
``StreamPool`` (over an in-memory tunnel) and an HTTP/2 server on loopback TLS (the ``h2``
library): keep-alive on one tunnel stream, MAX_CONCURRENT_STREAMS and the pool, bodies,
a slow reader, hostile answers, and the fallback for an upgrade and for a server
without ``h2``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset, WindowUpdated
from h2.settings import SettingCodes

from config.tls import client_context, ensure_generated_certs, server_context
from gateway.clusters.upstream import StreamPool
from tunnel import h2upstream
from tunnel.credentials import Upstream
from tunnel.protocol import Side
from tunnel.session import Session
from tunnel.stats import AgentStats
from tunnel.streams import TunnelStream
from tunnel.transport import MemoryTransport

Handler = Callable[["_Server", int, dict[bytes, bytes], bytes], None]


class Backend:
    """HTTP/2 (and HTTP/1.1 for the fallback) on loopback; records what it received."""

    def __init__(self, max_streams: int = 100, offer_h2: bool = True) -> None:
        self.max_streams = max_streams
        self.offer_h2 = offer_h2
        self.connections = 0
        self.requests: list[list[tuple[bytes, bytes]]] = []
        self.bodies: list[bytes] = []
        self.http1: list[bytes] = []
        self.servers: list[_Server] = []
        self.transports: list[asyncio.BaseTransport] = []
        self.port = 0
        self.listener: asyncio.Server | None = None

    async def start(self, certs: Path) -> None:
        paths, _ = ensure_generated_certs(certs, ["127.0.0.1"])
        ctx = server_context(paths.cert, paths.key, http2=self.offer_h2)
        self.listener = await asyncio.get_running_loop().create_server(
            lambda: _ByAlpn(self), "127.0.0.1", 0, ssl=ctx
        )
        self.port = self.listener.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for transport in self.transports:
            transport.close()


class _ByAlpn(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        alpn = transport.get_extra_info("ssl_object").selected_alpn_protocol()
        protocol: asyncio.Protocol = _Server(self.backend) if alpn == "h2" else _Http1(self.backend)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class _Http1(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.backend.http1.append(data)
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhttp1")


class _Server(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        backend.servers.append(self)
        backend.connections += 1
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.body: dict[int, bytes] = {}
        self.held: dict[int, list[bytes]] = {}
        self.open_streams: set[int] = set()
        self.ending: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.backend.max_streams})
        self.flush()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, RequestReceived):
                self.backend.requests.append(list(event.headers))
                self.heads[event.stream_id] = dict(event.headers)
                self.body[event.stream_id] = b""
                self.open_streams.add(event.stream_id)
            elif isinstance(event, DataReceived):
                self.body[event.stream_id] = self.body.get(event.stream_id, b"") + event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self.answer(event.stream_id)
            elif isinstance(event, StreamReset):
                self.open_streams.discard(event.stream_id)
            elif isinstance(event, WindowUpdated):
                for sid in list(self.held):
                    self.send_held(sid)
        self.flush()

    def send_held(self, sid: int) -> None:
        pieces = self.held.get(sid, [])
        while pieces:
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                return
            piece = pieces[0]
            self.h2.send_data(sid, piece[:room])
            if len(piece) > room:
                pieces[0] = piece[room:]
            else:
                pieces.pop(0)
        if sid in self.ending:
            self.ending.discard(sid)
            self.h2.end_stream(sid)
        self.flush()

    def answer(self, sid: int) -> None:
        head = self.heads[sid]
        path = head[b":path"]
        self.backend.bodies.append(self.body.get(sid, b""))
        if path == b"/echo":
            self.h2.send_headers(sid, [(b":status", b"200")])
            self.ending.add(sid)
            self.event(sid, self.body.get(sid, b""))
        elif path.startswith(b"/watch"):
            self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"json")])
        elif path == b"/reset":
            self.h2.reset_stream(sid)
        elif path == b"/late-end":
            # The whole body (its length said), the stream's end a moment later: as Go's
            # server does when the handler returns after writing (an empty END_STREAM).
            self.h2.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
            if head[b":method"] != b"HEAD":
                self.h2.send_data(sid, b"{}")

            def end() -> None:
                with contextlib.suppress(Exception):
                    self.h2.end_stream(sid)
                    self.flush()

            asyncio.get_running_loop().call_later(0.2, end)
        elif path == b"/head":
            self.h2.send_headers(
                sid, [(b":status", b"200"), (b"content-length", b"10")], end_stream=True
            )
        else:
            self.h2.send_headers(
                sid, [(b":status", b"200"), (b"content-length", b"2"), (b"x-served", b"yes")]
            )
            self.h2.send_data(sid, b"{}", end_stream=True)
        self.flush()

    def event(self, sid: int, data: bytes) -> None:
        self.held.setdefault(sid, []).append(data)
        self.send_held(sid)

    def connection_lost(self, exc: Exception | None) -> None:
        return None


class World:
    def __init__(
        self, backend: Backend, pool: StreamPool, agent: Session, h2pool: h2upstream.H2Pool
    ) -> None:
        self.backend = backend
        self.pool = pool
        self.agent = agent
        self.h2pool = h2pool
        self.fallbacks: list[bytes] = []


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[Backend, h2upstream.H2Pool, list[Session], Upstream]] = []

    async def _make(max_streams: int = 100, offer_h2: bool = True) -> World:
        backend = Backend(max_streams, offer_h2)
        await backend.start(tmp_path / "certs")
        ca = str(tmp_path / "certs" / "ca.crt")
        upstream = Upstream(
            "127.0.0.1",
            backend.port,
            client_context(ca_file=ca),
            "127.0.0.1",
            ssl_h2=client_context(ca_file=ca, alpn=("h2", "http/1.1")),
        )
        pool = h2upstream.H2Pool(upstream)
        sessions: list[Session] = []
        made.append((backend, pool, sessions, upstream))
        a, b = MemoryTransport.pair()
        world: World | None = None

        def on_stream(stream: TunnelStream) -> None:
            assert world is not None

            def fallback(stream: TunnelStream, prefix: bytes) -> None:
                assert world is not None
                world.fallbacks.append(prefix)
                from tunnel.relay import relay

                asyncio.get_running_loop().create_task(
                    relay(stream, agent, upstream, None, prefix, accepted=True)
                )

            h2upstream.start(stream, agent, pool, fallback)

        agent = Session(a, Side.CLIENT, on_stream=on_stream)
        gateway = Session(b, Side.SERVER)
        await asyncio.gather(agent.handshake(), gateway.handshake())
        agent.start()
        gateway.start()
        sessions += [agent, gateway]
        world = World(backend, StreamPool(gateway), agent, pool)
        return world

    yield _make
    for backend, pool, sessions, upstream in made:
        for session in sessions:
            await session.close()
        pool.close()
        upstream.spare.close()
        await asyncio.sleep(0.1)  # the relays close their connections
        backend.close()
    await asyncio.sleep(0.1)


def head(method: str, path: str, *fields: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: api.test:6443", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_keep_alive_requests_share_one_tunnel_stream_and_one_connection(make: Any) -> None:
    world = await make()
    for _ in range(3):
        resp = await world.pool.request("GET", head("GET", "/api", "Impersonate-User: bob"), None)
        assert (resp.status, await resp.read_all()) == (200, b"{}")
        assert (b"X-Served", b"yes") in resp.headers
        resp.release()
    assert world.pool.idle_count == 1
    assert world.backend.connections == 1
    assert len(world.backend.requests) == 3
    assert world.backend.requests[0] == [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"api.test:6443"),
        (b":path", b"/api"),
        (b"impersonate-user", b"bob"),
    ]


async def test_a_request_that_comes_before_the_last_answers_end_waits_for_it(
    make: Any,
) -> None:
    """The gateway has the whole answer by its length and sends the next request on the
    same tunnel stream before the API server's END_STREAM reached the agent: the request
    waits for that end and is then relayed (it was refused with a reset: a kubectl apply
    of large objects failed so in CI)."""
    world = await make()
    for _ in range(3):
        resp = await world.pool.request("GET", head("GET", "/late-end"), None)
        assert (resp.status, await resp.read_all()) == (200, b"{}")
        resp.release()
    # A streamed body cannot be sent twice: no retry on another stream hides a refusal.
    post = head("POST", "/late-end", "Content-Length: 2", "Content-Type: application/json")

    async def streamed() -> AsyncIterator[bytes]:
        yield b"{}"

    for _ in range(2):
        resp = await world.pool.request("POST", post, streamed())
        assert (resp.status, await resp.read_all()) == (200, b"{}")
        resp.release()
    assert world.pool.idle_count == 1  # one tunnel stream for all of them
    assert len(world.backend.requests) == 5  # none refused and sent again
    resp = await world.pool.request("GET", head("GET", "/api"), None)
    assert (resp.status, await resp.read_all()) == (200, b"{}")
    resp.release()


async def test_a_request_before_the_last_answers_end_goes_on_a_new_stream(make: Any) -> None:
    """The gateway has the whole answer by its length (or a HEAD's head) and sends the
    next request on the same tunnel stream before the API server's END_STREAM reached
    the agent: the request goes at once on a new HTTP/2 stream, the old one left to end
    (it was refused with a reset: a kubectl apply of large objects failed so in CI)."""
    world = await make()
    for method in ("GET", "HEAD", "GET", "HEAD", "HEAD"):
        resp = await world.pool.request(method, head(method, "/late-end"), None)
        body = b"" if method == "HEAD" else b"{}"
        assert (resp.status, await resp.read_all()) == (200, body)
        resp.release()
    # A streamed body cannot be sent twice: no retry on another stream hides a refusal.
    post = head("POST", "/late-end", "Content-Length: 2", "Content-Type: application/json")

    async def streamed() -> AsyncIterator[bytes]:
        yield b"{}"

    for _ in range(2):
        resp = await world.pool.request("POST", post, streamed())
        assert (resp.status, await resp.read_all()) == (200, b"{}")
        resp.release()
    assert world.pool.idle_count == 1  # one tunnel stream for all of them
    assert len(world.backend.requests) == 7  # none refused and sent again
    assert world.backend.bodies[-2:] == [b"{}", b"{}"]
    # The old streams' ends come later and are dropped; the stream is still in step.
    await asyncio.sleep(0.3)
    (conn,) = world.h2pool.connections
    assert conn.relays == {}
    resp = await world.pool.request("GET", head("GET", "/api"), None)
    assert (resp.status, await resp.read_all()) == (200, b"{}")
    resp.release()


async def test_bodies_content_length_and_chunked(make: Any) -> None:
    world = await make()
    data = b"x" * 300_000
    resp = await world.pool.request(
        "POST", head("POST", "/echo", f"Content-Length: {len(data)}"), data
    )
    assert resp.status == 200
    assert await resp.read_all() == data  # answered chunked (no length): intact
    resp.release()

    class Pieces:
        def __init__(self) -> None:
            self.parts = [b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]

        def __aiter__(self) -> Pieces:
            return self

        async def __anext__(self) -> bytes:
            if not self.parts:
                raise StopAsyncIteration
            return self.parts.pop(0)

    resp = await world.pool.request(
        "POST", head("POST", "/echo", "Transfer-Encoding: chunked"), Pieces()
    )
    assert await resp.read_all() == b"hello world"
    resp.release()
    assert world.backend.connections == 1
    assert not any(n == b"transfer-encoding" for n, _ in world.backend.requests[-1])


async def test_head_answers_have_no_body(make: Any) -> None:
    world = await make()
    resp = await world.pool.request("HEAD", head("HEAD", "/head"), None)
    assert resp.status == 200 and (b"Content-Length", b"10") in resp.headers
    assert await resp.read_all() == b""
    resp.release()
    resp = await world.pool.request("GET", head("GET", "/api"), None)
    assert await resp.read_all() == b"{}"  # the stream is still in step


async def test_max_concurrent_streams_opens_more_connections(make: Any) -> None:
    world = await make(max_streams=2)
    answers = [await world.pool.request("GET", head("GET", f"/watch{i}"), None) for i in range(5)]
    assert [a.status for a in answers] == [200] * 5
    assert world.backend.connections == 3
    sizes = sorted(len(s.open_streams) for s in world.backend.servers)
    assert sizes == [1, 2, 2]
    # An event on each watch reaches its own reader.
    for server in world.backend.servers:
        for sid in server.open_streams:
            server.event(sid, b'{"path": "%s"}\n' % server.heads[sid][b":path"])
    for i, answer in enumerate(answers):
        assert await answer.read_chunk() == b'{"path": "/watch%d"}\n' % i
    for answer in answers:
        answer.end_early()
    await asyncio.sleep(0.1)
    assert all(not s.open_streams for s in world.backend.servers)  # reset upstream too


async def test_a_slow_reader_holds_back_only_its_own_stream(make: Any) -> None:
    world = await make()
    slow = await world.pool.request("GET", head("GET", "/watch-slow"), None)
    fast = await world.pool.request("GET", head("GET", "/watch-fast"), None)
    (server,) = world.backend.servers
    by_path = {h[b":path"]: sid for sid, h in server.heads.items()}
    big = b"y" * 60_000 + b"\n"
    for _ in range(40):  # 2.4 MB that nobody reads
        server.event(by_path[b"/watch-slow"], big)
    await asyncio.sleep(0.3)
    held = sum(len(p) for p in server.held.get(by_path[b"/watch-slow"], []))
    assert held > 1_000_000  # the server is held back on that stream...
    for i in range(20):  # ...while the other stream flows
        server.event(by_path[b"/watch-fast"], b"event %d\n" % i)
        got = b""
        while not got.endswith(b"\n"):
            got += await asyncio.wait_for(fast.read_chunk(), 5)
        assert got == b"event %d\n" % i
    # the slow reader then gets everything, in order
    total = 0
    while total < 40 * len(big):
        piece = await asyncio.wait_for(slow.read_chunk(), 5)
        assert set(piece) <= set(big)
        total += len(piece)
    assert total == 40 * len(big)


async def test_a_reset_before_the_answer_is_a_502(make: Any) -> None:
    world = await make()
    resp = await world.pool.request("GET", head("GET", "/reset"), None)
    assert resp.status == 502
    body = await resp.read_all()
    assert b'"code": 502' in body
    resp.release()
    resp = await world.pool.request("GET", head("GET", "/api"), None)
    assert resp.status == 200  # a new tunnel stream, the same connection
    assert world.backend.connections == 1


async def test_an_upgrade_goes_over_a_connection_of_its_own(make: Any) -> None:
    world = await make()
    upgrade = head("GET", "/exec", "Connection: Upgrade", "Upgrade: websocket")
    resp = await world.pool.request("GET", upgrade, None, upgrade=True)
    assert resp.status == 200  # the HTTP/1.1 side of the test server answers
    assert world.fallbacks == [upgrade]
    assert world.backend.http1 == [upgrade]


async def test_a_server_without_h2_is_refused_by_the_pool(make: Any) -> None:
    world = await make(offer_h2=False)
    with pytest.raises(h2upstream.NoHttp2):
        await h2upstream.H2Pool(
            Upstream(
                "127.0.0.1",
                world.backend.port,
                None,
                "127.0.0.1",
                ssl_h2=_h2_context(world),
            )
        ).connection()


def _h2_context(world: World) -> ssl.SSLContext:
    del world
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


# -- the agent's own requests (``Fetch``: its reports' probes, lists and watches) ----------


def _own(world: World, path: str) -> list[tuple[bytes, bytes]]:
    return h2upstream.request_headers(
        world.h2pool.upstream, path, [("User-Agent", "herdgate-agent/test"), ("Accept", "x")]
    )


async def test_the_agents_own_requests_go_on_the_pool_beside_relayed_ones(make: Any) -> None:
    world = await make()
    world.h2pool.stats = AgentStats()
    relayed = await world.pool.request("GET", head("GET", "/api"), None)
    assert relayed.status == 200
    await relayed.read_all()
    relayed.release()
    fetch = h2upstream.Fetch()
    assert await fetch.open(world.h2pool, _own(world, "/version?x=1")) == 200
    assert await fetch.read() == b"{}"
    fetch.close()
    assert world.backend.connections == 1
    assert world.backend.requests[-1] == [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", f"127.0.0.1:{world.backend.port}".encode()),
        (b":path", b"/version?x=1"),
        (b"user-agent", b"herdgate-agent/test"),
        (b"accept", b"x"),
    ]
    stats = world.h2pool.stats
    assert stats.h2_streams == 2 and stats.h2_connections == 1
    assert stats.bytes_from_apiserver >= 4


async def test_a_fetch_reads_a_watch_past_its_window_and_closing_resets_it(make: Any) -> None:
    world = await make()
    fetch = h2upstream.Fetch()
    assert await fetch.open(world.h2pool, _own(world, "/watch-own")) == 200
    (server,) = world.backend.servers
    sid = next(sid for sid, h in server.heads.items() if h[b":path"] == b"/watch-own")
    big = b"z" * 60_000 + b"\n"
    for _ in range(20):  # well past the stream's window: read, the window is given back
        server.event(sid, big)
    total = 0
    body = fetch.chunks()
    while total < 20 * len(big):
        piece = await asyncio.wait_for(body.__anext__(), 5)
        assert set(piece) <= set(big)
        total += len(piece)
    assert total == 20 * len(big)
    fetch.close()
    await asyncio.sleep(0.1)
    assert sid not in server.open_streams  # reset on the server


async def test_a_reset_fetch_fails_with_oserror(make: Any) -> None:
    world = await make()
    fetch = h2upstream.Fetch()
    with pytest.raises(OSError, match="reset"):
        await fetch.open(world.h2pool, _own(world, "/reset"))
    fetch = h2upstream.Fetch()  # the connection serves on
    assert await fetch.open(world.h2pool, _own(world, "/api")) == 200
    assert await fetch.read() == b"{}"


@pytest.mark.timeout(20)
async def test_a_finished_dial_not_yet_cleared_is_not_waited_for_in_a_spin() -> None:
    """A dial has ended (refused: the API server is down) and its dialler has not yet
    run again to clear it when another caller asks for a connection: that caller dials
    anew and gets the failure. (It awaited the finished dial, which does not yield, in a
    loop: the agent's event loop spun for ever while its API server was down.)"""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    pool = h2upstream.H2Pool(Upstream("127.0.0.1", 9, None, "127.0.0.1", ssl_h2=ctx))
    ended: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    ended.set_exception(OSError("connection refused"))
    ended.exception()
    pool._dialing = ended
    with pytest.raises(OSError):
        await asyncio.wait_for(pool.connection(), 10)
    assert pool._dialing is None


@pytest.mark.timeout(20)
async def test_a_dial_whose_callers_were_all_cancelled_has_its_failure_retrieved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agent stops while a dial to an unreachable API server is under way: its only
    caller is cancelled, then the dial fails. Nobody awaits it any more; its failure is
    retrieved by the pool, not reported as "Task exception was never retrieved"."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    started = asyncio.Event()

    async def refused_later(*args: object, **kwargs: object) -> None:
        started.set()
        await asyncio.sleep(0.05)
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")

    monkeypatch.setattr(h2upstream.tls, "connect", refused_later)
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    pool = h2upstream.H2Pool(Upstream("127.0.0.1", 9, None, "127.0.0.1", ssl_h2=ctx))
    caller = asyncio.create_task(pool.connection())
    await started.wait()
    dialing = pool._dialing
    assert dialing is not None
    caller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await caller
    await asyncio.wait([dialing])  # (which does not retrieve its failure)
    assert dialing.done() and not dialing.cancelled()
    del dialing, caller, pool
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert [c for c in reported if "never retrieved" in str(c.get("message"))] == []
