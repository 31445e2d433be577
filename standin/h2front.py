"""HTTP/2 in front of the stand-in's aiohttp app (unless ``--http1-only``), as
kube-apiserver has.

aiohttp serves HTTP/1.1 only. The stand-in's port offers ALPN ``h2`` and
``http/1.1``: an ``http/1.1`` connection is handed to aiohttp as before; an ``h2``
connection is served with the ``h2`` library, each stream forwarded as one HTTP/1.1
request over a private unix socket to the same app (``UnixSite``), its answer streamed
back piece by piece (watches arrive event by event).

What the app sees is what it would over HTTP/1.1: names canonicalised as Go's server
does (``impersonate-user`` -> ``Impersonate-User``), ``:authority`` as ``Host``, the
fields in the order received. The client's certificate and address travel in
``FRONT_PEERCERT`` and ``FRONT_REMOTE``, which the app believes only on the unix socket
and removes before anything else reads the request (``StandIn.middleware``); the front
removes any a client sent. ``connections`` counts the HTTP/2 connections served (tests
count how many the agent opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httptools
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

log = logging.getLogger(__name__)

FRONT_PEERCERT = "X-Standin-Front-Peercert"
FRONT_REMOTE = "X-Standin-Front-Remote"
FRONT_PREFIX = b"x-standin-front-"
MAX_STREAMS = 1000
"""MAX_CONCURRENT_STREAMS announced (kube-apiserver's default); tests may set another with
``HERDGATE_STANDIN_H2_MAX_STREAMS``."""
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def canonical(name: bytes) -> bytes:
    return b"-".join(part[:1].upper() + part[1:].lower() for part in name.split(b"-"))


class Stats:
    """Written to ``path`` (``h2.json`` in ``--dir``) as it changes, for tests."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.connections = 0
        """HTTP/2 connections accepted so far."""
        self.open = 0
        """HTTP/2 connections open now."""
        self.streams = 0
        """HTTP/2 streams served so far."""
        self.active = 0
        """HTTP/2 streams being served now."""

    def save(self) -> None:
        if self.path is not None:
            data = {
                "connections": self.connections,
                "open": self.open,
                "streams": self.streams,
                "active": self.active,
            }
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)


