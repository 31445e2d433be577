"""kubectl-shaped exec sessions (WebSocket, ``v5.channel.k8s.io``) against one URL.

Measures, in this order, over ``--sessions`` sessions one after another: the time to
open a session as kubectl exec does (``exec_setup``: on one new TLS connection it reads
the pod, then on another it upgrades, answered 101) and the upgrade alone (``setup``:
TCP + TLS + upgrade on a new connection, nothing before it); the round trip of a 64-byte stdin line
echoed on stdout, ``--echoes`` times on one session; and the throughput of
``--bulk-mb`` MB of stdin sent in 32 KiB messages and echoed back (at most
``WINDOW`` messages in flight). Prints one JSON object. Every loop is bounded in count,
and the whole run by ``--timeout``.

Run: ``python -m bench.exec_client --url https://.../api/v1/namespaces/default/pods/p/exec
--token T --ca F``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time
from typing import Any

import aiohttp
import uvloop

PROTOCOL = "v5.channel.k8s.io"
STDIN, STDOUT = b"\x00", b"\x01"
CHUNK = 32 * 1024
WINDOW = 16
QUERY = "?command=cat&stdin=true&stdout=true"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _open(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(
        url + QUERY, protocols=(PROTOCOL,), headers=headers, max_msg_size=0, autoping=False
    )


async def _check(ws: aiohttp.ClientWebSocketResponse) -> None:
    if ws.protocol != PROTOCOL:
        raise RuntimeError(f"subprotocol {ws.protocol!r}")
    await ws.close()


async def measure(
    url: str, token: str, ca: str, sessions: int, echoes: int, bulk_mb: float
) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=ca)
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "kubectl/v1.32.0 (bench)"}
    out: dict[str, Any] = {}
    setup: list[float] = []
    exec_setup: list[float] = []
    pod_url = url.rsplit("/exec", 1)[0]
    for _ in range(sessions):  # new connections each time, as each kubectl exec makes
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as rest,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as upgrades,
        ):
            started = time.perf_counter()
            async with rest.get(pod_url, headers=headers) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"GET pod: {answer.status}")
                await answer.read()
            ws = await _open(upgrades, url, headers)
            exec_setup.append(1e3 * (time.perf_counter() - started))
            await _check(ws)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            started = time.perf_counter()
            ws = await _open(session, url, headers)
            setup.append(1e3 * (time.perf_counter() - started))
            await _check(ws)
    if sessions:
        out["exec_setup_p50_ms"] = statistics.median(exec_setup)
        out["exec_setup_p99_ms"] = _percentile(exec_setup, 0.99)
        out["setup_p50_ms"] = statistics.median(setup)
        out["setup_p99_ms"] = _percentile(setup, 0.99)

    connector = aiohttp.TCPConnector(ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as session:
        ws = await _open(session, url, headers)
        line = STDIN + b"x" * 63 + b"\n"
        rtts: list[float] = []
        for _ in range(echoes):
            started = time.perf_counter()
            await ws.send_bytes(line)
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.BINARY or msg.data[:1] != STDOUT:
                raise RuntimeError(f"unexpected {msg.type}")
            rtts.append(1e3 * (time.perf_counter() - started))
        if echoes:
            out["echo_p50_ms"] = statistics.median(rtts)
            out["echo_p99_ms"] = _percentile(rtts, 0.99)

        payload = STDIN + b"y" * CHUNK
        total = int(bulk_mb * 1e6) // CHUNK
        received = 0
        progress = asyncio.Event()
        started = time.perf_counter()

        async def reader() -> None:
            nonlocal received
            while received < total * CHUNK:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    raise RuntimeError(f"unexpected {msg.type}")
                received += len(msg.data) - 1
                progress.set()

        reading = asyncio.create_task(reader())
        for sent in range(total):
            while sent * CHUNK - received >= WINDOW * CHUNK and not reading.done():
                progress.clear()
                await progress.wait()
            await ws.send_bytes(payload)
        await reading
        seconds = time.perf_counter() - started
        if total:
            out["bulk_mb_per_s"] = received / 1e6 / seconds
        await ws.close()
    out.update(sessions=sessions, echoes=echoes, bulk_mb=received / 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--echoes", type=int, default=2000)
    parser.add_argument("--bulk-mb", type=float, default=50.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    async def run() -> dict[str, Any]:
        return await asyncio.wait_for(
            measure(args.url, args.token, args.ca, args.sessions, args.echoes, args.bulk_mb),
            args.timeout,
        )

    print(json.dumps(uvloop.run(run())), flush=True)


if __name__ == "__main__":
    main()
