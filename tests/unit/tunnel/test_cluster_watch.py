"""The agent's own probes and watches (``tunnel.cluster_watch``) against a small API server
on loopback: a watch that answers 410 is listed again, a dead ``/readyz`` pauses the
watches and is reported, and each report goes to the tunnels that want them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tunnel.cluster_state import NAMESPACES, NODES, REPORT_KEY, ReportedState, parse_report
from tunnel.cluster_watch import ClusterWatch, Reports
from tunnel.credentials import Upstream


class _Session:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.is_closed = False

    def send_info(self, payload: bytes) -> None:
        self.sent.append(payload)


class _ApiServer:
    def __init__(self) -> None:
        self.ready = True
        self.lists: dict[str, int] = {"nodes": 0, "namespaces": 0}
        self.watches: dict[str, int] = {"nodes": 0, "namespaces": 0}
        self.user_agents: set[str] = set()
        self.authorizations: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/version", self.version)
        app.router.add_get("/api/v1/{kind}", self.collection)
        return app

    def _seen(self, request: web.Request) -> None:
        self.user_agents.add(request.headers.get("User-Agent", ""))
        self.authorizations.add(request.headers.get("Authorization", ""))

    async def readyz(self, request: web.Request) -> web.Response:
        self._seen(request)
        if self.ready:
            return web.Response(text="ok")
        return web.Response(status=500, text="[-]etcd failed\nreadyz check failed")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"gitVersion": "v1.32.0", "major": "1", "minor": "32"})

    async def collection(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        kind = request.match_info["kind"]
        if request.query.get("watch") != "true":
            self.lists[kind] += 1
            count = self.lists[kind]
            items = [
                {"metadata": {"name": f"{kind}-{i}", "resourceVersion": str(count)}}
                for i in range(count)
            ]
            return web.json_response({"items": items, "metadata": {"resourceVersion": str(count)}})
        self.watches[kind] += 1
        response = web.StreamResponse()
        await response.prepare(request)
        if self.watches[kind] == 1:  # the first watch: its resourceVersion is gone
            gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        added = {
            "type": "ADDED",
            "object": {"metadata": {"name": f"{kind}-new", "resourceVersion": "9"}},
        }
        await response.write(json.dumps(added).encode() + b"\n")
        await asyncio.sleep(30)
        return response


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def _apply(reported: ReportedState, session: _Session, start: int) -> int:
    for payload in session.sent[start:]:
        reported.apply(parse_report(json.loads(payload)[REPORT_KEY]))
    return len(session.sent)


async def test_the_agent_lists_again_after_410_pauses_while_not_ready_and_reports() -> None:
    server = _ApiServer()
    runner = web.AppRunner(server.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream = Upstream("127.0.0.1", port, None, None, authorization="Bearer sa-token")
    reports = Reports()
    session = _Session()
    reports.want(session)  # type: ignore[arg-type]
    watch = ClusterWatch(upstream, reports, 0.3, 60.0, "herdgate-agent/test cluster-state")
    task = asyncio.create_task(watch.run())
    reported = ReportedState()
    seen = 0
    try:
        # 410 on the first watch: listed again (two items the second time), then the
        # second watch's ADDED.
        await _until(lambda: server.lists == {"nodes": 2, "namespaces": 2})
        await _until(lambda: "nodes-new" in watch.tables[NODES].items)
        await _until(lambda: "namespaces-new" in watch.tables[NAMESPACES].items)
        await asyncio.sleep(1.2)  # the next report (at most one a second)
        seen = _apply(reported, session, seen)
        state = reported.state
        assert reported.complete and state.ready is not None and state.ready.ok
        assert state.version == {"gitVersion": "v1.32.0", "major": "1", "minor": "32"}
        assert sorted(state.nodes) == ["nodes-0", "nodes-1", "nodes-new"]
        assert sorted(state.namespaces) == ["namespaces-0", "namespaces-1", "namespaces-new"]
        assert state.listed == {NODES, NAMESPACES}
        assert server.user_agents == {"herdgate-agent/test cluster-state"}
        assert server.authorizations == {"Bearer sa-token"}
        # /readyz fails: reported at once, the watches stop.
        server.ready = False
        await _until(lambda: watch.ready is not None and not watch.ready.ok)
        assert watch._watches == {}
        await asyncio.sleep(1.2)
        seen = _apply(reported, session, seen)
        assert reported.state.ready is not None and not reported.state.ready.ok
        assert reported.state.ready.reason == "HTTP500"
        lists = dict(server.lists)
        await asyncio.sleep(1.0)  # several intervals: no list or watch meanwhile
        assert server.lists == lists
        # Back: listed afresh.
        server.ready = True
        await _until(lambda: server.lists["nodes"] == lists["nodes"] + 1)
        await asyncio.sleep(1.2)
        _apply(reported, session, seen)
        back = reported.state.copy().ready
        assert back is not None and back.ok
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
