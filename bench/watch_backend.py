"""A purpose-built watch server standing in for the API server (nginx cannot serve watches).

TLS, HTTP/1.1 keep-alive, raw asyncio protocol on uvloop, requests parsed with httptools;
HTTP/2 too (ALPN ``h2``, the ``h2`` library, MAX_CONCURRENT_STREAMS 1000 as kube-apiserver),
each stream answered as a connection would be, an event one DATA frame.

- ``GET <any path>?watch=1`` (or ``watch=true``): ``200`` with ``Transfer-Encoding: chunked``
  and nothing more until events are emitted; each event is one chunk holding one JSON
  line, a ConfigMap ``MODIFIED`` event whose ``data.sentNs`` is ``time.time_ns()`` taken
  just before the write (same machine, same clock as the client).
- ``GET /_bench/emit?rate=N&seconds=S``: emit N events per second for S seconds, round
  robin over the open watches; answers at once. Bounded: S ≤ 600, N ≤ 100,000.
- ``GET /_bench/stats``: ``{"watches": open, "sent": events sent, "emitting": bool}``.
- Anything else: 404 ``Status``.

Run: ``python -m bench.watch_backend --port P --cert F --key F`` (prints ``ready`` once listening).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import signal
import sys
import time
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import httptools
import uvloop

from bench.controller_reads import READS
from config.tls import server_context

MAX_SECONDS = 600.0
MAX_RATE = 100_000
TICK_S = 0.002

_WATCH_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Cache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_EVENT = (
    '{"type":"MODIFIED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":'
    '{"name":"watch-%d","namespace":"default","resourceVersion":"%d"},'
    '"data":{"sentNs":"%d"}}}\n'
)


def _reply(status: int, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    reason = {200: b"OK", 404: b"Not Found", 400: b"Bad Request"}.get(status, b"OK")
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        reason,
        len(data),
        data,
    )


def _answer(content_type: str, body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        content_type.encode(),
        len(body),
        body,
    )


_CONTROLLER_READS = {path: _answer(*read) for path, read in READS.items()}


class Server:
    def __init__(self) -> None:
        self.watches: dict[int, Watch] = {}
        self.sent = 0
        self.emitter: asyncio.Task[None] | None = None
        self._ids = 0

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def start_emitting(self, rate: float, seconds: float) -> None:
        # The open watches are long-lived: out of the collector's sight while emitting
        # (a stand-in API server's full collection is no latency of the gateway's).
        gc.freeze()
        if self.emitter is not None and not self.emitter.done():
            self.emitter.cancel()
        self.emitter = asyncio.get_running_loop().create_task(self._emit(rate, seconds))

    async def _emit(self, rate: float, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate * seconds)
        done = 0
        targets: list[Watch] = []
        refreshed = -1.0
        index = 0
        while done < total:
            now = loop.time()
            if now - refreshed >= 1.0:
                targets = list(self.watches.values())
                refreshed = now
            due = min(total, int((now - start) * rate)) - done
            for _ in range(due):
                if not targets:
                    break
                index = (index + 1) % len(targets)
                conn = targets[index]
                if conn.closed:
                    continue
                self.sent += 1
                line = (_EVENT % (conn.watch_id, self.sent, time.time_ns())).encode()
                conn.send_event(line)
            done += max(0, due)
            await asyncio.sleep(TICK_S)

    def stats(self) -> dict[str, object]:
        emitting = self.emitter is not None and not self.emitter.done()
        return {"watches": len(self.watches), "sent": self.sent, "emitting": emitting}


def answer(server: Server, url: str, watch: Watch) -> tuple[bytes, bool]:
    """The HTTP/1.1 answer to ``url`` and whether it opened a watch (``watch`` is then
    registered)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.path == "/_bench/emit":
        rate = min(MAX_RATE, float(query.get("rate", ["1000"])[0]))
        seconds = min(MAX_SECONDS, float(query.get("seconds", ["10"])[0]))
        server.start_emitting(rate, seconds)
        return _reply(200, {"rate": rate, "seconds": seconds, **server.stats()}), False
    if parts.path == "/_bench/stats":
        return _reply(200, server.stats()), False
    if parts.path in _CONTROLLER_READS:
        # What the gateway's cluster controller reads (the cluster turns active when
        # /readyz answers); its own watches are refused, it backs them off, and they
        # are not counted among the benchmark's.
        if query.get("watch"):
            return _reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"}), False
        return _CONTROLLER_READS[parts.path], False
    if query.get("watch", [""])[0] in ("1", "true"):
        watch.watch_id = server.next_id()
        server.watches[watch.watch_id] = watch
        return _WATCH_HEAD, True
    return _reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"}), False


