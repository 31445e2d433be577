"""A tunnel whose peer stops reading: bounded by the send buffer, closed when it is
plainly not reading (twice the buffer plus slack queued, or no progress for
``send_timeout_s``), and its memory let go."""

from __future__ import annotations

import asyncio

import pytest

from tunnel import frames
from tunnel.errors import SessionClosed
from tunnel.frames import ErrorCode
from tunnel.protocol import Limits, Side
from tunnel.session import SEND_SLACK_BYTES, Session
from tunnel.streams import MIN_WRITE_BYTES
from tunnel.transport import MemoryTransport, Parts

HUGE = Limits(window=2**31 - 1)
BUFFER = 256 * 1024


class Stallable(MemoryTransport):
    """A MemoryTransport that, once ``stalled``, takes nothing more (a peer that does
    not read: the socket's buffers are full)."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False
        self._never: asyncio.Future[None] | None = None

    def try_send_now(self, parts: Parts) -> bool:
        return False if self.stalled else super().try_send_now(parts)

    async def send(self, parts: Parts) -> None:
        if self.stalled:
            self._never = asyncio.get_running_loop().create_future()
            await self._never
        await super().send(parts)


async def stalled_pair(**kw: float) -> tuple[Session, Session, Stallable]:
    a, b = Stallable(), Stallable()
    a.peer, b.peer = b, a
    agent = Session(a, Side.CLIENT, limits=HUGE, name="agent", on_stream=lambda s: None)
    gateway = Session(b, Side.SERVER, name="gateway", send_buffer=BUFFER, **kw)  # type: ignore[arg-type]
    await asyncio.gather(agent.handshake(), gateway.handshake())
    agent.start()
    gateway.start()
    b.stalled = True
    return agent, gateway, b


async def test_writers_wait_once_the_send_buffer_is_full() -> None:
    agent, gateway, _ = await stalled_pair()
    stream = gateway.open_stream()
    writer = asyncio.create_task(stream.write(b"x" * (8 * 1024 * 1024)))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not writer.done()
    assert gateway._unsent <= BUFFER + MIN_WRITE_BYTES + 1024
    assert not stream.can_write_now(1)
    writer.cancel()
    await gateway.close()
    await agent.close()


async def test_a_peer_that_takes_nothing_for_send_timeout_is_closed() -> None:
    agent, gateway, _ = await stalled_pair(send_timeout_s=0.2)
    stream = gateway.open_stream()
    with pytest.raises(SessionClosed):
        await stream.write(b"x" * (4 * 1024 * 1024))
    closed = await gateway.wait_closed()
    assert closed.code is ErrorCode.TIMEOUT
    assert gateway._unsent == 0 and gateway._pending == []
    await agent.close()


async def test_what_cannot_wait_beyond_twice_the_buffer_closes_the_tunnel() -> None:
    """PINGs from a peer that does not read: their answers cannot wait for room."""
    agent, gateway, _ = await stalled_pair()
    ping = frames.encode_ping(b"12345678")
    sent = 0
    while not gateway.is_closed and sent < 10 * (2 * BUFFER + SEND_SLACK_BYTES):
        gateway._received(ping * 1000)
        sent += len(ping) * 1000
        await asyncio.sleep(0)
    closed = await gateway.wait_closed()
    assert closed.code is ErrorCode.FLOW_CONTROL_ERROR
    assert sent < 2 * (2 * BUFFER + SEND_SLACK_BYTES)
    await agent.close()


async def test_a_writer_waiting_for_room_fails_when_the_tunnel_closes() -> None:
    agent, gateway, _ = await stalled_pair()
    stream = gateway.open_stream()
    writer = asyncio.create_task(stream.write(b"x" * (2 * 1024 * 1024)))
    for _ in range(20):
        await asyncio.sleep(0)
    await gateway.close()
    with pytest.raises(SessionClosed):
        await writer
    await agent.close()


async def test_a_writer_task_runs_only_while_something_waits_for_the_transport() -> None:
    """An idle tunnel holds no writer task (thousands of idle tunnels, thousands of
    tasks otherwise); one starts when the transport cannot take a write at once, sends
    everything in order, and ends once nothing waits."""
    agent, gateway, transport = await stalled_pair()
    assert gateway._writer_task is None and agent._writer_task is None
    stream = gateway.open_stream()
    await stream.write(b"a" * 1000)
    for _ in range(5):
        await asyncio.sleep(0)
    assert gateway._writer_task is not None and not gateway._writer_task.done()
    await stream.write(b"b" * 1000)
    transport.stalled = False
    assert transport._never is not None
    transport._never.set_result(None)
    for _ in range(20):
        await asyncio.sleep(0)
    assert gateway._writer_task is None and gateway._pending == [] and gateway._unsent == 0
    received = bytearray()
    while len(received) < 2000:
        received += await agent._streams[stream.id].read()
    assert received == b"a" * 1000 + b"b" * 1000
    # Straight to the transport again: no task for a write it can take.
    await stream.write(b"c")
    await asyncio.sleep(0)
    assert gateway._writer_task is None
    await gateway.close()
    await agent.close()
