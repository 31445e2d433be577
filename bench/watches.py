"""Figure 4's client: many concurrent kubectl-shaped watches, and event delivery latency.

Runs as its own process (``python -m bench.watches ...``) so that its CPU and memory stay
apart from the orchestrator's. Dialogue on stdin/stdout, one JSON line each way:

1. it opens ``--count`` watches through the gateway (TLS, bearer token, at most
   ``--concurrency`` handshakes in flight) and prints ``{"opened": ..., "failed": ...}``.
   Over HTTP/1.1 each watch has its own connection; with ``--http2`` they share
   connections of ``--per-connection`` streams, as client-go's informers do when the
   server offers ``h2``;
2. it reads ``measure SECONDS`` and records, for every event line received in that time,
   ``receive time - sentNs`` (both ``time.time_ns()``, same machine), then prints the
   latency distribution and exits, closing every watch.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import re
import ssl
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings
import httptools
import uvloop

from bench.watch_backend import raise_nofile

_SENT = re.compile(rb'"sentNs":"(\d+)"')
MAX_MEASURE_S = 600.0
OPEN_TIMEOUT_S = 300.0


class EventLines:
    """Counts a watch's event lines and, while ``recording``, their delivery latency."""

    def __init__(self, latencies: list[int], recording: list[bool]) -> None:
        self.latencies = latencies
        self.recording = recording
        self.events = 0
        self.now = 0
        """When the bytes being read arrived (``time.time_ns()``)."""

    def take(self, tail: bytes, body: bytes) -> bytes:
        """Record the whole lines of ``tail + body``; returns the unfinished last one."""
        lines = (tail + body).split(b"\n")
        rest = lines.pop()
        for line in lines:
            match = _SENT.search(line)
            if match is None:
                continue
            self.events += 1
            if self.recording[0]:
                self.latencies.append(self.now - int(match.group(1)))
        return rest


class Watch(asyncio.Protocol):
    def __init__(self, request: bytes, latencies: list[int], recording: list[bool]) -> None:
        self.request = request
        self.lines = EventLines(latencies, recording)
        self.parser = httptools.HttpResponseParser(self)
        self.established: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.lines.now = time.time_ns()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_headers_complete(self) -> None:
        if not self.established.done():
            self.established.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.tail = self.lines.take(self.tail, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("closed"))

    def _fail(self, exc: BaseException) -> None:
        if not self.established.done():
            self.established.set_exception(exc)


class H2Watches(asyncio.Protocol):
    """One HTTP/2 connection carrying many watches (one stream each)."""

    def __init__(
        self, headers: list[tuple[bytes, bytes]], latencies: list[int], recording: list[bool]
    ) -> None:
        self.headers = headers
        self.lines = EventLines(latencies, recording)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}
        )
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.established: dict[int, asyncio.Future[int]] = {}
        self.tails: dict[int, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 30)
        self._flush()

    def open(self) -> asyncio.Future[int]:
        stream_id = self.conn.get_next_available_stream_id()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.established[stream_id] = future
        self.tails[stream_id] = b""
        self.conn.send_headers(stream_id, self.headers, end_stream=True)
        self._flush()
        return future

    def data_received(self, data: bytes) -> None:
        self.lines.now = time.time_ns()
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None
                self._body(event.stream_id, event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.ResponseReceived):
                assert event.stream_id is not None
                status = int(dict(event.headers or [])[b":status"])
                future = self.established.get(event.stream_id)
                if future is not None and not future.done():
                    future.set_result(status)
            elif isinstance(event, h2.events.RemoteSettingsChanged) and not self.ready.done():
                self.ready.set_result(None)
            elif isinstance(event, h2.events.StreamReset | h2.events.StreamEnded):
                assert event.stream_id is not None
                future = self.established.pop(event.stream_id, None)
                if future is not None and not future.done():
                    future.set_exception(ConnectionResetError(f"stream {event.stream_id} ended"))
        self._flush()

    def _body(self, stream_id: int, body: bytes) -> None:
        self.tails[stream_id] = self.lines.take(self.tails.get(stream_id, b""), body)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        error = exc or ConnectionResetError("closed")
        if not self.ready.done():
            self.ready.set_exception(error)
        for future in self.established.values():
            if not future.done():
                future.set_exception(error)

    @property
    def alive(self) -> int:
        return 0 if self.transport is None else len(self.established)


def _same(protocol: H2Watches) -> H2Watches:
    return protocol


def _target(args: argparse.Namespace, alpn: str) -> tuple[str, int, ssl.SSLContext, str, str]:
    """Host, port, a TLS context offering only ``alpn``, the path and the authority."""
    url = urlsplit(args.url)
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols([alpn])
    path = url.path + ("?" + url.query if url.query else "")
    return url.hostname or "127.0.0.1", url.port or 443, ctx, path, url.netloc


