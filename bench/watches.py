"""Figure 4's client: many concurrent kubectl-shaped watches, and event delivery latency.

Runs as its own process (``python -m bench.watches ...``) so that its CPU and memory stay
apart from the orchestrator's. Dialogue on stdin/stdout, one JSON line each way:

1. it opens ``--count`` watches through the gateway (TLS, bearer token, at most
   ``--concurrency`` handshakes in flight) and prints ``{"opened": ..., "failed": ...}``;
2. it reads ``measure SECONDS`` and records, for every event line received in that time,
   ``receive time - sentNs`` (both ``time.time_ns()``, same machine), then prints the
   latency distribution and exits, closing every watch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import sys
import time
from urllib.parse import urlsplit

import httptools
import uvloop

from bench.watch_backend import raise_nofile

_SENT = re.compile(rb'"sentNs":"(\d+)"')
MAX_MEASURE_S = 600.0
OPEN_TIMEOUT_S = 300.0


class Watch(asyncio.Protocol):
    def __init__(self, request: bytes, latencies: list[int], recording: list[bool]) -> None:
        self.request = request
        self.latencies = latencies
        self.recording = recording
        self.parser = httptools.HttpResponseParser(self)
        self.established: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.events = 0
        self._now = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._now = time.time_ns()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_headers_complete(self) -> None:
        if not self.established.done():
            self.established.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        data = self.tail + body
        lines = data.split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            match = _SENT.search(line)
            if match is None:
                continue
            self.events += 1
            if self.recording[0]:
                self.latencies.append(self._now - int(match.group(1)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("closed"))

    def _fail(self, exc: BaseException) -> None:
        if not self.established.done():
            self.established.set_exception(exc)


async def run(args: argparse.Namespace) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 443
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    path = url.path + ("?" + url.query if url.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
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

    line = await loop.run_in_executor(None, sys.stdin.readline)
    parts = line.split()
    seconds = min(MAX_MEASURE_S, float(parts[1])) if len(parts) == 2 else 0.0
    recording[0] = True
    await asyncio.sleep(seconds)
    recording[0] = False
    alive = sum(1 for w in watches if w.transport is not None and not w.transport.is_closing())
    _say({**summarize(latencies), "alive": alive})
    for watch in watches:
        if watch.transport is not None:
            watch.transport.close()
    await asyncio.sleep(0.5)


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
    uvloop.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
