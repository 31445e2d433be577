"""Protocol-level test clients: a SPDY/3.1 client (over TCP or inside WebSocket messages)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from standin import spdy

TIMEOUT = 5.0


@dataclass
class ClientStream:
    id: int
    data: bytearray = field(default_factory=bytearray)
    fin: bool = False
    reset: int | None = None
    replied: bool = False


class SpdyTestClient:
    """A SPDY client driven by hand: open streams, send data, inspect every frame received."""

    def __init__(self, send_bytes: Callable[[bytes], Awaitable[None]]) -> None:
        self._send_bytes = send_bytes
        self.encoder = spdy.FrameEncoder()
        self.decoder = spdy.FrameDecoder()
        self.frames: list[spdy.Frame] = []
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.eof = False
        self._changed = asyncio.Condition()

    async def feed(self, data: bytes) -> None:
        new = self.decoder.decode(data)
        for frame in new:
            self.frames.append(frame)
            match frame:
                case spdy.SynReplyFrame(stream_id=sid, fin=fin):
                    self.streams[sid].replied = True
                    self.streams[sid].fin |= fin
                case spdy.DataFrame(stream_id=sid, data=payload, fin=fin):
                    stream = self.streams[sid]
                    stream.data += payload
                    stream.fin |= fin
                case spdy.RstStreamFrame(stream_id=sid, status=status):
                    self.streams[sid].reset = status
        async with self._changed:
            self._changed.notify_all()

    async def feed_eof(self) -> None:
        self.eof = True
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate() or self.eof)
        assert predicate(), f"connection ended first; frames: {self.frames}"

    async def send(self, frame: spdy.Frame) -> None:
        await self._send_bytes(self.encoder.encode(frame))

    async def open(self, headers: dict[str, str], *, wait: bool = True, fin: bool = False) -> int:
        sid = self.next_id
        self.next_id += 2
        self.streams[sid] = ClientStream(sid)
        await self.send(spdy.SynStreamFrame(sid, tuple(headers.items()), fin=fin))
        if wait:
            await self.wait_for(
                lambda: self.streams[sid].replied or self.streams[sid].reset is not None
            )
        return sid

    async def write(self, sid: int, data: bytes, *, fin: bool = False) -> None:
        await self.send(spdy.DataFrame(sid, data, fin=fin))

    async def read_all(self, sid: int, timeout: float = TIMEOUT) -> bytes:
        """Everything received on ``sid`` up to its FIN (or reset)."""
        stream = self.streams[sid]
        await self.wait_for(lambda: stream.fin or stream.reset is not None, timeout)
        return bytes(stream.data)

    def goaway(self) -> spdy.GoAwayFrame | None:
        return next((f for f in self.frames if isinstance(f, spdy.GoAwayFrame)), None)


@dataclass
class RawSpdyConnection:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    client: SpdyTestClient | None
    writer: asyncio.StreamWriter
    reader_task: asyncio.Task[None] | None

    async def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def spdy_connect(
    port: int,
    path: str,
    protocols: list[str] | None,
    *,
    method: str = "POST",
    upgrade: str = "SPDY/3.1",
    connection: str = "Upgrade",
) -> RawSpdyConnection:
    """Send a SPDY upgrade request over plain TCP; on 101 start a :class:`SpdyTestClient`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Length: 0"]
    if connection:
        lines.append(f"Connection: {connection}")
    if upgrade:
        lines.append(f"Upgrade: {upgrade}")
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols or []]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, list[str]] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    if status != 101:
        length = int(headers.get("content-length", ["0"])[0])
        async with asyncio.timeout(TIMEOUT):
            body = await reader.readexactly(length)
        return RawSpdyConnection(status, headers, body, None, writer, None)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    client = SpdyTestClient(send)

    async def pump() -> None:
        try:
            while data := await reader.read(65536):
                await client.feed(data)
        except (ConnectionError, OSError):
            pass
        finally:
            await client.feed_eof()

    task = asyncio.ensure_future(pump())
    return RawSpdyConnection(status, headers, b"", client, writer, task)
