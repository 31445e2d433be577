"""IntoStream: a transport's bytes into a tunnel stream, pausing the transport without credit."""

from __future__ import annotations

import asyncio
from typing import cast

from tests.component.test_session import make_pair
from tunnel.protocol import Limits
from tunnel.pump import IntoStream
from tunnel.streams import TunnelStream


class FakeTransport:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def is_closing(self) -> bool:
        return False


async def test_pauses_without_credit_and_resumes_once_sent() -> None:
    opened: list[TunnelStream] = []
    _client, server = await make_pair(on_stream=opened.append, client_limits=Limits(window=4096))
    stream = server.open_stream()
    transport = FakeTransport()
    failures: list[str] = []
    eofs: list[str] = []
    pump = IntoStream(stream, on_failure=lambda: failures.append("x"),
                      on_eof_sent=lambda: eofs.append("eof"))  # fmt: skip
    pump.transport = cast(asyncio.Transport, transport)
    pump.feed(b"a" * 4096)  # exactly the credit: straight out
    assert transport.paused == 0
    pump.feed(b"b" * 1000)  # no credit left: held, reading paused
    assert transport.paused == 1
    pump.feed_eof()
    await asyncio.sleep(0.01)  # the peer sees the stream open
    received = b""
    while chunk := await opened[0].read():  # the reader returns credit as it consumes
        received += chunk
    assert received == b"a" * 4096 + b"b" * 1000
    await asyncio.sleep(0)
    assert eofs == ["eof"] and not failures


async def test_a_reset_stream_reports_failure() -> None:
    opened: list[TunnelStream] = []
    _client, server = await make_pair(on_stream=opened.append)
    stream = server.open_stream()
    failures: list[str] = []
    pump = IntoStream(stream, on_failure=lambda: failures.append("x"))
    stream.reset()
    pump.feed(b"late")
    await asyncio.sleep(0.01)  # reported by the flush that tried to send it
    assert failures == ["x"]


async def test_borrowed_bytes_without_credit_are_copied_before_being_held() -> None:
    opened: list[TunnelStream] = []
    _client, server = await make_pair(on_stream=opened.append, client_limits=Limits(window=4096))
    stream = server.open_stream()
    transport = FakeTransport()
    pump = IntoStream(stream, on_failure=lambda: None)
    pump.transport = cast(asyncio.Transport, transport)
    buffer = bytearray(b"a" * 4096)
    pump.feed_borrowed(memoryview(buffer))  # within credit: out in the call
    buffer[:] = b"b" * 4096
    pump.feed_borrowed(memoryview(buffer)[:1000])  # no credit left: copied and held
    buffer[:] = b"c" * 4096
    assert transport.paused == 1
    pump.feed_eof()
    await asyncio.sleep(0.01)
    received = b""
    while chunk := await opened[0].read():
        received += chunk
    assert received == b"a" * 4096 + b"b" * 1000