class Watch(Protocol):
    watch_id: int
    closed: bool

    def send_event(self, line: bytes) -> None: ...


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.watch_id = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.write(_reply(400, {"kind": "Status", "code": 400}))
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url.decode("latin-1"), b""
        data, _ = answer(self.server, url, self)
        self.write(data)

    def send_event(self, line: bytes) -> None:
        self.write(b"%x\r\n%s\r\n" % (len(line), line))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.watch_id:
            self.server.watches.pop(self.watch_id, None)


def _h2_answer(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """An HTTP/1.1 answer built above as HTTP/2 headers and body."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = [(b":status", lines[0].split(b" ")[1])]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() not in (b"transfer-encoding", b"connection"):
            headers.append((name.lower(), value.strip()))
    return headers, body


class H2Watch:
    __slots__ = ("closed", "conn", "held", "stream_id", "watch_id")

    def __init__(self, conn: H2Server, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.watch_id = 0
        self.closed = False
        self.held: list[bytes] = []

    def send_event(self, line: bytes) -> None:
        if self.closed:
            return
        self.held.append(line)
        self.conn.drain(self)


class H2Server(asyncio.Protocol):
    """One HTTP/2 connection: each stream answered as ``Connection`` answers a request."""

    def __init__(self, server: Server) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        self.server = server
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.watches: dict[int, H2Watch] = {}
        self._flush_soon = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from h2.settings import SettingCodes

        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self.flush()

    def flush(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        from h2.events import (
            ConnectionTerminated,
            DataReceived,
            RequestReceived,
            StreamReset,
            WindowUpdated,
        )
        from h2.exceptions import H2Error

        try:
            events = self.h2.receive_data(data)
        except H2Error:
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                fields = dict(event.headers)
                watch = H2Watch(self, event.stream_id)
                reply, opened = answer(
                    self.server, fields.get(b":path", b"/").decode("latin-1"), watch
                )
                headers, body = _h2_answer(reply)
                self.h2.send_headers(event.stream_id, headers, end_stream=not body and not opened)
                if body:
                    self.h2.send_data(event.stream_id, body, end_stream=True)
                if opened:
                    self.watches[event.stream_id] = watch
            elif isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamReset):
                self._gone(event.stream_id)
            elif isinstance(event, WindowUpdated):
                targets = (
                    [self.watches[event.stream_id]]
                    if event.stream_id in self.watches
                    else list(self.watches.values())
                )
                for watch in targets:
                    if watch.held:
                        self.drain(watch)
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    def drain(self, watch: H2Watch) -> None:
        h2 = self.h2
        while watch.held:
            line = watch.held[0]
            if h2.local_flow_control_window(watch.stream_id) < len(line):
                break
            h2.send_data(watch.stream_id, line)
            watch.held.pop(0)
        self.flush()

    def _gone(self, stream_id: int) -> None:
        watch = self.watches.pop(stream_id, None)
        if watch is not None:
            watch.closed = True
            self.server.watches.pop(watch.watch_id, None)

    def connection_lost(self, exc: Exception | None) -> None:
        for stream_id in list(self.watches):
            self._gone(stream_id)


class _ByAlpn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        h2 = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        protocol: asyncio.Protocol = H2Server(self.server) if h2 else Connection(self.server)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def raise_nofile() -> int:
    """Soft open-files limit up to the hard limit (or more, where allowed); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (max(hard, 65536), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            return wanted
        except (ValueError, OSError):
            continue
    return soft


async def serve(port: int, cert: str, key: str) -> None:
    raise_nofile()
    server = Server()
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: _ByAlpn(server),
        "127.0.0.1",
        port,
        ssl=server_context(cert, key, http2=True),
        backlog=4096,
    )
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.cert, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
