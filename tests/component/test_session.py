"""Two tunnel sessions over an in-memory transport (timer tests on virtual loop time)."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.loop_clock import virtual_time
from tunnel.errors import SessionClosed, StreamReset
from tunnel.frames import ErrorCode
from tunnel.protocol import Limits, Side, TunnelProtocol
from tunnel.session import IDLE_TIMEOUT_S, PING_INTERVAL_S, Session
from tunnel.streams import TunnelStream
from tunnel.transport import MemoryTransport


async def make_pair(on_stream=None, client_limits=None, server_limits=None, **kw):
    a, b = MemoryTransport.pair()
    client = Session(
        a,
        Side.CLIENT,
        limits=client_limits,
        metadata=b"agent",
        on_stream=on_stream,
        name="client",
        **kw,
    )
    server = Session(b, Side.SERVER, limits=server_limits, metadata=b"gw", name="server", **kw)
    got = await asyncio.gather(client.handshake(), server.handshake())
    assert got == [b"gw", b"agent"]
    client.start()
    server.start()
    return client, server


def echo_handler(session_ref):
    tasks = []

    def on_stream(stream: TunnelStream) -> None:
        async def run():
            session_ref[0].accept(stream)
            while chunk := await stream.read():
                await stream.write(chunk)
            await stream.write_eof()

        tasks.append(asyncio.get_running_loop().create_task(run()))

    return on_stream, tasks


async def test_echo_round_trip():
    ref = []
    handler, _ = echo_handler(ref)
    client, server = await make_pair(on_stream=handler)
    ref.append(client)
    stream = server.open_stream(b"echo")
    await stream.write(b"hello")
    await stream.write_eof()
    await stream.wait_accepted()
    out = b""
    while chunk := await stream.read():
        out += chunk
    assert out == b"hello"
    await client.close()
    assert isinstance(await server.wait_closed(), SessionClosed)


async def test_large_transfer_respects_windows():
    ref = []
    handler, _ = echo_handler(ref)
    client, server = await make_pair(
        on_stream=handler, client_limits=Limits(window=8192), server_limits=Limits(window=8192)
    )
    ref.append(client)
    stream = server.open_stream()
    payload = bytes(range(256)) * 4000  # ~1 MB

    async def send():
        await stream.write(payload)
        await stream.write_eof()

    sender = asyncio.create_task(send())
    received = bytearray()
    while chunk := await stream.read():
        received += chunk
    await sender
    assert bytes(received) == payload
    await server.close()


async def test_slow_reader_does_not_block_other_streams():
    opened: list[TunnelStream] = []
    _client, server = await make_pair(on_stream=opened.append, client_limits=Limits(window=4096))
    slow = server.open_stream()
    fast = server.open_stream()
    blocked = asyncio.create_task(slow.write(b"x" * 100_000))
    writer = asyncio.create_task(fast.write(b"y" * 50_000))
    await asyncio.sleep(0.01)
    total = 0
    while total < 50_000:  # would hang if the unread slow stream held the tunnel
        total += len(await opened[1].read())
    await writer
    assert not blocked.done()
    blocked.cancel()
    await server.close()


async def test_reset_reaches_the_other_side():
    opened: list[TunnelStream] = []
    _client, server = await make_pair(on_stream=opened.append)
    stream = server.open_stream()
    await stream.write(b"x")
    await asyncio.sleep(0.01)
    opened[0].reset(ErrorCode.CONNECT_FAILED, "refused")
    with pytest.raises(StreamReset) as info:
        await stream.read()
    assert info.value.code is ErrorCode.CONNECT_FAILED
    with pytest.raises(StreamReset):
        await stream.wait_accepted()
    await server.close()


async def test_session_close_fails_pending_reads_promptly():
    client, server = await make_pair(on_stream=lambda s: None)
    stream = server.open_stream()
    reader = asyncio.create_task(stream.read())
    await asyncio.sleep(0.01)
    await client.close(ErrorCode.NO_ERROR, "bye")
    with pytest.raises(SessionClosed):
        await asyncio.wait_for(reader, 2)
    assert server.is_closed


# (ping interval, idle timeout): short ones, and the defaults (free on virtual time)
KEEPALIVE = [(0.05, 0.2), (PING_INTERVAL_S, IDLE_TIMEOUT_S)]


@pytest.mark.parametrize(("ping_s", "idle_s"), KEEPALIVE)
async def test_keepalive_timeout_closes_a_silent_peer(ping_s, idle_s):
    with virtual_time():
        a, b = MemoryTransport.pair()
        server = Session(b, Side.SERVER, ping_interval_s=ping_s, idle_timeout_s=idle_s)

        async def fake_agent():
            # Complete the handshake, then go silent without ever answering pings.
            proto = TunnelProtocol(Side.CLIENT)
            await a.send(proto.parts_to_send())
            await a.receive()

        await asyncio.gather(server.handshake(), fake_agent())
        server.start()
        closed = await asyncio.wait_for(server.wait_closed(), 10 * idle_s)
        assert closed.code is ErrorCode.TIMEOUT


@pytest.mark.parametrize(("ping_s", "idle_s"), KEEPALIVE)
async def test_pings_keep_an_idle_tunnel_alive(ping_s, idle_s):
    with virtual_time():
        client, server = await make_pair(ping_interval_s=ping_s, idle_timeout_s=idle_s)
        await asyncio.sleep(3 * idle_s)
        assert not client.is_closed and not server.is_closed
        await client.close()


async def test_info_reaches_handler():
    got = []
    a, b = MemoryTransport.pair()
    client = Session(a, Side.CLIENT)
    server = Session(b, Side.SERVER, on_info=got.append)
    await asyncio.gather(client.handshake(), server.handshake())
    client.start()
    server.start()
    client.send_info(b"token-refresh")
    await asyncio.sleep(0.01)
    assert got == [b"token-refresh"]
    await client.close()


async def test_handshake_times_out_against_a_mute_peer():
    with virtual_time():
        _a, b = MemoryTransport.pair()
        server = Session(b, Side.SERVER)
        with pytest.raises(SessionClosed):
            await server.handshake(timeout_s=0.05)


async def test_one_timer_keeps_every_tunnel_of_a_loop_alive(monkeypatch):
    """A timer per session, re-armed whenever the peer's PING moved its deadline, woke an
    idle gateway once per tunnel per interval; one timer per event loop looks at all of
    them, and none is left once the last session is gone."""
    import tunnel.session as session_module

    with virtual_time():
        wakes = [0]
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def counting_call_later(delay, callback, *args, **kwargs):
            if getattr(callback, "__name__", "") in ("_run", "_check_keepalive", "_tick"):
                wakes[0] += 1
            return call_later(delay, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_later", counting_call_later)
        pairs = [await make_pair(ping_interval_s=0.3, idle_timeout_s=1.0) for _ in range(20)]
        await asyncio.sleep(3.0)
        assert not any(c.is_closed or s.is_closed for c, s in pairs)
        # Every 0.15 s (half the ping interval) for 3 s, whatever the number of tunnels;
        # a timer per session woke 40 sessions about 10 times each.
        assert 15 <= wakes[0] <= 25, wakes
        assert len(session_module._KEEPALIVES) == 1
        for client, _ in pairs:
            await client.close()
        await asyncio.sleep(0.5)
        assert session_module._KEEPALIVES == {}


async def test_a_quiet_tunnel_is_looked_at_once_per_ping_interval_not_every_second():
    """The keepalive timer files each session under the grid step of its next PING (a
    timing wheel): a firing looks only at the sessions due then. Looking at every tunnel
    every second cost a gateway with thousands of them a share of its idle CPU."""
    import math

    from tunnel.session import _KEEPALIVES

    with virtual_time():
        pairs = [await make_pair(ping_interval_s=20.0, idle_timeout_s=28.0) for _ in range(5)]
        sessions = [s for pair in pairs for s in pair]
        keepalive = _KEEPALIVES[asyncio.get_running_loop()]
        await asyncio.sleep(1.6)  # the first look: each filed at the step of its PING
        for session in sessions:
            due = math.floor((session._last_rx + 20.0) / keepalive.period)
            assert session._keepalive_slot == due
            assert session in keepalive.slots[due]
        assert keepalive.count == 10 == sum(map(len, keepalive.slots.values()))
        assert len(keepalive.slots) <= 2  # (all started within a step or so)
        # A minute of quiet: PINGs go and are answered, nobody is closed, and each
        # session is filed again, about a ping interval on.
        await asyncio.sleep(60.0)
        assert not any(session.is_closed for session in sessions)
        now = asyncio.get_running_loop().time()
        for session in sessions:  # (a step not begun at the last firing, at most 20 s on)
            step_starts = session._keepalive_slot * keepalive.period
            assert now - keepalive.period < step_starts <= now + 20.0
        for client, _ in pairs:
            await client.close()
        await asyncio.sleep(0.5)
        assert keepalive.count == 0 and keepalive.slots == {} and _KEEPALIVES == {}


async def test_a_sink_gets_bytes_at_once_and_holds_credit_while_backed_up():
    received = []
    backed_up = [True]
    sinks = []

    def on_stream(stream: TunnelStream) -> None:
        ref[0].accept(stream)

        def sink(data: bytes) -> bool:
            received.append(data)
            return not backed_up[0]

        stream.set_sink(sink)
        sinks.append(stream)

    ref = []
    client, server = await make_pair(on_stream=on_stream, client_limits=Limits(window=4096))
    ref.append(client)
    stream = server.open_stream(b"api")
    await stream.write(b"a" * 4096)  # the whole window
    await asyncio.sleep(0.05)
    assert b"".join(received) == b"a" * 4096
    # The sink said it is backed up: no credit went back, so the next write waits.
    blocked = asyncio.ensure_future(stream.write(b"b" * 10))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    backed_up[0] = False
    sinks[0].sink_drained()
    await asyncio.wait_for(blocked, 2)
    await asyncio.sleep(0.05)
    assert b"".join(received).endswith(b"b" * 10)
    # The end still arrives through wait_eof.
    await stream.write_eof()
    await asyncio.wait_for(sinks[0].wait_eof(), 2)
    await client.close()


async def test_the_keepalive_timer_fires_on_whole_wall_clock_seconds():
    # A process's tunnels then wake together once a second (and, through their PINGs,
    # the peer's).
    import time

    from tunnel.session import _KEEPALIVES

    client, _ = await make_pair(ping_interval_s=20.0, idle_timeout_s=28.0)
    loop = asyncio.get_running_loop()
    timer = _KEEPALIVES[loop].timer
    assert timer is not None
    fires_at_wall = time.time() + (timer.when() - loop.time())
    assert abs(fires_at_wall - round(fires_at_wall)) < 0.05
    assert 0.45 <= timer.when() - loop.time() <= 1.55
    await client.close()


async def test_a_turn_with_many_frames_sends_them_in_parts():
    """Small frames wait for the end of the turn, but no more than FLUSH_AT_PARTS of them."""
    from tunnel.session import FLUSH_AT_PARTS

    a, b = MemoryTransport.pair()
    client = Session(a, Side.CLIENT, metadata=b"agent", name="client")
    server = Session(b, Side.SERVER, metadata=b"gw", name="server")
    await asyncio.gather(client.handshake(), server.handshake())
    server.start()
    before = a._inbox.qsize()
    for _ in range(FLUSH_AT_PARTS * 2 + 3):  # one event-loop turn, no awaits
        server.open_stream(b"target")
    assert a._inbox.qsize() - before == 2  # two full batches left at once
    await asyncio.sleep(0)
    assert a._inbox.qsize() - before == 3  # the rest at the end of the turn
    await server.close()


class RefusingTransport(MemoryTransport):
    """Cannot take a write at once while ``refuse`` is set (a full socket buffer)."""

    refuse = False

    def try_send_now(self, parts):
        return False if self.refuse else super().try_send_now(parts)


@pytest.mark.parametrize("refuse", [False, True], ids=["sent-at-once", "queued"])
async def test_borrowed_bytes_may_be_reused_as_soon_as_the_call_returns(refuse):
    """``send_data_borrowed`` either writes the bytes out in the call or keeps a copy."""
    a, server_end = MemoryTransport(), RefusingTransport()
    server_end.peer, a.peer = a, server_end
    opened: list[TunnelStream] = []
    client = Session(a, Side.CLIENT, metadata=b"agent", on_stream=opened.append, name="c")
    server = Session(server_end, Side.SERVER, metadata=b"gw", name="s")
    await asyncio.gather(client.handshake(), server.handshake())
    client.start()
    server.start()
    stream = server.open_stream()
    await asyncio.sleep(0.01)
    buffer = bytearray(b"x" * 20000)
    server_end.refuse = refuse
    stream.write_borrowed_nowait(memoryview(buffer))
    buffer[:] = b"y" * len(buffer)  # the reader's next read reuses the buffer
    server_end.refuse = False
    await stream.write_eof()
    received = b""
    while chunk := await opened[0].read():
        received += chunk
    assert received == b"x" * 20000
    await server.close()
    await client.close()


async def test_a_stream_handler_set_after_construction_gets_the_peers_streams():
    client, server = await make_pair()  # no handler yet: streams would be refused
    opened = []
    client.set_stream_handler(opened.append)
    stream = server.open_stream(b"api")
    await stream.write(b"x")
    while not opened:
        await asyncio.sleep(0.001)
    assert opened[0].target == b"api"
    await client.close()
