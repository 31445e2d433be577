"""The gateway's own CPU per proxied request, in one process, without TLS or sockets.

``python -m bench.hotpath [--requests N] [--connections C] [--profile]``

A real application (SQLite store, a member user with a kubeconfig token bound to a
cluster, the proxy, accounting with the audit log on) and a real tunnel session over an
in-memory transport to a stand-in agent that answers every request on its stream with a
2 KB JSON object at once. Client connections are ``gateway.front`` connections on a
transport that only collects bytes. What is left out is what the process spends in TLS,
system calls and the event loop's polling: so this is the Python cost of the path, the
part that code changes move, measured without the machine's run-to-run drift that the
wrk-based figures carry. ``--profile`` adds cProfile's top functions (which slows every
call, so read it for proportions only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from config.schema import GatewaySettings
from gateway import hashing
from gateway.app import build_app
from gateway.audit import AuditLog
from gateway.directory import Directory
from gateway.front import Front, FrontConnection
from gateway.keys import TUNNELS
from gateway.records import BINDING, CLUSTER, USER, Binding, Cluster, User
from gateway.runtime import Runtime
from gateway.store.sqlite import SQLiteStore
from gateway.tunnels import AgentInfo, AgentLink
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


async def run(requests: int, connections: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        front, token, path, keep = await setup(Path(tmp))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\nUser-Agent: kubectl/v1.32.0 (linux/amd64)\r\n\r\n"
        ).encode()
        clients: list[tuple[FrontConnection, Sink]] = []
        for _ in range(connections):
            conn, sink = front(), Sink()
            conn.connection_made(sink)  # type: ignore[arg-type]
            clients.append((conn, sink))

        async def drive(conn: FrontConnection, sink: Sink, count: int) -> None:
            for _ in range(count):
                before = sink.answers
                sink.waiter = asyncio.get_running_loop().create_future()
                conn.data_received(request)
                while sink.answers == before:
                    await sink.waiter
                    sink.waiter = asyncio.get_running_loop().create_future()

        per = max(1, requests // connections)
        await asyncio.gather(*(drive(c, s, min(per, 200)) for c, s in clients))  # warm-up
        profiler = cProfile.Profile() if profile else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(*(drive(c, s, per) for c, s in clients))
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        total = per * connections
        print(
            f"{total:,} requests over {connections} connections: "
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
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    uvloop.run(run(args.requests, args.connections, args.profile))


if __name__ == "__main__":
    main()
