"""HTTP/1.1 over tunnel streams: keep-alive reuse, streaming bodies, retries, upgrades."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.clusters.upstream import StreamPool, UpstreamError
from tunnel.errors import TunnelError
from tunnel.protocol import Side
from tunnel.session import Session
from tunnel.streams import TunnelStream
from tunnel.transport import MemoryTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
HEAD = b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n"


class FakeApiServer:
    """Agent side: answers each request on a stream with the next scripted reply."""

    def __init__(self, replies: list[list[bytes]]) -> None:
        self.replies = replies
        self.streams: list[TunnelStream] = []
        self.requests: list[bytes] = []
        self.session: Session | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def on_stream(self, stream: TunnelStream) -> None:
        self.streams.append(stream)
        self.tasks.append(asyncio.get_running_loop().create_task(self.serve(stream)))

    async def serve(self, stream: TunnelStream) -> None:
        with contextlib.suppress(TunnelError):  # the gateway reset the stream
            await self._serve(stream)

    async def _serve(self, stream: TunnelStream) -> None:
        assert self.session is not None
        self.session.accept(stream)
        while self.replies:
            data = await stream.read()
            if not data:
                return
            self.requests.append(data)
            for part in self.replies.pop(0):
                if part == b"<close>":
                    await stream.write_eof()
                    return
                await stream.write(part)
                await asyncio.sleep(0)


async def make(replies: list[list[bytes]]) -> tuple[StreamPool, FakeApiServer]:
    server = FakeApiServer(replies)
    a, b = MemoryTransport.pair()
    agent = Session(a, Side.CLIENT, on_stream=server.on_stream)
    gateway = Session(b, Side.SERVER)
    server.session = agent
    await asyncio.gather(agent.handshake(), gateway.handshake())
    agent.start()
    gateway.start()
    return StreamPool(gateway), server


async def test_keep_alive_reuses_the_stream() -> None:
    pool, server = await make([[OK], [OK], [OK]])
    for _ in range(3):
        resp = await pool.request("GET", HEAD, None)
        assert (resp.status, await resp.read_all()) == (200, b"{}")
        resp.release()
    assert len(server.streams) == 1
    assert pool.idle_count == 1


async def test_long_running_requests_keep_streams_of_their_own() -> None:
    """A stream that carried a watch is reused for watches only, and one that carried a
    list for short requests only: the agent chose each stream's path to the API server
    (HTTP/2 or byte for byte) by its first request."""
    pool, server = await make([[OK]] * 6)
    for long_running in (False, True, False, True, True, False):
        resp = await pool.request("GET", HEAD, None, long_running=long_running)
        assert (resp.status, await resp.read_all()) == (200, b"{}")
        resp.release()
    assert len(server.streams) == 2
    assert pool.idle_count == 2
    short, long = server.streams
    assert len(server.requests) == 6
    taken, reused = pool.take(False)
    assert (taken.id, reused) == (short.id, True)
    taken, reused = pool.take(True)
    assert (taken.id, reused) == (long.id, True)


async def test_connection_close_is_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    pool, server = await make([[closing], [OK]])
    for _ in range(2):
        resp = await pool.request("GET", HEAD, None)
        await resp.read_all()
        resp.release()
    assert len(server.streams) == 2


async def test_chunked_body_streams_piece_by_piece() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    pool, _ = await make([[head, b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]])
    resp = await pool.request("GET", HEAD, None)
    assert resp.content_length is None and not resp.complete
    chunks = [c async for c in resp.iter_chunks()]
    assert b"".join(chunks) == b"hello world" and len(chunks) >= 2
    resp.release()
    assert pool.idle_count == 1


async def test_stale_idle_connection_is_retried_once() -> None:
    pool, server = await make([[OK], [b"<close>"], [OK]])
    resp = await pool.request("GET", HEAD, None)
    await resp.read_all()
    resp.release()
    # The "API server" closes the reused connection without answering: retried on a new one.
    resp = await pool.request("GET", HEAD, None)
    assert (resp.status, await resp.read_all()) == (200, b"{}")
    assert len(server.streams) == 2


async def test_failure_on_a_new_connection_is_reported() -> None:
    pool, _ = await make([[b"<close>"]])
    with pytest.raises(UpstreamError):
        await pool.request("GET", HEAD, None)


async def test_malformed_response_is_an_upstream_error() -> None:
    pool, _ = await make([[b"NOT HTTP AT ALL\r\n\r\n"]])
    with pytest.raises(UpstreamError):
        await pool.request("GET", HEAD, None)


async def test_upgrade_returns_the_bytes_after_the_head() -> None:
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n\r\n"
    )
    pool, _ = await make([[switching + b"\x80\x03frames"]])
    resp = await pool.request("GET", b"GET /exec HTTP/1.1\r\n\r\n", None, upgrade=True)
    assert resp.status == 101 and resp.upgraded
    assert resp.upgraded_tail == b"\x80\x03frames"


async def test_an_upgrade_takes_an_idle_stream_and_never_puts_it_back() -> None:
    """kubectl reads the pod, then asks for exec: the upgrade goes on the stream the read
    left idle (no new connection for the agent to dial while the user waits); switched,
    that stream is never reused, and a refused upgrade leaves its stream reusable."""
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}"
    exec_head = b"GET /exec HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    pool, server = await make([[OK], [refused], [switching], [OK]])
    resp = await pool.request("GET", HEAD, None)
    await resp.read_all()
    resp.release()
    resp = await pool.request("GET", exec_head, None, upgrade=True)
    assert resp.status == 403 and not resp.upgraded
    await resp.read_all()
    resp.release()
    assert (len(server.streams), pool.idle_count) == (1, 1)
    resp = await pool.request("GET", exec_head, None, upgrade=True)
    assert resp.status == 101 and resp.upgraded
    assert (len(server.streams), pool.idle_count) == (1, 0)
    assert server.requests == [HEAD, exec_head, exec_head]
    resp.release()
    assert pool.idle_count == 0
    resp = await pool.request("GET", HEAD, None)  # the next request: a new stream
    assert len(server.streams) == 2
    resp.release()


async def test_an_upgrade_on_a_stale_idle_stream_is_retried_on_a_new_one() -> None:
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n\r\n"
    )
    pool, server = await make([[OK], [b"<close>"], [switching]])
    resp = await pool.request("GET", HEAD, None)
    await resp.read_all()
    resp.release()
    resp = await pool.request("GET", b"GET /exec HTTP/1.1\r\n\r\n", None, upgrade=True)
    assert resp.status == 101 and resp.upgraded
    assert len(server.streams) == 2


async def test_an_api_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.clusters import upstream

    monkeypatch.setattr(upstream, "RESPONSE_HEAD_TIMEOUT_S", 0.2)
    monkeypatch.setattr(upstream, "HEAD_SWEEP_S", 0.05)
    pool, _ = await make([[b"HTTP/1.1 200 OK\r\n"]])  # a head that never ends
    with pytest.raises(UpstreamError, match="did not answer in time"):
        await asyncio.wait_for(pool.request("GET", HEAD, None), 3)
    assert not pool._waiting  # nothing left for the sweep
    # An answer in time is unaffected, and leaves nothing behind either.
    pool2, _ = await make([[OK]])
    response = await pool2.request("GET", HEAD, None)
    assert response.status == 200 and not pool2._waiting


async def test_a_body_with_a_length_is_passed_on_as_it_arrives() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    pool, server = await make([[head + b"abc", b"defg", b"hij"], [OK]])
    resp = await pool.request("GET", HEAD, None)
    assert resp.content_length == 10
    chunks = [chunk async for chunk in resp.iter_chunks()]
    assert b"".join(chunks) == b"abcdefghij"
    assert chunks[0] == b"abc"  # the part that came with the head
    assert resp.complete
    resp.release()
    resp = await pool.request("GET", HEAD, None)  # the stream is reused
    assert await resp.read_all() == b"{}"
    assert len(server.streams) == 1


async def test_bytes_after_a_counted_body_are_dropped_and_the_stream_not_reused() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
    pool, server = await make([[head, b"abcdEXTRA"], [OK]])
    resp = await pool.request("GET", HEAD, None)
    assert await resp.read_all() == b"abcd"
    resp.release()
    assert pool.idle_count == 0
    resp = await pool.request("GET", HEAD, None)
    assert await resp.read_all() == b"{}"
    assert len(server.streams) == 2


async def test_a_counted_body_cut_short_is_an_upstream_error() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    pool, _ = await make([[head, b"abc", b"<close>"]])
    resp = await pool.request("GET", HEAD, None)
    with pytest.raises(UpstreamError, match="mid-response"):
        await resp.read_all()


@pytest.mark.parametrize(
    "reply",
    [
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"],
    ],
    ids=["counted", "chunked"],
)
async def test_an_answer_released_before_its_end_never_puts_its_stream_back(
    reply: list[bytes],
) -> None:
    """Issue 15: an upstream connection that may be out of step (its answer not read to
    the end: the client left, the request failed) is never reused; the next request
    gets a new stream, and the rest of the old answer never reaches it."""
    pool, server = await make([reply, [OK]])
    resp = await pool.request("GET", HEAD, None)
    assert await resp.read_chunk() == b"abc"
    assert not resp.complete
    resp.release()
    assert pool.idle_count == 0
    resp = await pool.request("GET", HEAD, None)
    assert (resp.status, await resp.read_all()) == (200, b"{}")
    assert len(server.streams) == 2


CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _parked_body(resp: object) -> tuple[bytes, bool]:
    """Park the answer and take its body as ``ParkedAnswer`` does (``take_parsed``, then
    ``feed`` with what arrives on the stream)."""
    from gateway.clusters.upstream import Response

    assert isinstance(resp, Response)
    resp.park()
    body = b"".join(resp.take_parsed())
    while not resp.complete:
        data = await asyncio.wait_for(resp.stream.read(), 5)
        if not data:
            break
        body += b"".join(resp.feed(data))
    return body, resp.complete


async def test_a_parked_chunked_answer_is_decoded_without_llhttp_and_the_stream_reused() -> None:
    """A watch's head and first event in one piece, the size line of the next cut in two:
    once parked, the chunked decoder (not llhttp's parser) reads the rest, and a clean end
    leaves the stream reusable."""
    watch = [CHUNKED + b'7\r\n{"a":1}\r\n1', b'0\r\n{"b":2222222222}\r\n', b"0\r\n\r\n"]
    pool, server = await make([watch, [OK]])
    resp = await pool.request("GET", HEAD, None)
    assert resp.status == 200
    body, complete = await _parked_body(resp)
    assert resp._decoder is not None and resp._parser is None  # llhttp's parser let go
    assert (body, complete) == (b'{"a":1}{"b":2222222222}', True)
    resp.release()
    again = await pool.request("GET", HEAD, None)
    assert (again.status, await again.read_all()) == (200, b"{}")
    assert len(server.streams) == 1


async def test_parking_keeps_llhttp_where_the_decoder_would_read_otherwise() -> None:
    """A chunk extension with a quoted string (llhttp takes it, the decoder does not): the
    answer stays with llhttp, and is read all the same."""
    watch = [CHUNKED + b'3;q="x y"\r\nabc\r\n', b"3\r\ndef\r\n0\r\n\r\n"]
    pool, _ = await make([watch])
    resp = await pool.request("GET", HEAD, None)
    body, complete = await _parked_body(resp)
    assert resp._decoder is None and resp._parser is not None
    assert (body, complete) == (b"abcdef", True)


async def test_a_malformed_chunk_after_parking_is_an_upstream_error() -> None:
    pool, _ = await make([[CHUNKED + b"3\r\nabc\r\n", b"3\r\ndefX\r\n"]])
    resp = await pool.request("GET", HEAD, None)
    with pytest.raises(UpstreamError, match="malformed"):
        await _parked_body(resp)
    assert resp._decoder is not None
