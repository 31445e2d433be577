"""The gateway's own CPU per proxied request, in one process, without TLS or sockets.

``python -m bench.hotpath [--requests N] [--connections C] [--http2] [--profile]``

A real application (SQLite store, a member user with a kubeconfig token bound to a
cluster, the proxy, accounting with the audit log on) and a real tunnel session over an
in-memory transport to a stand-in agent that answers every request on its stream with a
2 KB JSON object at once. Client connections are ``gateway.front.connection`` connections on a
transport that only collects bytes. What is left out is what the process spends in TLS,
system calls and the event loop's polling: so this is the Python cost of the path, the
part that code changes move, measured without the machine's run-to-run drift that the
wrk-based figures carry. ``--http2``: the same over HTTP/2 connections
(``gateway.front.h2``), one stream in flight on each, requests pre-encoded by an HPACK
encoder that indexes what it can (as Go's does). ``--profile`` adds cProfile's top
functions (which slows every call, so read it for proportions only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import hpack
import uvloop

from config.schema import GatewaySettings
from gateway.clusters.tunnels import TUNNELS, AgentInfo, AgentLink
from gateway.front import h2_protocol as http2
from gateway.front.connection import Front
from gateway.front.h2 import H2Connection
from gateway.identity import hashing
from gateway.identity.directory import Directory
from gateway.operations.app import build_app
from gateway.runtime import Runtime
from gateway.store.records import BINDING, CLUSTER, USER, Binding, Cluster, User
from gateway.store.sqlite import SQLiteStore
from gateway.telemetry.audit import AuditLog
from tunnel.protocol import Side
from tunnel.session import Session
from tunnel.streams import TunnelStream
from tunnel.transport import MemoryTransport

BODY = b'{"kind":"ConfigMap","apiVersion":"v1","data":{"x":"' + b"a" * 1990 + b'"}}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nAudit-Id: 5f0e\r\nCache-Control: no-cache, private\r\n"
    b"Content-Type: application/json\r\nX-Kubernetes-Pf-Flowschema-Uid: 1f2e\r\n"
    b"X-Kubernetes-Pf-Prioritylevel-Uid: 3c4d\r\nDate: Thu, 26 Nov 2026 04:00:00 GMT\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class Sink:
    """A client transport that counts answers."""

    def __init__(self) -> None:
        self.answers = 0
        self.waiter: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        self.answers += data.count(b"HTTP/1.1 200 OK")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class H2Sink(Sink):
    """A client transport that counts HTTP/2 answers (frames that end a stream)."""

    def write(self, data: bytes) -> None:
        pos = 0
        ended = 0
        while pos + 9 <= len(data):
            kind, flags = data[pos + 3], data[pos + 4]
            if kind in (http2.DATA, http2.HEADERS) and flags & http2.FLAG_END_STREAM:
                ended += 1
            pos += 9 + int.from_bytes(data[pos : pos + 3], "big")
        self.answers += ended
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _h2_requests(path: str, token: str, count: int) -> list[bytes]:
    """One connection's preface and settings, then ``count`` GETs as HEADERS frames."""
    encoder = hpack.Encoder()
    fields = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"gw.test"),
        (b":path", path.encode()),
        (b"authorization", b"Bearer " + token.encode()),
        (b"accept", b"application/json"),
        (b"user-agent", b"kubectl/v1.32.0 (linux/amd64)"),
    ]
    frames = [
        http2.PREFACE
        + http2._pack(http2.SETTINGS, 0, 0, struct.pack(">HI", 4, 2**30))
        + http2._pack(http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**30))
    ]
    end_headers = http2.FLAG_END_HEADERS | http2.FLAG_END_STREAM
    frames += [
        http2._pack(http2.HEADERS, end_headers, 2 * i + 1, encoder.encode(fields))
        for i in range(count)
    ]
    return frames