class _Stream:
    def __init__(self) -> None:
        self.body: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.window = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class _H2Server(asyncio.Protocol):
    def __init__(self, unix_path: str, stats: Stats) -> None:
        self.unix_path = unix_path
        self.stats = stats
        self.h2 = H2Connection(
            H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.peercert: dict[str, Any] | None = None
        self.remote = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.stats.connections += 1
        self.stats.open += 1
        self.stats.save()
        self.peercert = transport.get_extra_info("peercert") or None
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self.h2.initiate_connection()
        limit = int(os.environ.get("HERDGATE_STANDIN_H2_MAX_STREAMS") or MAX_STREAMS)
        self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error as exc:
            log.info("HTTP/2 protocol error from a client: %s", exc)
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                new = _Stream()
                self.streams[event.stream_id] = new
                self.stats.streams += 1
                self.stats.active += 1
                self.stats.save()
                ended = event.stream_ended is not None
                new.task = asyncio.get_running_loop().create_task(
                    self._serve(event.stream_id, event.headers, ended, new)
                )
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None and event.data:
                    stream.body.put_nowait(event.data)
                with contextlib.suppress(H2Error, KeyError):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_ended is not None and stream is not None:
                    stream.body.put_nowait(None)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body.put_nowait(None)
            elif isinstance(event, StreamReset):
                gone = self.streams.pop(event.stream_id, None)
                if gone is not None and gone.task is not None:
                    gone.task.cancel()
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                for waiting in self.streams.values():
                    waiting.window.set()
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.open -= 1
        self.stats.save()
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()

    async def _serve(
        self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool, stream: _Stream
    ) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(self.unix_path)
            head, chunked = self._head(headers, ended)
            writer.write(head)
            sending = asyncio.get_running_loop().create_task(
                self._send_body(writer, stream, chunked)
            )
            try:
                await self._answer(sid, reader, stream, head.startswith(b"HEAD "))
            finally:
                sending.cancel()
        except asyncio.CancelledError:
            with contextlib.suppress(H2Error, KeyError):
                self.h2.reset_stream(sid, ErrorCodes.CANCEL)
                self.flush()
            raise
        except (OSError, H2Error, httptools.HttpParserError) as exc:
            log.info("HTTP/2 stream %d failed: %s", sid, exc)
            with contextlib.suppress(H2Error, KeyError):
                self.h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
                self.flush()
        finally:
            self.streams.pop(sid, None)
            self.stats.active -= 1
            self.stats.save()
            if writer is not None:
                writer.close()

    def _head(self, headers: list[tuple[bytes, bytes]], ended: bool) -> tuple[bytes, bool]:
        pseudo: dict[bytes, bytes] = {}
        fields: list[bytes] = []
        length = False
        for name, value in headers:
            if name.startswith(b":"):
                pseudo[name] = value
                continue
            if name.startswith(FRONT_PREFIX) or name in _HOP_BY_HOP or name == b"host":
                continue
            if name == b"content-length":
                length = True
            fields += [canonical(name), b": ", value, b"\r\n"]
        authority = pseudo.get(b":authority", b"")
        fields[:0] = [b"Host: ", authority, b"\r\n"]
        chunked = False
        if not length:
            if ended:
                if pseudo.get(b":method") in (b"POST", b"PUT", b"PATCH"):
                    fields.append(b"Content-Length: 0\r\n")
            else:
                fields.append(b"Transfer-Encoding: chunked\r\n")
                chunked = True
        cert = json.dumps(self.peercert).encode() if self.peercert else b""
        fields += [FRONT_REMOTE.encode(), b": ", self.remote.encode(), b"\r\n"]
        if cert:
            fields += [FRONT_PEERCERT.encode(), b": ", cert, b"\r\n"]
        line = b"%s %s HTTP/1.1\r\n" % (pseudo.get(b":method", b"GET"), pseudo.get(b":path", b"/"))
        return line + b"".join(fields) + b"\r\n", chunked

    async def _send_body(
        self, writer: asyncio.StreamWriter, stream: _Stream, chunked: bool
    ) -> None:
        while True:
            piece = await stream.body.get()
            if piece is None:
                if chunked:
                    writer.write(b"0\r\n\r\n")
                return
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()

    async def _answer(
        self, sid: int, reader: asyncio.StreamReader, stream: _Stream, head_request: bool
    ) -> None:
        """The app's HTTP/1.1 answer as the stream's HEADERS and DATA, then END_STREAM. An
        answer to HEAD ends with its HEADERS frame, as Go's server ends it (its
        Content-Length announces a body that never comes; the parser, not told the method,
        would wait for it)."""
        parsed = _Parsed()
        parser = httptools.HttpResponseParser(parsed)
        parsed.parser = parser
        sent_head = False
        while True:
            data = await reader.read(65536)
            if not data:
                if not parsed.complete and not (parsed.head_done and parsed.close_delimited):
                    raise OSError("the app closed the connection mid-answer")
                parsed.complete = True
            else:
                parser.feed_data(data)
            if parsed.head_done and not sent_head:
                sent_head = True
                out = [(b":status", str(parser.get_status_code()).encode())]
                for name, value in parsed.headers:
                    lower = name.lower()
                    if lower in _HOP_BY_HOP or lower == b"keep-alive":
                        continue
                    out.append((lower, value))
                self.h2.send_headers(sid, out, end_stream=head_request)
                self.flush()
                if head_request:
                    return
            while parsed.body:
                await self._send(sid, parsed.body.pop(0), stream)
            if parsed.complete:
                self.h2.end_stream(sid)
                self.flush()
                return

    async def _send(self, sid: int, data: bytes, stream: _Stream) -> None:
        view = memoryview(data)
        while view:
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                stream.window.clear()
                await stream.window.wait()
                continue
            self.h2.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.close_delimited = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        names = {name.lower() for name, _ in self.headers}
        self.close_delimited = b"content-length" not in names and not any(
            name.lower() == b"transfer-encoding" for name, _ in self.headers
        )

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Front(asyncio.Protocol):
    """Decides by ALPN: ``h2`` to ``_H2Server``, anything else to aiohttp."""

    def __init__(self, http1: Callable[[], asyncio.BaseProtocol], h2: Callable[[], _H2Server]):
        self._http1 = http1
        self._h2 = h2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.BaseProtocol = self._h2() if alpn == "h2" else self._http1()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


async def serve(
    http1: Callable[[], asyncio.BaseProtocol],
    unix_path: str,
    host: str,
    port: int,
    context: ssl.SSLContext,
    stats: Stats,
) -> asyncio.Server:
    """Listen on ``host:port`` with ``context`` (which must offer ``h2``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Front(http1, lambda: _H2Server(unix_path, stats)), host, port, ssl=context
    )


def front_fields(headers: Any, is_unix: bool) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(peer certificate, remote address, whether any front field is present) from a
    request's headers; the values only when it came over the front's unix socket."""
    present = any(name.lower().startswith("x-standin-front-") for name in headers)
    if not present or not is_unix:
        return None, None, present
    raw = headers.get(FRONT_PEERCERT)
    cert = json.loads(raw) if raw else None
    return cert, headers.get(FRONT_REMOTE) or None, present