async def _measure_then_close(
    latencies: list[int],
    recording: list[bool],
    alive: Callable[[], int],
    transports: list[asyncio.Transport | None],
) -> None:
    """Wait for ``measure SECONDS`` on stdin, record that long, report, close."""
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    parts = line.split()
    seconds = min(MAX_MEASURE_S, float(parts[1])) if len(parts) == 2 else 0.0
    # The watches' objects are long-lived from here: out of the collector's sight, so a
    # full collection over tens of thousands of streams (a pause of this Python client,
    # which kubectl's Go runtime does not have) is not counted as the gateway's latency.
    gc.freeze()
    recording[0] = True
    await asyncio.sleep(seconds)
    recording[0] = False
    _say({**summarize(latencies), "alive": alive()})
    for transport in transports:
        if transport is not None:
            transport.close()
    await asyncio.sleep(0.5)


async def run_http2(args: argparse.Namespace) -> None:
    """The HTTP/2 variant of ``run``: ``--per-connection`` watches share each connection."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    host, port, ctx, path, authority = _target(args, "h2")
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
        (b"authorization", f"Bearer {args.token}".encode()),
        (b"accept", b"application/json"),
        (b"user-agent", b"kubectl/v1.32.0 (linux/amd64) kubernetes/bench"),
    ]
    latencies: list[int] = []
    recording = [False]
    connections: list[H2Watches] = []
    failures: list[str] = []
    opened = 0
    started = time.monotonic()
    async with asyncio.timeout(OPEN_TIMEOUT_S):
        remaining = args.count
        while remaining > 0:
            batch = min(remaining, args.per_connection)
            remaining -= batch
            conn = H2Watches(headers, latencies, recording)
            try:
                await loop.create_connection(functools.partial(_same, conn), host, port, ssl=ctx)
                await asyncio.wait_for(conn.ready, 60)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            connections.append(conn)
            for start in range(0, batch, args.concurrency):
                futures = [conn.open() for _ in range(min(args.concurrency, batch - start))]
                for result in await asyncio.gather(*futures, return_exceptions=True):
                    if isinstance(result, BaseException):
                        failures.append(f"{type(result).__name__}: {result}")
                    elif result != 200:
                        failures.append(f"HTTP {result}")
                    else:
                        opened += 1
    opened_s = time.monotonic() - started
    _say({"opened": opened, "failed": len(failures), "open_s": round(opened_s, 2),
          "connections": len(connections), "failures": sorted(set(failures))[:5]})  # fmt: skip
    await _measure_then_close(
        latencies,
        recording,
        lambda: sum(c.alive for c in connections),
        [c.transport for c in connections],
    )


async def run(args: argparse.Namespace) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    host, port, ctx, path, authority = _target(args, "http/1.1")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n"
        f"Authorization: Bearer {args.token}\r\nAccept: application/json\r\n"
        "User-Agent: kubectl/v1.32.0 (linux/amd64) kubernetes/bench\r\n\r\n"
    ).encode()
    latencies: list[int] = []
    recording = [False]
    watches: list[Watch] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(args.concurrency)

    async def open_one() -> None:
        async with gate:
            watch = Watch(request, latencies, recording)
            try:
                await loop.create_connection(lambda: watch, host, port, ssl=ctx)
                status = await asyncio.wait_for(watch.established, 60)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            if status != 200:
                failures.append(f"HTTP {status}")
                if watch.transport is not None:
                    watch.transport.close()
                return
            watches.append(watch)

    started = time.monotonic()
    async with asyncio.timeout(OPEN_TIMEOUT_S):
        await asyncio.gather(*(open_one() for _ in range(args.count)))
    opened_s = time.monotonic() - started
    _say({"opened": len(watches), "failed": len(failures), "open_s": round(opened_s, 2),
          "failures": sorted(set(failures))[:5]})  # fmt: skip
    await _measure_then_close(
        latencies,
        recording,
        lambda: sum(1 for w in watches if w.transport and not w.transport.is_closing()),
        [w.transport for w in watches],
    )


def summarize(latencies_ns: list[int]) -> dict[str, float]:
    if not latencies_ns:
        return {"events": 0}
    ordered = sorted(latencies_ns)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6

    return {
        "events": len(ordered),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": ordered[-1] / 1e6,
        "mean_ms": sum(ordered) / len(ordered) / 1e6,
    }


def _say(data: dict[str, object]) -> None:
    print(json.dumps(data), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="watch URL through the gateway")
    parser.add_argument("--token", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--http2", action="store_true", help="watches share h2 connections")
    parser.add_argument("--per-connection", type=int, default=1000, help="streams (--http2)")
    args = parser.parse_args(argv)
    uvloop.run(run_http2(args) if args.http2 else run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