async def _agent(stream: TunnelStream, session: Session) -> None:
    session.accept(stream)
    with contextlib.suppress(Exception):
        while data := await stream.read():
            if b"\r\n\r\n" in data:
                await stream.write(ANSWER)


async def setup(tmp: Path) -> tuple[Front, str, str, list[Any]]:
    store = await SQLiteStore(tmp / "db").open()
    directory = Directory(store)
    await directory.load()
    now = time.time()
    user = User("u-bench", "bench", hashing.hash_password("x" * 12), now)
    await directory.put(USER, user)
    await directory.put(CLUSTER, Cluster("c-bench", "bench", now))
    await directory.put(BINDING, Binding("b-bench", "c-bench", "cluster-member", now, "u-bench"))
    _, token = await directory.issue_token(user, None, "kubeconfig", cluster_id="c-bench")
    settings = GatewaySettings()
    auditor = AuditLog(settings.audit, str(tmp))
    app = build_app(settings, directory, Runtime("https://gw.test", "CA", "bench"), None, auditor)

    a, b = MemoryTransport.pair()
    tasks: list[Any] = []
    agent = Session(
        a, Side.CLIENT, on_stream=lambda s: tasks.append(asyncio.create_task(_agent(s, agent)))
    )
    gateway = Session(b, Side.SERVER)
    await asyncio.gather(agent.handshake(), gateway.handshake())
    agent.start()
    gateway.start()
    info = AgentInfo(api_host=b"10.43.0.1:443", authorization=b"Bearer agent")
    app[TUNNELS].add(AgentLink("c-bench", gateway, info, "127.0.0.1"))
    front = Front(app, asyncio.Protocol)
    return (
        front,
        token,
        "/k8s/clusters/c-bench/api/v1/namespaces/default/configmaps/x",
        [
            store,
            auditor,
            tasks,
        ],
    )


async def run(requests: int, connections: int, profile: bool, http2_: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        front, token, path, keep = await setup(Path(tmp))
        per = max(1, requests // connections)
        warm = min(per, 200)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\nUser-Agent: kubectl/v1.32.0 (linux/amd64)\r\n\r\n"
        ).encode()
        clients: list[tuple[asyncio.Protocol, Sink, list[bytes]]] = []
        for _ in range(connections):
            if http2_:
                conn: asyncio.Protocol = H2Connection(front)
                sink: Sink = H2Sink()
                frames = _h2_requests(path, token, warm + per)
                conn.connection_made(sink)  # type: ignore[arg-type]
                conn.data_received(frames.pop(0))
            else:
                conn, sink, frames = front(), Sink(), [request] * (warm + per)
                conn.connection_made(sink)  # type: ignore[arg-type]
            clients.append((conn, sink, frames))

        async def drive(
            conn: asyncio.Protocol, sink: Sink, frames: list[bytes], count: int
        ) -> None:
            for _ in range(count):
                before = sink.answers
                sink.waiter = asyncio.get_running_loop().create_future()
                conn.data_received(frames.pop(0))
                while sink.answers == before:
                    await sink.waiter
                    sink.waiter = asyncio.get_running_loop().create_future()

        await asyncio.gather(*(drive(c, s, f, warm) for c, s, f in clients))  # warm-up
        profiler = cProfile.Profile() if profile else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(*(drive(c, s, f, per) for c, s, f in clients))
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        total = per * connections
        print(
            f"{total:,} requests over {connections} {'HTTP/2' if http2_ else 'HTTP/1.1'}"
            " connections: "
            f"{1e6 * cpu / total:.1f} µs of CPU per request ({total / wall:,.0f} req/s,"
            " gateway and stand-in agent in one process, no TLS or sockets)"
        )
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
        store, auditor, _ = keep
        auditor.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--http2", action="store_true", help="HTTP/2 connections")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    uvloop.run(run(args.requests, args.connections, args.profile, args.http2))


if __name__ == "__main__":
    main()
