"""A purpose-built watch server standing in for the API server (nginx cannot serve watches).

TLS, HTTP/1.1 keep-alive, raw asyncio protocol on uvloop, requests parsed with httptools.

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
import json
import resource
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httptools
import uvloop

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


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


_CONTROLLER_READS = {
    "/readyz": _ok(b"ok"),
    "/livez": _ok(b"ok"),
    "/version": _reply(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"}),
    "/api/v1/nodes": _reply(
        200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": []}
    ),
    "/api/v1/namespaces": _reply(
        200, {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {}, "items": []}
    ),
}


class Server:
    def __init__(self) -> None:
        self.watches: dict[int, Connection] = {}
        self.sent = 0
        self.emitter: asyncio.Task[None] | None = None
        self._ids = 0

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def start_emitting(self, rate: float, seconds: float) -> None:
        if self.emitter is not None and not self.emitter.done():
            self.emitter.cancel()
        self.emitter = asyncio.get_running_loop().create_task(self._emit(rate, seconds))

    async def _emit(self, rate: float, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate * seconds)
        done = 0
        targets: list[Connection] = []
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
                conn.write(b"%x\r\n%s\r\n" % (len(line), line))
            done += max(0, due)
            await asyncio.sleep(TICK_S)

    def stats(self) -> dict[str, object]:
        emitting = self.emitter is not None and not self.emitter.done()
        return {"watches": len(self.watches), "sent": self.sent, "emitting": emitting}


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
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.path == "/_bench/emit":
            rate = min(MAX_RATE, float(query.get("rate", ["1000"])[0]))
            seconds = min(MAX_SECONDS, float(query.get("seconds", ["10"])[0]))
            self.server.start_emitting(rate, seconds)
            self.write(_reply(200, {"rate": rate, "seconds": seconds, **self.server.stats()}))
        elif parts.path == "/_bench/stats":
            self.write(_reply(200, self.server.stats()))
        elif parts.path in _CONTROLLER_READS:
            # What the gateway's cluster controller reads (the cluster turns active when
            # /readyz answers); its own watches are refused, it backs them off, and they
            # are not counted among the benchmark's.
            if query.get("watch"):
                self.write(_reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"}))
            else:
                self.write(_CONTROLLER_READS[parts.path])
        elif query.get("watch", [""])[0] in ("1", "true"):
            self.watch_id = self.server.next_id()
            self.server.watches[self.watch_id] = self
            self.write(_WATCH_HEAD)
        else:
            self.write(_reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"}))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.watch_id:
            self.server.watches.pop(self.watch_id, None)


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
        lambda: Connection(server), "127.0.0.1", port, ssl=server_context(cert, key), backlog=4096
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
